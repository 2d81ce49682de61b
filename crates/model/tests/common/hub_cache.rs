//! A Hugging Face Hub cache built from local fixture folders, laid out exactly as
//! huggingface_hub 0.36's `hf_hub_download` writes it (`file_download.py`: `repo_folder_name`,
//! `_create_symlink`, `_cache_commit_hash_for_specific_revision`; checked by writing one with
//! those functions):
//!
//! ```text
//! <cache>/models--{org}--{name}/
//!     blobs/{etag}                                  the bytes; the etag is the sha256 for LFS
//!                                                   files and the git blob sha1 for small ones
//!     snapshots/{commit}/{file} -> ../../blobs/{etag}   relative symlink (os.path.relpath)
//!     refs/{revision}                               the 40-hex commit, no newline
//! ```
//!
//! Here every blob is named by its sha256 (readers treat the name as opaque). Shared by
//! `crates/model/tests/hub.rs` and `crates/cli/tests/hub.rs` (`#[path]`).

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub struct HubCache {
    pub dir: PathBuf,
}

/// A 40-hex commit hash made from a label (what the Hub's would look like).
pub fn commit(label: &str) -> String {
    let h = Sha256::digest(label.as_bytes());
    h.iter().map(|b| format!("{b:02x}")).collect::<String>()[..40].to_string()
}

impl HubCache {
    pub fn new(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).expect("cache dir");
        Self {
            dir: dir.to_path_buf(),
        }
    }

    fn repo_dir(&self, repo: &str) -> PathBuf {
        self.dir
            .join(format!("models--{}", repo.replace('/', "--")))
    }

    /// Stores `bytes` as `file` of snapshot `commit`: a blob plus a relative symlink to it.
    pub fn put_bytes(&self, repo: &str, commit: &str, file: &str, bytes: &[u8]) {
        let repo_dir = self.repo_dir(repo);
        let etag: String = Sha256::digest(bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let blob = repo_dir.join("blobs").join(&etag);
        std::fs::create_dir_all(blob.parent().expect("blobs")).expect("blobs dir");
        std::fs::write(&blob, bytes).expect("blob");
        let link = repo_dir.join("snapshots").join(commit).join(file);
        std::fs::create_dir_all(link.parent().expect("snapshot")).expect("snapshot dir");
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("../../blobs/{etag}"), &link).expect("symlink");
    }

    /// Copies `files` of `src` (every file when empty) into snapshot `commit`.
    pub fn put(&self, repo: &str, commit: &str, src: &Path, files: &[&str]) {
        let names: Vec<String> = if files.is_empty() {
            std::fs::read_dir(src)
                .expect("fixture dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect()
        } else {
            files.iter().map(|f| f.to_string()).collect()
        };
        for name in names {
            let bytes = std::fs::read(src.join(&name)).expect("fixture file");
            self.put_bytes(repo, commit, &name, &bytes);
        }
    }

    /// Points `refs/{revision}` at `commit`.
    pub fn set_ref(&self, repo: &str, revision: &str, commit: &str) {
        let r = self.repo_dir(repo).join("refs").join(revision);
        std::fs::create_dir_all(r.parent().expect("refs")).expect("refs dir");
        std::fs::write(r, commit).expect("ref");
    }

    /// The snapshot directory of `commit`.
    pub fn snapshot(&self, repo: &str, commit: &str) -> PathBuf {
        self.repo_dir(repo).join("snapshots").join(commit)
    }
}
