//! `sightline eval` on the image tasks whose data the user supplies (Unicorn OODCV, VQAv2, MME),
//! the caption tasks, and `--corrupt`, with the tiny LLaVA fixtures of `tests/fixtures/mm_eval/`.

mod mm_eval_support;

use mm_eval_support::*;
use serde_json::Value;

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
            photo_at(&photo, &oodcv, &dest);
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
        photo_at(
            &photo,
            &coco,
            &coco.join(format!("COCO_val2014_{i:012}.jpg")),
        );
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
