//! Helpers shared by the image-task end-to-end tests (`mm_eval.rs`, `mm_eval_tasks.rs`): run
//! the binary, read its results and samples, lay out POPE's images.
// Each test file uses its own subset of these helpers.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn path(rel: &str) -> String {
    root().join(rel).display().to_string()
}

pub fn sightline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sightline"))
        .args(args)
        .output()
        .expect("runs")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

pub fn samples(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A folder with every image POPE's random split names, each a copy of a real photo.
pub fn pope_image_root(dir: &Path) {
    let text = std::fs::read_to_string(root().join("data/pope/coco_pope_random.json")).unwrap();
    let photo = root().join("data/llava/examples/extreme_ironing.jpg");
    for line in text.lines() {
        let rec: Value = serde_json::from_str(line).unwrap();
        let name = rec["image"].as_str().unwrap();
        let dest = dir.join(name);
        if !dest.exists() {
            photo_at(&photo, dir, &dest);
        }
    }
}

/// Puts `photo` at `dest` inside the image folder `folder`: one copy in the folder, hard links
/// to it (a symlink out of the folder would be refused without --allow-outside-paths).
pub fn photo_at(photo: &Path, folder: &Path, dest: &Path) {
    let copy = folder.join(".photo");
    if !copy.exists() {
        std::fs::copy(photo, &copy).unwrap();
    }
    std::fs::hard_link(&copy, dest).unwrap();
}

/// The top-level keys and `n-samples` shape of a text task's results.json.
pub fn nlp_results_keys(tmp: &Path) -> Vec<String> {
    let out = tmp.join("nlp");
    let o = sightline(&[
        "eval",
        "--model",
        "builtin:stories260k",
        "--tasks",
        "ethics_cm",
        "--limit",
        "2",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = read_json(&out.join("results.json"));
    r.as_object().unwrap().keys().cloned().collect()
}
