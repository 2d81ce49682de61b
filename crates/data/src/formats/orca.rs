//! Orca → one human/gpt exchange (spec T12.3, an ASSUMPTION: no converter was published).
//!
//! Two layouts are read, per record:
//! - OpenOrca / SlimOrca-style `{id, system_prompt, question, response}`: human =
//!   `system_prompt + "\n\n" + question` (just `question` when the system prompt is empty),
//!   gpt = `response`;
//! - OpenAI chat or DPO files (`Intel/orca_dpo_pairs` as shipped in data/training/orca):
//!   `{messages}` or `{input: {messages}, preferred_output}`: the system message is prepended the
//!   same way, user → human, assistant → gpt; of a DPO pair only the preferred answer is kept.
//!
//! `id` is the record's `id` when it has one, else its 1-based position.

use serde_json::{Map, Value};

use super::{
    chat_to_llava, id_or_position, llava_record, opt_str, req_str, sharegpt, SystemPrompt,
};
use crate::error::Problem;

pub(super) fn convert(
    obj: &Map<String, Value>,
    index: usize,
    system: SystemPrompt,
) -> Result<Value, Problem> {
    let id = id_or_position(obj, index);
    if obj.contains_key("question") {
        let question = req_str(obj, "question")?;
        let response = req_str(obj, "response")?;
        let sys = opt_str(obj, "system_prompt")?.unwrap_or("");
        let human = match system {
            SystemPrompt::Prepend if !sys.is_empty() => format!("{sys}\n\n{question}"),
            _ => question.to_string(),
        };
        return Ok(llava_record(
            id,
            None,
            super::two_turns(human, response.to_string()),
        ));
    }
    let (mut turns, field) = match (obj.get("input"), obj.get("messages")) {
        (Some(Value::Object(input)), _) => (sharegpt::openai_turns(input, "input.messages")?, "input.messages"),
        (_, Some(_)) => (sharegpt::openai_turns(obj, "messages")?, "messages"),
        _ => {
            return Err(Problem::new(
                "question",
                "missing (expected OpenOrca {system_prompt, question, response} or OpenAI {messages} / {input: {messages}, preferred_output})",
            ))
        }
    };
    if let Some(preferred) = obj.get("preferred_output") {
        let wrapper = Map::from_iter([("messages".to_string(), preferred.clone())]);
        turns.extend(
            sharegpt::openai_turns(&wrapper, "preferred_output").map_err(|p| {
                Problem::new(
                    p.field.replacen("messages", "preferred_output", 1),
                    p.message,
                )
            })?,
        );
    }
    Ok(llava_record(id, None, chat_to_llava(turns, system, field)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conv(v: Value, system: SystemPrompt) -> Result<Value, Problem> {
        convert(v.as_object().unwrap(), 0, system)
    }

    #[test]
    fn openorca_layout() {
        let v = conv(json!({"id": "niv.1", "system_prompt": "Be brief.", "question": "Q?", "response": "A."}), SystemPrompt::Prepend).unwrap();
        assert_eq!(
            v,
            json!({"id": "niv.1", "conversations": [
            {"from": "human", "value": "Be brief.\n\nQ?"}, {"from": "gpt", "value": "A."}]})
        );
        let v = conv(
            json!({"system_prompt": "", "question": "Q?", "response": "A."}),
            SystemPrompt::Prepend,
        )
        .unwrap();
        assert_eq!(v["conversations"][0]["value"], "Q?");
        assert_eq!(v["id"], "1");
        let v = conv(
            json!({"system_prompt": "Be brief.", "question": "Q?", "response": "A."}),
            SystemPrompt::Drop,
        )
        .unwrap();
        assert_eq!(v["conversations"][0]["value"], "Q?");
    }

    #[test]
    fn dpo_layout_keeps_the_preferred_answer() {
        let v = conv(json!({
            "input": {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]},
            "preferred_output": [{"role": "assistant", "content": "good"}],
            "non_preferred_output": [{"role": "assistant", "content": "bad"}]}), SystemPrompt::Prepend).unwrap();
        assert_eq!(
            v["conversations"],
            json!([{"from": "human", "value": "S\n\nQ"}, {"from": "gpt", "value": "good"}])
        );
        let e = conv(
            json!({"input": {"messages": [{"role": "user", "content": "Q"}]},
            "preferred_output": [{"role": "assistant", "content": 3}]}),
            SystemPrompt::Prepend,
        )
        .unwrap_err();
        assert_eq!(e.field, "preferred_output[0].content");
        let e = conv(json!({"foo": 1}), SystemPrompt::Prepend).unwrap_err();
        assert_eq!(e.field, "question");
    }
}
