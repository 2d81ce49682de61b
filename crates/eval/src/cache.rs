//! A durable request log for resumable evaluation (`--cache DIR`).
//!
//! Each finished request is appended as one JSON line `{"key", "response"}` and flushed to the
//! OS at once, so a run killed with SIGKILL loses at most the work unit in flight. The key is a
//! SHA-256 of the model's identity and the request, so one cache directory can serve several
//! models and tasks. A torn last line (killed, or out of disk space, mid-write) is cut off on
//! reload; every earlier entry is kept.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::task::{Request, Response};

#[derive(Serialize, Deserialize)]
struct Entry {
    key: String,
    response: Response,
}

/// Finished requests by key, and the log they are appended to.
pub struct RequestCache {
    path: PathBuf,
    file: File,
    done: HashMap<String, Response>,
    /// How many answers this run took from the log.
    pub hits: usize,
}

/// The entries of a log and the length of its intact part. Every line must be an entry, except
/// the last one, which a killed run may have torn (cut, or cut and ended with a newline by an
/// earlier version): it is dropped, as are bytes after the last newline.
fn read_entries(path: &Path, bytes: &[u8]) -> Result<(HashMap<String, Response>, u64)> {
    let mut done = HashMap::new();
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    let lines: Vec<&[u8]> = bytes[..complete].split_inclusive(|&b| b == b'\n').collect();
    let mut keep = 0;
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_slice::<Entry>(line) {
            Ok(e) => {
                done.insert(e.key, e.response);
                keep += line.len();
            }
            Err(_) if i + 1 == lines.len() => {}
            Err(e) => {
                return Err(Error::data(
                    &path.display().to_string(),
                    i + 1,
                    format!("not a cache entry: {e}"),
                ))
            }
        }
    }
    Ok((done, keep as u64))
}

/// The cache key of `request` for a model with identity `model`.
pub fn key(model: &str, request: &Request) -> String {
    let mut h = Sha256::new();
    h.update(model.as_bytes());
    h.update([0u8]);
    // serde_json of the request is unambiguous (quoted, escaped strings).
    h.update(
        serde_json::to_string(request)
            .unwrap_or_default()
            .as_bytes(),
    );
    format!("{:x}", h.finalize())
}

impl RequestCache {
    /// Opens (creating if needed) `dir/requests.jsonl` and loads what it holds. A torn end (a
    /// run killed, or out of disk space, in the middle of an append) is cut off the file, so
    /// that the next entry starts a fresh line and the log stays readable on every reload.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join("requests.jsonl");
        let (done, keep) = if path.exists() {
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            read_entries(&path, &bytes)?
        } else {
            (HashMap::new(), 0)
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        if file.metadata().map_err(|e| Error::io(&path, e))?.len() > keep {
            file.set_len(keep).map_err(|e| Error::io(&path, e))?;
        }
        Ok(Self {
            path,
            file,
            done,
            hits: 0,
        })
    }

    /// The cached response for `key`, if any.
    pub fn get(&self, key: &str) -> Option<&Response> {
        self.done.get(key)
    }

    /// Appends finished requests and flushes them to the OS.
    pub fn put_all(&mut self, entries: Vec<(String, Response)>) -> Result<()> {
        let mut buf = String::new();
        for (key, response) in entries {
            let e = Entry { key, response };
            buf.push_str(&serde_json::to_string(&e).map_err(|e| Error::Config(e.to_string()))?);
            buf.push('\n');
            self.done.insert(e.key, e.response);
        }
        self.file
            .write_all(buf.as_bytes())
            .and_then(|_| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sightline_model::score::Scored;

    fn answer(x: f64) -> Response {
        Response::Loglikelihood(Scored {
            logprob: x,
            is_greedy: true,
        })
    }

    /// A torn append (SIGKILL or ENOSPC mid-line) loses only itself, on every later reload:
    /// earlier versions ended the torn line with a newline, and the reload after the next
    /// append refused the whole log.
    #[test]
    fn a_torn_end_is_cut_and_the_log_stays_readable() -> Result<()> {
        let d = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let mut c = RequestCache::open(d.path())?;
        c.put_all(vec![("a".into(), answer(-1.0)), ("b".into(), answer(-2.0))])?;
        drop(c);
        let log = d.path().join("requests.jsonl");
        let mut f = OpenOptions::new()
            .append(true)
            .open(&log)
            .map_err(|e| Error::io(&log, e))?;
        f.write_all(br#"{"key": "c", "resp"#)
            .map_err(|e| Error::io(&log, e))?;
        drop(f);
        let mut c = RequestCache::open(d.path())?;
        assert_eq!(c.get("b"), Some(&answer(-2.0)));
        assert_eq!(c.get("c"), None);
        c.put_all(vec![("c".into(), answer(-3.0))])?;
        drop(c);
        let c = RequestCache::open(d.path())?;
        for (k, x) in [("a", -1.0), ("b", -2.0), ("c", -3.0)] {
            assert_eq!(c.get(k), Some(&answer(x)), "{k}");
        }
        let text = std::fs::read_to_string(&log).map_err(|e| Error::io(&log, e))?;
        assert_eq!(text.lines().count(), 3, "{text}");
        Ok(())
    }

    #[test]
    fn a_bad_line_before_the_end_is_an_error_naming_it() -> Result<()> {
        let d = tempfile::tempdir().map_err(|e| Error::io("tmp", e))?;
        let log = d.path().join("requests.jsonl");
        std::fs::write(&log, "not json\n{\"key\":\"a\",\"response\":\"x\"}\n")
            .map_err(|e| Error::io(&log, e))?;
        let e = RequestCache::open(d.path()).err().map(|e| e.to_string());
        assert!(
            e.as_deref().is_some_and(|e| e.contains("requests.jsonl")),
            "{e:?}"
        );
        Ok(())
    }
}
