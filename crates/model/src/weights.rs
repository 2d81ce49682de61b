//! Checkpoint tensors by name, from every layout HF writes: `model.safetensors`, sharded
//! safetensors with `model.safetensors.index.json`, legacy `pytorch_model*.bin` pickles, or
//! tensors already in memory (a converted llama2.c checkpoint).
//!
//! Every lookup checks the tensor's presence and shape first, so a broken checkpoint fails with
//! the file and tensor named instead of a shape error deep inside a matmul.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

enum Backend {
    /// One mmapped safetensors file per shard; `routing` maps tensor name -> shard.
    Safetensors {
        shards: Vec<(PathBuf, MmapedSafetensors)>,
        routing: HashMap<String, usize>,
    },
    /// PyTorch pickles, loaded eagerly (legacy checkpoints only; they are not mmappable).
    Memory {
        tensors: HashMap<String, (PathBuf, Tensor)>,
    },
}

/// Writes `tensors` as a safetensors file with the header metadata `{"format": "pt"}`, as
/// `safetensors.torch.save_file` and transformers' `save_pretrained` write it. transformers
/// 4.46's `from_pretrained` reads that field unconditionally (`metadata.get("format")`) and
/// fails with `'NoneType' object has no attribute 'get'` on a file without metadata, which is
/// what candle's own `safetensors::save` writes.
pub fn save_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> candle_core::Result<()> {
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    Ok(safetensors::serialize_to_file(tensors, Some(meta), path)?)
}

/// Read-only access to a checkpoint's tensors, with a key prefix (`pp`) like candle's
/// `VarBuilder`, so model code mirrors HF key paths.
#[derive(Clone)]
pub struct Weights {
    backend: Arc<Backend>,
    /// What error messages call the checkpoint when a tensor is absent (the index file or dir).
    origin: Arc<PathBuf>,
    prefix: String,
    /// Tensors that replace (or add to) the checkpoint's, by full name: a stage-1 LLaVA
    /// projector file's grown embedding on top of a text LLM.
    overrides: Arc<HashMap<String, (PathBuf, Tensor)>>,
    pub dtype: DType,
    pub device: Device,
}

fn json_file(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::format(path, format!("invalid JSON: {e}")))
}

/// Shard file names listed in an HF `*.index.json` (`weight_map` values), in first-seen order.
pub(crate) fn shards_from_index(index: &Path) -> Result<Vec<PathBuf>> {
    let v = json_file(index)?;
    let map = v
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format(index, "no `weight_map` object"))?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = Vec::new();
    for (name, file) in map {
        let file = file.as_str().ok_or_else(|| {
            Error::format(index, format!("weight_map[`{name}`] is not a file name"))
        })?;
        // Shards live beside the index. Only the lexical check: a Hub cache snapshot links
        // every file to `../../blobs/`, so symlinks out of the folder are normal here.
        if let Err(why) = sightline_guard::paths::lexically_inside(Path::new(file)) {
            return Err(Error::format(
                index,
                format!(
                    "weight_map[`{name}`]: {file:?} {why} the checkpoint directory (shards \
                     must sit beside the index)"
                ),
            ));
        }
        let p = dir.join(file);
        if !files.contains(&p) {
            files.push(p);
        }
    }
    Ok(files)
}

impl Weights {
    /// Opens the weights in an HF model directory (safetensors preferred, as transformers does).
    pub fn from_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let bin = dir.join("pytorch_model.bin");
        let bin_index = dir.join("pytorch_model.bin.index.json");
        if single.is_file() {
            Self::from_safetensors(std::slice::from_ref(&single), single.clone(), dtype, device)
        } else if index.is_file() {
            let files = shards_from_index(&index)?;
            Self::from_safetensors(&files, index, dtype, device)
        } else if bin.is_file() {
            Self::from_pth(std::slice::from_ref(&bin), bin.clone(), dtype, device)
        } else if bin_index.is_file() {
            let files = shards_from_index(&bin_index)?;
            Self::from_pth(&files, bin_index, dtype, device)
        } else {
            Err(Error::format(
                dir,
                "no weights found: expected model.safetensors, model.safetensors.index.json, \
                 pytorch_model.bin or pytorch_model.bin.index.json",
            ))
        }
    }

    /// Opens one weights file: `*.safetensors`, or a PyTorch pickle (`*.bin`, `*.pt`, `*.pth`),
    /// such as LLaVA's stage-1 `mm_projector.bin`.
    pub fn from_file(path: &Path, dtype: DType, device: &Device) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::format(path, "no such weights file"));
        }
        let file = std::slice::from_ref(&path.to_path_buf()).to_vec();
        if path.extension().is_some_and(|e| e == "safetensors") {
            Self::from_safetensors(&file, path.to_path_buf(), dtype, device)
        } else {
            Self::from_pth(&file, path.to_path_buf(), dtype, device)
        }
    }

    /// Every tensor name in the checkpoint (whatever the prefix), sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = match &*self.backend {
            Backend::Safetensors { routing, .. } => routing.keys().cloned().collect(),
            Backend::Memory { tensors } => tensors.keys().cloned().collect(),
        };
        names.extend(self.overrides.keys().cloned());
        names.sort();
        names.dedup();
        names
    }

    /// The same checkpoint with `tensors` (full names) taking precedence; `origin` names the
    /// file they came from in errors.
    pub fn with_overrides(&self, tensors: HashMap<String, Tensor>, origin: PathBuf) -> Self {
        let mut over = (*self.overrides).clone();
        for (k, t) in tensors {
            over.insert(k, (origin.clone(), t));
        }
        Self {
            overrides: Arc::new(over),
            ..self.clone()
        }
    }

    /// Loads `name` whatever its shape (for tensors whose shape the caller checks itself).
    pub fn get_any_shape(&self, name: &str) -> Result<Tensor> {
        let shape = self.shape_of(name)?;
        self.get(&shape, name)
    }

    /// The stored shape of `name`.
    fn shape_of(&self, name: &str) -> Result<Vec<usize>> {
        let full = self.full_name(name);
        if let Some((_, t)) = self.overrides.get(&full) {
            return Ok(t.dims().to_vec());
        }
        match &*self.backend {
            Backend::Safetensors { shards, routing } => {
                let Some(&i) = routing.get(&full) else {
                    return Err(self.missing(full, &[]));
                };
                let (path, st) = &shards[i];
                let view = st
                    .get(&full)
                    .map_err(|e| Error::format(path, e.to_string()))?;
                Ok(view.shape().to_vec())
            }
            Backend::Memory { tensors } => tensors
                .get(&full)
                .map(|(_, t)| t.dims().to_vec())
                .ok_or_else(|| self.missing(full, &[])),
        }
    }

    fn from_safetensors(
        files: &[PathBuf],
        origin: PathBuf,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut shards = Vec::with_capacity(files.len());
        let mut routing = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            if !f.is_file() {
                return Err(Error::format(
                    &origin,
                    format!("lists shard {} which does not exist", f.display()),
                ));
            }
            // SAFETY: the file is mapped read-only; like every mmap user we assume nobody
            // truncates a checkpoint while it is being evaluated.
            let st = unsafe { MmapedSafetensors::new(f) }.map_err(|e| {
                Error::format(
                    f,
                    format!("not a valid safetensors file ({})", root_cause(&e)),
                )
            })?;
            for (name, _) in st.tensors() {
                routing.insert(name, i);
            }
            shards.push((f.clone(), st));
        }
        Ok(Self::wrap(
            Backend::Safetensors { shards, routing },
            origin,
            dtype,
            device,
        ))
    }

    fn from_pth(files: &[PathBuf], origin: PathBuf, dtype: DType, device: &Device) -> Result<Self> {
        let mut tensors = HashMap::new();
        for f in files {
            let all = crate::pickle::read_all(f)?;
            for (name, t) in all {
                tensors.insert(name, (f.clone(), t));
            }
        }
        Ok(Self::wrap(
            Backend::Memory { tensors },
            origin,
            dtype,
            device,
        ))
    }

    /// Wraps tensors already in memory; `origin` names them in errors.
    pub fn from_tensors(
        tensors: HashMap<String, Tensor>,
        origin: PathBuf,
        dtype: DType,
        device: &Device,
    ) -> Self {
        let tensors = tensors
            .into_iter()
            .map(|(k, t)| (k, (origin.clone(), t)))
            .collect();
        Self::wrap(Backend::Memory { tensors }, origin, dtype, device)
    }

    fn wrap(backend: Backend, origin: PathBuf, dtype: DType, device: &Device) -> Self {
        Self {
            backend: Arc::new(backend),
            origin: Arc::new(origin),
            prefix: String::new(),
            overrides: Arc::new(HashMap::new()),
            dtype,
            device: device.clone(),
        }
    }

    /// A view whose names are prefixed with `name.` (like `VarBuilder::pp`).
    pub fn pp(&self, name: &str) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        };
        Self {
            prefix,
            ..self.clone()
        }
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Whether the checkpoint has `name` (under the current prefix).
    pub fn contains(&self, name: &str) -> bool {
        let full = self.full_name(name);
        if self.overrides.contains_key(&full) {
            return true;
        }
        match &*self.backend {
            Backend::Safetensors { routing, .. } => routing.contains_key(&full),
            Backend::Memory { tensors } => tensors.contains_key(&full),
        }
    }

    /// Loads `name`, checks that its shape is `shape`, converts it to the model dtype and device.
    pub fn get(&self, shape: &[usize], name: &str) -> Result<Tensor> {
        let full = self.full_name(name);
        let (path, tensor) = match (self.overrides.get(&full), &*self.backend) {
            (Some((path, t)), _) => {
                check_shape(path, &full, shape, t.dims())?;
                (path.clone(), t.to_device(&self.device)?)
            }
            (None, Backend::Safetensors { shards, routing }) => {
                let Some(&i) = routing.get(&full) else {
                    return Err(self.missing(full, shape));
                };
                let (path, st) = &shards[i];
                let view = st
                    .get(&full)
                    .map_err(|e| Error::format(path, e.to_string()))?;
                check_shape(path, &full, shape, view.shape())?;
                let t = st.load(&full, &self.device).map_err(|e| {
                    Error::format(path, format!("tensor `{full}`: {}", root_cause(&e)))
                })?;
                release_pages(view.data());
                (path.clone(), t)
            }
            (None, Backend::Memory { tensors }) => {
                let Some((path, t)) = tensors.get(&full) else {
                    return Err(self.missing(full, shape));
                };
                check_shape(path, &full, shape, t.dims())?;
                (path.clone(), t.to_device(&self.device)?)
            }
        };
        tensor
            .to_dtype(self.dtype)
            .map_err(|e| Error::format(path, format!("tensor `{full}`: {}", root_cause(&e))))
    }

    fn missing(&self, tensor: String, shape: &[usize]) -> Error {
        Error::MissingTensor {
            path: (*self.origin).clone(),
            tensor,
            expected: shape.to_vec(),
        }
    }
}

/// Drops the pages of `bytes` (a loaded tensor's range of the memory-mapped checkpoint) from
/// this process's resident set: the tensor now lives in its own copy, and without this every
/// page of the file stays mapped and resident until the whole `Weights` is dropped, so loading
/// peaked at the file's size plus the weights' (measured: SmolLM2-135M in bf16 860 MB, see
/// BENCHMARKS.md). The pages stay in the page cache, and reading them again (another `get` of
/// the same tensor) faults them back in from the file: nothing is lost. Only whole pages
/// inside the range are released, never a neighbour's. A no-op off Linux.
fn release_pages(bytes: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = bytes.as_ptr() as usize;
        let (first, end) = (
            start.next_multiple_of(PAGE),
            (start + bytes.len()) / PAGE * PAGE,
        );
        if end > first {
            // SAFETY: [first, end) lies inside `bytes`, a read-only mapping of a file that
            // stays mapped; MADV_DONTNEED on such a mapping only drops resident pages, which
            // later reads fault back in with the same contents.
            unsafe {
                libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_DONTNEED);
            }
        }
    }
}

fn check_shape(path: &Path, name: &str, expected: &[usize], actual: &[usize]) -> Result<()> {
    if expected != actual {
        return Err(Error::ShapeMismatch {
            path: path.to_path_buf(),
            tensor: name.to_string(),
            expected: expected.to_vec(),
            actual: actual.to_vec(),
        });
    }
    Ok(())
}

/// candle wraps errors with backtraces and paths; users need the innermost message only.
fn root_cause(e: &candle_core::Error) -> String {
    let mut e = e;
    loop {
        match e {
            candle_core::Error::WithPath { inner, .. }
            | candle_core::Error::WithBacktrace { inner, .. } => e = inner,
            candle_core::Error::Context { inner, .. } => e = inner,
            other => return other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header carries `{"format": "pt"}` (what transformers 4.46 reads) and the tensors
    /// read back unchanged.
    #[test]
    fn saved_files_carry_transformers_format_metadata() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io(Path::new("tempdir"), e))?;
        let path = dir.path().join("model.safetensors");
        let t = Tensor::arange(0f32, 6., &Device::Cpu)?.reshape((2, 3))?;
        let b = t.to_dtype(DType::BF16)?;
        save_safetensors(
            &HashMap::from([("a".to_string(), t.clone()), ("b".to_string(), b.clone())]),
            &path,
        )?;
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n])
            .map_err(|e| Error::format(&path, e.to_string()))?;
        assert_eq!(header["__metadata__"], serde_json::json!({"format": "pt"}));
        let back = candle_core::safetensors::load(&path, &Device::Cpu)?;
        assert_eq!(back["a"].to_vec2::<f32>()?, t.to_vec2::<f32>()?);
        assert_eq!(back["b"].dtype(), DType::BF16);
        Ok(())
    }

    #[test]
    fn index_shards_may_not_leave_the_checkpoint_directory() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io("tempdir", e))?;
        let index = dir.path().join("model.safetensors.index.json");
        let write = |file: &str| {
            let v = serde_json::json!({"weight_map": {"lm_head.weight": file}});
            std::fs::write(&index, v.to_string()).map_err(|e| Error::io(&index, e))
        };
        write("model-00001-of-00002.safetensors")?;
        assert_eq!(
            shards_from_index(&index)?,
            vec![dir.path().join("model-00001-of-00002.safetensors")]
        );
        for hostile in ["../../../../etc/passwd", "/etc/hostname", "a/../../x"] {
            write(hostile)?;
            let e = shards_from_index(&index).expect_err(hostile).to_string();
            assert!(
                e.starts_with(&format!(
                    "{}: weight_map[`lm_head.weight`]",
                    index.display()
                )),
                "{e}"
            );
            assert!(e.contains(hostile), "{e}");
        }
        Ok(())
    }
}
