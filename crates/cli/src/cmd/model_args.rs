//! `--model` / `--adapter` / `--dtype` / `--device` and the LLaVA flags (`--vision-tower`,
//! `--mm-projector`, `--image-aspect-ratio`), shared by every command that runs a model.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use candle_core::DType;
use clap::Args;
use serde::{Deserialize, Serialize};
use sightline_model::{load, open_device, resolve_dtype, LoadOptions, LoadedModel, DEFAULT_MODEL};
use sightline_vision::llava::{Llava, LlavaOptions};
use sightline_vision::preprocess::AspectMode;

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct ModelArgs {
    /// HF model directory (LLaMA, original-layout LLaVA or llava-hf), Hub id
    /// (`org/name[@revision]`, from the Hub cache or downloaded into it), or
    /// `builtin:stories260k` (compiled in).
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// PEFT LoRA adapter directory or Hub id (adapter_config.json + adapter_model.safetensors
    /// or .bin), applied unmerged on top of --model, as lm-eval's `peft=` does.
    #[arg(long, value_name = "DIR|ID")]
    pub adapter: Option<PathBuf>,
    /// Weight and activation dtype: auto, f32, bf16 or f16. `auto` (lm-eval's default) is the
    /// checkpoint's `torch_dtype` where this machine computes it fast: bf16 on a CPU with a
    /// bf16 GEMM (AVX512-BF16), f32 for an f16 checkpoint on a CPU (exact), f32 when absent.
    /// A dtype whose weights cannot fit in memory is refused before loading.
    #[arg(long, default_value = "auto")]
    pub dtype: String,
    /// cpu, or cuda / cuda:N in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// CLIP vision tower directory or Hub id for an original-layout LLaVA checkpoint
    /// (overrides its config's `mm_vision_tower`, itself a directory or Hub id).
    #[arg(long, value_name = "DIR|ID")]
    pub vision_tower: Option<PathBuf>,
    /// A stage-1 projector (`mm_projector.bin` / `.safetensors`, with its run's config.json
    /// beside it), or a Hub id whose repository holds one, to apply on top of a text LLM given
    /// as --model.
    #[arg(long, value_name = "FILE|ID")]
    pub mm_projector: Option<PathBuf>,
    /// Override the checkpoint's `image_aspect_ratio`: `square` (resize + center crop) or
    /// `pad` (LLaVA's expand2square with the CLIP mean colour first).
    #[arg(long, value_name = "MODE")]
    pub image_aspect_ratio: Option<String>,
    /// `--dtype` as resolved, once per process: the cache key, `results.json` and the load
    /// all use the same decision, even if free memory changes between them.
    #[arg(skip)]
    #[serde(skip)]
    resolved_dtype: std::sync::OnceLock<DType>,
}

impl ModelArgs {
    /// The dtype the model loads in: `--dtype`, with `auto` resolved for this checkpoint and
    /// machine, after the memory check (see `sightline_model::dtype`).
    pub fn dtype(&self) -> Result<DType> {
        if let Some(d) = self.resolved_dtype.get() {
            return Ok(*d);
        }
        let device = open_device(&self.device)?;
        let d = resolve_dtype(&self.dtype, &self.model, &device)?;
        Ok(*self.resolved_dtype.get_or_init(|| d))
    }

    fn options(&self) -> Result<LoadOptions> {
        let device = open_device(&self.device)?;
        Ok(LoadOptions {
            dtype: self.dtype()?,
            device,
            adapter: self.adapter.clone(),
        })
    }

    /// The decoder alone (a LLaVA checkpoint's LLM for text-only work).
    pub fn load(&self) -> Result<LoadedModel> {
        if self.mm_projector.is_some() || self.vision_tower.is_some() {
            bail!("--mm-projector and --vision-tower only apply to image inputs (--image, or requests with an `image` field)");
        }
        Ok(load(&self.model, &self.options()?)?)
    }

    /// Whether the model takes images: a LLaVA checkpoint, or --mm-projector.
    pub fn is_multimodal(&self) -> Result<bool> {
        if self.mm_projector.is_some() {
            return Ok(true);
        }
        if self.model.starts_with("builtin:") {
            return Ok(false);
        }
        // An API model: chat messages can carry images (whether this endpoint's model reads
        // them is the server's to say); the completions endpoint takes text only.
        if let Some((kind, _)) = sightline_openai::api_lm::ApiKind::parse(&self.model) {
            return Ok(kind == sightline_openai::api_lm::ApiKind::Chat);
        }
        Ok(sightline_vision::llava::is_llava_dir(Path::new(
            &self.model,
        ))?)
    }

    /// The vision-language model.
    pub fn load_llava(&self) -> Result<Llava> {
        if self.model.starts_with("builtin:") {
            bail!(
                "{} is a text-only model: images need a LLaVA checkpoint, or --mm-projector (and --vision-tower) on a LLaMA one",
                self.model
            );
        }
        let aspect = match self.image_aspect_ratio.as_deref() {
            None => None,
            Some(s) => Some(AspectMode::parse(s).ok_or_else(|| {
                anyhow::anyhow!("--image-aspect-ratio `{s}` (expected square or pad)")
            })?),
        };
        let opts = LlavaOptions {
            base: self.options()?,
            vision_tower: self.vision_tower.clone(),
            mm_projector: self.mm_projector.clone(),
            aspect,
        };
        Ok(Llava::load(Path::new(&self.model), &opts)?)
    }
}

/// For a command that has loaded its model and now runs it over many batches (`score`,
/// `eval`): from here on mimalloc keeps freed memory for reuse (`sightline_train::alloc`).
/// Each batch frees and reallocates activation buffers of tens of MB; returned to the OS, they
/// are faulted in and zeroed again by the kernel on the next batch (TinyLlama-1.1B-shaped f32
/// scoring, 20 TruthfulQA requests: 145–189 k page faults and 3.5–10 s of system time against
/// 67 k and 1.6–4 s kept). What loading freed (conversion buffers) is handed back first: kept
/// as well, it raised the TinyLlama shape's bf16 peak RSS by 4–5%; handed back, the rise from
/// keeping memory between batches is 2–3% there and about 1% in f32.
pub fn keep_freed_memory_from_now() {
    sightline_train::alloc::return_freed_memory();
    sightline_train::alloc::keep_freed_memory();
}
