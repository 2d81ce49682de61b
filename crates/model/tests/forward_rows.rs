//! `Llama::forward_hidden_rows` (the last layer computed for the rows a caller reads only)
//! gives the rows of the full forward, in f32 and bf16, on the fused
//! attention kernel (head_dim 8, the GQA fixture) and on the tiled one (head_dim 64, a random
//! model built here), without and after a cached prefix, whose keys and values it must still
//! append for every row. `forward_last` is built on it, and the plain scoring path too.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sightline_model::llama::{KvCache, Llama};
use sightline_model::weights::Weights;
use sightline_model::LlamaConfig;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The GQA fixture (hidden 64, 8 heads of 8, 2 KV heads, 3 layers).
fn fixture(dtype: DType) -> Llama {
    let dir = root().join("tests/fixtures/llama/tiny-gqa-untied");
    let cfg = LlamaConfig::from_file(&dir.join("config.json")).expect("config");
    let w = Weights::from_dir(&dir, dtype, &Device::Cpu).expect("weights");
    Llama::new(&cfg, &w, &dir.join("config.json")).expect("model")
}

/// A random LLaMA with head_dim 64 (the tiled attention kernel's case): hidden 256, 4 heads,
/// 2 KV heads, 2 layers, vocab 97.
fn random_head_dim_64(dtype: DType) -> Llama {
    let cfg_text = r#"{"hidden_size": 256, "intermediate_size": 384, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 97,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": false}"#;
    let path = Path::new("random-head-dim-64/config.json");
    let cfg = LlamaConfig::from_json(cfg_text, path).expect("config");
    let dev = Device::Cpu;
    let mut t = HashMap::new();
    let mut put = |name: String, shape: &[usize], std: f64| {
        let x = Tensor::randn(0f32, std as f32, shape, &dev).expect("randn");
        t.insert(name, x);
    };
    let (hs, is, v) = (256, 384, 97);
    put("model.embed_tokens.weight".into(), &[v, hs], 1.0);
    put("lm_head.weight".into(), &[v, hs], 0.05);
    put("model.norm.weight".into(), &[hs], 0.1);
    for i in 0..2 {
        let p = format!("model.layers.{i}");
        for (name, shape) in [
            ("self_attn.q_proj", [hs, hs]),
            ("self_attn.k_proj", [128, hs]),
            ("self_attn.v_proj", [128, hs]),
            ("self_attn.o_proj", [hs, hs]),
            ("mlp.gate_proj", [is, hs]),
            ("mlp.up_proj", [is, hs]),
            ("mlp.down_proj", [hs, is]),
        ] {
            put(format!("{p}.{name}.weight"), &shape, 0.06);
        }
        put(format!("{p}.input_layernorm.weight"), &[hs], 0.1);
        put(format!("{p}.post_attention_layernorm.weight"), &[hs], 0.1);
    }
    // Norm weights near 1, as trained ones are.
    for (name, x) in t.iter_mut() {
        if name.ends_with("norm.weight") {
            *x = (x.clone() + 1.0).expect("shift");
        }
    }
    let w = Weights::from_tensors(t, path.to_path_buf(), dtype, &dev);
    Llama::new(&cfg, &w, path).expect("model")
}

/// Deterministic token ids `[b, t]` below `vocab`.
fn ids(b: usize, t: usize, vocab: usize) -> Tensor {
    let v: Vec<u32> = (0..b * t)
        .map(|i| ((i * 7919 + 13) % vocab) as u32)
        .collect();
    Tensor::from_vec(v, (b, t), &Device::Cpu).expect("ids")
}

/// The full forward's rows in `windows`, as f32 values.
fn full_rows(
    m: &Llama,
    x: &Tensor,
    cache: Option<&mut KvCache>,
    windows: &[Range<usize>],
) -> Vec<f32> {
    let (b, t) = x.dims2().expect("dims");
    let h = m.forward_hidden(x, cache).expect("forward");
    let h = h.flatten_to(1).expect("flatten");
    let rows: Vec<u32> = windows
        .iter()
        .enumerate()
        .flat_map(|(i, w)| w.clone().map(move |r| (i * t + r) as u32))
        .collect();
    assert_eq!(windows.len(), b);
    let idx = Tensor::new(rows.as_slice(), &Device::Cpu).expect("idx");
    values(&h.index_select(&idx, 0).expect("select"))
}

fn values(x: &Tensor) -> Vec<f32> {
    x.to_dtype(DType::F32)
        .and_then(|x| x.flatten_all())
        .and_then(|x| x.to_vec1())
        .expect("values")
}

fn cache_values(c: &KvCache, x: &Tensor, m: &Llama) -> Vec<f32> {
    // The cache's contents, read back through a forward that attends to them.
    let mut c = c.clone();
    values(
        &m.forward_hidden(x, Some(&mut c))
            .expect("forward on the cache"),
    )
}

/// `got` equals `want` to `tol` relative to the largest |want|: the matrix products of the last
/// layer run on fewer rows, and the GEMMs' kernels for few rows may sum in another order, so
/// the bits can differ at f32 rounding (or, in bf16, by a rounding of an activation that
/// lands on the other side; measured below).
fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    eprintln!("{what}: max |diff| {diff:.3e} of max |value| {scale:.3e}");
    assert!(
        diff <= tol * scale,
        "{what}: max |diff| {diff:e} > {tol:e} × {scale:e}"
    );
}

fn check(m: &Llama, vocab: usize, tol: f32, what: &str) {
    let (b, t) = (3, 21);
    let x = ids(b, t, vocab);
    let cases: Vec<Vec<Range<usize>>> = vec![
        vec![15..21, 2..9, 20..21], // scoring: a continuation window per sequence
        vec![0..0, 4..5, 0..21],    // an empty window, one row, every row
        vec![20..21; 3],            // forward_last: one window for all
        vec![5..12; 3],             // one window for all, not at the end
    ];
    for windows in &cases {
        let want = full_rows(m, &x, None, windows);
        let got = values(&m.forward_hidden_rows(&x, None, windows).expect("rows"));
        assert_close(&got, &want, tol, &format!("{what}: windows {windows:?}"));
    }
    // After a prefix cached at batch 3: positions 9.. with the cache appended to, and the
    // cache afterwards the same as the full forward's.
    let prefix = ids(b, 9, vocab + 1);
    let mut c_full = KvCache::default();
    let mut c_rows = KvCache::default();
    m.forward_hidden(&prefix, Some(&mut c_full))
        .expect("prefix");
    m.forward_hidden(&prefix, Some(&mut c_rows))
        .expect("prefix");
    let windows = vec![3..7, 0..1, 6..12];
    let step = ids(b, 12, vocab);
    let want = full_rows(m, &step, Some(&mut c_full), &windows);
    let got = values(
        &m.forward_hidden_rows(&step, Some(&mut c_rows), &windows)
            .expect("rows after a prefix"),
    );
    assert_close(&got, &want, tol, &format!("{what}: after a cached prefix"));
    assert_eq!(c_rows.len(), 21);
    let next = ids(b, 2, vocab - 1);
    assert_close(
        &cache_values(&c_rows, &next, m),
        &cache_values(&c_full, &next, m),
        tol,
        &format!("{what}: the cache forward_hidden_rows appended"),
    );
    // forward_last is the last row's logits of the full forward.
    let last = values(&m.forward_last(&x, None).expect("forward_last"));
    let full = m.forward(&x, None).expect("forward");
    let full = values(&full.narrow(1, t - 1, 1).expect("narrow"));
    assert_close(&last, &full, tol, &format!("{what}: forward_last"));
    // No row wanted: nothing comes back, and the cache still gets every row.
    let mut c_none = KvCache::default();
    let mut c_all = KvCache::default();
    let none = m
        .forward_hidden_rows(&x, Some(&mut c_none), &[0..0, 3..3, 21..21])
        .expect("no rows");
    assert_eq!(none.dims(), &[0, m.config.hidden_size]);
    m.forward_hidden(&x, Some(&mut c_all)).expect("forward");
    assert_close(
        &cache_values(&c_none, &next, m),
        &cache_values(&c_all, &next, m),
        tol,
        &format!("{what}: the cache of a forward that wanted no row"),
    );
}

#[test]
fn rows_equal_the_full_forward_f32() {
    check(&fixture(DType::F32), 512, 2e-6, "fixture f32");
    check(&random_head_dim_64(DType::F32), 97, 2e-6, "head_dim 64 f32");
}

#[test]
fn rows_equal_the_full_forward_bf16() {
    check(&fixture(DType::BF16), 512, 1e-3, "fixture bf16");
    check(
        &random_head_dim_64(DType::BF16),
        97,
        1e-3,
        "head_dim 64 bf16",
    );
}

#[test]
fn windows_that_do_not_fit_are_an_error() {
    let m = fixture(DType::F32);
    let x = ids(2, 5, 512);
    // Past the end; one window for two sequences; start after end.
    #[allow(clippy::reversed_empty_ranges)]
    let cases: [Vec<Range<usize>>; 3] = [
        vec![0..6, 0..1],
        std::iter::once(0..1).collect(),
        vec![3..2, 0..1],
    ];
    for bad in cases {
        let err = m
            .forward_hidden_rows(&x, None, &bad)
            .expect_err("windows outside the batch");
        assert!(err.to_string().contains("do not fit"), "{err}");
    }
}
