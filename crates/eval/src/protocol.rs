//! How the image tasks prompt and decode (`spec/multimodal-eval.md` E1, E7): the two protocols,
//! the `v0` prompt they build, and the decoding settings each image request carries
//! ([`MmDecoding`]). A leaf of the crate: [`crate::data::DataSource`] records the chosen
//! protocol and [`crate::task::Request`] carries the decoding, so both import from here.
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

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sightline_vision::conversation::{render_chat, template, ChatRole};

use crate::error::{Error, Result};

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

/// The chat turns a `v0` prompt built by [`Protocol::prompt`] was rendered from (demo pairs as
/// user/assistant turns, then the question with its `<image>`), for sending an image request
/// to a chat API: a server that renders them with the `v0` template (`sightline serve
/// --conv-mode v0`, or any LLaVA server with that mode) builds this very prompt. Checked by
/// rendering the turns again; a prompt they do not reproduce is an error, never a guess.
pub fn chat_turns(context: &str) -> Result<Vec<(ChatRole, String)>> {
    let bad = |why: &str| {
        Error::Config(format!(
            "cannot send this prompt as chat turns ({why}): {context:?}"
        ))
    };
    let base = template(TEMPLATE).ok_or_else(|| bad("no v0 template"))?;
    let (user, assistant) = base.roles;
    let sep = base.sep;
    let rest = context
        .strip_prefix(base.prompt().as_str())
        .ok_or_else(|| bad("it does not start with the v0 system prompt and example"))?;
    let body = rest
        .strip_suffix(&format!("{assistant}:"))
        .ok_or_else(|| bad("it does not end with an open assistant turn"))?;
    let mut turns = Vec::new();
    for piece in body.split_terminator(sep) {
        if let Some(m) = piece.strip_prefix(&format!("{user}: ")) {
            turns.push((ChatRole::User, m.to_string()));
        } else if let Some(m) = piece.strip_prefix(&format!("{assistant}: ")) {
            turns.push((ChatRole::Assistant, m.to_string()));
        } else {
            return Err(bad("a turn without a role"));
        }
    }
    let refs: Vec<(ChatRole, &str)> = turns.iter().map(|(r, t)| (*r, t.as_str())).collect();
    let (again, _) = render_chat(TEMPLATE, &refs).map_err(|e| bad(&e.to_string()))?;
    if again != context {
        return Err(bad("the turns render to a different prompt"));
    }
    Ok(turns)
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

#[cfg(test)]
mod tests {
    use std::path::Path;

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

    #[test]
    fn image_prompts_go_back_to_the_turns_they_were_built_from() {
        for p in [Protocol::Sbt, Protocol::Greedy] {
            let demos = [("dq".to_string(), "da".to_string())];
            let prompt = p.prompt("Is there a cat?", &demos).unwrap();
            let turns = chat_turns(&prompt).unwrap();
            let q = if p == Protocol::Sbt {
                "<image>\nIs there a cat?".to_string()
            } else {
                format!("<image>\nIs there a cat?{GREEDY_SUFFIX}")
            };
            assert_eq!(
                turns,
                vec![
                    (ChatRole::User, "dq".to_string()),
                    (ChatRole::Assistant, "da".to_string()),
                    (ChatRole::User, q)
                ]
            );
        }
        // Not a v0 prompt, a turn that holds the separator: refused.
        assert!(chat_turns("Hello ASSISTANT:").is_err());
        let odd = Protocol::Greedy.prompt("a###Assistant: b", &[]).unwrap();
        assert!(chat_turns(&odd).is_err());
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
