//! Output files: written to a temporary sibling and renamed into place, never over a file the
//! user already has unless they asked for it.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// Where results go: stdout, or a file replaced atomically.
pub struct Output {
    target: Option<PathBuf>,
    tmp: Option<PathBuf>,
    writer: Box<dyn Write>,
}

impl Output {
    /// Opens `path` (or stdout when `None`). An existing file is an error unless `overwrite`.
    pub fn create(path: Option<&Path>, overwrite: bool) -> Result<Self> {
        let Some(path) = path else {
            return Ok(Self {
                target: None,
                tmp: None,
                writer: Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
            });
        };
        if path.exists() && !overwrite {
            bail!(
                "{}: already exists (pass --overwrite to replace it)",
                path.display()
            );
        }
        let name = path
            .file_name()
            .context("output path has no file name")?
            .to_string_lossy();
        let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let file = std::fs::File::create(&tmp)
            .with_context(|| format!("{}: cannot create", tmp.display()))?;
        Ok(Self {
            target: Some(path.to_path_buf()),
            tmp: Some(tmp),
            writer: Box::new(std::io::BufWriter::new(file)),
        })
    }

    pub fn writer(&mut self) -> &mut dyn Write {
        &mut *self.writer
    }

    /// Flushes and moves the temporary file into place.
    pub fn finish(mut self) -> Result<()> {
        self.writer.flush().context("cannot write output")?;
        drop(std::mem::replace(
            &mut self.writer,
            Box::new(std::io::sink()),
        ));
        if let (Some(tmp), Some(target)) = (self.tmp.take(), self.target.take()) {
            std::fs::rename(&tmp, &target)
                .with_context(|| format!("{}: cannot move into place", target.display()))?;
        }
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if let Some(tmp) = &self.tmp {
            let _ = std::fs::remove_file(tmp);
        }
    }
}
