//! `sightline eval` on image tasks with the tiny LLaVA fixtures (context widened to 2,048
//! positions in `tests/fixtures/mm_eval/`, since SBT's `v0` prompt with its canned example is
//! ~1,100 positions there): the two "done when" commands, the results schema they share
//! with the text tasks, the per-sample log, and the one-line errors. The tasks that read
//! user-supplied data, the caption metrics and `--corrupt` are in `mm_eval_tasks.rs`.

mod mm_eval_support;

use mm_eval_support::*;

#[test]
fn sketchy_runs_offline_on_the_bundled_sketches() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    let o = sightline(&[
        "eval",
        "--model",
        &path("tests/fixtures/mm_eval/tiny-llava-hf-2k"),
        "--tasks",
        "unicorn_sketchy_vqa",
        "--skip-missing-images",
        "--output",
        out.to_str().unwrap(),
        "--log-samples",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o)
            .contains("unicorn_sketchy_vqa: skipped 3960 of 4000 records whose image is missing"),
        "{}",
        stderr(&o)
    );
    let r = read_json(&out.join("results.json"));
    // Same schema as the text tasks.
    let keys: Vec<String> = r.as_object().unwrap().keys().cloned().collect();
    assert_eq!(keys, nlp_results_keys(tmp.path()));
    assert_eq!(
        r["n-samples"]["unicorn_sketchy_vqa"],
        serde_json::json!({"original": 4000, "effective": 40, "skipped_missing_images": 3960})
    );
    let res = &r["results"]["unicorn_sketchy_vqa"];
    for m in ["acc", "precision", "recall", "f1", "yes_ratio", "nan_ratio"] {
        assert!(res.get(format!("{m},none")).is_some(), "{m}: {res}");
    }
    assert_eq!(r["config"]["multimodal"]["protocol"]["name"], "sbt");
    assert_eq!(r["config"]["multimodal"]["protocol"]["template"], "v0");
    let s = samples(&out.join("samples_unicorn_sketchy_vqa.jsonl"));
    assert_eq!(s.len(), 40);
    for rec in &s {
        let ctx = rec["arguments"][0]["context"].as_str().unwrap();
        let q = rec["doc"]["question"].as_str().unwrap();
        assert!(ctx.ends_with(&format!("###Human: <image>\n{q}###Assistant:")));
        assert!(rec["resps"][0].is_string());
        let a = rec["filtered_resps"][0].as_str().unwrap();
        assert!(["yes", "no", "nan"].contains(&a), "{a}");
        assert!(rec["doc"]["image_ref"]
            .as_str()
            .unwrap()
            .starts_with("bundled:unicorn/sketchy-vqa/images/skechydata/"));
    }
    // The nan ratio is the fraction of `nan` answers in the log.
    let nan = s.iter().filter(|x| x["filtered_resps"][0] == "nan").count() as f64 / 40.0;
    assert!((res["nan_ratio,none"].as_f64().unwrap() - nan).abs() < 1e-12);
}

#[test]
fn pope_random_with_an_image_root_and_a_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("coco");
    std::fs::create_dir(&images).unwrap();
    pope_image_root(&images);
    let out = tmp.path().join("out");
    // Original layout: `<image>` becomes `<im_start><image><im_end>` (mm_use_im_start_end).
    let o = sightline(&[
        "eval",
        "--model",
        &path("tests/fixtures/mm_eval/tiny-llava-orig-2k"),
        "--vision-tower",
        &path("tests/fixtures/llava/tiny-clip"),
        "--tasks",
        "pope_random",
        "--image-root",
        images.to_str().unwrap(),
        "--limit",
        "50",
        "--output",
        out.to_str().unwrap(),
        "--log-samples",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = read_json(&out.join("results.json"));
    assert_eq!(
        r["n-samples"]["pope_random"],
        serde_json::json!({"original": 3000, "effective": 50, "skipped_missing_images": 0})
    );
    let s = samples(&out.join("samples_pope_random.jsonl"));
    assert_eq!(s.len(), 50);
    // acc and yes_ratio agree with the logged answers and labels.
    let yes = s.iter().filter(|x| x["filtered_resps"][0] == "yes").count() as f64;
    let correct = s
        .iter()
        .filter(|x| x["filtered_resps"][0] == x["doc"]["label"])
        .count() as f64;
    let res = &r["results"]["pope_random"];
    assert!((res["yes_ratio,none"].as_f64().unwrap() - yes / 50.0).abs() < 1e-12);
    assert!((res["acc,none"].as_f64().unwrap() - correct / 50.0).abs() < 1e-12);
    for m in ["precision", "recall", "f1"] {
        assert_eq!(res[format!("{m}_stderr,none")], "N/A");
    }
}

#[test]
fn greedy_protocol_is_deterministic_across_batch_sizes() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("coco");
    std::fs::create_dir(&images).unwrap();
    pope_image_root(&images);
    let run = |bs: &str| {
        let out = tmp.path().join(format!("out{bs}"));
        let o = sightline(&[
            "eval",
            "--model",
            &path("tests/fixtures/mm_eval/tiny-llava-hf-2k"),
            "--tasks",
            "pope",
            "--image-root",
            images.to_str().unwrap(),
            "--limit",
            "6",
            "--protocol",
            "greedy",
            "--batch-size",
            bs,
            "--output",
            out.to_str().unwrap(),
            "--log-samples",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let r = read_json(&out.join("results.json"));
        assert_eq!(r["config"]["multimodal"]["protocol"]["name"], "greedy");
        assert_eq!(
            r["group_subtasks"]["pope"],
            serde_json::json!(["pope_random", "pope_popular", "pope_adversarial"])
        );
        let golden = read_json(&root().join("tests/fixtures/mm_eval/golden.json"));
        let mut all = Vec::new();
        for split in ["pope_random", "pope_popular", "pope_adversarial"] {
            let s = samples(&out.join(format!("samples_{split}.jsonl")));
            let ctx = s[0]["arguments"][0]["context"].as_str().unwrap();
            assert!(
                ctx.ends_with("\nAnswer the question using a single word or phrase.###Assistant:")
            );
            // Same answers as transformers' greedy `generate` on the same prompt and image.
            let want = golden["pope_greedy"][split].as_array().unwrap();
            assert_eq!(s.len(), want.len());
            for (got, want) in s.iter().zip(want) {
                assert_eq!(got["doc_id"], want["record"], "{split}");
                let raw = got["resps"][0].as_str().unwrap();
                assert_eq!(
                    raw.split("###").next().unwrap().trim(),
                    want["answer"],
                    "{split}"
                );
            }
            all.extend(
                s.iter()
                    .map(|x| x["resps"][0].as_str().unwrap().to_string()),
            );
        }
        all
    };
    assert_eq!(run("1"), run("8"));
}

#[test]
fn missing_images_and_wrong_models_are_one_line_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let model = path("tests/fixtures/mm_eval/tiny-llava-hf-2k");
    let check = |args: &[&str], want: &str| {
        let o = sightline(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let e = stderr(&o);
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(e.starts_with("error: ") && e.contains(want), "{e}");
    };
    // A record whose image is missing names the task, the record and the path.
    check(
        &[
            "eval",
            "--model",
            &model,
            "--tasks",
            "pope_random",
            "--image-root",
            empty.to_str().unwrap(),
            "--limit",
            "3",
        ],
        "pope_random: record ",
    );
    check(
        &[
            "eval",
            "--model",
            &model,
            "--tasks",
            "pope_random",
            "--image-root",
            empty.to_str().unwrap(),
            "--limit",
            "3",
        ],
        "COCO_val2014_",
    );
    // With the flag but no image at all, say where images should be.
    check(
        &[
            "eval",
            "--model",
            &model,
            "--tasks",
            "pope_random",
            "--image-root",
            empty.to_str().unwrap(),
            "--skip-missing-images",
        ],
        "not found",
    );
    check(
        &["eval", "--model", &model, "--tasks", "pope_random"],
        "pass --image-root DIR",
    );
    check(
        &[
            "eval",
            "--model",
            "builtin:stories260k",
            "--tasks",
            "unicorn_sketchy_vqa",
            "--skip-missing-images",
        ],
        "text-only model",
    );
    check(
        &[
            "eval",
            "--model",
            &model,
            "--tasks",
            "unicorn_sketchy_vqa,ethics_cm",
            "--skip-missing-images",
        ],
        "separate",
    );
}
