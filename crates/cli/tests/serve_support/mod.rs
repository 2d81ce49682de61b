//! Helpers shared by the `sightline serve` tests (`serve.rs`, `serve_bench.rs`).
// Each test file uses its own subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};

use serde_json::json;

pub fn sightline() -> Command {
    Command::new(env!("CARGO_BIN_EXE_sightline"))
}

/// A `sightline serve` child on a free port, killed on drop.
pub struct Served {
    pub child: Child,
    pub base: String,
    _stdout: BufReader<ChildStdout>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn serve(extra: &[&str]) -> Served {
    let mut child = sightline()
        .args(["serve", "--port", "0", "--served-model-name", "tiny"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    // "sightline serve: model `tiny` on http://127.0.0.1:PORT/v1"
    let base = line.split_whitespace().last().unwrap_or("").to_string();
    assert!(base.starts_with("http://127.0.0.1:"), "{line}");
    Served {
        child,
        base,
        _stdout: stdout,
    }
}

/// The prompts of the load test and the benchmark.
pub const STORIES: [&str; 4] = [
    "Once upon a time, there was a little dog",
    "Lily wanted to play in the park with her friend",
    "The sun was shining and the birds were singing",
    "Tom had a red ball. He liked to",
];

/// Per story: echo scoring of its text (`/completions`) and a greedy 12-token chat reply
/// (`/chat/completions`), as (path under /v1, body).
pub fn valid_requests() -> Vec<(&'static str, String)> {
    STORIES
        .iter()
        .flat_map(|s| {
            [
                ("/completions", json!({"model": "tiny", "prompt": s, "max_tokens": 0, "echo": true, "logprobs": 1}).to_string()),
                ("/chat/completions", json!({"model": "tiny", "messages": [{"role": "user", "content": s}], "max_tokens": 12}).to_string()),
            ]
        })
        .collect()
}
