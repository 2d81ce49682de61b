//! One LLaVA training record (spec llava-training.md T1):
//! `{"id": str, "image"?: str, "conversations": [{"from": "human"|"gpt", "value": str}, ...]}`.
//!
//! Files are read as [`serde_json::Value`]s (so verbs that rewrite records keep every field and
//! the key order); [`Record::from_value`] gives the typed view that preprocessing needs.

use serde_json::Value;

use crate::error::Problem;

/// The placeholder that marks where the image goes in a human turn.
pub use sightline_vision::llava::IMAGE_PLACEHOLDER;

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    /// `"human"` or `"gpt"` in LLaVA data (kept verbatim: LLaVA's v0 path treats any other
    /// spelling as an unknown speaker).
    pub from: String,
    pub value: String,
}

/// A record in the form LLaVA's `LazySupervisedDataset` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// `None` when the record has no `id` (LLaVA itself never reads it).
    pub id: Option<String>,
    /// Path relative to the image folder; `Some` whenever the key is present, which is what
    /// makes LLaVA treat the record as multimodal (`'image' in sources[0]`).
    pub image: Option<String>,
    pub conversations: Vec<Turn>,
}

/// A JSON value's kind, for "expected X, found Y" messages.
pub(crate) fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".to_string(),
        Value::Bool(b) => format!("{b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(_) => "a string".to_string(),
        Value::Array(_) => "an array".to_string(),
        Value::Object(_) => "an object".to_string(),
    }
}

/// The record's `id` as a string, if it is one (numbers are shown as written).
pub fn id_of(v: &Value) -> Option<String> {
    match v.get("id")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Record {
    /// The typed view of a record. Checks types only (an object with a `conversations` array
    /// of `{from: str, value: str}`, `image` a string when present); the conversation rules
    /// (alternation, placeholders) are [`crate::validate`]'s and the preprocessors' business.
    pub fn from_value(v: &Value) -> Result<Self, Problem> {
        let obj = v.as_object().ok_or_else(|| {
            Problem::new("record", format!("expected an object, found {}", kind(v)))
        })?;
        let image = match obj.get("image") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                return Err(Problem::new(
                    "image",
                    format!(
                        "expected a string (a path under the image folder), found {}",
                        kind(other)
                    ),
                ))
            }
        };
        let turns = match obj.get("conversations") {
            Some(Value::Array(turns)) => turns,
            Some(other) => {
                return Err(Problem::new(
                    "conversations",
                    format!(
                        "expected an array of {{from, value}} turns, found {}",
                        kind(other)
                    ),
                ))
            }
            None => {
                return Err(Problem::new(
                    "conversations",
                    "missing (expected an array of {from, value} turns)",
                ))
            }
        };
        let conversations = turns
            .iter()
            .enumerate()
            .map(|(j, t)| turn_from_value(j, t))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            id: id_of(v),
            image,
            conversations,
        })
    }

    /// The record as LLaVA-format JSON (`id`, `image`, `conversations`, in that order).
    pub fn to_value(&self) -> Value {
        let mut m = serde_json::Map::new();
        if let Some(id) = &self.id {
            m.insert("id".into(), Value::String(id.clone()));
        }
        if let Some(image) = &self.image {
            m.insert("image".into(), Value::String(image.clone()));
        }
        let turns = self
            .conversations
            .iter()
            .map(|t| serde_json::json!({"from": t.from, "value": t.value}))
            .collect();
        m.insert("conversations".into(), Value::Array(turns));
        Value::Object(m)
    }
}

fn turn_from_value(j: usize, t: &Value) -> Result<Turn, Problem> {
    let field = |name: &str| format!("conversations[{j}].{name}");
    let obj = t.as_object().ok_or_else(|| {
        Problem::new(
            format!("conversations[{j}]"),
            format!("expected an object {{from, value}}, found {}", kind(t)),
        )
    })?;
    let get = |name: &str| match obj.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(Problem::new(
            field(name),
            format!("expected a string, found {}", kind(other)),
        )),
        None => Err(Problem::new(field(name), "missing (expected a string)")),
    };
    Ok(Turn {
        from: get("from")?,
        value: get("value")?,
    })
}

/// Python's `str.strip()` with no argument: removes leading and trailing characters for which
/// `str.isspace()` is true. That is Rust's `char::is_whitespace` (Unicode `White_Space`) plus
/// the ASCII separators U+001C..U+001F, which Python counts as whitespace.
///
/// ```
/// assert_eq!(sightline_data::record::py_strip("\u{1f} <image>\n\u{a0}"), "<image>");
/// ```
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(|c: char| c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn typed_view_names_the_bad_field() {
        let v = json!({"id": "a", "conversations": [{"from": "human", "value": 3}]});
        let p = Record::from_value(&v).unwrap_err();
        assert_eq!(p.field, "conversations[0].value");
        assert_eq!(p.message, "expected a string, found number 3");
        let p = Record::from_value(&json!({"id": "a", "image": null, "conversations": []}))
            .unwrap_err();
        assert_eq!(p.field, "image");
        let p = Record::from_value(&json!([1])).unwrap_err();
        assert_eq!(p.to_string(), "record: expected an object, found an array");
    }

    #[test]
    fn round_trips_through_json() {
        let v = json!({"id": "7", "image": "a.jpg", "conversations": [
            {"from": "human", "value": "<image>\nQ"}, {"from": "gpt", "value": "A"}]});
        let r = Record::from_value(&v).unwrap();
        assert_eq!(r.to_value(), v);
        assert_eq!(r.image.as_deref(), Some("a.jpg"));
    }
}
