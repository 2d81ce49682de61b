//! LLaVA-Bench / LLaVA-Instruct generation records `{id, image, instruction, output, type}`
//! (`coco2014_val_gpt4_qa_30x3.jsonl`, one question per record, `type` ∈ `conv`, `detail`,
//! `complex`) → a one-round LLaVA record `{id, image, conversations: [human
//! "<image>\n" + instruction, gpt output]}`.
//!
//! The placeholder goes in front (LLaVA-Instruct itself puts it in front or behind at random;
//! `preprocess_multimodal` moves it to the front either way). With a type filter, records of
//! other types are skipped, which turns one such file into the per-source files that
//! `sightline data groups` expects (`conv` → conversation, `detail`, `complex` → reasoning).

use serde_json::{Map, Value};

use super::{llava_record, req_str, two_turns};
use crate::error::Problem;
use crate::record::IMAGE_PLACEHOLDER;

/// The `type` values of LLaVA's QA files.
pub const TYPES: &[&str] = &["conv", "detail", "complex"];

pub(super) fn convert(
    obj: &Map<String, Value>,
    only: Option<&str>,
) -> Result<Option<Value>, Problem> {
    let ty = req_str(obj, "type")?;
    if !TYPES.contains(&ty) {
        return Err(Problem::new(
            "type",
            format!("expected one of {TYPES:?}, found {ty:?}"),
        ));
    }
    if only.is_some_and(|only| only != ty) {
        return Ok(None);
    }
    let id = req_str(obj, "id")?;
    let image = req_str(obj, "image")?;
    let human = format!("{IMAGE_PLACEHOLDER}\n{}", req_str(obj, "instruction")?);
    let gpt = req_str(obj, "output")?.to_string();
    Ok(Some(llava_record(
        id.to_string(),
        Some(image.to_string()),
        two_turns(human, gpt),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn converts_and_filters_by_type() {
        let r = json!({"id": "000000525439", "image": "COCO_val2014_000000525439.jpg",
            "instruction": "What is it?", "output": "A skateboard.", "type": "conv"});
        let o = r.as_object().unwrap();
        let v = convert(o, None).unwrap().unwrap();
        assert_eq!(
            v,
            json!({"id": "000000525439", "image": "COCO_val2014_000000525439.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A skateboard."}]})
        );
        assert!(convert(o, Some("detail")).unwrap().is_none());
        let bad =
            json!({"id": "1", "image": "a", "instruction": "q", "output": "a", "type": "chat"});
        assert_eq!(
            convert(bad.as_object().unwrap(), None).unwrap_err().field,
            "type"
        );
    }
}
