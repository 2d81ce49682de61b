//! `sightline data validate`: everything LLaVA's training code assumes of a record (spec T1, T2,
//! T6), checked before a run instead of failing (or silently masking) inside it.
//!
//! A record passes when:
//! - it is an object with a string `id` and a non-empty `conversations` array of
//!   `{"from": "human"|"gpt", "value": non-empty string}` turns;
//! - the turns alternate, starting with `human` and ending with `gpt` (LLaVA's v1/llama-2
//!   preprocessors drop a leading gpt turn and assert on the rest; a trailing human turn has no
//!   answer and makes the v1/llama-2 round count mismatch, which masks the whole sample);
//! - with an `image` (a non-empty string), exactly one `<image>` appears, in the first human
//!   turn, and none elsewhere; without one, no `<image>` appears at all (it would be tokenized as
//!   text);
//! - with `--image-folder`, `image_folder/image` is a non-empty file inside the folder: no
//!   absolute path, no `..` above it, no symlink out of it (unless the folder was opened with
//!   `--allow-outside-paths`; see [`sightline_guard::paths`]).

use std::path::Path;

use sightline_guard::Folder;

use serde_json::{Map, Value};

use crate::error::Problem;
use crate::record::{kind, IMAGE_PLACEHOLDER};

/// What to check beyond the record itself.
#[derive(Debug, Clone, Default)]
pub struct Options<'a> {
    /// Where the `image` paths point (`--image-folder`); `None` skips the file check.
    pub image_folder: Option<&'a Folder>,
}

/// Every problem of one record (empty when it is fine). Structure problems come first; a
/// broken structure stops the checks that depend on it, so one mistake gives one line.
pub fn check(v: &Value, opts: &Options) -> Vec<Problem> {
    let mut out = Vec::new();
    let Some(obj) = v.as_object() else {
        out.push(Problem::new(
            "record",
            format!("expected an object, found {}", kind(v)),
        ));
        return out;
    };
    check_id(obj, &mut out);
    let image = image_field(obj, &mut out);
    let has_image = obj.contains_key("image");
    if let (Some(image), Some(folder)) = (image, opts.image_folder) {
        match folder.join(image) {
            Ok(path) => check_image_file(&path, &mut out),
            Err(e) => out.push(Problem::new("image", e.to_string())),
        }
    }
    let Some(turns) = conversations(obj, &mut out) else {
        return out;
    };
    let typed: Vec<Option<(&str, &str)>> = turns
        .iter()
        .enumerate()
        .map(|(j, t)| check_turn(j, t, &mut out))
        .collect();
    let froms: Vec<Option<&str>> = turns
        .iter()
        .map(|t| t.get("from").and_then(Value::as_str))
        .collect();
    check_alternation(&froms, &mut out);
    check_placeholders(&typed, &froms, has_image, &mut out);
    out
}

fn check_id(obj: &Map<String, Value>, out: &mut Vec<Problem>) {
    match obj.get("id") {
        Some(Value::String(_)) => {}
        Some(other) => out.push(Problem::new(
            "id",
            format!("expected a string, found {}", kind(other)),
        )),
        None => out.push(Problem::new("id", "missing (expected a string)")),
    }
}

/// The record's image path, when it has a usable one.
fn image_field<'v>(obj: &'v Map<String, Value>, out: &mut Vec<Problem>) -> Option<&'v str> {
    match obj.get("image") {
        None => None,
        Some(Value::String(s)) if !s.is_empty() => Some(s.as_str()),
        Some(Value::String(_)) => {
            out.push(Problem::new(
                "image",
                "expected a path under the image folder, found \"\"",
            ));
            None
        }
        Some(other) => {
            out.push(Problem::new(
                "image",
                format!(
                    "expected a string (a path under the image folder), found {}",
                    kind(other)
                ),
            ));
            None
        }
    }
}

fn check_image_file(path: &Path, out: &mut Vec<Problem>) {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.len() > 0 => {}
        Ok(m) if m.is_file() => out.push(Problem::new(
            "image",
            format!("{} is empty", path.display()),
        )),
        Ok(_) => out.push(Problem::new(
            "image",
            format!("{} is not a file", path.display()),
        )),
        Err(_) => out.push(Problem::new(
            "image",
            format!("{} not found", path.display()),
        )),
    }
}

/// The non-empty `conversations` array; `None` (with its problem) stops the turn checks.
fn conversations<'v>(obj: &'v Map<String, Value>, out: &mut Vec<Problem>) -> Option<&'v [Value]> {
    match obj.get("conversations") {
        Some(Value::Array(t)) if !t.is_empty() => Some(t),
        Some(Value::Array(_)) => {
            out.push(Problem::new(
                "conversations",
                "expected a human and a gpt turn, found none",
            ));
            None
        }
        Some(other) => {
            out.push(Problem::new(
                "conversations",
                format!(
                    "expected an array of {{from, value}} turns, found {}",
                    kind(other)
                ),
            ));
            None
        }
        None => {
            out.push(Problem::new(
                "conversations",
                "missing (expected an array of {from, value} turns)",
            ));
            None
        }
    }
}

/// Turn `j`'s types; its `(from, value)` when both are well formed.
fn check_turn<'v>(j: usize, turn: &'v Value, out: &mut Vec<Problem>) -> Option<(&'v str, &'v str)> {
    let Some(t) = turn.as_object() else {
        out.push(Problem::new(
            format!("conversations[{j}]"),
            format!("expected an object {{from, value}}, found {}", kind(turn)),
        ));
        return None;
    };
    let from = match t.get("from") {
        Some(Value::String(s)) if s == "human" || s == "gpt" => Some(s.as_str()),
        Some(Value::String(s)) => {
            out.push(Problem::new(
                format!("conversations[{j}].from"),
                format!("expected \"human\" or \"gpt\", found {s:?}"),
            ));
            None
        }
        Some(other) => {
            out.push(Problem::new(
                format!("conversations[{j}].from"),
                format!("expected \"human\" or \"gpt\", found {}", kind(other)),
            ));
            None
        }
        None => {
            out.push(Problem::new(
                format!("conversations[{j}].from"),
                "missing (expected \"human\" or \"gpt\")",
            ));
            None
        }
    };
    let value = match t.get("value") {
        Some(Value::String(s)) if s.trim().is_empty() => {
            out.push(Problem::new(
                format!("conversations[{j}].value"),
                "expected text, found an empty string (LLaVA's templates drop empty messages)",
            ));
            None
        }
        Some(Value::String(s)) => Some(s.as_str()),
        Some(other) => {
            out.push(Problem::new(
                format!("conversations[{j}].value"),
                format!("expected a string, found {}", kind(other)),
            ));
            None
        }
        None => {
            out.push(Problem::new(
                format!("conversations[{j}].value"),
                "missing (expected a string)",
            ));
            None
        }
    };
    from.zip(value)
}

/// Alternation: human, gpt, human, gpt, ..., gpt. Reported once per record.
fn check_alternation(froms: &[Option<&str>], out: &mut Vec<Problem>) {
    let broken = froms.iter().enumerate().find_map(|(j, f)| {
        let want = if j % 2 == 0 { "human" } else { "gpt" };
        match f {
            Some(f) if (*f == "human" || *f == "gpt") && *f != want => Some((j, want, *f)),
            _ => None,
        }
    });
    if let Some((j, want, found)) = broken {
        let why = if j == 0 {
            "turns start with human (LLaVA's v1/llama-2 preprocessors drop a leading gpt turn)"
        } else {
            "turns alternate human, gpt"
        };
        out.push(Problem::new(
            format!("conversations[{j}].from"),
            format!("expected \"{want}\" ({why}), found \"{found}\""),
        ));
    } else if froms.len() % 2 == 1 && froms.last().copied().flatten() == Some("human") {
        out.push(Problem::new(
            "conversations",
            format!(
                "expected a gpt answer after the last human turn (turn {}); an unanswered turn \
                 makes LLaVA mask the whole sample",
                froms.len() - 1
            ),
        ));
    }
}

/// `<image>` placeholders: exactly one, in the first human turn, when the record has an image;
/// none anywhere without one.
fn check_placeholders(
    typed: &[Option<(&str, &str)>],
    froms: &[Option<&str>],
    has_image: bool,
    out: &mut Vec<Problem>,
) {
    let first_human = froms.iter().position(|f| *f == Some("human"));
    for (j, t) in typed.iter().enumerate() {
        let Some((_, value)) = t else { continue };
        let n = value.matches(IMAGE_PLACEHOLDER).count();
        let field = format!("conversations[{j}].value");
        if !has_image {
            if n > 0 {
                out.push(Problem::new(
                    field,
                    format!("found {n} <image> but the record has no \"image\" (it would be trained on as text)"),
                ));
            }
        } else if Some(j) == first_human {
            if n != 1 {
                out.push(Problem::new(
                    field,
                    format!("expected one <image> in the first human turn (the record has an image), found {n}"),
                ));
            }
        } else if n > 0 {
            out.push(Problem::new(
                field,
                format!("expected <image> only in the first human turn, found {n} here"),
            ));
        }
    }
    if has_image
        && first_human.is_none()
        && !out.iter().any(|p| p.field.starts_with("conversations"))
    {
        out.push(Problem::new(
            "conversations",
            "expected a human turn holding <image>, found none",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(v: Value) -> Vec<String> {
        check(&v, &Options::default())
            .iter()
            .map(|p| p.to_string())
            .collect()
    }

    #[test]
    fn a_good_record_has_no_problems() {
        let v = json!({"id": "1", "image": "a.jpg", "conversations": [
            {"from": "human", "value": "Q?\n<image>"}, {"from": "gpt", "value": "A."},
            {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]});
        assert!(problems(v).is_empty());
        let text = json!({"id": "2", "conversations": [
            {"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]});
        assert!(problems(text).is_empty());
    }

    #[test]
    fn each_mistake_is_one_line() {
        let cases = [
            (json!({"id": 3, "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}),
             "id: expected a string, found number 3"),
            (json!({"id": "x", "conversations": "hi"}),
             "conversations: expected an array of {from, value} turns, found a string"),
            (json!({"id": "x", "conversations": []}),
             "conversations: expected a human and a gpt turn, found none"),
            (json!({"id": "x", "conversations": [{"from": "human", "value": "Q"}]}),
             "conversations: expected a gpt answer after the last human turn (turn 0)"),
            (json!({"id": "x", "conversations": [{"from": "human", "value": "Q"}, {"from": "human", "value": "A"}]}),
             "conversations[1].from: expected \"gpt\" (turns alternate human, gpt), found \"human\""),
            (json!({"id": "x", "conversations": [{"from": "user", "value": "Q"}, {"from": "gpt", "value": "A"}]}),
             "conversations[0].from: expected \"human\" or \"gpt\", found \"user\""),
            (json!({"id": "x", "conversations": [{"from": "human", "value": ["Q"]}, {"from": "gpt", "value": "A"}]}),
             "conversations[0].value: expected a string, found an array"),
            (json!({"id": "x", "image": "a.jpg", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]}),
             "conversations[0].value: expected one <image> in the first human turn (the record has an image), found 0"),
            (json!({"id": "x", "conversations": [{"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]}),
             "conversations[0].value: found 1 <image> but the record has no \"image\""),
            (json!({"id": "x", "image": "a.jpg", "conversations": [{"from": "human", "value": "<image>Q"}, {"from": "gpt", "value": "A <image>"}]}),
             "conversations[1].value: expected <image> only in the first human turn, found 1 here"),
            (json!({"id": "x", "image": 5, "conversations": [{"from": "human", "value": "<image>Q"}, {"from": "gpt", "value": "A"}]}),
             "image: expected a string (a path under the image folder), found number 5"),
            (json!({"id": "x", "conversations": [{"from": "human", "value": " "}, {"from": "gpt", "value": "A"}]}),
             "conversations[0].value: expected text, found an empty string"),
            (json!("x"), "record: expected an object, found a string"),
        ];
        for (v, want) in cases {
            let got = problems(v.clone());
            assert_eq!(got.len(), 1, "{v}: {got:?}");
            assert!(got[0].starts_with(want), "{v}: {got:?}");
        }
    }

    #[test]
    fn images_are_looked_up_under_the_folder() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("ok.jpg"), b"\xFF\xD8")?;
        std::fs::write(dir.path().join("empty.jpg"), b"")?;
        let folder = Folder::new(dir.path(), false)?;
        let opts = Options {
            image_folder: Some(&folder),
        };
        let rec = |image: &str| {
            json!({"id": "x", "image": image, "conversations": [
            {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]})
        };
        assert!(check(&rec("ok.jpg"), &opts).is_empty());
        let missing = check(&rec("sub/missing.jpg"), &opts);
        assert_eq!(missing.len(), 1);
        assert!(
            missing[0].message.ends_with("missing.jpg not found"),
            "{missing:?}"
        );
        assert!(check(&rec("empty.jpg"), &opts)[0]
            .message
            .ends_with("is empty"));
        for outside in ["../ok.jpg", "/etc/hostname"] {
            let p = check(&rec(outside), &opts);
            assert_eq!(p.len(), 1, "{p:?}");
            assert_eq!(p[0].field, "image");
            assert!(p[0].message.contains("--allow-outside-paths"), "{p:?}");
        }
        Ok(())
    }
}
