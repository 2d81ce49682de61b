//! Fingerprints of a step's inputs, so a rerun can tell whether anything it reads changed.
//!
//! Files up to [`CONTENT_LIMIT`] are hashed by content (SHA-256). Larger files (model shards,
//! big archives) are fingerprinted by size and modification time: hashing 13 GB of a 7B
//! checkpoint on every rerun would cost minutes, and a replaced shard changes both. Folders
//! are walked in sorted order; past [`FOLDER_LIMIT`] files (an image folder such as COCO's
//! 118K) only names and sizes are used.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Files larger than this are fingerprinted by size and mtime.
pub const CONTENT_LIMIT: u64 = 256 << 20;
/// Folders with more files than this are fingerprinted by names and sizes.
pub const FOLDER_LIMIT: usize = 20_000;

/// Hex SHA-256 of bytes.
pub fn sha256_hex(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The fingerprint of a path: `missing`, or a hash of its content (see the module doc).
pub fn fingerprint(path: &Path) -> Result<String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok("missing".into()),
        Err(e) => return Err(Error::io(path, e)),
    };
    if meta.is_file() {
        return file_fingerprint(path, &meta);
    }
    let mut files = Vec::new();
    walk(path, path, &mut files)?;
    files.sort();
    let mut h = Sha256::new();
    let shallow = files.len() > FOLDER_LIMIT;
    for rel in &files {
        let p = path.join(rel);
        let meta = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?;
        h.update(rel.as_bytes());
        h.update([0]);
        if shallow {
            h.update(meta.len().to_le_bytes());
        } else {
            h.update(file_fingerprint(&p, &meta)?.as_bytes());
        }
        h.update([0]);
    }
    Ok(format!("dir:{}", hex(&h.finalize())))
}

fn file_fingerprint(path: &Path, meta: &std::fs::Metadata) -> Result<String> {
    if meta.len() > CONTENT_LIMIT {
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        return Ok(format!("size:{}:mtime:{mtime}", meta.len()));
    }
    let mut h = Sha256::new();
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(hex(&h.finalize()))
}

/// Relative paths (with `/`) of every file under `dir`, following symlinks (hub caches link
/// snapshots into `blobs/`).
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let p = entry.path();
        let meta = std::fs::metadata(&p).map_err(|e| Error::io(&p, e))?;
        if meta.is_dir() {
            walk(root, &p, out)?;
        } else {
            let rel = p.strip_prefix(root).unwrap_or(&p);
            out.push(
                rel.components()
                    .map(|c| c.as_os_str().to_string_lossy())
                    .collect::<Vec<_>>()
                    .join("/"),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_changes_change_the_fingerprint_and_order_does_not() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("b"), "2").unwrap();
        std::fs::write(d.path().join("a"), "1").unwrap();
        let before = fingerprint(d.path()).unwrap();
        assert_eq!(before, fingerprint(d.path()).unwrap());
        std::fs::write(d.path().join("a"), "3").unwrap();
        assert_ne!(before, fingerprint(d.path()).unwrap());
        assert_eq!(fingerprint(&d.path().join("none")).unwrap(), "missing");
    }
}
