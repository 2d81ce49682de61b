//! Crash drills for the `data` verbs (issue 19 item 6): SIGKILL in the middle of writing an
//! output leaves no half-written file under the output's name (the rerun removes the
//! temporary it left), and a full disk (`ENOSPC`, from `/dev/full`) ends in one error line and
//! exit code 1. Checkpoint writing and `merge-lora` are drilled in `crash_train.rs`, a full
//! disk under `train` and `eval` in `full_disk.rs`.

mod data_support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use data_support::tmp;

const RECORD: &str = r#"{"id": "ID", "image": "coco/train2017/000000ID.jpg", "conversations": [{"from": "human", "value": "<image>\nWhat is happening in this picture, in as much detail as you can give?"}, {"from": "gpt", "value": "A person rides a bicycle along a canal at dusk while two ducks watch from the water."}]}"#;

/// A JSON Lines file of `n` records (about 300 bytes each).
fn big_input(dir: &std::path::Path, n: usize) -> std::path::PathBuf {
    let p = dir.join("big.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&p).unwrap());
    for i in 0..n {
        writeln!(f, "{}", RECORD.replace("ID", &i.to_string())).unwrap();
    }
    f.flush().unwrap();
    p
}

#[test]
fn sigkill_while_writing_leaves_no_output_and_a_rerun_completes() {
    let d = tmp();
    let input = big_input(d.path(), 400_000);
    let out = d.path().join("text.json");
    let args = [
        "data".to_string(),
        "strip-images".into(),
        input.display().to_string(),
        "-o".into(),
        out.display().to_string(),
    ];
    let mut child = Command::new(env!("CARGO_BIN_EXE_sightline"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let tmp_out = d.path().join(format!(".text.json.tmp-{}", child.id()));
    // Kill it once the temporary output has data in it (it is being written).
    let start = Instant::now();
    let mut killed_mid_write = false;
    while start.elapsed() < Duration::from_secs(60) {
        if std::fs::metadata(&tmp_out).is_ok_and(|m| m.len() > 0) {
            child.kill().expect("SIGKILL");
            killed_mid_write = true;
            break;
        }
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let _ = child.wait();
    assert!(
        killed_mid_write,
        "the run finished before it could be killed; make the input bigger"
    );
    assert!(!out.exists(), "a killed run left {}", out.display());
    assert!(
        tmp_out.exists(),
        "the killed run's temporary is gone before the rerun"
    );

    // The rerun writes every record.
    let o = Command::new(env!("CARGO_BIN_EXE_sightline"))
        .args(&args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(v.as_array().map(Vec::len), Some(400_000));
    // ... and removes the temporary the killed run left.
    assert!(!tmp_out.exists(), "{} is still there", tmp_out.display());
}

#[test]
fn a_full_disk_is_one_line_and_exit_code_1() {
    let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
        eprintln!("skipped: /dev/full cannot be opened here");
        return;
    };
    let d = tmp();
    let input = big_input(d.path(), 2_000);
    let o = Command::new(env!("CARGO_BIN_EXE_sightline"))
        .args(["data", "strip-images", &input.display().to_string()])
        .stdout(Stdio::from(full))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains("No space left on device"), "{err}");
}
