//! `sightline eval` on image tasks with the tiny LLaVA fixtures (context widened to 2,048
//! positions in `tests/fixtures/mm_eval/`, since SBT's `v0` prompt with its canned example is
//! ~1,100 positions there): the two "done when" commands, the results schema they share
//! with the text tasks, the per-sample log, and the one-line errors.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn path(rel: &str) -> String {
    root().join(rel).display().to_string()
}

fn sightline(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_sightline"))
        .args(args)
        .output()
        .expect("runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn samples(p: &Path) -> Vec<Value> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// A folder with every image POPE's random split names, each a copy of a real photo.
fn pope_image_root(dir: &Path) {
    let text = std::fs::read_to_string(root().join("data/pope/coco_pope_random.json")).unwrap();
    let photo = root().join("data/llava/examples/extreme_ironing.jpg");
    for line in text.lines() {
        let rec: Value = serde_json::from_str(line).unwrap();
        let name = rec["image"].as_str().unwrap();
        let dest = dir.join(name);
        if !dest.exists() {
            std::os::unix::fs::symlink(&photo, &dest).unwrap();
        }
    }
}

/// The top-level keys and `n-samples` shape of a text task's results.json.
fn nlp_results_keys(tmp: &Path) -> Vec<String> {
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

#[test]
fn oodcv_and_vqav2_run_on_user_supplied_data() {
    let tmp = tempfile::tempdir().unwrap();
    let photo = root().join("data/llava/examples/extreme_ironing.jpg");
    // OODCV: every image the counterfactual file names, as the photo.
    let oodcv = tmp.path().join("oodcv");
    let recs: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("data/unicorn/oodcv-vqa/oodcv-counterfactual.json"))
            .unwrap(),
    )
    .unwrap();
    for r in recs.as_array().unwrap() {
        let dest = oodcv.join(r["image"].as_str().unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        if !dest.exists() {
            std::os::unix::fs::symlink(&photo, &dest).unwrap();
        }
    }
    // VQAv2: 7,048 synthetic val2014-shaped questions (the subset needs that many) and images.
    let coco = tmp.path().join("coco");
    std::fs::create_dir(&coco).unwrap();
    let n = 7048;
    let qs: Vec<Value> = (0..n)
        .map(|i| serde_json::json!({"question_id": i, "image_id": i, "question": format!("What is {i}?")}))
        .collect();
    let anns: Vec<Value> = (0..n)
        .map(|i| {
            let answers: Vec<Value> = (0..10).map(|_| serde_json::json!({"answer": "2"})).collect();
            serde_json::json!({"question_id": i, "answer_type": "number", "question_type": "what", "answers": answers})
        })
        .collect();
    for i in 0..n {
        std::os::unix::fs::symlink(&photo, coco.join(format!("COCO_val2014_{i:012}.jpg"))).unwrap();
    }
    let qf = tmp.path().join("q.json");
    let af = tmp.path().join("a.json");
    std::fs::write(&qf, serde_json::json!({"questions": qs}).to_string()).unwrap();
    std::fs::write(&af, serde_json::json!({"annotations": anns}).to_string()).unwrap();
    let model = path("tests/fixtures/mm_eval/tiny-llava-hf-2k");
    for (task, extra, metric) in [
        (
            "unicorn_oodcv_counterfactual",
            vec!["--image-root", oodcv.to_str().unwrap()],
            "bad_texts_ratio",
        ),
        (
            "vqav2",
            vec![
                "--image-root",
                coco.to_str().unwrap(),
                "--vqav2-questions",
                qf.to_str().unwrap(),
                "--vqav2-annotations",
                af.to_str().unwrap(),
            ],
            "acc_number",
        ),
    ] {
        let out = tmp.path().join(format!("out-{task}"));
        let mut args = vec![
            "eval",
            "--model",
            &model,
            "--tasks",
            task,
            "--limit",
            "4",
            "--protocol",
            "greedy",
            "--output",
            out.to_str().unwrap(),
            "--log-samples",
        ];
        args.extend(extra);
        let o = sightline(&args);
        assert!(o.status.success(), "{task}: {}", stderr(&o));
        let r = read_json(&out.join("results.json"));
        assert_eq!(r["n-samples"][task]["effective"], 4, "{task}");
        assert!(
            r["results"][task].get(format!("{metric},none")).is_some(),
            "{task}"
        );
        let s = samples(&out.join(format!("samples_{task}.jsonl")));
        assert_eq!(s.len(), 4);
        assert!(s.iter().all(|x| !x["filtered_resps"][0].is_null()));
    }
}

#[test]
fn mme_reads_a_user_supplied_folder_and_says_when_it_is_absent() {
    let tmp = tempfile::tempdir().unwrap();
    let mme = tmp.path().join("MME_Benchmark_release_version");
    let photo = root().join("data/llava/examples/extreme_ironing.jpg");
    let sketch = root().join("data/unicorn/sketchy-vqa/images/skechydata/sketchespng/dog/5291.png");
    let perception = [
        "existence",
        "count",
        "position",
        "color",
        "posters",
        "celebrity",
        "scene",
        "OCR",
    ];
    let cognition = [
        "commonsense_reasoning",
        "numerical_calculation",
        "text_translation",
        "code_reasoning",
    ];
    for t in perception.iter().chain(cognition.iter()) {
        let (img, ext) = if perception.contains(t) {
            (&photo, "jpg")
        } else {
            (&sketch, "png")
        };
        let dir = mme.join(t);
        std::fs::create_dir_all(&dir).unwrap();
        for k in 1..=2 {
            std::fs::write(
                dir.join(format!("{k}.txt")),
                "Is this a dog? Please answer yes or no.\tYes\nIs this a cat? Please answer yes or no.\tNo\n",
            )
            .unwrap();
            std::fs::copy(img, dir.join(format!("{k}.{ext}"))).unwrap();
        }
    }
    let model = path("tests/fixtures/mm_eval/tiny-llava-hf-2k");
    let out = tmp.path().join("out");
    let o = sightline(&[
        "eval",
        "--model",
        &model,
        "--tasks",
        "mme",
        "--mme-dir",
        mme.to_str().unwrap(),
        "--protocol",
        "greedy",
        "--output",
        out.to_str().unwrap(),
        "--log-samples",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = read_json(&out.join("results.json"));
    let res = &r["results"]["mme"];
    assert_eq!(r["n-samples"]["mme"]["effective"], 48);
    let sum: f64 = perception
        .iter()
        .map(|t| res[format!("{t}_score,none")].as_f64().unwrap())
        .sum();
    assert!((res["perception,none"].as_f64().unwrap() - sum).abs() < 1e-9);
    assert!(res["cognition,none"].as_f64().is_some());
    let s = samples(&out.join("samples_mme.jsonl"));
    assert!(s
        .iter()
        .all(|x| ["yes", "no", "other"].contains(&x["filtered_resps"][0].as_str().unwrap())));

    let o = sightline(&["eval", "--model", &model, "--tasks", "mme"]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(
        e.starts_with("error: ") && e.contains("--mme-dir") && e.lines().count() == 1,
        "{e}"
    );
}

#[test]
fn captions_score_without_meteor_and_spice() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("flickr30k");
    std::fs::create_dir_all(dir.join("test_images")).unwrap();
    let train: Vec<Value> = (0..5000)
        .map(|i| serde_json::json!({"image_name": format!("t{i}.jpg"), "captions": [format!("a photo number {i}")]}))
        .collect();
    let test: Vec<Value> = (0..3)
        .map(|i| serde_json::json!({"image_name": format!("x{i}.jpg"), "captions": ["a man irons clothes on a taxi", "a man ironing on the back of a car"]}))
        .collect();
    std::fs::write(
        dir.join("flickr30k_train.json"),
        Value::from(train).to_string(),
    )
    .unwrap();
    std::fs::write(
        dir.join("flickr30k_test.json"),
        Value::from(test).to_string(),
    )
    .unwrap();
    for i in 0..3 {
        std::fs::copy(
            root().join("data/llava/examples/extreme_ironing.jpg"),
            dir.join(format!("test_images/x{i}.jpg")),
        )
        .unwrap();
    }
    let out = tmp.path().join("out");
    let o = sightline(&[
        "eval",
        "--model",
        &path("tests/fixtures/mm_eval/tiny-llava-hf-2k"),
        "--tasks",
        "flickr30k_caption",
        "--flickr30k-caption-dir",
        dir.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("METEOR and SPICE are absent"),
        "{}",
        stderr(&o)
    );
    let r = read_json(&out.join("results.json"));
    let res = r["results"]["flickr30k_caption"].as_object().unwrap();
    for m in ["BLEU_1", "BLEU_4", "ROUGE_L", "CIDEr"] {
        assert!(res.contains_key(&format!("{m},none")), "{m}");
    }
    assert!(!res
        .keys()
        .any(|k| k.contains("METEOR") || k.contains("SPICE")));
    assert_eq!(r["n-samples"]["flickr30k_caption"]["effective"], 3);
}

/// `--corrupt NAME:S`: results and samples are named by the corruption, the run records it,
/// and bad specs or text tasks are one-line errors.
#[test]
fn corrupt_flag_names_results_and_records_the_corruption() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("coco");
    std::fs::create_dir(&images).unwrap();
    pope_image_root(&images);
    let out = tmp.path().join("out");
    let args = |extra: &[&str]| {
        let mut v: Vec<String> = [
            "eval",
            "--model",
            &path("tests/fixtures/mm_eval/tiny-llava-hf-2k"),
            "--tasks",
            "pope_random",
            "--image-root",
            images.to_str().unwrap(),
            "--limit",
            "3",
            "--protocol",
            "greedy",
            "--output",
            out.to_str().unwrap(),
            "--log-samples",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    for spec in ["gaussian_noise:5", "snow:1"] {
        let a = args(&["--corrupt", spec]);
        let o = sightline(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(o.status.success(), "{}", stderr(&o));
        let (name, sev) = spec.split_once(':').unwrap();
        let r = read_json(&out.join(format!("results_{name}_{sev}.json")));
        let c = &r["config"]["multimodal"]["corruption"];
        assert_eq!(c["name"], name);
        assert_eq!(c["severity"].as_u64(), Some(sev.parse().unwrap()));
        assert!(out
            .join(format!("samples_pope_random_{name}_{sev}.jsonl"))
            .is_file());
    }
    assert!(!out.join("results.json").exists());
    for (bad, want) in [
        ("gaussian_nois:3", "unknown corruption"),
        ("snow:6", "1 to 5"),
        ("snow", "NAME:SEVERITY"),
    ] {
        let a = args(&["--corrupt", bad]);
        let o = sightline(&a.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(o.status.code(), Some(1));
        let err = stderr(&o);
        assert!(err.contains(want), "{bad}: {err}");
        assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1);
    }
    let o = sightline(&[
        "eval",
        "--tasks",
        "ethics_cm",
        "--limit",
        "1",
        "--corrupt",
        "snow:1",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("image tasks only"), "{}", stderr(&o));
}
