//! `sightline data strip-images|convert|sample|groups` end to end on the real samples in
//! data/training/, checked against the Python reference outputs in tests/fixtures/data/.

mod data_support;

use std::path::{Path, PathBuf};

use data_support::*;
use serde_json::Value;

#[test]
fn strip_images_is_the_spec_rule_and_never_overwrites() {
    let d = tmp();
    let out = d.path().join("pretrain_text.json");
    let o = ok(&[
        "data",
        "strip-images",
        &path(PRETRAIN),
        "-o",
        &out.display().to_string(),
    ]);
    assert!(
        stderr(&o).contains("100 images and 100 <image> placeholders removed"),
        "{}",
        stderr(&o)
    );
    assert_eq!(read_json(&out), fixture("pretrain_stripped.json"));
    ok(&["data", "validate", &out.display().to_string()]);
    trains_under(&out, "v1");
    trains_under(&out, "llava_llama_2");

    let e = one_error(&[
        "data",
        "strip-images",
        &path(PRETRAIN),
        "-o",
        &out.display().to_string(),
    ]);
    assert!(
        e.ends_with("already exists (pass --overwrite to replace it)"),
        "{e}"
    );
    ok(&[
        "data",
        "strip-images",
        &path(PRETRAIN),
        "-o",
        &out.display().to_string(),
        "--overwrite",
    ]);
    // No temporary file is left behind.
    assert_eq!(
        std::fs::read_dir(d.path()).map(|r| r.count()).unwrap_or(0),
        1
    );

    // stdout gets JSON Lines.
    let o = ok(&["data", "strip-images", &path(PRETRAIN)]);
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(Value::Array(lines), fixture("pretrain_stripped.json"));
}

// Long, but a flat list of cases (a command, then what it must print or write), read
// top to bottom; splitting it would only scatter the cases.
#[test]
fn convert_alpaca_orca_sharegpt_and_llava_qa() {
    let d = tmp();
    let out = |name: &str| d.path().join(name);
    let s = |p: &Path| p.display().to_string();

    ok(&[
        "data",
        "convert",
        "alpaca",
        &path(ALPACA),
        "-o",
        &s(&out("alpaca.json")),
    ]);
    assert_eq!(
        read_json(&out("alpaca.json")),
        fixture("alpaca_converted.json")
    );
    ok(&[
        "data",
        "convert",
        "orca",
        &path(ORCA),
        "-o",
        &s(&out("orca.json")),
    ]);
    assert_eq!(read_json(&out("orca.json")), fixture("orca_converted.json"));
    for f in ["alpaca.json", "orca.json"] {
        ok(&["data", "validate", &s(&out(f))]);
        trains_under(&out(f), "v1");
        trains_under(&out(f), "llava_llama_2");
    }

    // The other documented choices.
    ok(&[
        "data",
        "convert",
        "alpaca",
        &path(ALPACA),
        "--alpaca-prompt",
        "plain",
        "-o",
        &s(&out("plain.json")),
    ]);
    let plain = records(&out("plain.json"));
    assert_eq!(plain[0]["conversations"][0]["value"], "Check if the following Facebook post is appropriate\nI think my boss is the meanest person ever.");
    ok(&[
        "data",
        "convert",
        "orca",
        &path(ORCA),
        "--system",
        "drop",
        "-o",
        &s(&out("nosys.json")),
    ]);
    let nosys = records(&out("nosys.json"));
    assert!(!nosys[0]["conversations"][0]["value"]
        .as_str()
        .unwrap_or("")
        .starts_with("You are an AI assistant"));

    // ShareGPT: roles mapped, system prepended, a broken record skipped on request.
    let share = out("share.jsonl");
    std::fs::write(
        &share,
        concat!(
            r#"{"id": "s1", "conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}"#, "\n",
            r#"{"id": "s2", "conversations": [{"from": "human", "value": "A"}, {"from": "human", "value": "B"}]}"#, "\n",
            r#"{"id": "s3", "messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "R"}]}"#, "\n",
        ),
    )
    .unwrap();
    let e = one_error(&["data", "convert", "sharegpt", &s(&share)]);
    assert!(
        e.contains("record 1 (id \"s2\"): conversations[1]: expected an assistant/gpt turn"),
        "{e}"
    );
    let o = ok(&["data", "convert", "sharegpt", &s(&share), "--skip-invalid"]);
    let got: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["conversations"][0]["value"], "Be kind.\n\nHi");
    assert_eq!(got[1]["id"], "s3");
    assert!(stderr(&o).contains("1 skipped as invalid"));

    // LLaVA-Bench QA by type: 30 images × one question of each type.
    for ty in ["conv", "detail", "complex"] {
        ok(&[
            "data",
            "convert",
            "llava-qa",
            &path(QA),
            "--type",
            ty,
            "-o",
            &s(&out(&format!("{ty}.json"))),
        ]);
        let r = records(&out(&format!("{ty}.json")));
        assert_eq!(r.len(), 30);
        assert!(r[0]["conversations"][0]["value"]
            .as_str()
            .unwrap_or("")
            .starts_with("<image>\n"));
        trains_under(&out(&format!("{ty}.json")), "v1");
    }
}

#[test]
fn sample_is_seeded_a_subset_and_the_documented_algorithm() {
    let d = tmp();
    let alpaca = d.path().join("alpaca.json");
    ok(&[
        "data",
        "convert",
        "alpaca",
        &path(ALPACA),
        "-o",
        &alpaca.display().to_string(),
    ]);
    let run = |n: &str, seed: &str| -> Vec<u8> {
        ok(&[
            "data",
            "sample",
            &alpaca.display().to_string(),
            "-n",
            n,
            "--seed",
            seed,
        ])
        .stdout
    };
    let a = run("10", "42");
    assert_eq!(a, run("10", "42"), "same seed, same bytes");
    assert_ne!(a, run("10", "43"));
    let picked: Vec<Value> = String::from_utf8_lossy(&a)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    let all = records(&alpaca);
    assert_eq!(picked.len(), 10);
    assert!(
        picked.iter().all(|r| all.contains(r)),
        "a subset of the input"
    );
    // The indices the independent Python ChaCha20 implementation picks (sample.json, case 0);
    // alpaca ids are 1-based positions.
    let golden = fixture("sample.json");
    let want: Vec<String> = golden[0]["indices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| (i.as_u64().unwrap() + 1).to_string())
        .collect();
    assert_eq!(
        (
            golden[0]["total"].as_u64(),
            golden[0]["n"].as_u64(),
            golden[0]["seed"].as_u64()
        ),
        (Some(100), Some(10), Some(42))
    );
    let got: Vec<String> = picked
        .iter()
        .map(|r| r["id"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(got, want);
    // More than there is: all of it.
    let o = ok(&[
        "data",
        "sample",
        &alpaca.display().to_string(),
        "-n",
        "1000",
        "-o",
        &d.path().join("all.json").display().to_string(),
    ]);
    assert_eq!(records(&d.path().join("all.json")), all);
    assert!(stderr(&o).contains("only 100 records, all kept"));
}

#[test]
fn groups_sample_each_source_file() {
    let d = tmp();
    let s = |p: PathBuf| p.display().to_string();
    let src = |ty: &str| d.path().join(format!("{ty}.json"));
    for ty in ["conv", "detail", "complex"] {
        ok(&[
            "data",
            "convert",
            "llava-qa",
            &path(QA),
            "--type",
            ty,
            "-o",
            &s(src(ty)),
        ]);
    }
    let out = d.path().join("groups");
    let args = |extra: &[&str]| {
        let mut v = vec![
            "data".to_string(),
            "groups".into(),
            "--conversation".into(),
            s(src("conv")),
            "--detail".into(),
            s(src("detail")),
            "--reasoning".into(),
            s(src("complex")),
            "-n".into(),
            "12".into(),
            "--seed".into(),
            "5".into(),
        ];
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    ok(&args(&["--output-dir", &s(out.clone())]));
    for (group, ty) in [
        ("conversation", "conv"),
        ("detail", "detail"),
        ("reasoning", "complex"),
    ] {
        let file = out.join(format!("{group}_12.json"));
        let got = records(&file);
        assert_eq!(got.len(), 12);
        // A group is exactly `sample -n 12 --seed 5` of its source file.
        let o = ok(&[
            "data",
            "sample",
            &s(src(ty)),
            "-n",
            "12",
            "--seed",
            "5",
            "--format",
            "json",
        ]);
        assert_eq!(
            Value::Array(got),
            serde_json::from_slice::<Value>(&o.stdout).expect("json")
        );
        ok(&["data", "validate", &s(file.clone())]);
        trains_under(&file, "llava_llama_2");
    }
    // Existing outputs are kept unless --overwrite; --text-only strips the images.
    let e = one_error(&args(&["--output-dir", &s(out.clone())]));
    assert!(e.contains("already exists"), "{e}");
    let text = d.path().join("text");
    ok(&args(&["--output-dir", &s(text.clone()), "--text-only"]));
    let r = records(&text.join("detail_12.json"));
    assert!(r
        .iter()
        .all(|r| r.get("image").is_none() && !r.to_string().contains("<image>")));
    trains_under(&text.join("detail_12.json"), "v1");
    // A source file passed to the wrong flag is refused.
    let swapped = d.path().join("detail_23k.json");
    std::fs::copy(src("detail"), &swapped).unwrap();
    let mut a = args(&["--output-dir", &s(d.path().join("x"))]);
    a[3] = s(swapped);
    let e = one_error(&a);
    assert!(
        e.contains("passed as --conversation but it is LLaVA-Instruct's detail file"),
        "{e}"
    );
}
