//! Parity of the multimodal metrics with their references: every value in
//! tests/fixtures/mm_metrics/mm_metrics.json (written by
//! scripts/reference/make_mm_metric_fixtures.py: pycocoevalcap 1.2 with the Java PTBTokenizer for
//! captions; SBT's vqa/pope/mme metric code for the rest) must be reproduced within 1e-9.

use std::collections::HashMap;

use serde_json::Value;
use sightline_metrics::{caption, mme, pope, vqa};

const TOL: f64 = 1e-9;

fn golden() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/mm_metrics/mm_metrics.json"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {path}: {e}"))
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("{v} is not a string"))
}

fn f64_of(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("{v} is not a number"))
}

fn arr(v: &Value) -> &Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("{v} is not an array"))
}

fn strings(v: &Value) -> Vec<String> {
    arr(v).iter().map(|x| str_of(x).to_owned()).collect()
}

fn close(name: &str, got: f64, want: &Value) {
    if want.is_null() {
        assert!(got.is_nan(), "{name}: want null (Python raises), got {got}");
    } else {
        let w = f64_of(want);
        assert!((got - w).abs() <= TOL, "{name}: got {got}, want {w}");
    }
}

/// `(image id, caption)` candidates and each image's references.
type CaptionInputs = (Vec<(String, String)>, HashMap<String, Vec<String>>);

fn caption_inputs(case: &Value) -> CaptionInputs {
    let cands = arr(&case["candidates"])
        .iter()
        .map(|p| (str_of(&p[0]).to_owned(), str_of(&p[1]).to_owned()))
        .collect();
    let refs = case["references"]
        .as_object()
        .expect("references is an object")
        .iter()
        .map(|(k, v)| (k.clone(), strings(v)))
        .collect();
    (cands, refs)
}

#[test]
fn ptb_tokenizer_agrees_with_corenlp() {
    let g = golden();
    let lines = arr(&g["ptb"]);
    let mut mismatches = Vec::new();
    for l in lines {
        let text = str_of(&l["text"]);
        let want = str_of(&l["tokens"]);
        let got = caption::ptb_tokenize::tokenize(text);
        if got != want {
            mismatches.push(format!("{text:?}\n   got  {got:?}\n   want {want:?}"));
        }
    }
    let agree = 1.0 - mismatches.len() as f64 / lines.len() as f64;
    eprintln!(
        "PTB: {}/{} lines identical ({:.2}%)",
        lines.len() - mismatches.len(),
        lines.len(),
        100.0 * agree
    );
    for m in &mismatches {
        eprintln!(" {m}");
    }
    // spec E5.6: aim for >= 99.5% identical lines.
    assert!(agree >= 0.995, "{} mismatches", mismatches.len());
}

#[test]
fn caption_scores_on_java_tokens() {
    // The scorers alone, fed pycocoevalcap's own tokenised candidates; the references are
    // tokenised here, where the PTB test above shows they agree.
    let g = golden();
    for case in arr(&g["caption"]) {
        let name = str_of(&case["name"]);
        let (cands, refs) = caption_inputs(case);
        let tok_res = &case["tokenized_res"];
        let pre: Vec<(String, String)> = cands
            .iter()
            .map(|(id, _)| (id.clone(), str_of(&tok_res[id][0]).to_owned()))
            .collect();
        let pre_refs: HashMap<String, Vec<String>> = refs
            .iter()
            .map(|(k, v)| {
                let t = v
                    .iter()
                    .map(|c| caption::ptb_tokenize::tokenize(c))
                    .collect();
                (k.clone(), t)
            })
            .collect();
        let s = caption::score_pretokenized(&pre, &pre_refs).expect("valid case");
        check_caption(name, &s, case);
    }
}

#[test]
fn caption_scores_end_to_end() {
    let g = golden();
    for case in arr(&g["caption"]) {
        let name = str_of(&case["name"]);
        let (cands, refs) = caption_inputs(case);
        let s = caption::score(&cands, &refs).expect("valid case");
        check_caption(name, &s, case);
    }
}

fn check_caption(name: &str, s: &caption::CaptionScores, case: &Value) {
    for k in 0..4 {
        close(
            &format!("{name} BLEU-{}", k + 1),
            s.bleu[k],
            &case["bleu"][k],
        );
    }
    close(&format!("{name} ROUGE-L"), s.rouge_l, &case["rouge_l"]);
    close(&format!("{name} CIDEr-D"), s.cider_d, &case["cider_d"]);
    for (i, img) in s.per_image.iter().enumerate() {
        for k in 0..4 {
            close(
                &format!("{name} {} BLEU-{}", img.id, k + 1),
                img.bleu[k],
                &case["bleu_per_image"][i][k],
            );
        }
        close(
            &format!("{name} {} ROUGE-L", img.id),
            img.rouge_l,
            &case["rouge_l_per_image"][i],
        );
        close(
            &format!("{name} {} CIDEr-D", img.id),
            img.cider_d,
            &case["cider_d_per_image"][i],
        );
    }
    assert!(s.meteor.is_none() && s.spice.is_none());
}

#[test]
fn vqa_matches_official_eval() {
    let g = golden();
    let v = &g["vqa"];
    for n in arr(&v["normalize"]) {
        let text = str_of(&n["text"]);
        assert_eq!(vqa::normalize(text), str_of(&n["normalized"]), "{text:?}");
    }
    for c in arr(&v["cases"]) {
        let answer = str_of(&c["answer"]);
        let ann = strings(&c["annotators"]);
        close(
            &format!("vqa {answer:?} vs {ann:?}"),
            vqa::accuracy(answer, &ann),
            &c["accuracy"],
        );
    }
    for p in arr(&v["postprocess"]) {
        let text = str_of(&p["text"]);
        assert_eq!(
            vqa::postprocess_generation(text),
            str_of(&p["processed"]),
            "{text:?}"
        );
    }
}

#[test]
fn pope_matches_sbt() {
    let g = golden();
    let p = &g["pope"];
    let templates = strings(&p["templates"]);
    for (t, parsed) in templates.iter().zip(arr(&p["parsed"])) {
        assert_eq!(pope::parse_answer(t), str_of(parsed) == "yes", "{t:?}");
    }
    for split in arr(&p["splits"]) {
        let name = str_of(&split["name"]);
        let labels: Vec<bool> = str_of(&split["labels"]).chars().map(|c| c == 'y').collect();
        let preds: Vec<&str> = arr(&split["answers"])
            .iter()
            .map(|i| templates[i.as_u64().expect("index") as usize].as_str())
            .collect();
        let s = pope::score(&preds, &labels).expect("same lengths");
        let counts = [("tp", s.tp), ("fp", s.fp), ("tn", s.tn), ("fn", s.fn_)];
        for (k, got) in counts {
            assert_eq!(got as u64, split[k].as_u64().expect("count"), "{name} {k}");
        }
        close(&format!("{name} acc"), s.accuracy, &split["acc"]);
        close(
            &format!("{name} precision"),
            s.precision,
            &split["precision"],
        );
        close(&format!("{name} recall"), s.recall, &split["recall"]);
        close(&format!("{name} f1"), s.f1, &split["f1"]);
        close(
            &format!("{name} yes_ratio"),
            s.yes_ratio,
            &split["yes_ratio"],
        );
    }
}

#[test]
fn mme_matches_sbt() {
    let g = golden();
    let m = &g["mme"];
    let tasks: Vec<(String, Vec<String>)> = m["tasks"]
        .as_object()
        .expect("tasks is an object")
        .iter()
        .map(|(k, v)| (k.clone(), strings(v)))
        .collect();
    let borrowed: Vec<(&str, &[String])> = tasks
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_slice()))
        .collect();
    let s = mme::score(&borrowed).expect("well-formed tasks");
    let r = &m["result"];
    close("perception", s.perception, &r["Perception"]["score"]);
    close("cognition", s.cognition, &r["Cognition"]["score"]);
    for (task, t) in &s.tasks {
        let group = if mme::PERCEPTION.contains(&task.as_str()) {
            "Perception"
        } else {
            "Cognition"
        };
        let want = &r[group]["tasks"][task];
        close(&format!("{task} acc"), t.acc, &want["acc"]);
        close(&format!("{task} acc_plus"), t.acc_plus, &want["acc_plus"]);
        close(&format!("{task} score"), t.score, &want["score"]);
        close(
            &format!("{task} precision"),
            t.precision,
            &want["precision"],
        );
        close(&format!("{task} recall"), t.recall, &want["recall"]);
        let counts = [
            ("tp", t.tp),
            ("fn", t.fn_),
            ("tn", t.tn),
            ("fp", t.fp),
            ("other_num", t.other_num),
        ];
        for (k, got) in counts {
            assert_eq!(got as u64, want[k].as_u64().expect("count"), "{task} {k}");
        }
    }
}
