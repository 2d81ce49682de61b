//! Stanford Alpaca `{instruction, input, output}` → one human/gpt exchange.
//!
//! The default reproduces LLaVA's `llava/data/alpaca-converter.py` (haotian-liu/LLaVA @ 8959d5c,
//! spec T12.2): the human turn is the Stanford-Alpaca training prompt, filled with
//! `prompt_input` when `input` is present and not `""`, else `prompt_no_input`; the gpt turn is
//! `output`; `id` is the record's 1-based position as a string; no `image`.

use serde_json::{Map, Value};

use super::{llava_record, opt_str, req_str, two_turns, AlpacaPrompt};
use crate::error::Problem;

/// `PROMPT_DICT["prompt_input"]` of Stanford Alpaca (no newline after `### Response:`).
pub const PROMPT_INPUT: &str = "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:";
/// `PROMPT_DICT["prompt_no_input"]`.
pub const PROMPT_NO_INPUT: &str = "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:";

pub(super) fn convert(
    obj: &Map<String, Value>,
    index: usize,
    style: AlpacaPrompt,
) -> Result<Value, Problem> {
    let instruction = req_str(obj, "instruction")?;
    let input = opt_str(obj, "input")?.unwrap_or("");
    let output = req_str(obj, "output")?;
    let human = match (style, input.is_empty()) {
        // str.format_map fills both fields in one pass, so braces inside the instruction are
        // never expanded again; replacing the input first and the instruction second keeps
        // that true for an instruction that contains "{input}".
        (AlpacaPrompt::Stanford, false) => {
            PROMPT_INPUT
                .replacen("{input}", input, 1)
                .replacen("{instruction}", instruction, 1)
        }
        (AlpacaPrompt::Stanford, true) => PROMPT_NO_INPUT.replacen("{instruction}", instruction, 1),
        (AlpacaPrompt::Plain, false) => format!("{instruction}\n{input}"),
        (AlpacaPrompt::Plain, true) => instruction.to_string(),
    };
    Ok(llava_record(
        (index + 1).to_string(),
        None,
        two_turns(human, output.to_string()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conv(v: Value, style: AlpacaPrompt) -> Result<Value, Problem> {
        convert(v.as_object().unwrap(), 4, style)
    }

    #[test]
    fn stanford_prompt_with_and_without_input() {
        let v = conv(
            json!({"instruction": "Add {input}.", "input": "2 and 3", "output": "5"}),
            AlpacaPrompt::Stanford,
        )
        .unwrap();
        assert_eq!(v["id"], "5");
        assert_eq!(v["conversations"][0]["value"], "Below is an instruction that describes a task, paired with an input that provides further context. Write a response that appropriately completes the request.\n\n### Instruction:\nAdd {input}.\n\n### Input:\n2 and 3\n\n### Response:");
        assert_eq!(v["conversations"][1], json!({"from": "gpt", "value": "5"}));
        let v = conv(
            json!({"instruction": "Say hi.", "output": "hi"}),
            AlpacaPrompt::Stanford,
        )
        .unwrap();
        assert!(v["conversations"][0]["value"]
            .as_str()
            .unwrap()
            .ends_with("### Instruction:\nSay hi.\n\n### Response:"));
        assert!(v.get("image").is_none());
    }

    #[test]
    fn plain_prompt_and_bad_fields() {
        let v = conv(
            json!({"instruction": "Add.", "input": "2 and 3", "output": "5"}),
            AlpacaPrompt::Plain,
        )
        .unwrap();
        assert_eq!(v["conversations"][0]["value"], "Add.\n2 and 3");
        let e = conv(
            json!({"instruction": "Add.", "input": 2, "output": "5"}),
            AlpacaPrompt::Plain,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "input: expected a string, found number 2");
        let e = conv(json!({"instruction": "Add."}), AlpacaPrompt::Plain).unwrap_err();
        assert_eq!(e.to_string(), "output: missing (expected a string)");
    }
}
