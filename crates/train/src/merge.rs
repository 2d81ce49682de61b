//! `sightline merge-lora`: folds a PEFT LoRA adapter into its base model
//! (`W ← W + scaling · B·A` for every adapted linear layer, what PEFT's `merge_and_unload` and
//! LLaVA's `builder.py` do) and writes an HF checkpoint. Before the result is put in place, the
//! merged model and the unmerged base + adapter run the same probe inputs; if any logit differs
//! by more than the tolerance the merge is refused and nothing is written.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sightline_model::hub::Need;
use sightline_model::lora::LoraAdapter;
use sightline_model::{LoadOptions, Weights};

use crate::checkpoint::{copy_base_files, temp_dir_for, write_tensors, COPIED_FILES};
use crate::error::{Error, Result};

/// What the merge did.
#[derive(Debug, Clone)]
pub struct MergeReport {
    /// Linear layers that received their update.
    pub modules: usize,
    /// Largest |merged − unmerged| logit on the probes.
    pub max_logit_diff: f32,
    pub probe_tokens: usize,
    pub output: PathBuf,
}

/// Probe texts run through both models (any text works; these cover a few token kinds).
const PROBES: &[&str] = &[
    "Once upon a time, there was a little girl named Lily.",
    "Q: What is the capital of France?\nA: Paris",
    "1, 2, 3, 4, 5 ... and the sky is blue!",
];

/// Merges `adapter` into the model at `base` and writes the result to `out` (which must not
/// exist). `tolerance` bounds the logit difference (the 1e-4). The result is written
/// into `.<out>.tmp-<pid>` and renamed when checked: a kill or a full disk never leaves a
/// half-written `out`, and the next merge to `out` removes the temporary a killed one left.
pub fn merge_lora(base: &Path, adapter: &Path, out: &Path, tolerance: f32) -> Result<MergeReport> {
    if out.exists() {
        return Err(Error::Config(format!(
            "{} already exists (merge-lora writes a new directory and never overwrites)",
            out.display()
        )));
    }
    // Either may be a Hub id (`sightline_model::hub`); from here on both are directories.
    let base = &sightline_model::hub::resolve_path(base, Need::Model)?.path;
    let adapter = &sightline_model::hub::resolve_path(adapter, Need::Adapter)?.path;
    let dev = Device::Cpu;
    let config_path = base.join("config.json");
    let (layout, cfg, _) = sightline_model::config::read_checkpoint_config(&config_path)?;
    if layout.decoder_prefix() != "" {
        return Err(Error::Config(format!(
            "{}: merge-lora merges into a text LLaMA checkpoint (the base the adapter was \
             trained on), not a LLaVA one",
            config_path.display()
        )));
    }
    let lora = LoraAdapter::from_dir(adapter)?;
    let deltas = lora.bind(&cfg, &dev)?;
    let weights = Weights::from_dir(base, DType::F32, &dev)?;
    let mut merged: HashMap<String, Tensor> = HashMap::new();
    for name in weights.names() {
        let w = weights.get_any_shape(&name)?;
        let module = name.strip_suffix(".weight").unwrap_or(&name);
        let t = match deltas.get(module) {
            // ΔW = scaling · B·A, as the unmerged layer adds it (see `LoraLayer::delta_weight`).
            Some(delta) => (w + delta.delta_weight()?)?,
            None => w,
        };
        merged.insert(name, t);
    }
    let tmp = temp_dir_for(out)?;
    let result = (|| -> Result<(f32, usize)> {
        write_tensors(&merged, &tmp.join("model.safetensors"))?;
        copy_base_files(base, &tmp, COPIED_FILES)?;
        probe_diff(base, adapter, &tmp)
    })();
    match result {
        Ok((diff, tokens)) if diff <= tolerance => {
            std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
            Ok(MergeReport {
                modules: deltas.len(),
                max_logit_diff: diff,
                probe_tokens: tokens,
                output: out.to_path_buf(),
            })
        }
        Ok((diff, _)) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(Error::Config(format!(
                "merged and unmerged logits differ by {diff:.3e} on the probe inputs (limit \
                 {tolerance:.0e}); nothing was written"
            )))
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e.renamed(&tmp, out))
        }
    }
}

/// Max |logit| difference between `merged` and `base` + `adapter` on [`PROBES`].
fn probe_diff(base: &Path, adapter: &Path, merged: &Path) -> Result<(f32, usize)> {
    let path = |p: &Path| p.display().to_string();
    let unmerged = sightline_model::load(
        &path(base),
        &LoadOptions {
            adapter: Some(adapter.to_path_buf()),
            ..Default::default()
        },
    )?;
    let merged = sightline_model::load(&path(merged), &LoadOptions::default())?;
    let (mut max, mut tokens) = (0f32, 0);
    for text in PROBES {
        let ids = unmerged.tokenizer.encode_prompt(text)?;
        let max_pos = unmerged.model.config.max_position_embeddings;
        let ids: Vec<u32> = ids.into_iter().take(max_pos).collect();
        tokens += ids.len();
        let ids = Tensor::from_vec(ids.clone(), (1, ids.len()), &Device::Cpu)?;
        let a = unmerged.model.forward(&ids, None)?;
        let b = merged.model.forward(&ids, None)?;
        let d = (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        max = max.max(d);
    }
    Ok((max, tokens))
}
