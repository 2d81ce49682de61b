//! ShareGPT `{id, conversations: [{from, value}]}` (also OpenAI `{messages: [{role, content}]}`)
//! → LLaVA turns.
//!
//! Roles: `human`/`user` → human; `gpt`/`assistant`/`chatgpt`/`bing`/`bard`/`model` → gpt;
//! `system` → prepended to the first human turn as `system + "\n\n"` (or dropped). Leading
//! assistant turns and a trailing unanswered human turn are dropped (LLaVA's v1 path drops a
//! leading gpt turn itself); turns that do not alternate after that are an error (skip such
//! records with `--skip-invalid`). `id` and `image` are kept; other keys are not.

use serde_json::{Map, Value};

use super::{chat_to_llava, id_or_position, llava_record, opt_str, Speaker, SystemPrompt};
use crate::error::Problem;
use crate::record::kind;

fn speaker(role: &str) -> Option<Speaker> {
    match role.to_ascii_lowercase().as_str() {
        "human" | "user" => Some(Speaker::Human),
        "gpt" | "assistant" | "chatgpt" | "bing" | "bard" | "model" => Some(Speaker::Gpt),
        "system" => Some(Speaker::System),
        _ => None,
    }
}

/// Turns of a `[{key_role, key_text}]` array at `obj[field_key]`; `field` names it in problems.
fn turns_of(
    obj: &Map<String, Value>,
    field_key: &str,
    field: &str,
    key_role: &str,
    key_text: &str,
) -> Result<Vec<(Speaker, String)>, Problem> {
    let arr = match obj.get(field_key) {
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(Problem::new(
                field,
                format!("expected an array of turns, found {}", kind(other)),
            ))
        }
        None => return Err(Problem::new(field, "missing (expected an array of turns)")),
    };
    arr.iter()
        .enumerate()
        .map(|(j, t)| {
            let at = |name: &str| format!("{field}[{j}].{name}");
            let t = t.as_object().ok_or_else(|| {
                Problem::new(
                    format!("{field}[{j}]"),
                    format!("expected an object, found {}", kind(t)),
                )
            })?;
            let role = match t.get(key_role) {
                Some(Value::String(s)) => s,
                Some(other) => {
                    return Err(Problem::new(
                        at(key_role),
                        format!("expected a string, found {}", kind(other)),
                    ))
                }
                None => return Err(Problem::new(at(key_role), "missing (expected a string)")),
            };
            let who = speaker(role).ok_or_else(|| {
                Problem::new(
                    at(key_role),
                    format!("expected human/user, gpt/assistant or system, found {role:?}"),
                )
            })?;
            match t.get(key_text) {
                Some(Value::String(s)) => Ok((who, s.clone())),
                Some(other) => Err(Problem::new(
                    at(key_text),
                    format!("expected a string, found {}", kind(other)),
                )),
                None => Err(Problem::new(at(key_text), "missing (expected a string)")),
            }
        })
        .collect()
}

/// OpenAI chat turns `{messages: [{role, content}]}` of `obj`; `field` names the array.
pub(super) fn openai_turns(
    obj: &Map<String, Value>,
    field: &str,
) -> Result<Vec<(Speaker, String)>, Problem> {
    turns_of(obj, "messages", field, "role", "content")
}

pub(super) fn convert(
    obj: &Map<String, Value>,
    index: usize,
    system: SystemPrompt,
) -> Result<Value, Problem> {
    let (turns, field) = if obj.contains_key("conversations") || !obj.contains_key("messages") {
        (
            turns_of(obj, "conversations", "conversations", "from", "value")?,
            "conversations",
        )
    } else {
        (openai_turns(obj, "messages")?, "messages")
    };
    let image = opt_str(obj, "image")?.map(str::to_string);
    Ok(llava_record(
        id_or_position(obj, index),
        image,
        chat_to_llava(turns, system, field)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conv(v: Value) -> Result<Value, Problem> {
        convert(v.as_object().unwrap(), 2, SystemPrompt::Prepend)
    }

    #[test]
    fn roles_are_mapped_and_ends_trimmed() {
        let v = conv(json!({"id": "abc", "model": "gpt-4", "conversations": [
            {"from": "system", "value": "S"},
            {"from": "gpt", "value": "Hello!"},
            {"from": "user", "value": "Q1"}, {"from": "chatgpt", "value": "A1"},
            {"from": "human", "value": "Q2"}, {"from": "bing", "value": "A2"},
            {"from": "human", "value": "unanswered"}]}))
        .unwrap();
        assert_eq!(
            v,
            json!({"id": "abc", "conversations": [
            {"from": "human", "value": "S\n\nQ1"}, {"from": "gpt", "value": "A1"},
            {"from": "human", "value": "Q2"}, {"from": "gpt", "value": "A2"}]})
        );
        let v = conv(json!({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]})).unwrap();
        assert_eq!(v["id"], "3");
    }

    #[test]
    fn broken_conversations_name_the_turn() {
        let e = conv(json!({"conversations": [{"from": "human", "value": "Q"}, {"from": "human", "value": "Q again"},
            {"from": "gpt", "value": "A"}, {"from": "human", "value": "Q"}]})).unwrap_err();
        assert_eq!(e.to_string(), "conversations[1]: expected an assistant/gpt turn (turns must alternate), found a user/human turn");
        let e = conv(json!({"conversations": [{"from": "narrator", "value": "x"}]})).unwrap_err();
        assert_eq!(e.field, "conversations[0].from");
        let e = conv(json!({"conversations": [{"from": "gpt", "value": "x"}]})).unwrap_err();
        assert!(e.message.contains("found none"), "{e}");
    }
}
