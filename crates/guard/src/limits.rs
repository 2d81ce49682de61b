//! Resource limits on what a file may declare, checked before anything is allocated for it.
//!
//! A hostile or broken file can declare a 100,000 × 100,000 image, a 2 GB header or a
//! ten-million-entry vocabulary in a few bytes; a reader that believes the declaration
//! allocates first and fails (or gets killed) later. Each reader compares the declared size
//! with one of the [`Limit`]s below first, and refuses with one line that names the file, the
//! size, the limit and the environment variable that raises it.
//!
//! The defaults leave room for every real checkpoint, tokenizer and dataset we know of (the
//! numbers say which); a legitimate giant raises its limit with the variable, e.g.
//! `SIGHTLINE_MAX_IMAGE_PIXELS=400000000 sightline eval ...`.

use std::path::{Path, PathBuf};

/// One limit: its environment variable, default and unit.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// The environment variable that replaces the default.
    pub env: &'static str,
    pub default: u64,
    /// What is counted ("bytes", "pixels", ...), for messages.
    pub unit: &'static str,
    /// What the limit is on, for messages ("the image", "the safetensors header").
    pub what: &'static str,
}

/// A JPEG/PNG header that declares more pixels than this is refused before decoding. Pillow
/// refuses twice its `MAX_IMAGE_PIXELS` (89,478,485) as a decompression bomb; we do the same.
pub const IMAGE_PIXELS: Limit = Limit {
    env: "SIGHTLINE_MAX_IMAGE_PIXELS",
    default: 178_956_970,
    unit: "pixels",
    what: "the image",
};

/// A PyTorch pickle (`data.pkl` inside a `.bin`) larger than this is refused before it is
/// read. LLaMA-2-70B's `pytorch_model-*.bin` pickles are under 100 KB each; the pickle holds
/// tensor descriptions, not the tensors.
pub const PICKLE_BYTES: Limit = Limit {
    env: "SIGHTLINE_MAX_PICKLE_BYTES",
    default: 64 << 20,
    unit: "bytes",
    what: "the pickle (data.pkl)",
};

/// How deeply a pickle's objects may nest. A real state dict nests about 6 deep (dict →
/// rebuild call → args → storage tuple); deeper nesting is a stack-exhaustion attempt.
pub const PICKLE_DEPTH: Limit = Limit {
    env: "SIGHTLINE_MAX_PICKLE_DEPTH",
    default: 100,
    unit: "levels",
    what: "the pickle's nesting",
};

/// `tokenizer.json` larger than this is refused before it is parsed (parsing takes several
/// times the file size). The largest we know, Gemma's 256k vocabulary, is 17 MB; a
/// ten-million-entry vocabulary is over 100 MB.
pub const TOKENIZER_BYTES: Limit = Limit {
    env: "SIGHTLINE_MAX_TOKENIZER_BYTES",
    default: 64 << 20,
    unit: "bytes",
    what: "the tokenizer file",
};

/// Every limit, for documentation and `--help` texts.
pub const ALL: &[Limit] = &[IMAGE_PIXELS, PICKLE_BYTES, PICKLE_DEPTH, TOKENIZER_BYTES];

/// A declared size over its limit, or a limit variable that is not a number.
#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error(
        "{path}: {what} declares {found} {unit}, over the limit of {limit} (set {env} to raise it)"
    )]
    Over {
        path: PathBuf,
        what: &'static str,
        found: u64,
        limit: u64,
        unit: &'static str,
        env: &'static str,
    },
    #[error("{env}={value:?} is not a whole number of {unit}")]
    BadEnv {
        env: &'static str,
        value: String,
        unit: &'static str,
    },
}

/// A file that could not be read whole: unreadable, or over its limit.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("{path}: {err}")]
    Io { path: PathBuf, err: std::io::Error },
    #[error(transparent)]
    Limit(#[from] LimitError),
}

/// Reads `path` whole, refusing it *before reading* when its size is over `limit` (and
/// stopping at the limit should the file grow while it is read).
pub fn read_capped(path: &Path, limit: &Limit) -> Result<Vec<u8>, ReadError> {
    use std::io::Read;
    let io = |err| ReadError::Io {
        path: path.to_path_buf(),
        err,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    limit.check(path, len)?;
    let mut buf = Vec::with_capacity(len as usize);
    file.take(limit.get()?.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(io)?;
    limit.check(path, buf.len() as u64)?;
    Ok(buf)
}

impl Limit {
    /// The limit in force: the environment variable when set, else the default.
    pub fn get(&self) -> Result<u64, LimitError> {
        match std::env::var(self.env) {
            Err(_) => Ok(self.default),
            Ok(v) => v
                .trim()
                .replace('_', "")
                .parse()
                .map_err(|_| LimitError::BadEnv {
                    env: self.env,
                    value: v,
                    unit: self.unit,
                }),
        }
    }

    /// The limit in force, or the default when the variable does not parse (for readers
    /// whose error type has no room for [`LimitError::BadEnv`]; [`Limit::check`] reports it).
    pub fn get_or_default(&self) -> u64 {
        self.get().unwrap_or(self.default)
    }

    /// Refuses `found` (declared by `path`) when it is over the limit.
    pub fn check(&self, path: &Path, found: u64) -> Result<(), LimitError> {
        let limit = self.get()?;
        if found > limit {
            return Err(LimitError::Over {
                path: path.to_path_buf(),
                what: self.what,
                found,
                limit,
                unit: self.unit,
                env: self.env,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn over_the_default_is_one_line_naming_the_variable() {
        let l = Limit {
            env: "SIGHTLINE_TEST_LIMIT_UNSET",
            default: 10,
            unit: "pixels",
            what: "the image",
        };
        assert!(l.check(Path::new("a.jpg"), 10).is_ok());
        let e = l.check(Path::new("a.jpg"), 11).expect_err("over");
        assert_eq!(
            e.to_string(),
            "a.jpg: the image declares 11 pixels, over the limit of 10 \
             (set SIGHTLINE_TEST_LIMIT_UNSET to raise it)"
        );
    }

    #[test]
    fn the_variable_raises_the_limit() {
        // A variable no other test reads, so setting it cannot race with them.
        let l = Limit {
            env: "SIGHTLINE_TEST_LIMIT_SET",
            default: 10,
            unit: "bytes",
            what: "x",
        };
        std::env::set_var(l.env, "1_000");
        assert!(l.check(Path::new("f"), 1000).is_ok());
        assert!(l.check(Path::new("f"), 1001).is_err());
        std::env::set_var(l.env, "lots");
        assert!(matches!(
            l.check(Path::new("f"), 1),
            Err(LimitError::BadEnv { .. })
        ));
    }

    #[test]
    fn read_capped_refuses_a_big_file_without_reading_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("tokenizer.json");
        // Sparse: 1 TB declared, nothing on disk.
        let f = std::fs::File::create(&p).expect("create");
        f.set_len(1 << 40).expect("set_len");
        let e = read_capped(&p, &TOKENIZER_BYTES).expect_err("over");
        assert!(
            e.to_string().contains("declares 1099511627776 bytes"),
            "{e}"
        );
        std::fs::write(&p, b"{}").expect("write");
        assert_eq!(read_capped(&p, &TOKENIZER_BYTES).expect("small"), b"{}");
    }

    #[test]
    fn every_limit_has_a_sightline_variable() {
        for l in ALL {
            assert!(l.env.starts_with("SIGHTLINE_MAX_"), "{}", l.env);
            assert!(l.default > 0);
        }
    }
}
