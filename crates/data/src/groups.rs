//! `sightline data groups`: the paper's Conversation / Detail / Reasoning ablation sets
//! (spec T12.5). Records are classified by the LLaVA-Instruct **source file** they come from
//! (`conversation_58k.json`, `detail_23k.json`, `complex_reasoning_77k.json`), never by `id`:
//! ids repeat across the files (one COCO image has records in all three), and
//! `llava_instruct_80k.json` has no detail records at all. Each group is `N` records (20,000 in
//! the paper) drawn from its file with [`crate::sample::choose`] and the same seed, so a group
//! equals `sightline data sample -n N --seed S` of its source file. A record's identity is
//! `(id, first human value)`; a record that lands in two groups is reported.

use serde_json::Value;

/// The three ablation groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    Conversation,
    Detail,
    Reasoning,
}

impl Group {
    pub const ALL: [Group; 3] = [Group::Conversation, Group::Detail, Group::Reasoning];

    pub fn name(self) -> &'static str {
        match self {
            Group::Conversation => "conversation",
            Group::Detail => "detail",
            Group::Reasoning => "reasoning",
        }
    }

    /// The LLaVA-Instruct-150K file the group comes from.
    pub fn source_file(self) -> &'static str {
        match self {
            Group::Conversation => "conversation_58k.json",
            Group::Detail => "detail_23k.json",
            Group::Reasoning => "complex_reasoning_77k.json",
        }
    }

    /// The output file for a group of `n` records: `conversation_20k.json`, `detail_500.json`.
    pub fn output_file(self, n: usize) -> String {
        let size = if n >= 1000 && n.is_multiple_of(1000) {
            format!("{}k", n / 1000)
        } else {
            n.to_string()
        };
        format!("{}_{size}.json", self.name())
    }
}

/// A record's identity: `(id, first human value)` (both as written in the file).
pub fn identity(v: &Value) -> Option<(String, String)> {
    let id = crate::record::id_of(v)?;
    let first = v
        .get("conversations")?
        .as_array()?
        .iter()
        .find(|t| t.get("from").and_then(Value::as_str) == Some("human"))?
        .get("value")?
        .as_str()?
        .to_string();
    Some((id, first))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_and_identity() {
        assert_eq!(
            Group::Conversation.output_file(20_000),
            "conversation_20k.json"
        );
        assert_eq!(Group::Reasoning.output_file(1500), "reasoning_1500.json");
        let v = json!({"id": "0001", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "A"}]});
        assert_eq!(identity(&v), Some(("0001".into(), "Q".into())));
        assert_eq!(identity(&json!({"id": "1"})), None);
    }
}
