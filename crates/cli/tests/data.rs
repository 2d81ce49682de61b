//! `sightline data validate|stats|preview` end to end on the real samples in data/training/
//! (LLaVA-Pretrain, LLaVA-Bench QA, Alpaca, Orca), and the one-line errors a new user gets for
//! malformed inputs. The verbs that build training sets are in `data_build.rs`.

mod data_support;

use data_support::*;
use serde_json::Value;

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

// Long, but a flat list of cases (a command, then what it must print or write), read
// top to bottom; splitting it would only scatter the cases.
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

// Long, but a flat list of cases (a command, then what it must print or write), read
// top to bottom; splitting it would only scatter the cases.
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
