//! Models by Hugging Face Hub id, from a Hub cache built out of the committed fixtures (layout in
//! `common/hub_cache.rs`) with `HF_HUB_CACHE` pointing at it and `HF_HUB_OFFLINE=1`: no test
//! touches the network. A model by id must load to the same logits as by path, at a branch, a
//! tag or a commit; an adapter by id must give the same scores; what is not cached is one line
//! naming repository, revision, file and cache.

#[path = "common/hub_cache.rs"]
mod hub_cache;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use hub_cache::{commit, HubCache};
use sightline_model::hub::{self, HubEnv, Need};
use sightline_model::score::{score, Request, ScoreOptions};
use sightline_model::{load, LoadOptions, LoadedModel};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

const MHA: &str = "sightline-test/tiny-mha-tied";
const GQA: &str = "sightline-test/tiny-gqa-untied";
const BIN: &str = "sightline-test/tiny-llama3-bin";
const LORA: &str = "sightline-test/tiny-gqa-untied-lora-r4";
/// One repository with two revisions: `main` (and tag `v1`) = the MHA model, branch `gqa` =
/// the GQA model.
const TWO: &str = "sightline-test/two-revisions";

/// The cache every test in this binary shares. The process environment is set once, here,
/// before any test reads it (every test wants the same values).
fn cache() -> &'static HubCache {
    static CACHE: OnceLock<(tempfile::TempDir, HubCache)> = OnceLock::new();
    &CACHE
        .get_or_init(|| {
            let tmp = tempfile::tempdir().expect("tempdir");
            let c = HubCache::new(&tmp.path().join("hub"));
            let llama = fixtures().join("llama");
            for (repo, dir) in [
                (MHA, llama.join("tiny-mha-tied")),
                (GQA, llama.join("tiny-gqa-untied")),
                (BIN, llama.join("tiny-llama3-bin")),
                (LORA, fixtures().join("lora/tiny-gqa-untied-lora-r4")),
            ] {
                c.put(repo, &commit(repo), &dir, &[]);
                c.set_ref(repo, "main", &commit(repo));
            }
            let (a, b) = (commit("two/a"), commit("two/b"));
            c.put(TWO, &a, &llama.join("tiny-mha-tied"), &[]);
            c.put(TWO, &b, &llama.join("tiny-gqa-untied"), &[]);
            c.set_ref(TWO, "main", &a);
            c.set_ref(TWO, "v1", &a);
            c.set_ref(TWO, "gqa", &b);
            // SAFETY (edition 2021: safe fn): set once, before any test of this binary reads.
            std::env::set_var("HF_HUB_CACHE", &c.dir);
            std::env::set_var("HF_HUB_OFFLINE", "1");
            std::env::remove_var("TRANSFORMERS_CACHE");
            (tmp, c)
        })
        .1
}

fn load_spec(spec: &str) -> LoadedModel {
    cache();
    load(spec, &LoadOptions::default()).unwrap_or_else(|e| panic!("{spec}: {e}"))
}

/// Logits of a fixed prompt, flattened.
fn logits(m: &LoadedModel) -> Vec<f32> {
    let ids = m
        .tokenizer
        .encode_prompt("Once upon a time")
        .expect("encode");
    let ids = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu).expect("ids");
    let out = m.model.forward(&ids, None).expect("forward");
    out.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("logits")
}

#[test]
fn a_model_by_id_gives_the_logits_it_gives_by_path() {
    for (repo, dir) in [
        (MHA, "tiny-mha-tied"),
        (GQA, "tiny-gqa-untied"), // sharded: index + five shards
        (BIN, "tiny-llama3-bin"), // pytorch_model.bin
    ] {
        let by_id = load_spec(repo);
        assert_eq!(by_id.spec, repo, "the spec is kept as given");
        let by_path = load_spec(&fixtures().join("llama").join(dir).display().to_string());
        assert_eq!(logits(&by_id), logits(&by_path), "{repo}");
    }
}

#[test]
fn revisions_by_branch_tag_and_commit() {
    let mha = logits(&load_spec(MHA));
    let gqa = logits(&load_spec(GQA));
    assert_ne!(mha, gqa);
    for (spec, want) in [
        (TWO.to_string(), &mha),
        (format!("{TWO}@main"), &mha),
        (format!("{TWO}@v1"), &mha),
        (format!("{TWO}@gqa"), &gqa),
        (format!("{TWO}@{}", commit("two/b")), &gqa),
        (format!("{TWO}@{}", commit("two/a")), &mha),
    ] {
        assert_eq!(&logits(&load_spec(&spec)), want, "{spec}");
    }
    let r = hub::resolve(&format!("{TWO}@gqa"), Need::Model).expect("resolves");
    let h = r.hub.as_ref().expect("a Hub source");
    assert_eq!(
        (h.revision.as_str(), h.commit.as_str()),
        ("gqa", commit("two/b").as_str())
    );
    assert_eq!(r.path, cache().snapshot(TWO, &commit("two/b")));
    assert_eq!(
        hub::identity(&format!("{TWO}@gqa")),
        format!("{TWO}@{}", commit("two/b"))
    );
    assert_eq!(hub::identity("builtin:stories260k"), "builtin:stories260k");
}

#[test]
fn an_adapter_by_id_scores_as_by_path() {
    cache();
    let reqs = vec![Request {
        context: "Once upon a time".into(),
        continuation: " there was".into(),
    }];
    let run = |adapter: PathBuf| {
        let m = load(
            GQA,
            &LoadOptions {
                adapter: Some(adapter),
                ..Default::default()
            },
        )
        .expect("loads");
        score(
            &m.model,
            &m.tokenizer,
            &reqs,
            &ScoreOptions::default(),
            &mut |_, _| {},
        )
        .expect("scores")[0]
            .logprob
    };
    let by_id = run(PathBuf::from(LORA));
    let by_path = run(fixtures().join("lora/tiny-gqa-untied-lora-r4"));
    assert_eq!(by_id, by_path);
    let base = score(
        &load_spec(GQA).model,
        &load_spec(GQA).tokenizer,
        &reqs,
        &ScoreOptions::default(),
        &mut |_, _| {},
    )
    .expect("scores")[0]
        .logprob;
    assert_ne!(by_id, base, "the adapter changes the scores");
}

fn offline_env() -> HubEnv {
    HubEnv {
        cache_dir: cache().dir.clone(),
        offline: true,
        endpoint: "https://huggingface.co".into(),
        token: None,
    }
}

/// The error of resolving `spec`, checked to be one line naming every `needle`.
fn error_line(spec: &str, need: Need, env: &HubEnv, needles: &[&str]) -> String {
    let e = hub::resolve_with(spec, need, env)
        .expect_err("must fail")
        .to_string();
    assert!(!e.contains('\n'), "one line: {e}");
    for n in needles {
        assert!(e.contains(n), "`{n}` missing from: {e}");
    }
    e
}

#[test]
fn offline_without_a_cached_copy_is_one_line_naming_repo_revision_file_and_cache() {
    let env = offline_env();
    let cache_dir = env.cache_dir.display().to_string();
    error_line(
        "meta-llama/Llama-2-7b-hf",
        Need::Model,
        &env,
        &[
            "meta-llama/Llama-2-7b-hf",
            "revision main",
            &cache_dir,
            "refs/main",
            "HF_HUB_OFFLINE",
        ],
    );
    error_line(
        &format!("{TWO}@nope"),
        Need::Model,
        &env,
        &[TWO, "revision nope", "refs/nope", "HF_HUB_OFFLINE"],
    );

    // Snapshots missing a file: the tokenizer, a shard of an index, the adapter weights.
    let c = cache();
    let llama = fixtures().join("llama");
    let partial = "sightline-test/partial";
    c.put(
        partial,
        &commit("p1"),
        &llama.join("tiny-mha-tied"),
        &["config.json", "model.safetensors"],
    );
    c.set_ref(partial, "main", &commit("p1"));
    let gqa = llama.join("tiny-gqa-untied");
    c.put(
        partial,
        &commit("p2"),
        &gqa,
        &[
            "config.json",
            "tokenizer.json",
            "model.safetensors.index.json",
            "model-00001-of-00005.safetensors",
        ],
    );
    c.set_ref(partial, "shards", &commit("p2"));
    c.put(
        partial,
        &commit("p3"),
        &fixtures().join("lora/tiny-gqa-untied-lora-r4"),
        &["adapter_config.json"],
    );
    c.set_ref(partial, "adapter", &commit("p3"));
    error_line(
        partial,
        Need::Model,
        &env,
        &[
            partial,
            "revision main",
            "tokenizer.json",
            &cache_dir,
            "HF_HUB_OFFLINE",
        ],
    );
    error_line(
        &format!("{partial}@shards"),
        Need::Model,
        &env,
        &[
            "revision shards",
            "model-00002-of-00005.safetensors",
            &commit("p2"),
        ],
    );
    error_line(
        &format!("{partial}@adapter"),
        Need::Adapter,
        &env,
        &["adapter_model.safetensors"],
    );
    // The tokenizer alone is there for `data` commands.
    assert!(hub::resolve_with(partial, Need::Tokenizer, &env).is_err());
    assert!(hub::resolve_with(&format!("{partial}@shards"), Need::Tokenizer, &env).is_ok());

    // Neither a path nor an id.
    error_line(
        "/no/such/model",
        Need::Model,
        &env,
        &["/no/such/model", "not a Hub model id"],
    );
}

#[test]
fn a_failed_download_is_one_line_naming_the_endpoint() {
    // A closed port on the loopback interface: refused at once, nothing leaves the machine.
    let env = HubEnv {
        offline: false,
        endpoint: "http://127.0.0.1:9".into(),
        ..offline_env()
    };
    error_line(
        "meta-llama/Llama-2-7b-hf",
        Need::Model,
        &env,
        &[
            "meta-llama/Llama-2-7b-hf",
            "revision main",
            "download failed",
            "http://127.0.0.1:9",
        ],
    );
}

#[test]
fn a_local_path_wins_and_is_returned_as_given() {
    let p = fixtures().join("llama/tiny-mha-tied");
    let r = hub::resolve_path(&p, Need::Model).expect("local");
    assert_eq!((r.path.as_path(), r.hub.as_ref()), (p.as_path(), None));
    assert_eq!(r.identity("x"), "x");
}
