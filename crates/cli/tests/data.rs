//! `sightline data <verb>` end to end on the real samples in data/training/ (LLaVA-Pretrain,
//! LLaVA-Bench QA, Alpaca, Orca), checked against the Python reference outputs in
//! tests/fixtures/data/, and the one-line errors a new user gets for malformed inputs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn path(rel: &str) -> String {
    root().join(rel).display().to_string()
}

const PRETRAIN: &str = "data/training/llava/blip_laion_cc_sbu_100.json";
const QA: &str = "data/training/llava/coco2014_val_gpt4_qa_30x3.jsonl";
const ALPACA: &str = "data/training/alpaca/alpaca_small_100.json";
const ORCA: &str = "data/training/orca/orca_dpo_pairs_validation_30.jsonl";
const TINY_TOKENIZER: &str = "tests/fixtures/llava/tiny-llava-orig";

fn sightline<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    // Offline: a mistyped path that reads as a Hub id must not reach for the network.
    let o = Command::new(env!("CARGO_BIN_EXE_sightline"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("runs");
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "{err}");
    o
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Runs and expects success.
fn ok<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Output {
    let o = sightline(args);
    assert!(o.status.success(), "{}", stderr(&o));
    o
}

/// Runs and expects exit code 1 with exactly one line on stderr, `error: …`; returns it.
fn one_error<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    let o = sightline(args);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let err = stderr(&o);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    lines[0].to_string()
}

fn read_json(p: &Path) -> Value {
    let text = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn fixture(name: &str) -> Value {
    read_json(&root().join("tests/fixtures/data").join(name))
}

fn records(p: &Path) -> Vec<Value> {
    read_json(p).as_array().cloned().expect("a JSON array")
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Every record of `file` goes through LLaVA's preprocessing under `template` (what
/// `sightline train` will do with it): `stats` reports no rejected record.
fn trains_under(file: &Path, template: &str) {
    let o = ok(&[
        "data",
        "stats",
        &file.display().to_string(),
        "--tokenizer",
        &path(TINY_TOKENIZER),
        "--template",
        template,
        "--json",
    ]);
    let j: Value = serde_json::from_str(stdout(&o).trim()).expect("stats --json");
    let t = &j["tokens"];
    assert_eq!(t["failed"], 0, "{}: {template}: {j}", file.display());
    assert_eq!(t["samples"], j["records"]);
    assert!(t["trained_tokens"].as_u64().unwrap_or(0) > 0);
}

#[test]
fn validate_real_samples_and_their_images() {
    let pre = path(PRETRAIN);
    let o = ok(&["data", "validate", &pre]);
    assert!(stderr(&o).contains("100 records, 0 problems"));
    assert!(stderr(&o).contains("pass --image-folder"));

    // The LLaVA-Pretrain images are not shipped: every record names a missing file.
    let images = tmp();
    let folder = images.path().display().to_string();
    let o = sightline(&["data", "validate", &pre, "--image-folder", &folder]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 100);
    let first = out.lines().next().unwrap_or("");
    assert!(
        first.starts_with(&format!("{pre}: record 0 (id \"000019465\"): image: "))
            && first.ends_with("00001/000019465.jpg not found"),
        "{first}"
    );
    assert!(
        stderr(&o).ends_with("error: 100 problems in 100 of 100 records\n"),
        "{}",
        stderr(&o)
    );

    // With the files there (any non-empty bytes), it passes.
    for r in records(&root().join(PRETRAIN)) {
        let p = images.path().join(r["image"].as_str().unwrap_or_default());
        std::fs::create_dir_all(p.parent().unwrap_or(images.path())).unwrap();
        std::fs::write(&p, b"\xFF\xD8\xFF").unwrap();
    }
    ok(&["data", "validate", &pre, "--image-folder", &folder]);

    // The LLaVA-Bench QA file is not in conversation format: one line per record says so.
    let o = sightline(&["data", "validate", &path(QA)]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o).lines().count(), 90);
    assert!(stdout(&o).contains("record 0 (id \"000000525439\"): conversations: missing"));
}

#[test]
fn malformed_inputs_give_one_clear_line() {
    let d = tmp();
    let write = |name: &str, bytes: &[u8]| {
        let p = d.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    };
    let good = r#"{"id": "a", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}"#;
    let truncated = write(
        "truncated.json",
        format!("[{good}, {{\"id\": \"b\", \"conversa").as_bytes(),
    );
    let non_utf8 = write(
        "latin1.jsonl",
        b"{\"id\": \"caf\xe9\", \"conversations\": []}\n",
    );
    let wrong_types = write("types.jsonl", br#"{"id": "x", "conversations": [{"from": "human", "value": 7}, {"from": "gpt", "value": "A"}]}"#);
    let missing_turn = write("turns.jsonl", br#"{"id": "x", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>\nQ"}]}"#);
    let not_json = write("notes.txt", b"hello\n");
    let empty = write("empty.json", b"");
    let missing_file = d.path().join("absent.json").display().to_string();

    // Fatal problems, for every verb that reads records: one line, file and record named.
    for f in [&truncated, &non_utf8] {
        for args in [
            vec!["data", "stats", f.as_str()],
            vec!["data", "strip-images", f.as_str()],
            vec!["data", "sample", f.as_str(), "-n", "1"],
            vec!["data", "convert", "sharegpt", f.as_str()],
            vec!["data", "preview", f.as_str(), "--index", "1"],
        ] {
            let e = one_error(&args);
            assert!(
                e.starts_with(&format!("error: {f}: record ")),
                "{args:?}: {e}"
            );
        }
    }
    assert!(one_error(&["data", "stats", &truncated])
        .contains("record 1: the file ends inside this record"));
    assert!(one_error(&["data", "stats", &non_utf8])
        .contains("record 0: not valid UTF-8 text at line 1"));
    assert!(one_error(&["data", "stats", &not_json])
        .contains("expected a JSON array of records (`[`) or JSON Lines"));
    assert!(one_error(&["data", "stats", &empty]).contains("empty file"));
    assert!(one_error(&["data", "stats", &missing_file]).contains("absent.json: No such file"));

    // Record problems: validate lists them (stdout), and the verbs that need the structure stop
    // on the first one.
    let o = sightline(&["data", "validate", &wrong_types, &missing_turn, &truncated]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    assert!(out.contains(&format!("{wrong_types}: record 0 (id \"x\"): conversations[0].value: expected a string, found number 7")), "{out}");
    assert!(out.contains(&format!("{missing_turn}: record 0 (id \"x\"): conversations: expected a gpt answer after the last human turn")), "{out}");
    assert!(
        out.contains(&format!(
            "{truncated}: record 1: the file ends inside this record"
        )),
        "{out}"
    );
    assert!(
        stderr(&o).ends_with("error: 3 problems in 3 of 4 records\n"),
        "{}",
        stderr(&o)
    );
    let e = one_error(&["data", "preview", &wrong_types]);
    assert!(
        e.contains(
            "record 0 (id \"x\"): conversations[0].value: expected a string, found number 7"
        ),
        "{e}"
    );
    let e = one_error(&["data", "preview", &missing_turn, "--template", "plain"]);
    assert!(
        e.contains("record 0 (id \"x\"): conversations: expected exactly 2 turns"),
        "{e}"
    );
    let e = one_error(&["data", "convert", "alpaca", &wrong_types]);
    assert!(
        e.contains("record 0 (id \"x\"): instruction: missing (expected a string)"),
        "{e}"
    );

    // Usage mistakes.
    let e = one_error(&["data", "preview", &wrong_types, "--template", "chatml"]);
    assert!(e.contains("unknown template `chatml`"), "{e}");
    let e = one_error(&["data", "preview", &path(PRETRAIN), "--index", "500"]);
    assert!(e.contains("no record 500"), "{e}");
    let e = one_error(&[
        "data",
        "stats",
        &path(PRETRAIN),
        "--tokenizer",
        "nowhere/model",
    ]);
    assert!(
        e.contains("`nowhere/model`") && e.contains("not a local path"),
        "{e}"
    );
    let e = one_error(&[
        "data",
        "strip-images",
        &path(PRETRAIN),
        "-o",
        &path(PRETRAIN),
        "--overwrite",
    ]);
    assert!(e.contains("the output would replace the input"), "{e}");
}

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

#[test]
fn stats_counts_and_token_lengths() {
    let o = ok(&["data", "stats", &path(PRETRAIN), &path(ALPACA), "--json"]);
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json"))
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(
        (
            lines[0]["records"].as_u64(),
            lines[0]["with_image"].as_u64(),
            lines[0]["turns"].as_u64()
        ),
        (Some(100), Some(100), Some(200))
    );
    assert_eq!(lines[0]["image_placeholders"], 100);
    assert!(lines[0]["tokens"].is_null());
    // Alpaca records are not conversations yet.
    assert_eq!(lines[1]["unreadable"], 100);

    let o = ok(&[
        "data",
        "stats",
        &path(PRETRAIN),
        "--tokenizer",
        "builtin:stories260k",
    ]);
    let out = stdout(&o);
    assert!(
        out.contains("records             100")
            && out.contains("tokens (builtin:stories260k, template v1"),
        "{out}"
    );
    assert!(out.contains("[128, 256)      100"), "{out}");
}

#[test]
fn preview_marks_the_trained_tokens() {
    // The tiny LLaVA tokenizer, the golden fixture's case v1/image_1round_last.
    let o = ok(&[
        "data",
        "preview",
        &path(PRETRAIN),
        "--index",
        "1",
        "--tokenizer",
        &path(TINY_TOKENIZER),
        "--color",
        "never",
    ]);
    let out = stdout(&o);
    let golden = fixture("golden.json");
    let case = golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "v1/image_1round_last")
        .cloned()
        .unwrap_or_default();
    let (n, trained) = (
        case["input_ids"].as_array().map_or(0, Vec::len),
        case["trained"].as_u64().unwrap_or(0),
    );
    assert!(
        out.contains("record 1, id \"000016513\", image 00001/000016513.jpg"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "template v1, tokenizer {}: {n} tokens, {trained} trained",
            path(TINY_TOKENIZER)
        )),
        "{out}"
    );
    assert!(out.contains("USER: <im_start><image><im_end> \nWhat is in the photo? ASSISTANT:[[ a garden with a clipped hedge and a large stone fountain in front of it</s>]]"), "{out}");

    // Per-token table, text-only record under llama-2.
    let d = tmp();
    let text = d.path().join("t.json");
    ok(&[
        "data",
        "strip-images",
        &path(PRETRAIN),
        "-o",
        &text.display().to_string(),
    ]);
    let o = ok(&[
        "data",
        "preview",
        &text.display().to_string(),
        "--template",
        "llava_llama_2",
        "--tokens",
        "--color",
        "never",
    ]);
    let out = stdout(&o);
    assert!(out.contains("[INST] <<SYS>>"), "{out}");
    assert!(
        out.contains("     0        1  \"<s>\"                    -100"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.ends_with("\"</s>\"                   trained")),
        "{out}"
    );

    // A tokenization mismatch stops with LLaVA's reason, or shows LLaVA's all-masked sample.
    let m = d.path().join("m.jsonl");
    std::fs::write(&m, r#"{"id": "m", "conversations": [{"from": "human", "value": "Quote it."}, {"from": "gpt", "value": "USER: hi ASSISTANT: hello"}]}"#).unwrap();
    let e = one_error(&["data", "preview", &m.display().to_string()]);
    assert!(
        e.contains("record 0 (id \"m\"): conversations: tokenization mismatch")
            && e.contains("contains \" ASSISTANT: \" 2 time(s)"),
        "{e}"
    );
    let o = ok(&[
        "data",
        "preview",
        &m.display().to_string(),
        "--ignore-mismatch",
        "--color",
        "never",
    ]);
    assert!(stdout(&o).contains("0 trained (tokenization mismatch: LLaVA masks the whole sample)"));
    // --id picks a record by id; --count shows several.
    let o = ok(&[
        "data",
        "preview",
        &path(PRETRAIN),
        "--id",
        "000017093",
        "--count",
        "2",
        "--color",
        "never",
    ]);
    assert_eq!(stdout(&o).matches("── ").count(), 2);
    assert!(stdout(&o).contains("record 2, id \"000017093\""));
}
