//! `--device`: `cpu`, `cuda` or `cuda:N`, opened with one error line a user can act on.
//!
//! Two things can be missing for CUDA, and the message says which: the build (a binary made
//! without the `cuda` feature — `scripts/cuda/build.sh` makes one) or the GPU (a CUDA build on
//! a machine whose driver finds no device). A CUDA build on a machine without the NVIDIA driver
//! cannot start at all (the driver library is linked); its launcher says so instead.

use candle_core::Device;

use crate::error::{Error, Result};

/// Whether this binary was built with the `cuda` feature.
pub const CUDA_BUILT: bool = cfg!(feature = "cuda");

/// Opens the device `spec` names.
pub fn open_device(spec: &str) -> Result<Device> {
    let ordinal = match spec {
        "cpu" => return Ok(Device::Cpu),
        "cuda" => 0,
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => {
                return Err(Error::Config(format!(
                    "--device `{spec}`: expected cpu, cuda or cuda:N (N the GPU's index)"
                )))
            }
        },
    };
    if !CUDA_BUILT {
        return Err(Error::Unsupported(format!(
            "--device {spec}: this sightline was built without CUDA (no GPU code in this binary); \
             build the CUDA one with scripts/cuda/build.sh, or use --device cpu"
        )));
    }
    Device::new_cuda(ordinal).map_err(|e| {
        Error::Unsupported(format!(
            "--device {spec}: this is the CUDA build, but no usable GPU {ordinal} was found \
             ({})",
            one_line(&e.to_string())
        ))
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_opens_and_bad_names_are_refused() {
        assert!(open_device("cpu").unwrap().is_cpu());
        for bad in ["gpu", "cuda:x", "cuda:", "CPU", "cuda:-1"] {
            let e = open_device(bad).unwrap_err().to_string();
            assert!(e.contains("expected cpu, cuda or cuda:N"), "{bad}: {e}");
        }
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_cpu_build_says_it_has_no_cuda() {
        for spec in ["cuda", "cuda:1"] {
            let e = open_device(spec).unwrap_err().to_string();
            assert!(e.contains("built without CUDA"), "{e}");
            assert!(e.contains("scripts/cuda/build.sh"), "{e}");
            assert!(!e.contains('\n'));
        }
    }
}
