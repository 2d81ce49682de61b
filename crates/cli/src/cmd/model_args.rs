//! `--model` / `--adapter` / `--dtype` / `--device`, shared by every command that runs a model.

use std::path::PathBuf;

use anyhow::{bail, Result};
use candle_core::Device;
use clap::Args;
use sightline_model::{load, parse_dtype, LoadOptions, LoadedModel, DEFAULT_MODEL};

#[derive(Args, Debug, Clone)]
pub struct ModelArgs {
    /// HF model directory, or `builtin:stories260k` (compiled in).
    #[arg(long, default_value = DEFAULT_MODEL)]
    pub model: String,
    /// PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors or .bin),
    /// applied unmerged on top of --model, as lm-eval's `peft=` does.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    /// Weight and activation dtype: f32, bf16 or f16. f32 is the fast path on CPU.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// cpu, or cuda / cuda:N in a build with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl ModelArgs {
    pub fn load(&self) -> Result<LoadedModel> {
        let device = match self.device.as_str() {
            "cpu" => Device::Cpu,
            d if d.starts_with("cuda") => {
                let ordinal = d
                    .strip_prefix("cuda:")
                    .map(str::parse)
                    .transpose()?
                    .unwrap_or(0);
                Device::new_cuda(ordinal)?
            }
            other => bail!("unknown device `{other}` (expected cpu, cuda or cuda:N)"),
        };
        let opts = LoadOptions {
            dtype: parse_dtype(&self.dtype)?,
            device,
            adapter: self.adapter.clone(),
        };
        Ok(load(&self.model, &opts)?)
    }
}
