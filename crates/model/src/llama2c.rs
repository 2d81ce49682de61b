//! Conversion of llama2.c checkpoints (`run.c` "legacy" version-0 `.bin` + `tokenizer.bin`)
//! into a Hugging Face LLaMA directory: `config.json`, `model.safetensors`, `tokenizer.json`,
//! `tokenizer_config.json`.
//!
//! Two layout quirks (see `data/models/stories260k/SOURCES.md`):
//! - llama2.c rotates adjacent pairs `(2i, 2i+1)` of each head; HF rotates halves. Rows of
//!   `wq`/`wk` are permuted as transformers' `convert_llama_weights_to_hf.py` `permute` does.
//! - `tokenizer.bin` stores SentencePiece pieces with `▁` already turned into a space and
//!   BOS/EOS as `"\n<s>\n"`/`"\n</s>\n"`; we undo both, then rebuild BPE merges from the piece
//!   scores exactly as transformers' `SentencePieceExtractor` does.
//!
//! Reference: <https://github.com/karpathy/llama2.c> `run.c`, `export.py`, `tokenizer.py`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// The 7-int header of a version-0 llama2.c checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub dim: usize,
    pub hidden_dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub vocab_size: usize,
    pub seq_len: usize,
    /// A positive vocab size in the file means the classifier shares the embedding.
    pub shared_classifier: bool,
}

/// A llama2.c checkpoint converted to HF names and layout.
pub struct Converted {
    pub header: Header,
    /// HF `config.json` contents.
    pub config: Value,
    /// HF-named tensors (f32, CPU).
    pub tensors: HashMap<String, Tensor>,
}

fn read_i32(bytes: &[u8], at: usize) -> i32 {
    i32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Parses a version-0 checkpoint; `path` only names it in errors.
pub fn convert_checkpoint(bytes: &[u8], path: &Path) -> Result<Converted> {
    let header = Header::parse(bytes, path)?;
    let sizes = header.array_sizes(path)?;
    let floats: Vec<f32> = bytes[28..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    if floats.len() < sizes.total {
        return Err(Error::format(
            path,
            format!(
                "truncated: the header implies {} float32 values, the file has {}",
                sizes.total,
                floats.len()
            ),
        ));
    }
    Ok(Converted {
        header,
        config: header.hf_config(),
        tensors: hf_tensors(&header, &sizes, &floats)?,
    })
}

const HEADER_FIELDS: [&str; 7] = [
    "dim",
    "hidden_dim",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "vocab_size",
    "seq_len",
];

/// The lengths of the float arrays `export.py` writes after the header, in file order.
struct ArraySizes {
    /// tok_embeddings, rms_att, wq, wk, wv, wo, rms_ffn, w1, w2, w3, rms_final, and the two
    /// unused freq_cis halves.
    arrays: [usize; 13],
    /// Everything the file must hold, the untied classifier included.
    total: usize,
}

impl Header {
    /// Reads and checks the 7-int header.
    fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        if bytes.len() < 28 {
            return Err(Error::format(
                path,
                "too short for a llama2.c header (28 bytes)",
            ));
        }
        if read_i32(bytes, 0) == 0x616b_3432 {
            return Err(Error::format(
                path,
                "a versioned llama2.c export (magic \"ak42\"); only the legacy version-0 format of run.c is supported",
            ));
        }
        let h: Vec<i32> = (0..7).map(|i| read_i32(bytes, 4 * i)).collect();
        for (v, name) in h.iter().zip(HEADER_FIELDS) {
            if *v == 0 || (*v < 0 && name != "vocab_size") {
                return Err(Error::format(
                    path,
                    format!("header field {name} = {v} is not a positive size"),
                ));
            }
        }
        let header = Header {
            dim: h[0] as usize,
            hidden_dim: h[1] as usize,
            n_layers: h[2] as usize,
            n_heads: h[3] as usize,
            n_kv_heads: h[4] as usize,
            vocab_size: h[5].unsigned_abs() as usize,
            seq_len: h[6] as usize,
            shared_classifier: h[5] > 0,
        };
        let (dim, n_heads, n_kv_heads) = (header.dim, header.n_heads, header.n_kv_heads);
        if dim % n_heads != 0 || n_heads % n_kv_heads != 0 || (dim / n_heads) % 2 != 0 {
            return Err(Error::format(
                path,
                format!(
                    "inconsistent heads: dim {dim}, n_heads {n_heads}, n_kv_heads {n_kv_heads}"
                ),
            ));
        }
        Ok(header)
    }

    fn head_dim(&self) -> usize {
        self.dim / self.n_heads
    }

    fn kv_dim(&self) -> usize {
        self.head_dim() * self.n_kv_heads
    }

    /// The array lengths the header implies. Checked arithmetic: a hostile header must not
    /// overflow into a small size that the file then seems to satisfy.
    fn array_sizes(&self, path: &Path) -> Result<ArraySizes> {
        let (dim, hid, l, v) = (self.dim, self.hidden_dim, self.n_layers, self.vocab_size);
        let (kv, half) = (self.kv_dim(), self.head_dim() / 2);
        let overflow = || Error::format(path, "header sizes overflow the address space");
        let mul = |xs: &[usize]| {
            xs.iter()
                .try_fold(1usize, |a, &x| a.checked_mul(x))
                .ok_or_else(overflow)
        };
        let arrays = [
            mul(&[v, dim])?,             // tok_embeddings
            mul(&[l, dim])?,             // rms_att
            mul(&[l, dim, dim])?,        // wq
            mul(&[l, kv, dim])?,         // wk
            mul(&[l, kv, dim])?,         // wv
            mul(&[l, dim, dim])?,        // wo
            mul(&[l, dim])?,             // rms_ffn
            mul(&[l, hid, dim])?,        // w1
            mul(&[l, dim, hid])?,        // w2
            mul(&[l, hid, dim])?,        // w3
            dim,                         // rms_final
            mul(&[self.seq_len, half])?, // freq_cis_real (unused)
            mul(&[self.seq_len, half])?, // freq_cis_imag (unused)
        ];
        let classifier = if self.shared_classifier { 0 } else { arrays[0] };
        let total = arrays
            .iter()
            .chain([&classifier])
            .try_fold(0usize, |a, &x| a.checked_add(x))
            .ok_or_else(overflow)?;
        Ok(ArraySizes { arrays, total })
    }

    /// transformers' `config.json` for the converted model.
    fn hf_config(&self) -> Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.dim,
            "intermediate_size": self.hidden_dim,
            "num_hidden_layers": self.n_layers,
            "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads,
            "vocab_size": self.vocab_size,
            "max_position_embeddings": self.seq_len,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": self.shared_classifier,
            "bos_token_id": 1,
            "eos_token_id": 2,
            "torch_dtype": "float32"
        })
    }
}

/// The checkpoint's arrays under HF names and shapes, RoPE rows permuted to rotate-half.
fn hf_tensors(h: &Header, sizes: &ArraySizes, floats: &[f32]) -> Result<HashMap<String, Tensor>> {
    let mut arrays = Vec::new();
    let mut at = 0;
    for s in sizes.arrays {
        arrays.push(&floats[at..at + s]);
        at += s;
    }
    let (dim, hid, v, kv_dim) = (h.dim, h.hidden_dim, h.vocab_size, h.kv_dim());
    let cpu = Device::Cpu;
    let mut tensors = HashMap::new();
    let mut put = |name: String, data: Vec<f32>, shape: &[usize]| -> Result<()> {
        tensors.insert(name, Tensor::from_vec(data, shape, &cpu)?);
        Ok(())
    };
    put(
        "model.embed_tokens.weight".into(),
        arrays[0].to_vec(),
        &[v, dim],
    )?;
    let layer = |a: &[f32], i: usize, n: usize| a[i * n..(i + 1) * n].to_vec();
    for i in 0..h.n_layers {
        let p = format!("model.layers.{i}");
        let q = permute_rope_rows(&layer(arrays[2], i, dim * dim), h.n_heads, dim);
        let k = permute_rope_rows(&layer(arrays[3], i, kv_dim * dim), h.n_kv_heads, dim);
        let norm_in = layer(arrays[1], i, dim);
        put(format!("{p}.input_layernorm.weight"), norm_in, &[dim])?;
        put(format!("{p}.self_attn.q_proj.weight"), q, &[dim, dim])?;
        put(format!("{p}.self_attn.k_proj.weight"), k, &[kv_dim, dim])?;
        let (wv, wo) = (
            layer(arrays[4], i, kv_dim * dim),
            layer(arrays[5], i, dim * dim),
        );
        put(format!("{p}.self_attn.v_proj.weight"), wv, &[kv_dim, dim])?;
        put(format!("{p}.self_attn.o_proj.weight"), wo, &[dim, dim])?;
        let norm_post = layer(arrays[6], i, dim);
        put(
            format!("{p}.post_attention_layernorm.weight"),
            norm_post,
            &[dim],
        )?;
        let gate = layer(arrays[7], i, hid * dim);
        put(format!("{p}.mlp.gate_proj.weight"), gate, &[hid, dim])?;
        let down = layer(arrays[8], i, dim * hid);
        put(format!("{p}.mlp.down_proj.weight"), down, &[dim, hid])?;
        let up = layer(arrays[9], i, hid * dim);
        put(format!("{p}.mlp.up_proj.weight"), up, &[hid, dim])?;
    }
    put("model.norm.weight".into(), arrays[10].to_vec(), &[dim])?;
    if !h.shared_classifier {
        let head = floats[at..at + v * dim].to_vec();
        put("lm_head.weight".into(), head, &[v, dim])?;
    }
    Ok(tensors)
}

/// Reorders the rows of a `[n_heads * head_dim, cols]` projection from adjacent-pair RoPE to
/// rotate-half RoPE: new row `h*hd + p*hd/2 + j` = old row `h*hd + 2j + p`.
fn permute_rope_rows(w: &[f32], n_heads: usize, cols: usize) -> Vec<f32> {
    let rows = w.len() / cols;
    let hd = rows / n_heads;
    let half = hd / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_heads {
        for j in 0..half {
            for p in 0..2 {
                let new = h * hd + p * half + j;
                let old = h * hd + 2 * j + p;
                out[new * cols..(new + 1) * cols].copy_from_slice(&w[old * cols..(old + 1) * cols]);
            }
        }
    }
    out
}

/// One SentencePiece piece from `tokenizer.bin`, restored to its proto spelling.
struct Piece {
    text: String,
    score: f32,
}

/// Reads `tokenizer.bin` (int32 max_len, then per token: f32 score, i32 len, bytes).
fn read_pieces(bytes: &[u8], vocab_size: usize, path: &Path) -> Result<Vec<Piece>> {
    let mut at = 4;
    let mut pieces = Vec::with_capacity(vocab_size);
    for id in 0..vocab_size {
        let truncated = || Error::format(path, format!("truncated at token {id} of {vocab_size}"));
        let head = bytes.get(at..at + 8).ok_or_else(truncated)?;
        let score = f32::from_le_bytes([head[0], head[1], head[2], head[3]]);
        let len = i32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let len = usize::try_from(len)
            .map_err(|_| Error::format(path, format!("token {id}: negative length {len}")))?;
        at += 8;
        let raw = bytes.get(at..at + len).ok_or_else(truncated)?;
        at += len;
        let raw = std::str::from_utf8(raw)
            .map_err(|_| Error::format(path, format!("token {id}: not UTF-8")))?;
        let text = match (id, raw) {
            (1, "\n<s>\n") => "<s>".to_string(),
            (2, "\n</s>\n") => "</s>".to_string(),
            _ => raw.replace(' ', "\u{2581}"),
        };
        pieces.push(Piece { text, score });
    }
    if at != bytes.len() {
        return Err(Error::format(
            path,
            format!(
                "{} bytes left after {vocab_size} tokens: does it belong to this checkpoint?",
                bytes.len() - at
            ),
        ));
    }
    Ok(pieces)
}

/// BPE merges from piece scores, as transformers' `SentencePieceExtractor.extract(vocab_scores)`
/// (v4.46): every split of every piece into two pieces, ordered by the merged piece's score
/// (descending, stable), ties by the ids of the parts.
fn merges(pieces: &[Piece]) -> Vec<(String, String)> {
    let id: HashMap<&str, usize> = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.text.as_str(), i))
        .collect();
    let mut all: Vec<(usize, usize, f32)> = Vec::new();
    for p in pieces {
        let mut local: Vec<(usize, usize, f32)> = p
            .text
            .char_indices()
            .skip(1)
            .filter_map(|(i, _)| {
                let (l, r) = p.text.split_at(i);
                Some((*id.get(l)?, *id.get(r)?, p.score))
            })
            .collect();
        local.sort_by_key(|&(l, r, _)| (l, r));
        all.extend(local);
    }
    // Python compares -0.0 == 0.0, so partial_cmp (not total_cmp) keeps the same order.
    all.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal));
    all.into_iter()
        .map(|(l, r, _)| (pieces[l].text.clone(), pieces[r].text.clone()))
        .collect()
}

/// Builds an HF `tokenizer.json` (LLaMA-2 "legacy" layout: Prepend+Replace normalizer, BPE
/// with byte fallback, BOS post-processor, Replace/ByteFallback/Fuse/Strip decoder).
pub fn convert_tokenizer(bytes: &[u8], vocab_size: usize, path: &Path) -> Result<Value> {
    let pieces = read_pieces(bytes, vocab_size, path)?;
    if pieces.len() < 3
        || pieces[0].text != "<unk>"
        || pieces[1].text != "<s>"
        || pieces[2].text != "</s>"
    {
        return Err(Error::format(
            path,
            "expected <unk>, <s>, </s> as tokens 0, 1, 2",
        ));
    }
    let vocab: serde_json::Map<String, Value> = pieces
        .iter()
        .enumerate()
        .map(|(i, p)| (p.text.clone(), json!(i)))
        .collect();
    let merges: Vec<Value> = merges(&pieces)
        .into_iter()
        .map(|(l, r)| json!([l, r]))
        .collect();
    let special = |id: usize, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false,
               "rstrip": false, "normalized": false, "special": true})
    };
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(0, "<unk>"), special(1, "<s>"), special(2, "</s>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u{2581}"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}
        ]},
        "pre_tokenizer": null,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": "<unk>",
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab, "merges": merges
        }
    }))
}

/// `tokenizer_config.json` for a converted llama2.c tokenizer (BOS added, as run.c does).
pub fn tokenizer_config(seq_len: usize) -> Value {
    json!({
        "tokenizer_class": "LlamaTokenizerFast",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": true,
        "add_eos_token": false,
        "legacy": true,
        "clean_up_tokenization_spaces": false,
        "model_max_length": seq_len
    })
}

/// Converts `bin` + `tok` into an HF directory at `out`, written to a temporary sibling and
/// renamed into place so that a failure leaves nothing half-written. Refuses to replace an
/// existing `out`.
pub fn convert_to_dir(bin: &Path, tok: &Path, out: &Path) -> Result<()> {
    if out.exists() {
        return Err(Error::format(
            out,
            "already exists; choose a new output directory",
        ));
    }
    let bin_bytes = std::fs::read(bin).map_err(|e| Error::io(bin, e))?;
    let tok_bytes = std::fs::read(tok).map_err(|e| Error::io(tok, e))?;
    let conv = convert_checkpoint(&bin_bytes, bin)?;
    let tokenizer = convert_tokenizer(&tok_bytes, conv.header.vocab_size, tok)?;
    let files = [
        ("config.json", conv.config.clone()),
        ("tokenizer.json", tokenizer),
        (
            "tokenizer_config.json",
            tokenizer_config(conv.header.seq_len),
        ),
    ];
    write_hf_dir(out, &files, &conv.tensors)
}

/// Writes JSON files and `model.safetensors` into a new directory `out`: into a temporary
/// sibling first, renamed into place at the end, so a failure (or a kill) never leaves a
/// half-written `out`. Refuses to replace an existing `out`.
pub fn write_hf_dir(
    out: &Path,
    json_files: &[(&str, Value)],
    tensors: &std::collections::HashMap<String, candle_core::Tensor>,
) -> Result<()> {
    if out.exists() {
        return Err(Error::format(
            out,
            "already exists; choose a new output directory",
        ));
    }
    if out.file_name().is_none() {
        return Err(Error::format(out, "not a directory name"));
    }
    sightline_guard::temp::remove_stale(out).map_err(|e| Error::io(out, e))?;
    let tmp = sightline_guard::temp::temp_path(out);
    let write = || -> Result<()> {
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        for (file, v) in json_files {
            let p = tmp.join(file);
            let text =
                serde_json::to_string_pretty(v).map_err(|e| Error::format(&p, e.to_string()))?;
            std::fs::write(&p, text).map_err(|e| Error::io(&p, e))?;
        }
        let st = tmp.join("model.safetensors");
        crate::weights::save_safetensors(tensors, &st)
            .map_err(|e| Error::format(&st, e.to_string()))?;
        std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))
    };
    let result = write();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_matches_transformers_permute() {
        // One head of dim 4, 1 column: rows [0,1,2,3] -> view(1, 2, 2, 1).transpose(1,2) -> [0,2,1,3].
        let w = vec![0.0, 1.0, 2.0, 3.0];
        assert_eq!(permute_rope_rows(&w, 1, 1), vec![0.0, 2.0, 1.0, 3.0]);
    }

    #[test]
    fn merges_follow_scores() {
        let p = |t: &str, s: f32| Piece {
            text: t.into(),
            score: s,
        };
        let pieces = vec![
            p("a", -3.0),
            p("b", -4.0),
            p("ab", -1.0),
            p("abb", -2.0),
            p("bb", -0.5),
        ];
        let m = merges(&pieces);
        assert_eq!(
            m,
            vec![
                ("b".into(), "b".into()),
                ("a".into(), "b".into()),
                ("a".into(), "bb".into()),
                ("ab".into(), "b".into())
            ]
        );
    }
}
