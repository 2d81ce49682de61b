//! Paths named inside data files stay inside their folder (issue 19 item 5): a record's
//! `image` under `--image-folder` (validate and train), a request's image under
//! `--image-folder` (score), and shard names in a checkpoint's index. `../../x`, absolute
//! paths and symlinks out of the folder are refused with the file, record and field named,
//! unless `--allow-outside-paths` is given. A name from a file that becomes an output folder
//! (a study's corruption names) may not climb out either.

mod data_support;

use data_support::*;

const HOSTILE: &str = concat!(
    r#"{"id": "climb", "image": "../../../../../../etc/passwd", "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}"#,
    "\n",
    r#"{"id": "abs", "image": "/etc/hostname", "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}"#,
    "\n",
    r#"{"id": "link", "image": "out/hostname", "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}"#,
    "\n",
    r#"{"id": "fine", "image": "ok.jpg", "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}"#,
    "\n",
);

/// A data file with [`HOSTILE`]'s records and an image folder `imgs/` holding `ok.jpg` and a
/// symlink `out` to `/etc`.
fn hostile_setup() -> (tempfile::TempDir, String, String) {
    let d = tmp();
    let imgs = d.path().join("imgs");
    std::fs::create_dir(&imgs).unwrap();
    std::fs::write(imgs.join("ok.jpg"), b"\xFF\xD8\xFF").unwrap();
    std::os::unix::fs::symlink("/etc", imgs.join("out")).unwrap();
    let file = d.path().join("train.jsonl");
    std::fs::write(&file, HOSTILE).unwrap();
    let (file, imgs) = (file.display().to_string(), imgs.display().to_string());
    (d, file, imgs)
}

#[test]
fn validate_refuses_images_outside_the_image_folder() {
    let (_d, file, imgs) = hostile_setup();
    let o = sightline(&["data", "validate", &file, "--image-folder", &imgs]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let want = [
        (
            "record 0 (id \"climb\"): image: ",
            "climbs (with `..`) out of",
        ),
        (
            "record 1 (id \"abs\"): image: ",
            "is an absolute path, outside",
        ),
        (
            "record 2 (id \"link\"): image: ",
            "leads through a symlink out of",
        ),
    ];
    for (line, (record, why)) in lines.iter().zip(want) {
        assert!(line.starts_with(&format!("{file}: {record}")), "{line}");
        assert!(line.contains(why), "{line}");
        assert!(line.contains("--allow-outside-paths"), "{line}");
    }
    assert!(
        stderr(&o).ends_with("error: 3 problems in 3 of 4 records\n"),
        "{}",
        stderr(&o)
    );

    // With the flag, the paths are looked up where they point (and exist on any Linux).
    let o = sightline(&[
        "data",
        "validate",
        &file,
        "--image-folder",
        &imgs,
        "--allow-outside-paths",
    ]);
    assert!(o.status.success(), "{}{}", stdout(&o), stderr(&o));
}

#[test]
fn train_refuses_a_record_whose_image_leaves_the_image_folder() {
    let (d, file, imgs) = hostile_setup();
    let out = d.path().join("run");
    let q = |s: String| format!("{s:?}");
    let args = [
        "train".to_string(),
        "--config".into(),
        path("configs/stage2-lora.toml"),
        format!(
            "model_name_or_path={}",
            q(path("tests/fixtures/train/base"))
        ),
        format!("vision_tower={}", q(path("tests/fixtures/llava/tiny-clip"))),
        format!("data_path={}", q(file.clone())),
        format!("image_folder={}", q(imgs)),
        format!("output_dir={}", q(out.display().to_string())),
        "max_steps=1".into(),
        "lora_r=4".into(),
        "pretrain_mm_mlp_adapter=\"\"".into(),
    ];
    let err = one_error(&args);
    assert!(
        err.contains(&format!(
            "{file}: record 0 (id \"climb\"): image: \"../../../../../../etc/passwd\" climbs"
        )),
        "{err}"
    );
    assert!(err.contains("--allow-outside-paths"), "{err}");
    // Nothing was trained or written.
    assert!(
        !out.join("train_log.jsonl").exists(),
        "{:?}",
        std::fs::read_dir(&out).map(|r| r.count())
    );
}

#[test]
fn score_refuses_request_images_outside_the_image_folder() {
    let (d, _file, imgs) = hostile_setup();
    let requests = d.path().join("requests.jsonl");
    std::fs::write(
        &requests,
        concat!(
            r#"{"context": "<image>\nQ", "continuation": " A", "image": "ok.jpg"}"#,
            "\n",
            r#"{"context": "<image>\nQ", "continuation": " A", "image": "../train.jsonl"}"#,
            "\n"
        ),
    )
    .unwrap();
    let req = requests.display().to_string();
    let err = one_error(&[
        "score",
        "--model",
        &path("tests/fixtures/mm_eval/tiny-llava-hf-2k"),
        "--requests",
        &req,
        "--image-folder",
        &imgs,
    ]);
    assert!(
        err.starts_with(&format!(
            "error: {req}:2: field `image`: \"../train.jsonl\" climbs"
        )),
        "{err}"
    );
}

#[test]
fn eval_refuses_task_images_outside_the_image_root() {
    let (d, _file, imgs) = hostile_setup();
    let data = d.path().join("data");
    std::fs::create_dir_all(data.join("pope")).unwrap();
    let pope = data.join("pope/coco_pope_random.json");
    std::fs::write(
        &pope,
        concat!(
            r#"{"question_id": 1, "image": "ok.jpg", "text": "Is there a cat?", "label": "yes"}"#,
            "\n",
            r#"{"question_id": 2, "image": "/etc/hostname", "text": "Is there a cat?", "label": "no"}"#,
            "\n"
        ),
    )
    .unwrap();
    let out = d.path().join("out");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "eval".to_string(),
            "--model".into(),
            path("tests/fixtures/mm_eval/tiny-llava-hf-2k"),
            "--tasks".into(),
            "pope_random".into(),
            "--data-dir".into(),
            data.display().to_string(),
            "--image-root".into(),
            imgs.clone(),
            "--output".into(),
            out.display().to_string(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let err = one_error(&args(&[]));
    assert!(
        err.contains(&format!(
            "{}: record 2: field `image`: \"/etc/hostname\" is an absolute path",
            pope.display()
        )),
        "{err}"
    );
    assert!(!out.join("results.json").exists());
}

/// A study file's corruption names become step folders (`eval-<label>-<corruption>-<sev>`): one
/// that would climb out of the study folder is refused before anything is planned or written.
#[test]
fn study_refuses_a_corruption_name_that_would_leave_its_folder() {
    let d = tmp();
    let study = d.path().join("x.toml");
    std::fs::write(
        &study,
        "[[base]]\nname = 'a'\nmodel = 'builtin:stories260k'\n\
         [eval.corrupt]\ncorruptions = ['../../../x']\nseverities = [1]\n",
    )
    .unwrap();
    let dir = d.path().join("study");
    let o = sightline(&[
        "study",
        "--config",
        &study.display().to_string(),
        "--dir",
        &dir.display().to_string(),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("x.toml") && err.contains("corruption `../../../x`"),
        "{err}"
    );
    assert!(!dir.exists(), "a refused study wrote {}", dir.display());
}
