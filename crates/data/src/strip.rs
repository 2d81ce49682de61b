//! `sightline data strip-images`: the paper's "visual instruction data without images"
//! (spec T12.1, an ASSUMPTION there since the Sight-Beyond-Text repo does not publish the
//! script):
//!
//! - the `image` key is deleted;
//! - in the first human turn, `value = value.replace("<image>", "").strip()` (Python's `strip`,
//!   see [`crate::record::py_strip`]);
//! - every other character stays, GPT answers that talk about "the image" included.
//!
//! Choices the spec leaves open, made here:
//! - Records without an `image` key are passed through byte-identical (the spec's rule would
//!   also strip whitespace from their first human turn; LLaVA-Instruct has no such records, but
//!   mixtures with text-only records do). A record without `image` whose first human turn still
//!   holds `<image>` gets the replacement too, so no placeholder reaches a text-only model.
//! - `<image>` in other turns is left alone (LLaVA data has none; `validate` reports them);
//!   [`Options::all_turns`] applies the replacement to every turn instead.
//! - A first human turn that was only `<image>` (stage-1 captions) becomes empty; LLaVA's
//!   templates drop empty messages, which breaks the turn order. [`Options::drop_empty`] drops
//!   such records; otherwise they are kept and counted.

use serde_json::Value;

use crate::record::{py_strip, IMAGE_PLACEHOLDER};

/// Variations on the spec's rule.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Remove `<image>` (and strip) in every turn, not only the first human turn.
    pub all_turns: bool,
    /// Drop records whose human turn is empty after stripping.
    pub drop_empty: bool,
}

/// What stripping did to one record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The record had an `image` key (now removed).
    pub image_removed: bool,
    /// `<image>` placeholders removed.
    pub placeholders: usize,
    /// A stripped turn is now empty.
    pub emptied: bool,
    /// Dropped because of [`Options::drop_empty`]: do not write it.
    pub dropped: bool,
}

/// Strips the image from one record in place. Records that are not objects, or whose turns are
/// not `{from, value}` objects, are left as they are (run `validate` first).
pub fn strip_record(v: &mut Value, opts: Options) -> Outcome {
    let mut out = Outcome::default();
    let Some(obj) = v.as_object_mut() else {
        return out;
    };
    out.image_removed = obj.shift_remove("image").is_some();
    let Some(Value::Array(turns)) = obj.get_mut("conversations") else {
        return out;
    };
    let mut first_human_seen = false;
    for turn in turns.iter_mut() {
        let is_human = turn.get("from").and_then(Value::as_str) == Some("human");
        let first_human = is_human && !first_human_seen;
        first_human_seen |= is_human;
        if !(first_human || opts.all_turns) {
            continue;
        }
        let Some(Value::String(value)) = turn.get_mut("value") else {
            continue;
        };
        let n = value.matches(IMAGE_PLACEHOLDER).count();
        // The spec's rule for the first human turn of an image record; otherwise only turns
        // that hold a placeholder change (text-only records stay byte-identical).
        if n == 0 && !(first_human && out.image_removed) {
            continue;
        }
        out.placeholders += n;
        let stripped = py_strip(&value.replace(IMAGE_PLACEHOLDER, "")).to_string();
        out.emptied |= stripped.is_empty();
        *value = stripped;
    }
    out.dropped = out.emptied && opts.drop_empty;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn removes_image_and_placeholder_only() {
        let mut v = json!({"id": "1", "image": "a.jpg", "model": "x", "conversations": [
            {"from": "human", "value": "What is in the image?\n<image>"},
            {"from": "gpt", "value": "The image shows <image> a cat. "}]});
        let o = strip_record(&mut v, Options::default());
        assert_eq!(
            o,
            Outcome {
                image_removed: true,
                placeholders: 1,
                ..Default::default()
            }
        );
        assert_eq!(
            v,
            json!({"id": "1", "model": "x", "conversations": [
            {"from": "human", "value": "What is in the image?"},
            {"from": "gpt", "value": "The image shows <image> a cat. "}]})
        );
        // Key order survives.
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys, ["id", "model", "conversations"]);
    }

    #[test]
    fn text_only_records_are_untouched() {
        let orig = json!({"id": "1", "conversations": [
            {"from": "human", "value": "  Q  "}, {"from": "gpt", "value": "A"}]});
        let mut v = orig.clone();
        assert_eq!(strip_record(&mut v, Options::default()), Outcome::default());
        assert_eq!(v, orig);
    }

    #[test]
    fn all_turns_and_empty_turns() {
        let rec = json!({"id": "1", "image": "a.jpg", "conversations": [
            {"from": "gpt", "value": "hello <image>"},
            {"from": "human", "value": "<image>"},
            {"from": "gpt", "value": "a caption <image>"}]});
        let mut v = rec.clone();
        let o = strip_record(&mut v, Options::default());
        assert!(o.emptied && !o.dropped);
        assert_eq!(v["conversations"][0]["value"], "hello <image>");
        assert_eq!(v["conversations"][1]["value"], "");
        let mut v = rec.clone();
        let o = strip_record(
            &mut v,
            Options {
                all_turns: true,
                drop_empty: true,
            },
        );
        assert_eq!(o.placeholders, 3);
        assert!(o.dropped);
        assert_eq!(v["conversations"][2]["value"], "a caption");
    }
}
