//! `sightline data corrupt` end to end: every corruption at every severity for a real photo,
//! the contact sheet, and the one-line errors for bad names, severities and inputs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sightline_corrupt::Corruption;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

const PHOTO: &str = "data/llava/examples/waterview.jpg";

fn sightline<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    let o = Command::new(env!("CARGO_BIN_EXE_sightline"))
        .args(args)
        .output()
        .expect("runs");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "{err}");
    o
}

/// Runs and expects exit code 1 with exactly one line on stderr, `error: …`; returns it.
fn one_error<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let o = sightline(args);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    lines[0].to_string()
}

fn decode(p: &Path) -> sightline_corrupt::image::RgbImage {
    sightline_corrupt::image::open(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .to_rgb8()
}

/// All corruptions × 5 severities land in `<name>/<s>/<stem>.png` as 224×224 PNGs, the contact
/// sheet decodes and holds a row per corruption, and a rerun refuses to overwrite.
#[test]
fn writes_every_corruption_and_a_contact_sheet() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let sheet = dir.path().join("sheet.png");
    let photo = root().join(PHOTO);
    let args = [
        "data",
        "corrupt",
        "--corruption",
        "all",
        "--severity",
        "all",
        "--seed",
        "3",
        "--contact-sheet",
        sheet.to_str().expect("utf-8"),
        photo.to_str().expect("utf-8"),
        out.to_str().expect("utf-8"),
    ];
    let o = sightline(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut n = 0;
    for c in Corruption::ALL {
        for s in 1..=5 {
            let p = out.join(c.name()).join(s.to_string()).join("waterview.png");
            assert_eq!(decode(&p).dimensions(), (224, 224), "{}", p.display());
            n += 1;
        }
    }
    assert_eq!(n, Corruption::ALL.len() * 5);
    let files = walk(&out);
    assert_eq!(
        files, n,
        "nothing else is written (no temporary files left)"
    );
    let grid = decode(&sheet);
    assert!(
        grid.height() > Corruption::ALL.len() as u32 * 112,
        "a row per corruption"
    );
    assert!(grid.width() > 6 * 112, "original + 5 severities");
    // Deterministic for a seed: a second run into another folder gives the same bytes.
    let out2 = dir.path().join("out2");
    let o = sightline(&[
        "data",
        "corrupt",
        "--corruption",
        "gaussian_noise",
        "--severity",
        "2",
        "--seed",
        "3",
        photo.to_str().expect("utf-8"),
        out2.to_str().expect("utf-8"),
    ]);
    assert!(o.status.success());
    let rel = "gaussian_noise/2/waterview.png";
    assert_eq!(
        std::fs::read(out.join(rel)).ok(),
        std::fs::read(out2.join(rel)).ok()
    );

    let err = one_error(&args);
    assert!(
        err.contains("already exists") && err.contains("--overwrite"),
        "{err}"
    );
}

fn walk(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(&p)
            } else {
                1
            }
        })
        .sum()
}

#[test]
fn bad_input_gives_one_clean_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = dir.path().join("out");
    let out = out.to_str().expect("utf-8");
    let photo = root().join(PHOTO);
    let photo = photo.to_str().expect("utf-8");
    let run = |c: &str, s: &str, input: &str| {
        one_error(&[
            "data",
            "corrupt",
            "--corruption",
            c,
            "--severity",
            s,
            input,
            out,
        ])
    };

    let err = run("fogg", "1", photo);
    assert!(
        err.contains("fogg") && err.contains("gaussian_noise"),
        "{err}"
    );
    let err = run("fog", "6", photo);
    assert!(
        err.contains("--severity 6") && err.contains("1 to 5"),
        "{err}"
    );
    let missing = dir.path().join("nope.jpg");
    let err = run("fog", "1", missing.to_str().expect("utf-8"));
    assert!(
        err.contains("nope.jpg") && err.contains("not found"),
        "{err}"
    );
    let text = dir.path().join("notes.png");
    std::fs::write(&text, "not an image").expect("write");
    let err = run("fog", "1", text.to_str().expect("utf-8"));
    assert!(
        err.contains("notes.png") && err.contains("expected"),
        "{err}"
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let err = run("fog", "1", empty.to_str().expect("utf-8"));
    assert!(err.contains("no .jpg"), "{err}");
    assert!(
        !Path::new(out).join("fog").exists(),
        "nothing written after an error"
    );
}

/// `--protocol imagenet-c`: Resize(256) + CenterCrop(224), JPEG q85 outputs named `.jpg`.
#[test]
fn imagenet_c_protocol_writes_224_jpegs() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let photo =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/llava/examples/waterview.jpg");
    let o = Command::new(env!("CARGO_BIN_EXE_sightline"))
        .args([
            "data",
            "corrupt",
            "--corruption",
            "brightness",
            "--severity",
            "2",
            "--protocol",
            "imagenet-c",
            photo.to_str().unwrap(),
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let f = out.join("brightness/2/waterview.jpg");
    let bytes = std::fs::read(&f).unwrap();
    assert_eq!(&bytes[..2], &[0xFF, 0xD8], "a JPEG");
    let img = sightline_corrupt::image::load_from_memory(&bytes).unwrap();
    assert_eq!((img.width(), img.height()), (224, 224));
    assert!(!out.join("brightness/2/waterview.png").exists());
}
