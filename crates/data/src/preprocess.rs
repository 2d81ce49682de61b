//! From a record to the text LLaVA tokenizes: `preprocess_multimodal` (spec T2.2) and the
//! per-template prompt construction of `preprocess`, `preprocess_v1`, `preprocess_llama_2` and
//! `preprocess_plain` (T3.5, T4), as in UCSC-VLAA/Sight-Beyond-Text @ 47f96a32
//! `llava/train/train.py`. Tokenization and label masking are in [`crate::labels`].
//!
//! The template strings come from [`sightline_vision::conversation`]; this module only decides
//! which of LLaVA's preprocessors a template goes through and builds its text.

use sightline_vision::conversation::{template, Conversation, SepStyle, TEMPLATE_NAMES};
use sightline_vision::llava::{IM_END, IM_START};

use crate::error::{Error, Problem, Result};
use crate::record::{py_strip, Record, Turn, IMAGE_PLACEHOLDER};

/// Which of LLaVA's preprocessors a template uses (`train.py preprocess()` dispatch, T3.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preprocessor {
    /// `v0`/`default`/`llava_v0` (SINGLE style): `_add_speaker_and_signal` + `_mask_targets`.
    SpeakerSignal,
    /// `v1`/`vicuna_v1`/`llava_v1` (TWO) and `llava_llama_2`/`llama_2` (LLAMA_2): the prompt is
    /// split into rounds on `sep2` and each round's instruction on `sep`.
    Rounds { sep: String, sep2: String },
    /// `plain`/`v0_plain`: `<image>` + caption + `\n`.
    Plain,
}

/// A conversation template and the preprocessor it goes through.
#[derive(Debug, Clone)]
pub struct Template {
    pub conv: Conversation,
    pub preprocessor: Preprocessor,
}

impl Template {
    /// Looks a template up by LLaVA's `--version` name.
    pub fn new(name: &str) -> Result<Self> {
        let conv = template(name).ok_or_else(|| {
            Error::Usage(format!(
                "unknown template `{name}` (expected one of: {})",
                TEMPLATE_NAMES.join(", ")
            ))
        })?;
        let preprocessor = match conv.style {
            SepStyle::Single => Preprocessor::SpeakerSignal,
            SepStyle::Two => Preprocessor::Rounds {
                // preprocess_v1: `sep = conv.sep + conv.roles[1] + ": "`.
                sep: format!("{}{}: ", conv.sep, conv.roles.1),
                sep2: conv.sep2.unwrap_or_default().to_string(),
            },
            // preprocess_llama_2 hard-codes its separator.
            SepStyle::Llama2 => Preprocessor::Rounds {
                sep: "[/INST] ".to_string(),
                sep2: conv.sep2.unwrap_or_default().to_string(),
            },
            SepStyle::Plain => Preprocessor::Plain,
        };
        Ok(Self { conv, preprocessor })
    }

    /// The name it was looked up by.
    pub fn name(&self) -> &'static str {
        self.conv.name
    }
}

/// `preprocess_multimodal`, applied to a record that has an `image`: in every turn that holds
/// `<image>`, all occurrences are removed, the text is stripped and `"<image>\n"` put in front
/// (then stripped again); then in every turn `<image>` becomes `<im_start><image><im_end>`
/// when `mm_use_im_start_end`.
pub fn preprocess_multimodal(turns: &mut [Turn], mm_use_im_start_end: bool) {
    for t in turns {
        if t.value.contains(IMAGE_PLACEHOLDER) {
            let rest = t.value.replace(IMAGE_PLACEHOLDER, "");
            t.value = py_strip(&format!("{IMAGE_PLACEHOLDER}\n{}", py_strip(&rest))).to_string();
        }
        if mm_use_im_start_end {
            t.value = t.value.replace(
                IMAGE_PLACEHOLDER,
                &format!("{IM_START}{IMAGE_PLACEHOLDER}{IM_END}"),
            );
        }
    }
}

/// The text of one record under a template, with what its label masking needs.
#[derive(Debug, Clone)]
pub enum Prompt {
    /// v0: `header`, each turn formatted as `"### R: value\n"`, and the raw `from` of each
    /// turn (`_mask_targets` compares it with `"human"` verbatim).
    SpeakerSignal {
        conversation: String,
        header: String,
        turns: Vec<String>,
        speakers: Vec<String>,
    },
    /// v1 / llama-2: `conv.get_prompt()` of the (alternating) turns, and the separators its
    /// rounds (`sep2`) and instructions (`sep`) are split on.
    Rounds {
        conversation: String,
        sep: String,
        sep2: String,
    },
    /// plain: `"<image>" + caption + "\n"`.
    Plain { conversation: String },
}

impl Prompt {
    /// The whole text that is tokenized.
    pub fn text(&self) -> &str {
        match self {
            Prompt::SpeakerSignal { conversation, .. }
            | Prompt::Rounds { conversation, .. }
            | Prompt::Plain { conversation } => conversation,
        }
    }
}

/// Builds the prompt of a record's turns (after [`preprocess_multimodal`]). Fails where LLaVA
/// raises (`KeyError`/`AssertionError`), naming the turn.
pub fn build(template: &Template, turns: &[Turn], id: Option<&str>) -> Result<Prompt> {
    let fail = |field: String, msg: String| Error::Sample {
        id: id.map(str::to_string),
        problem: Problem::new(field, msg),
    };
    let conv = &template.conv;
    match &template.preprocessor {
        Preprocessor::SpeakerSignal => Ok(speaker_signal(conv, turns)),
        Preprocessor::Rounds { sep, sep2 } => rounds(conv, turns, sep, sep2, &fail),
        Preprocessor::Plain => plain(conv, turns, &fail),
    }
}

/// How [`build`]'s steps report a problem: the field and the message, for the record's id.
type Fail<'a> = dyn Fn(String, String) -> Error + 'a;

/// `preprocess` (v0): a header, then `### role: value\n` per turn; never fails.
fn speaker_signal(conv: &Conversation, turns: &[Turn]) -> Prompt {
    let header = format!("{}\n\n", conv.system);
    let mut conversation = header.clone();
    let mut formatted = Vec::with_capacity(turns.len());
    for t in turns {
        let role = match t.from.to_lowercase().as_str() {
            "human" => conv.roles.0,
            "gpt" => conv.roles.1,
            _ => "unknown",
        };
        let s = format!("### {role}: {}\n", t.value);
        conversation.push_str(&s);
        formatted.push(s);
    }
    conversation.push_str("### ");
    Prompt::SpeakerSignal {
        conversation,
        header,
        turns: formatted,
        speakers: turns.iter().map(|t| t.from.clone()).collect(),
    }
}

/// `preprocess_v1` / `preprocess_llama_2`: the conversation template's prompt of alternating
/// human/gpt turns (a leading gpt turn skipped, as LLaVA does).
fn rounds(
    conv: &Conversation,
    turns: &[Turn],
    sep: &str,
    sep2: &str,
    fail: &Fail,
) -> Result<Prompt> {
    let role_of = |j: usize, from: &str| match from {
        "human" => Ok(conv.roles.0),
        "gpt" => Ok(conv.roles.1),
        other => Err(fail(
            format!("conversations[{j}].from"),
            format!("expected \"human\" or \"gpt\", found {other:?}"),
        )),
    };
    let first = turns.first().ok_or_else(|| {
        fail(
            "conversations".into(),
            "expected at least one turn, found none".into(),
        )
    })?;
    // "Skip the first one if it is not from human."
    let skip = usize::from(role_of(0, &first.from)? != conv.roles.0);
    let mut c = conv.clone();
    c.messages.clear();
    for (k, t) in turns.iter().enumerate().skip(skip) {
        let role = role_of(k, &t.from)?;
        let want = if (k - skip) % 2 == 0 {
            conv.roles.0
        } else {
            conv.roles.1
        };
        if role != want {
            let want_from = if want == conv.roles.0 { "human" } else { "gpt" };
            return Err(fail(
                format!("conversations[{k}].from"),
                format!(
                    "expected \"{want_from}\" (turns alternate human, gpt), found {:?}",
                    t.from
                ),
            ));
        }
        c.push(role, Some(&t.value));
    }
    if conv.style == SepStyle::Llama2
        && c.messages
            .first()
            .is_some_and(|(_, m)| m.as_deref().unwrap_or("").is_empty())
    {
        return Err(fail(
            format!("conversations[{skip}].value"),
            "expected text (the llama-2 template asserts the first message is not empty)".into(),
        ));
    }
    Ok(Prompt::Rounds {
        conversation: c.prompt(),
        sep: sep.to_string(),
        sep2: sep2.to_string(),
    })
}

/// `preprocess_plain`: `<image>` + the caption; the first turn must hold the image.
fn plain(conv: &Conversation, turns: &[Turn], fail: &Fail) -> Result<Prompt> {
    if turns.len() != 2 {
        return Err(fail(
            "conversations".into(),
            format!(
                "expected exactly 2 turns for the plain template (an image and its \
                 caption), found {}",
                turns.len()
            ),
        ));
    }
    if !turns[0].value.contains(IMAGE_PLACEHOLDER) {
        return Err(fail(
            "conversations[0].value".into(),
            "expected <image> in the first turn (the plain template is for image \
             captions)"
                .into(),
        ));
    }
    // The first turn is *replaced* by "<image>": its instruction is not trained on.
    Ok(Prompt::Plain {
        conversation: format!("{IMAGE_PLACEHOLDER}{}{}", turns[1].value, conv.sep),
    })
}

/// The turns a record is tokenized from: a copy of its conversation, through
/// [`preprocess_multimodal`] when it has an image (LLaVA's `'image' in sources[0]`).
pub fn turns_for(record: &Record, mm_use_im_start_end: bool) -> Vec<Turn> {
    let mut turns = record.conversations.clone();
    if record.image.is_some() {
        preprocess_multimodal(&mut turns, mm_use_im_start_end);
    }
    turns
}

#[cfg(test)]
mod tests {
    use super::*;

    fn turns(pairs: &[(&str, &str)]) -> Vec<Turn> {
        pairs
            .iter()
            .map(|(f, v)| Turn {
                from: f.to_string(),
                value: v.to_string(),
            })
            .collect()
    }

    #[test]
    fn multimodal_moves_the_placeholder_to_the_front() {
        let mut t = turns(&[("human", " What is it?\n<image> "), ("gpt", "A cat.")]);
        preprocess_multimodal(&mut t, false);
        assert_eq!(t[0].value, "<image>\nWhat is it?");
        let mut t = turns(&[("human", "<image> <image>Q")]);
        preprocess_multimodal(&mut t, true);
        assert_eq!(t[0].value, "<im_start><image><im_end>\nQ");
    }

    #[test]
    fn v1_prompt_and_its_asserts() -> Result<()> {
        let v1 = Template::new("v1")?;
        let p = build(
            &v1,
            &turns(&[("gpt", "Hi"), ("human", "Q"), ("gpt", "A")]),
            None,
        )?;
        assert!(
            p.text().ends_with("questions. USER: Q ASSISTANT: A</s>"),
            "{}",
            p.text()
        );
        let e = build(&v1, &turns(&[("human", "Q"), ("human", "A")]), Some("x")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "(id \"x\") conversations[1].from: expected \"gpt\" (turns alternate human, gpt), found \"human\""
        );
        assert!(matches!(Template::new("mpt"), Err(Error::Usage(_))));
        Ok(())
    }

    #[test]
    fn v0_and_plain_text() -> Result<()> {
        let p = build(
            &Template::new("v0")?,
            &turns(&[("human", "Q"), ("robot", "A")]),
            None,
        )?;
        assert!(p
            .text()
            .ends_with("questions.\n\n### Human: Q\n### unknown: A\n### "));
        let p = build(
            &Template::new("plain")?,
            &turns(&[("human", "Describe.\n<image>"), ("gpt", "a dog")]),
            None,
        )?;
        assert_eq!(p.text(), "<image>a dog\n");
        Ok(())
    }
}
