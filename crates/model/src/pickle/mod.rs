//! PyTorch `.bin` checkpoints (`torch.save` zip archives), read without executing anything.
//!
//! A `.bin` from a hub is a Python pickle, and `torch.load` without `weights_only=True` runs
//! whatever the pickle asks for. sightline reads the same files with its own reader:
//! [`vm`] runs the pickle's opcodes over plain data and refuses every global that torch's
//! tensor rebuilding does not need (naming it), [`torch`] turns the state dict's rebuild calls
//! into tensors after checking each against the bytes the archive really holds.
//!
//! Bounded before allocation: `data.pkl` larger than `SIGHTLINE_MAX_PICKLE_BYTES` is not read;
//! the objects a pickle builds are charged to a budget of the same size (copies out of the memo
//! included) and may nest at most `SIGHTLINE_MAX_PICKLE_DEPTH` deep; a storage must declare
//! exactly the bytes its archive entry holds, and the archive entry may not claim more bytes
//! than the file has. Compressed entries are refused (`torch.save` stores them uncompressed).
//!
//! Layout (`torch/serialization.py` `_save`, zip format since torch 1.6): `<archive>/data.pkl`,
//! `<archive>/data/<key>` per storage, `<archive>/byteorder` (`little`), `.format_version`.

pub mod vm;

mod torch;
mod value;

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use candle_core::Tensor;
use sightline_guard::limits;

use crate::error::{Error, Result};

pub use vm::PickleError;

/// Every tensor of a `torch.save`d state dict, on the CPU in its stored dtype, in pickle order.
pub fn read_all(path: &Path) -> Result<Vec<(String, Tensor)>> {
    let bad =
        |msg: String| Error::format(path, format!("not a readable PyTorch checkpoint: {msg}"));
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
        bad(format!(
            "{e} (sightline reads the zip format torch.save writes since torch 1.6; re-save \
             older files)"
        ))
    })?;
    let pkl_name = (0..zip.len())
        .filter_map(|i| {
            zip.name_for_index(i)
                .and_then(|n| n.ok())
                .map(|n| n.into_owned())
        })
        .find(|n| n.ends_with("/data.pkl") || n == "data.pkl")
        .ok_or_else(|| bad("no data.pkl in the archive".into()))?;
    let prefix = pkl_name.trim_end_matches("data.pkl").to_string();

    if let Ok(order) = read_entry(&mut zip, &format!("{prefix}byteorder"), file_len, 64) {
        if order != b"little" {
            return Err(bad(format!(
                "byte order {:?} (only little-endian checkpoints are read)",
                String::from_utf8_lossy(&order)
            )));
        }
    }
    let pkl_limit = limits::PICKLE_BYTES.get().map_err(|e| bad(e.to_string()))?;
    let pkl = read_entry(&mut zip, &pkl_name, file_len, pkl_limit).map_err(|e| match e {
        EntryError::TooBig(n) => Error::format(
            path,
            limits::LimitError::Over {
                path: path.join(&pkl_name),
                what: limits::PICKLE_BYTES.what,
                found: n,
                limit: pkl_limit,
                unit: limits::PICKLE_BYTES.unit,
                env: limits::PICKLE_BYTES.env,
            }
            .to_string(),
        ),
        other => bad(other.to_string()),
    })?;
    let pkl_name_path = path.join(&pkl_name);
    tensors_from_pickle(&pkl, path, &pkl_name_path, |key, declared| {
        read_entry(&mut zip, &format!("{prefix}data/{key}"), file_len, declared)
            .map_err(|e| e.to_string())
    })
}

/// The tensors a `data.pkl` describes, their storages fetched by `storage(key, declared
/// bytes)` (at most the declared bytes, or one more to show a longer entry) and each view
/// checked against what it returns before anything is copied. [`read_all`] fetches them from
/// the archive; this is public so that the fuzz targets (`crates/fuzzing`) run the same pickle
/// reader and rebuild checks on bytes without wrapping every input in a zip file. `path`
/// names the checkpoint and `pkl_path` the pickle in errors.
pub fn tensors_from_pickle(
    pkl: &[u8],
    path: &Path,
    pkl_path: &Path,
    mut storage: impl FnMut(&str, u64) -> std::result::Result<Vec<u8>, String>,
) -> Result<Vec<(String, Tensor)>> {
    let bad =
        |msg: String| Error::format(path, format!("not a readable PyTorch checkpoint: {msg}"));
    let pkl_limit = limits::PICKLE_BYTES.get().map_err(|e| bad(e.to_string()))?;
    limits::PICKLE_BYTES
        .check(pkl_path, pkl.len() as u64)
        .map_err(|e| Error::format(path, e.to_string()))?;
    let budget = vm::Budget {
        // A state dict's objects take a few times its pickle's bytes; 64 MiB floor.
        bytes: (pkl.len() as u64).saturating_mul(16).max(pkl_limit),
        depth: limits::PICKLE_DEPTH.get().map_err(|e| bad(e.to_string()))?,
    };
    let root = vm::run(pkl, &budget).map_err(|e| bad(e.to_string()))?;
    let specs = torch::tensor_specs(&root).map_err(bad)?;
    drop(root);

    let mut storages: HashMap<String, Vec<u8>> = HashMap::new();
    let mut out = Vec::with_capacity(specs.len());
    for spec in specs {
        if !storages.contains_key(&spec.key) {
            let declared = spec
                .storage_numel
                .saturating_mul(spec.dtype.size_in_bytes() as u64);
            // Read at most what the storage declares (+1 to notice a longer entry); the
            // entry's own size is checked against the file first.
            let bytes = storage(&spec.key, declared)
                .map_err(|e| bad(format!("tensor `{}`: {e}", spec.name)))?;
            storages.insert(spec.key.clone(), bytes);
        }
        let storage = &storages[&spec.key];
        spec.check(storage.len() as u64)
            .map_err(|e| bad(format!("tensor `{}`: {e}", spec.name)))?;
        let t = spec
            .tensor(storage)
            .map_err(|e| bad(format!("tensor `{}`: {e}", spec.name)))?;
        out.push((spec.name, t));
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
enum EntryError {
    #[error("archive entry `{0}` is missing")]
    Missing(String),
    #[error("archive entry `{0}` is compressed (torch.save stores entries uncompressed)")]
    Compressed(String),
    #[error("archive entry `{name}` claims {size} bytes but the file has {file_len}")]
    Lies {
        name: String,
        size: u64,
        file_len: u64,
    },
    #[error("{0} bytes")]
    TooBig(u64),
    #[error("archive entry `{name}` holds {size} bytes where {want} are declared")]
    Size { name: String, size: u64, want: u64 },
    #[error("archive entry `{0}`: {1}")]
    Read(String, std::io::Error),
}

/// The bytes of an archive entry of at most `max` bytes; its claimed size is checked against
/// the file's length and `max` before anything is allocated.
fn read_entry<R: std::io::Read + std::io::Seek>(
    zip: &mut zip::ZipArchive<R>,
    name: &str,
    file_len: u64,
    max: u64,
) -> std::result::Result<Vec<u8>, EntryError> {
    let mut f = zip
        .by_name(name)
        .map_err(|_| EntryError::Missing(name.to_string()))?;
    if f.compression() != zip::CompressionMethod::Stored {
        return Err(EntryError::Compressed(name.to_string()));
    }
    let size = f.size();
    if size > file_len {
        return Err(EntryError::Lies {
            name: name.to_string(),
            size,
            file_len,
        });
    }
    if size > max {
        return Err(if name.ends_with("data.pkl") {
            EntryError::TooBig(size)
        } else {
            EntryError::Size {
                name: name.to_string(),
                size,
                want: max,
            }
        });
    }
    let mut buf = Vec::with_capacity(size as usize);
    f.by_ref()
        .take(size)
        .read_to_end(&mut buf)
        .map_err(|e| EntryError::Read(name.to_string(), e))?;
    Ok(buf)
}
