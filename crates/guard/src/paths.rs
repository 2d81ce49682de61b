//! Keeping paths named by data files inside their folder.
//!
//! A training record's `image`, a task file's image name or an index's shard name is relative
//! to a folder the user chose (`--image-folder`, `--image-root`, the checkpoint directory).
//! Joined naively, `../../../../etc/passwd`, `/etc/hostname` or a symlink inside the folder
//! that points elsewhere reads (or, for outputs, writes) any file the user can reach. A file
//! from elsewhere must not be able to do that silently, so [`Folder::join`] refuses it unless
//! the user passed [`ALLOW_OUTSIDE_FLAG`].
//!
//! The check is done twice, because each way alone misses cases:
//! 1. lexically: no absolute path, no `..` that climbs above the folder;
//! 2. on disk: the longest existing prefix of the joined path is canonicalized (symlinks
//!    resolved) and must still start with the canonical folder. Components that do not exist
//!    yet (an output about to be written) are appended as they are; step 1 already removed
//!    their `..`s. A dangling symlink is followed to where it points, since writing through it
//!    would create its target.
//!
//! ```
//! use sightline_guard::Folder;
//! let dir = tempfile::tempdir()?;
//! let folder = Folder::new(dir.path(), false)?;
//! assert!(folder.join("coco/0001.jpg").is_ok());
//! assert!(folder.join("../../etc/passwd").is_err());
//! assert!(folder.join("/etc/hostname").is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Component, Path, PathBuf};

/// The one flag (and, in run files, the key `allow_outside_paths`) that lets paths named in
/// data files leave their folder.
pub const ALLOW_OUTSIDE_FLAG: &str = "--allow-outside-paths";

/// How many symlinks one path may chain through before we give up (Linux's `MAXSYMLINKS`).
const MAX_SYMLINK_HOPS: usize = 40;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escape {
    /// `/etc/hostname`: an absolute path ignores the folder altogether.
    Absolute,
    /// `../../x`: more `..` than there are components before them.
    ParentDir,
    /// The path exists under the folder's name but a symlink on the way leads elsewhere.
    Symlink,
}

impl fmt::Display for Escape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Escape::Absolute => "is an absolute path, outside",
            Escape::ParentDir => "climbs (with `..`) out of",
            Escape::Symlink => "leads through a symlink out of",
        })
    }
}

/// A path that may not be used.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The named path would leave its folder.
    #[error(
        "{path:?} {why} the folder {folder} (pass {flag} to allow paths outside it)",
        flag = ALLOW_OUTSIDE_FLAG
    )]
    Escapes {
        path: PathBuf,
        folder: PathBuf,
        why: Escape,
    },
    /// The folder itself (or a symlink in the way) could not be inspected.
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: io::Error },
}

impl PathError {
    /// Why the path was refused, when it was refused for leaving its folder.
    pub fn escape(&self) -> Option<Escape> {
        match self {
            PathError::Escapes { why, .. } => Some(*why),
            PathError::Io { .. } => None,
        }
    }
}

/// A folder that relative paths from data files are joined onto.
#[derive(Debug, Clone)]
pub struct Folder {
    /// As the user gave it (messages and returned paths use this spelling).
    root: PathBuf,
    /// Canonical, for the on-disk comparison.
    canonical: PathBuf,
    allow_outside: bool,
}

impl Folder {
    /// `root` need not exist yet (an output folder); `allow_outside` is the user's
    /// [`ALLOW_OUTSIDE_FLAG`]. An empty `root` means the current directory.
    pub fn new(root: impl Into<PathBuf>, allow_outside: bool) -> Result<Self, PathError> {
        let root = root.into();
        let probe = if root.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            root.clone()
        };
        let canonical = resolve(&probe)?;
        Ok(Self {
            root,
            canonical,
            allow_outside,
        })
    }

    /// The folder as the user spelled it.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Whether paths may leave the folder (the user passed [`ALLOW_OUTSIDE_FLAG`]).
    pub fn allows_outside(&self) -> bool {
        self.allow_outside
    }

    /// `root/rel`, refused when it would leave the folder (see the module docs). With
    /// `allow_outside` it is the plain join.
    pub fn join(&self, rel: impl AsRef<Path>) -> Result<PathBuf, PathError> {
        let rel = rel.as_ref();
        let joined = self.root.join(rel);
        if self.allow_outside {
            return Ok(joined);
        }
        let escapes = |why| PathError::Escapes {
            path: rel.to_path_buf(),
            folder: self.root.clone(),
            why,
        };
        lexically_inside(rel).map_err(escapes)?;
        let on_disk = resolve(&self.canonical.join(rel))?;
        if !on_disk.starts_with(&self.canonical) {
            return Err(escapes(Escape::Symlink));
        }
        Ok(joined)
    }
}

/// The lexical half of [`Folder::join`]: `rel` is relative and its `..`s never climb above
/// its start. For names whose folder legitimately holds symlinks out of it (a Hub cache
/// snapshot links every file to `../../blobs/`), this is the whole check.
pub fn lexically_inside(rel: &Path) -> Result<(), Escape> {
    let mut depth = 0usize;
    for c in rel.components() {
        match c {
            Component::Prefix(_) | Component::RootDir => return Err(Escape::Absolute),
            Component::CurDir => {}
            Component::ParentDir if depth == 0 => return Err(Escape::ParentDir),
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
        }
    }
    Ok(())
}

/// `path` with every symlink of its existing part resolved; the part that does not exist yet
/// is appended lexically (`..` applied to what precedes it). A dangling symlink is followed.
fn resolve(path: &Path) -> Result<PathBuf, PathError> {
    resolve_hops(path, 0)
}

fn resolve_hops(path: &Path, hops: usize) -> Result<PathBuf, PathError> {
    let io_err = |p: &Path, err| PathError::Io {
        path: p.to_path_buf(),
        err,
    };
    if hops > MAX_SYMLINK_HOPS {
        return Err(io_err(
            path,
            io::Error::other("too many levels of symbolic links"),
        ));
    }
    let path = if path.is_relative() {
        std::env::current_dir()
            .map_err(|e| io_err(path, e))?
            .join(path)
    } else {
        path.to_path_buf()
    };
    // Walk up until something exists; remember the missing tail (innermost last).
    let mut existing = path.as_path();
    let mut tail: Vec<OsString> = Vec::new();
    let base = loop {
        match existing.canonicalize() {
            Ok(c) => break c,
            Err(_) if is_symlink(existing) => {
                // Dangling: follow it (relative targets are relative to its parent).
                let target = std::fs::read_link(existing).map_err(|e| io_err(existing, e))?;
                let parent = existing.parent().unwrap_or(Path::new("/"));
                break resolve_hops(&parent.join(target), hops + 1)?;
            }
            Err(_) => {}
        }
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(last)) => {
                tail.push(last.as_os_str().to_os_string());
                existing = parent;
            }
            // Nothing of it exists, not even `/`: leave it lexical.
            _ => break PathBuf::new(),
        }
    };
    let mut out = base;
    for part in tail.iter().rev() {
        match Path::new(part).components().next() {
            Some(Component::ParentDir) => {
                out.pop();
            }
            Some(Component::CurDir) | None => {}
            Some(_) => out.push(part),
        }
    }
    Ok(out)
}

fn is_symlink(p: &Path) -> bool {
    p.symlink_metadata()
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn folder(dir: &Path) -> Folder {
        Folder::new(dir, false).expect("a temp dir is a folder")
    }

    #[test]
    fn relative_paths_inside_are_joined_as_given() -> Result<(), PathError> {
        let dir = tempfile::tempdir().map_err(|err| PathError::Io {
            path: "tmp".into(),
            err,
        })?;
        let f = folder(dir.path());
        assert_eq!(f.join("a/b.jpg")?, dir.path().join("a/b.jpg"));
        // `..` that stays inside is fine, and so is a path that does not exist yet.
        assert_eq!(f.join("a/../b.jpg")?, dir.path().join("a/../b.jpg"));
        assert!(f.join("./new/dir/out.json").is_ok());
        Ok(())
    }

    #[test]
    fn absolute_and_climbing_paths_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = folder(dir.path());
        let cases = [
            ("/etc/hostname", Escape::Absolute),
            ("../../../../../../etc/passwd", Escape::ParentDir),
            ("a/../../x", Escape::ParentDir),
            ("..", Escape::ParentDir),
        ];
        for (rel, why) in cases {
            let e = f.join(rel).expect_err(rel);
            assert_eq!(e.escape(), Some(why), "{rel}: {e}");
            let msg = e.to_string();
            assert!(msg.contains(rel), "{msg}");
            assert!(msg.contains(ALLOW_OUTSIDE_FLAG), "{msg}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_out_of_the_folder_are_refused() {
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("secret"), b"x").expect("write");
        let dir = tempfile::tempdir().expect("tempdir");
        let f = folder(dir.path());
        std::os::unix::fs::symlink(outside.path(), dir.path().join("out")).expect("symlink");
        std::os::unix::fs::symlink(outside.path().join("nothing"), dir.path().join("dangling"))
            .expect("symlink");
        std::fs::create_dir(dir.path().join("sub")).expect("mkdir");
        std::os::unix::fs::symlink("..", dir.path().join("sub/up")).expect("symlink");
        for rel in ["out/secret", "out/not-yet", "dangling", "sub/up/../x"] {
            let e = f.join(rel).expect_err(rel);
            assert_eq!(e.escape(), Some(Escape::Symlink), "{rel}: {e}");
        }
        // A symlink that stays inside is fine.
        std::os::unix::fs::symlink("sub", dir.path().join("alias")).expect("symlink");
        assert!(f.join("alias/x.jpg").is_ok());
        assert!(f.join("sub/up/sub").is_ok());
    }

    #[test]
    fn the_flag_allows_everything() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = Folder::new(dir.path(), true).expect("folder");
        assert_eq!(
            f.join("/etc/hostname").expect("allowed"),
            PathBuf::from("/etc/hostname")
        );
        assert!(f.join("../x").is_ok());
    }

    #[test]
    fn a_folder_that_does_not_exist_yet_still_guards() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = folder(&dir.path().join("out/run1"));
        assert!(f.join("checkpoint-1/model.safetensors").is_ok());
        assert!(f.join("../run2").is_err());
        let cwd = Folder::new("", false).expect("cwd");
        assert!(cwd.join("x.jpg").is_ok());
        assert!(cwd.join("../x.jpg").is_err());
    }
}
