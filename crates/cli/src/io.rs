//! Output files: written to a temporary sibling and renamed into place, never over a file the
//! user already has unless they asked for it. The temporaries a killed run left for the same
//! output are removed first (`sightline_guard::temp`).

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
        if let Some(path) = path {
            sightline_guard::temp::remove_stale(path).with_context(|| {
                format!("{}: cannot remove a killed run's temporary", path.display())
            })?;
        }
        Self::create_swept(path, overwrite)
    }

    /// [`Output::create`] without looking for a killed run's temporaries of `path`: for a
    /// caller writing many files into one folder, which sweeps it once
    /// (`sightline_guard::temp::remove_stale_in`); a scan of the folder per file would take
    /// time quadratic in its size.
    pub fn create_swept(path: Option<&Path>, overwrite: bool) -> Result<Self> {
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
        if path.file_name().is_none() {
            bail!("{}: output path has no file name", path.display());
        }
        let tmp = sightline_guard::temp::temp_path(path);
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

    /// Writes out what is buffered, naming the output when that fails (a full disk). Callers
    /// that write several files flush them all before [`Output::finish`]ing any, so that a
    /// failure leaves every earlier file in place.
    pub fn flush(&mut self) -> Result<()> {
        let name = self
            .target
            .as_ref()
            .map_or_else(|| "stdout".to_string(), |p| p.display().to_string());
        self.writer
            .flush()
            .with_context(|| format!("{name}: cannot write"))
    }

    /// Flushes and moves the temporary file into place. A failed write (a full disk) names the
    /// output and leaves whatever the output's name held before untouched.
    pub fn finish(mut self) -> Result<()> {
        self.flush()?;
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
