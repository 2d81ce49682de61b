//! `--dtype auto` and the memory check every dtype passes before a model is loaded.
//!
//! `auto` is lm-eval's `dtype="auto"`: the checkpoint's `torch_dtype`, with one difference on a
//! CPU, where the fast dtype depends on the instructions the CPU has:
//! - a **bf16** checkpoint computes in bf16 when this CPU has a bf16 GEMM
//!   ([`sightline_kernels::gemm_bf16::Bf16Gemm`]), else in f32 (exact; candle's bf16 without that
//!   kernel is slower than f32) when that fits in memory;
//! - an **f16** checkpoint computes in f32 (exact: every f16 is an f32) when that fits, else in
//!   bf16 (each weight loses 3 significand bits: expect log-likelihoods to move in the third
//!   digit) — candle has no fast f16 path on a CPU;
//! - **f32**, or no `torch_dtype`: f32.
//!
//! On CUDA `auto` is the checkpoint's dtype as it is.
//!
//! The memory check: the weights' size in the chosen dtype is estimated from the weight files
//! (their bytes over the stored dtype's width) and compared with the memory the kernel says is
//! available; a load that cannot fit is refused in one line naming a `--dtype` that fits, before
//! anything is allocated. `SIGHTLINE_NO_MEMORY_CHECK=1` skips it.

use std::path::Path;

use candle_core::{DType, Device};
use sightline_kernels::gemm_bf16::Bf16Gemm;

use crate::error::{Error, Result};
use crate::{hub, parse_dtype};

/// The dtype to load `spec` in for the `--dtype` value `requested` (`auto` or a dtype name),
/// after the memory check. Builtin models are f32 and small: no check.
pub fn resolve_dtype(requested: &str, spec: &str, device: &Device) -> Result<DType> {
    let explicit = match requested {
        "auto" => None,
        other => Some(parse_dtype(other)?),
    };
    if spec.starts_with("builtin:") {
        return Ok(explicit.unwrap_or(DType::F32));
    }
    let resolved = hub::resolve(spec, hub::Need::Model)?;
    let dir = resolved.path.as_path();
    let stored = checkpoint_dtype(&dir.join("config.json"))?;
    let weights = weight_bytes(dir);
    let fits = |dtype: DType| {
        fits_in_memory(
            dtype_bytes(weights, stored, dtype),
            device,
            available_memory(),
        )
    };
    let chosen = match explicit {
        Some(d) => d,
        None if !device.is_cpu() => stored.unwrap_or(DType::F32),
        None => {
            let fast_bf16 = Bf16Gemm::detect().is_available();
            match stored {
                Some(DType::BF16) if fast_bf16 || !fits(DType::F32) => DType::BF16,
                Some(DType::F16) if !fits(DType::F32) => {
                    if fast_bf16 {
                        DType::BF16
                    } else {
                        DType::F16
                    }
                }
                _ => DType::F32,
            }
        }
    };
    if !fits(chosen) && std::env::var_os("SIGHTLINE_NO_MEMORY_CHECK").is_none() {
        return Err(too_big(dir, weights, stored, chosen));
    }
    Ok(chosen)
}

/// The one-line refusal: what the chosen dtype needs, what is available, and the smallest
/// dtype that fits (if any).
fn too_big(dir: &Path, weights: u64, stored: Option<DType>, chosen: DType) -> Error {
    let gb = |b: u64| b as f64 / 1e9;
    let avail = available_memory().unwrap_or(0);
    let need = dtype_bytes(weights, stored, chosen);
    let hint = [DType::BF16, DType::F16]
        .into_iter()
        .find(|d| dtype_bytes(weights, stored, *d) < need)
        .map(|d| {
            let name = dtype_name(d);
            let fits = if fits_in_memory(dtype_bytes(weights, stored, d), &Device::Cpu, Some(avail))
            {
                "fits"
            } else {
                "does not fit either"
            };
            format!(
                "; --dtype {name} needs {:.1} GB ({fits})",
                gb(dtype_bytes(weights, stored, d))
            )
        })
        .unwrap_or_default();
    Error::format(
        dir,
        format!(
            "the weights need {:.1} GB in {} but {:.1} GB of memory is available{hint} (SIGHTLINE_NO_MEMORY_CHECK=1 to try anyway)",
            gb(need),
            dtype_name(chosen),
            gb(avail)
        ),
    )
}

/// `f32`, `bf16`, `f16`: the `--dtype` spelling of a dtype.
pub fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        _ => "f32",
    }
}

/// The checkpoint's `torch_dtype` (top level, or a llava-hf `text_config`'s); `None` when
/// absent or not a float type sightline computes in.
pub fn checkpoint_dtype(config: &Path) -> Result<Option<DType>> {
    let text = match std::fs::read_to_string(config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(config, e)),
    };
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::format(config, format!("not JSON: {e}")))?;
    let field = json
        .get("torch_dtype")
        .or_else(|| json.get("text_config").and_then(|t| t.get("torch_dtype")))
        .and_then(|v| v.as_str());
    Ok(field.and_then(|s| parse_dtype(s).ok()))
}

/// Bytes of the weight files in `dir` (safetensors if any, else PyTorch `.bin`).
fn weight_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let (mut st, mut bin) = (0u64, 0u64);
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let size = e.metadata().map(|m| m.len()).unwrap_or(0);
        if name.starts_with("model") && name.ends_with(".safetensors") {
            st += size;
        } else if name.starts_with("pytorch_model") && name.ends_with(".bin") {
            bin += size;
        }
    }
    if st > 0 {
        st
    } else {
        bin
    }
}

/// The weights' bytes once converted to `to` (files stored in `stored`, f32 if unknown).
fn dtype_bytes(file_bytes: u64, stored: Option<DType>, to: DType) -> u64 {
    let from = stored.unwrap_or(DType::F32).size_in_bytes() as u64;
    file_bytes / from * to.size_in_bytes() as u64
}

/// Whether `need` bytes fit in 90% of the available memory (always true on a GPU, whose
/// memory this check does not see, and where the kernel does not say).
fn fits_in_memory(need: u64, device: &Device, available: Option<u64>) -> bool {
    match (device.is_cpu(), available) {
        (true, Some(avail)) => need <= avail / 10 * 9,
        _ => true,
    }
}

/// `MemAvailable` of `/proc/meminfo`, in bytes (Linux); `None` elsewhere.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_scale_with_the_dtype_width() {
        assert_eq!(dtype_bytes(1000, Some(DType::BF16), DType::F32), 2000);
        assert_eq!(dtype_bytes(1000, Some(DType::F32), DType::BF16), 500);
        assert_eq!(dtype_bytes(1000, None, DType::F32), 1000);
    }

    #[test]
    fn memory_check_uses_ninety_percent() {
        assert!(fits_in_memory(90, &Device::Cpu, Some(100)));
        assert!(!fits_in_memory(91, &Device::Cpu, Some(100)));
        assert!(fits_in_memory(u64::MAX, &Device::Cpu, None));
    }

    #[test]
    fn torch_dtype_is_read_from_the_top_or_the_text_config() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let p = dir.path().join("config.json");
        let write = |s: &str| std::fs::write(&p, s).map_err(|e| Error::io(&p, e));
        write(r#"{"torch_dtype": "bfloat16"}"#)?;
        assert_eq!(checkpoint_dtype(&p)?, Some(DType::BF16));
        write(r#"{"text_config": {"torch_dtype": "float16"}}"#)?;
        assert_eq!(checkpoint_dtype(&p)?, Some(DType::F16));
        write(r#"{"model_type": "llama"}"#)?;
        assert_eq!(checkpoint_dtype(&p)?, None);
        assert_eq!(checkpoint_dtype(&dir.path().join("absent.json"))?, None);
        Ok(())
    }
}
