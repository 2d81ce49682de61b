//! `sightline data bundled OUT_DIR`: writes the training samples, sketches and example run files
//! that are compiled into the binary, as the embedded study's inputs (`bundled:` paths in a
//! study file resolve into this folder).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args as ClapArgs;

#[derive(ClapArgs)]
pub struct BundledArgs {
    /// New folder for `training/`, `configs/` and `images/` (the Unicorn sketches, laid out as
    /// the training records name them).
    output_dir: PathBuf,
}

/// Every file written, as (relative path, bytes).
fn files() -> Vec<(String, &'static [u8])> {
    let mut out: Vec<(String, &'static [u8])> = sightline_data::bundled::FILES
        .iter()
        .map(|(p, b)| (p.to_string(), *b))
        .collect();
    for (path, bytes) in sightline_eval::data::bundled_images() {
        let rel = path
            .strip_prefix("unicorn/sketchy-vqa/")
            .unwrap_or(path)
            .to_string();
        out.push((rel, bytes));
    }
    out
}

/// Writes into a temporary sibling and renames it into place: a kill leaves no half folder.
pub fn run_bundled(a: BundledArgs) -> Result<()> {
    let out = &a.output_dir;
    if out.exists() {
        bail!("{}: already exists; choose a new folder", out.display());
    }
    if out.file_name().is_none() {
        bail!("{}: not a folder name", out.display());
    }
    sightline_guard::temp::remove_stale(out)
        .with_context(|| format!("{}: cannot remove a killed run's temporary", out.display()))?;
    let tmp = sightline_guard::temp::temp_path(out);
    let write = |tmp: &Path| -> Result<usize> {
        let all = files();
        for (rel, bytes) in &all {
            let p = tmp.join(rel);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("{}: cannot create", parent.display()))?;
            }
            std::fs::write(&p, bytes).with_context(|| format!("{}: cannot write", p.display()))?;
        }
        std::fs::rename(tmp, out).with_context(|| format!("{}: cannot create", out.display()))?;
        Ok(all.len())
    };
    match write(&tmp) {
        Ok(n) => {
            eprintln!("{}: {n} files", out.display());
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}
