//! `sightline data convert`: other instruction formats → LLaVA conversation records
//! (`{"id", "conversations": [{"from": "human", ...}, {"from": "gpt", ...}]}`), one file per
//! source format and one [`SourceFormat`] arm each.
//!
//! | format | source record | human turn | gpt turn | id |
//! | --- | --- | --- | --- | --- |
//! | [`alpaca`] | `{instruction, input, output}` | the Stanford-Alpaca prompt (LLaVA's `alpaca-converter.py`), or `instruction [+ "\n" + input]` | `output` | 1-based position |
//! | [`orca`] | OpenOrca `{id, system_prompt, question, response}`, or OpenAI chat / DPO `{messages \| input.messages, preferred_output}` | `system + "\n\n" + question` (system dropped if empty) | `response` / the preferred answer | `id`, else 1-based position |
//! | [`sharegpt`] | `{id, conversations: [{from, value}]}` or `{messages: [{role, content}]}` | `human`/`user` turns, the system prompt prepended to the first | `gpt`/`assistant`/`chatgpt`/`bing`/`bard`/`model` turns | `id`, else 1-based position |
//! | [`llava_qa`] | LLaVA-Bench `{id, image, instruction, output, type}` | `"<image>\n" + instruction` | `output` | `id` (COCO image id) |

pub mod alpaca;
pub mod llava_qa;
pub mod orca;
pub mod sharegpt;

use serde_json::{Map, Value};

use crate::error::Problem;
use crate::record::kind;

/// The formats `convert` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceFormat {
    Alpaca,
    Orca,
    ShareGpt,
    LlavaQa,
}

/// How Alpaca records become a human turn.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AlpacaPrompt {
    /// The Stanford-Alpaca prompt with `### Instruction:` / `### Input:` / `### Response:`,
    /// as LLaVA's `alpaca-converter.py` writes it (spec T12.2; the ASSUMPTION is that SBT used
    /// that converter).
    #[default]
    Stanford,
    /// `instruction`, plus `"\n" + input` when there is an input.
    Plain,
}

/// What happens to a system prompt (Orca, ShareGPT/OpenAI chats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SystemPrompt {
    /// Put `system + "\n\n"` in front of the first human turn (spec T12.3).
    #[default]
    Prepend,
    /// Discard it.
    Drop,
}

/// Settings of one conversion.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub alpaca_prompt: AlpacaPrompt,
    pub system: SystemPrompt,
    /// `llava-qa` only: keep records of this `type` (`conv`, `detail`, `complex`).
    pub qa_type: Option<String>,
}

/// Converts the record at 0-based `index` of its file. `Ok(None)` means the record is filtered
/// out (`llava-qa` with a type filter).
pub fn convert(
    format: SourceFormat,
    v: &Value,
    index: usize,
    opts: &Options,
) -> Result<Option<Value>, Problem> {
    let obj = v
        .as_object()
        .ok_or_else(|| Problem::new("record", format!("expected an object, found {}", kind(v))))?;
    match format {
        SourceFormat::Alpaca => alpaca::convert(obj, index, opts.alpaca_prompt).map(Some),
        SourceFormat::Orca => orca::convert(obj, index, opts.system).map(Some),
        SourceFormat::ShareGpt => sharegpt::convert(obj, index, opts.system).map(Some),
        SourceFormat::LlavaQa => llava_qa::convert(obj, opts.qa_type.as_deref()),
    }
}

/// A required string field.
pub(crate) fn req_str<'a>(obj: &'a Map<String, Value>, field: &str) -> Result<&'a str, Problem> {
    match obj.get(field) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(Problem::new(
            field,
            format!("expected a string, found {}", kind(other)),
        )),
        None => Err(Problem::new(field, "missing (expected a string)")),
    }
}

/// An optional string field (`null` counts as absent).
pub(crate) fn opt_str<'a>(
    obj: &'a Map<String, Value>,
    field: &str,
) -> Result<Option<&'a str>, Problem> {
    match obj.get(field) {
        Some(Value::String(s)) => Ok(Some(s)),
        None | Some(Value::Null) => Ok(None),
        Some(other) => Err(Problem::new(
            field,
            format!("expected a string, found {}", kind(other)),
        )),
    }
}

/// The record's own `id` (string or number) or its 1-based position.
pub(crate) fn id_or_position(obj: &Map<String, Value>, index: usize) -> String {
    match obj.get("id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => (index + 1).to_string(),
    }
}

/// Who speaks a chat turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Speaker {
    System,
    Human,
    Gpt,
}

/// Chat turns → LLaVA turns: system prompts (joined by `"\n"`) go in front of the first human
/// turn or are dropped; leading assistant turns and a trailing unanswered human turn are
/// dropped; what remains must alternate human, gpt. `field` names the turn array in problems.
pub(crate) fn chat_to_llava(
    turns: Vec<(Speaker, String)>,
    system: SystemPrompt,
    field: &str,
) -> Result<Vec<Value>, Problem> {
    let mut systems = Vec::new();
    let mut dialog = Vec::new();
    for (j, (who, text)) in turns.into_iter().enumerate() {
        match who {
            Speaker::System if text.is_empty() => {}
            Speaker::System => systems.push(text),
            _ => dialog.push((j, who, text)),
        }
    }
    let start = dialog
        .iter()
        .position(|(_, w, _)| *w == Speaker::Human)
        .unwrap_or(dialog.len());
    let mut dialog = dialog.split_off(start);
    if dialog.len() % 2 == 1 {
        dialog.pop(); // the last human turn has no answer
    }
    if dialog.is_empty() {
        return Err(Problem::new(
            field,
            "expected a user turn followed by an assistant turn, found none",
        ));
    }
    let system_text = systems.join("\n");
    let mut out = Vec::with_capacity(dialog.len());
    for (k, (j, who, text)) in dialog.into_iter().enumerate() {
        let want = if k % 2 == 0 {
            Speaker::Human
        } else {
            Speaker::Gpt
        };
        if who != want {
            let name = |s: Speaker| {
                if s == Speaker::Human {
                    "a user/human"
                } else {
                    "an assistant/gpt"
                }
            };
            return Err(Problem::new(
                format!("{field}[{j}]"),
                format!(
                    "expected {} turn (turns must alternate), found {} turn",
                    name(want),
                    name(who)
                ),
            ));
        }
        let value = if k == 0 && system == SystemPrompt::Prepend && !system_text.is_empty() {
            format!("{system_text}\n\n{text}")
        } else {
            text
        };
        let from = if who == Speaker::Human {
            "human"
        } else {
            "gpt"
        };
        out.push(serde_json::json!({"from": from, "value": value}));
    }
    Ok(out)
}

/// `{"id": id, ["image": image,] "conversations": turns}`.
pub(crate) fn llava_record(id: String, image: Option<String>, turns: Vec<Value>) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), Value::String(id));
    if let Some(image) = image {
        m.insert("image".into(), Value::String(image));
    }
    m.insert("conversations".into(), Value::Array(turns));
    Value::Object(m)
}

/// One human and one gpt turn.
pub(crate) fn two_turns(human: String, gpt: String) -> Vec<Value> {
    vec![
        serde_json::json!({"from": "human", "value": human}),
        serde_json::json!({"from": "gpt", "value": gpt}),
    ]
}
