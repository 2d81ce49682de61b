//! The multimodal evaluation harness shared by the image tasks (`spec/multimodal-eval.md` E1,
//! E3, E7): the two prompting/decoding protocols, prompt building, where images come from and
//! how they are decoded.
//!
//! - **`sbt`** (the paper's protocol, Sight-Beyond-Text @47f96a32 `get_model_output.py`): the
//!   `v0` template with its canned renewable-energy exchange, then (for tasks that have them)
//!   demo pairs, then `<image>\n` + the question, sampled with temperature 0.2 and top-k 50,
//!   `min_new_tokens = 1`, stopping at EOS or `###`. The raw output is scored unstripped, as
//!   SBT does. Torch's sampling stream cannot be reproduced in Rust: every request samples
//!   from its own ChaCha8 stream seeded by `seed * 1_000_003 + record index`, so a record's
//!   answer depends neither on batching nor on `--limit`; compare with the paper over several
//!   seeds (E1.9).
//! - **`greedy`** (deterministic, like lmms-eval): the same `v0` prompt with
//!   `"\nAnswer the question using a single word or phrase."` after the question, greedy
//!   decoding, and the answer cut at `###` and stripped.
//!
//! Prompts write the image as `<image>`; a checkpoint trained with `mm_use_im_start_end` gets
//! `<im_start><image><im_end>` in its place at generation time (E1.3), so logged prompts are
//! the same for every model.
//!
//! Images: a document's `image_ref` is a file path, or `bundled:<path under data/>` for the
//! images compiled into the binary. Every image is decoded by [`load_image`], the one place a
//! later image transformation (corruptions) hooks in.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sightline_vision::conversation::template;
use sightline_vision::preprocess::decode_rgb;
use sightline_vision::RgbImage;

use crate::data::{bundled_image, DataSource};
use crate::error::{Error, Result};
use crate::task::Request;

/// How image tasks prompt and decode (`--protocol`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// The paper's sampled protocol (E1).
    #[default]
    Sbt,
    /// lmms-eval–style deterministic greedy decoding with a short-answer hint.
    Greedy,
}

/// The conversation template every SBT evaluation script passes (`--conv_mode v0`).
pub const TEMPLATE: &str = "v0";
/// lmms-eval's short-answer instruction, appended to the question by the `greedy` protocol.
pub const GREEDY_SUFFIX: &str = "\nAnswer the question using a single word or phrase.";
/// The separator of `v0`, SBT's stop keyword.
pub const STOP: &str = "###";
/// `setup_seed(42)` of the SBT scripts; the base of the per-record sampling seeds.
pub const SBT_SEED: u64 = 42;
/// New tokens for yes/no questions under `greedy` (enough for "Yes, there is a ...").
pub const GREEDY_MAX_NEW_TOKENS: usize = 16;

impl Protocol {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sbt" => Some(Protocol::Sbt),
            "greedy" => Some(Protocol::Greedy),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Sbt => "sbt",
            Protocol::Greedy => "greedy",
        }
    }

    /// The protocol as recorded in `results.json` `config.protocol`.
    pub fn describe(self) -> Value {
        match self {
            Protocol::Sbt => json!({
                "name": "sbt",
                "template": TEMPLATE,
                "canned_example": true,
                "query": "<image>\\n{question}",
                "decoding": {"do_sample": true, "temperature": 0.2, "top_k": 50, "top_p": 1.0,
                             "min_new_tokens": 1,
                             "max_new_tokens": "10 (SBT get_outputs); 25 for unicorn_* (Unicorn harness)",
                             "stop": [STOP, "</s>"]},
                "seed": SBT_SEED,
                "sampling_stream": "ChaCha8 per record, seed*1000003 + record index (torch's stream cannot be reproduced)",
                "answer": "raw output, unstripped (unicorn_*: stripped and a trailing ### removed)",
            }),
            Protocol::Greedy => json!({
                "name": "greedy",
                "template": TEMPLATE,
                "canned_example": true,
                "query": format!("<image>\\n{{question}}{}", GREEDY_SUFFIX.replace('\n', "\\n")),
                "decoding": {"do_sample": false, "max_new_tokens": GREEDY_MAX_NEW_TOKENS,
                             "stop": [STOP, "</s>"]},
                "answer": "output cut at ### and stripped",
            }),
        }
    }

    /// Decoding of one record's request; `sbt_max_new_tokens` is the task's SBT length cap.
    pub fn decoding(self, sbt_max_new_tokens: usize, record: usize) -> MmDecoding {
        match self {
            Protocol::Sbt => MmDecoding {
                max_new_tokens: sbt_max_new_tokens,
                min_new_tokens: 1,
                temperature: 0.2,
                top_k: 50,
                stop: vec![STOP.into()],
                seed: SBT_SEED.wrapping_mul(1_000_003).wrapping_add(record as u64),
            },
            Protocol::Greedy => MmDecoding {
                max_new_tokens: GREEDY_MAX_NEW_TOKENS,
                min_new_tokens: 0,
                temperature: 0.0,
                top_k: 0,
                stop: vec![STOP.into()],
                seed: 0,
            },
        }
    }

    /// The `v0` prompt for `question` after the demo pairs (E1.5).
    pub fn prompt(self, question: &str, demos: &[(String, String)]) -> Result<String> {
        let mut conv = template(TEMPLATE)
            .ok_or_else(|| Error::Config(format!("internal: no `{TEMPLATE}` template")))?;
        let (user, assistant) = conv.roles;
        for (q, a) in demos {
            conv.push(user, Some(q));
            conv.push(assistant, Some(a));
        }
        let query = match self {
            Protocol::Sbt => format!("<image>\n{question}"),
            Protocol::Greedy => format!("<image>\n{question}{GREEDY_SUFFIX}"),
        };
        conv.ask(&query);
        Ok(conv.prompt())
    }

    /// The text a yes/no parser reads: SBT scores the raw output; `greedy` cuts it at `###`
    /// and strips it.
    pub fn answer_text(self, raw: &str) -> String {
        match self {
            Protocol::Sbt => raw.to_string(),
            Protocol::Greedy => raw.split(STOP).next().unwrap_or("").trim().to_string(),
        }
    }
}

/// Decoding settings carried by each image request (and so part of its cache key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MmDecoding {
    pub max_new_tokens: usize,
    pub min_new_tokens: usize,
    /// 0 = greedy.
    pub temperature: f64,
    pub top_k: usize,
    pub stop: Vec<String>,
    /// Seed of this request's sampling stream (unused when greedy).
    pub seed: u64,
}

/// Prefix of `image_ref`s that name a bundled image.
pub const BUNDLED: &str = "bundled:";

/// The `image_ref` of an image at `rel` under the task's image root: `--image-root/rel`, else
/// `--data-dir/<bundled_dir>/rel` or the bundled copy when the task bundles its images, else
/// `null` (the task needs `--image-root`).
pub fn image_ref(data: &DataSource, rel: &str, bundled_dir: Option<&str>) -> Value {
    match (&data.image_root, bundled_dir, &data.dir) {
        (Some(root), _, _) => json!(root.join(rel).display().to_string()),
        (None, Some(b), Some(dir)) => json!(dir.join(b).join(rel).display().to_string()),
        (None, Some(b), None) => json!(format!("{BUNDLED}{b}/{rel}")),
        (None, None, _) => Value::Null,
    }
}

/// Whether the image an `image_ref` names exists.
pub fn image_available(image_ref: &str) -> bool {
    match image_ref.strip_prefix(BUNDLED) {
        Some(rel) => bundled_image(rel).is_some(),
        None => Path::new(image_ref).is_file(),
    }
}

/// Decodes the image an `image_ref` names into RGB (Pillow's `convert("RGB")`). Every image of
/// every image task passes through here: the hook for transforming decoded images.
pub fn load_image(image_ref: &str) -> Result<RgbImage> {
    let (bytes, path) = match image_ref.strip_prefix(BUNDLED) {
        Some(rel) => (
            bundled_image(rel)
                .ok_or_else(|| Error::Config(format!("no bundled image data/{rel}")))?
                .to_vec(),
            PathBuf::from(format!("<embedded>/data/{rel}")),
        ),
        None => {
            let p = PathBuf::from(image_ref);
            (std::fs::read(&p).map_err(|e| Error::io(&p, e))?, p)
        }
    };
    decode_rgb(&bytes, &path).map_err(|e| Error::Config(e.to_string()))
}

/// The protocol an image document was built under (its `protocol` field).
pub fn doc_protocol(doc: &Value) -> Result<Protocol> {
    Protocol::parse(crate::task::field(doc, "protocol")?)
        .ok_or_else(|| Error::Config(format!("document has an unknown protocol: {doc}")))
}

/// A document's demonstration turns (`demos`: `[[question, answer], ...]`); none when absent.
pub fn doc_demos(doc: &Value) -> Vec<(String, String)> {
    doc["demos"]
        .as_array()
        .map(|ds| {
            ds.iter()
                .map(|d| {
                    (
                        d[0].as_str().unwrap_or("").to_string(),
                        d[1].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The generation request of an image document (`image` and `image_ref` fields) for `context`.
pub fn image_request(doc: &Value, context: String, decoding: MmDecoding) -> Result<Request> {
    Ok(Request::GenerateImage {
        context,
        image: doc
            .get("image")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::Config(format!("document has no `image`: {doc}")))?
            .to_string(),
        image_ref: doc["image_ref"].as_str().unwrap_or("").to_string(),
        decoding,
    })
}

/// Parses a JSON array file of records (Unicorn) or JSON Lines (POPE's `.json` files are JSON
/// Lines); errors name the file and the 1-based record.
pub fn read_records(data: &DataSource, rel: &str, json_lines: bool) -> Result<Vec<Value>> {
    let text = data.read_text(rel)?;
    let name = data.describe(rel);
    if json_lines {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| Error::data(&name, i + 1, e.to_string()))
            })
            .collect()
    } else {
        match serde_json::from_str(&text) {
            Ok(Value::Array(items)) => Ok(items),
            Ok(_) => Err(Error::data(&name, 0, "expected a JSON array of records")),
            Err(e) => Err(Error::data(&name, e.line(), e.to_string())),
        }
    }
}

/// A string field of a data record, or an error naming the file, record and field.
pub fn str_field<'a>(rec: &'a Value, key: &str, file: &str, record: usize) -> Result<&'a str> {
    rec.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| Error::data(file, record, format!("no string field `{key}`")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sbt_prompt_has_the_canned_example_and_ends_with_the_assistant_role() {
        let p = Protocol::Sbt
            .prompt("Is there a dog in the image?", &[])
            .unwrap();
        assert!(p.starts_with("A chat between a curious human"));
        assert!(p.contains("social instability.\n###Human: <image>\nIs there a dog"));
        assert!(p.ends_with("in the image?###Assistant:"));
        let g = Protocol::Greedy.prompt("Q?", &[]).unwrap();
        assert!(g.ends_with("Q?\nAnswer the question using a single word or phrase.###Assistant:"));
        let d = Protocol::Sbt
            .prompt("Q?", &[("dq".into(), "da".into())])
            .unwrap();
        assert!(d.contains("instability.\n###Human: dq###Assistant: da###Human: <image>\nQ?###"));
    }

    /// Byte-identical to the prompts scripts/reference/make_mm_eval_fixtures.py builds the way
    /// SBT's `get_model_output.py` does (E1.5), with and without demos, for both protocols.
    #[test]
    fn prompts_match_the_python_golden() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/mm_eval/golden.json");
        let golden: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let cases = golden["prompts"].as_array().unwrap();
        assert_eq!(cases.len(), 4);
        for c in cases {
            let q = c["question"].as_str().unwrap();
            let demos: Vec<(String, String)> = c["demos"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| (d[0].as_str().unwrap().into(), d[1].as_str().unwrap().into()))
                .collect();
            assert_eq!(Protocol::Sbt.prompt(q, &demos).unwrap(), c["sbt"], "{q:?}");
            assert_eq!(
                Protocol::Greedy.prompt(q, &demos).unwrap(),
                c["greedy"],
                "{q:?}"
            );
        }
    }

    #[test]
    fn answer_text_per_protocol() {
        assert_eq!(Protocol::Sbt.answer_text(" No###"), " No###");
        assert_eq!(Protocol::Greedy.answer_text(" No.###Human"), "No.");
    }

    #[test]
    fn per_record_seeds_differ_and_greedy_has_none() {
        let a = Protocol::Sbt.decoding(10, 0);
        let b = Protocol::Sbt.decoding(10, 1);
        assert_ne!(a.seed, b.seed);
        assert_eq!(Protocol::Greedy.decoding(10, 5).temperature, 0.0);
    }
}
