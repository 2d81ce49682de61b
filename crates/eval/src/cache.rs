//! A durable request log for resumable evaluation (`--cache DIR`).
//!
//! Each finished request is appended as one JSON line `{"key", "response"}` and flushed to the
//! OS at once, so a run killed with SIGKILL loses at most the work unit in flight. The key is a
//! SHA-256 of the model's identity and the request, so one cache directory can serve several
//! models and tasks. A torn last line (killed mid-write) is ignored on reload.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
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
    /// Opens (creating if needed) `dir/requests.jsonl` and loads what it holds.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join("requests.jsonl");
        let mut done = HashMap::new();
        if path.exists() {
            let f = File::open(&path).map_err(|e| Error::io(&path, e))?;
            let lines: Vec<String> = BufReader::new(f)
                .lines()
                .collect::<std::io::Result<_>>()
                .map_err(|e| Error::io(&path, e))?;
            let n = lines.len();
            for (i, line) in lines.iter().enumerate() {
                match serde_json::from_str::<Entry>(line) {
                    Ok(e) => {
                        done.insert(e.key, e.response);
                    }
                    // A torn final line from a killed run: drop it.
                    Err(_) if i + 1 == n => {}
                    Err(e) => {
                        return Err(Error::data(
                            &path.display().to_string(),
                            i + 1,
                            format!("not a cache entry: {e}"),
                        ))
                    }
                }
            }
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        // Terminate a torn line so that the next entry starts on its own line.
        if std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) > 0 {
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            if bytes.last() != Some(&b'\n') {
                file.write_all(b"\n").map_err(|e| Error::io(&path, e))?;
            }
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
