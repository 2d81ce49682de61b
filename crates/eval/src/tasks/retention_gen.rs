//! The retention tasks (issue 16) as generative questions (issue 18 item 2), for models that
//! return no log-likelihoods. `gsm8k` and `squad2` are generative already, and so is the
//! paper's `mmlu` script, but that one needs the model's tokenizer to fit its shots
//! (`generate_fit`), which an API model cannot do.
//!
//! - `mmlu_joint`: `mmlu_loglik`'s prompt (the header, five `dev` examples answered with a
//!   letter, the question with its options lettered A-D, `Answer:`), answered by a greedy
//!   `generate_until` to the first newline instead of compared by log-likelihood. The options
//!   keep the data's order (the gold is a letter). `acc` and the same per-category,
//!   per-subcategory and per-subject breakdown as `mmlu`, then `unparseable`.
//! - `mathqa_joint`: zero-shot (the 4-shot `mathqa` draws from the unbundled training split);
//!   the choices the harness's regex cuts out of `options` (as `mathqa` scores them, stray
//!   quotes included), in the data's order and lettered with its own lower-case letters
//!   `a`-`e`, in the lettered prompt of [`super::generative::letter_prompt`]. `acc` = the reply
//!   names the letter in `correct`; `unparseable`.
//! - `boolq_gen`: the harness prompt `{passage}\nQuestion: {question}?` with `Answer with yes
//!   or no only.` before `Answer:`; `acc` = the reply's first word is the label's `yes`/`no`;
//!   `unparseable`.
//!
//! Letters are read by [`super::generative::extract_letter`] (exactly as the prompt writes
//! them: capitals for MMLU, lower case for MathQA), words by
//! [`super::generative::extract_word`].

use serde_json::{json, Value};

use super::boolq::{self, BoolQ};
use super::generative::{
    ask, check_count, extract_letter, extract_word, letter_prompt, letter_template, reply,
    request_json, score, yes_no_protocol, yes_no_results, Letters, LETTER_RULE, UNPARSEABLE,
    UNPARSEABLE_MEANS,
};
use super::mathqa::{self, MATHQA_0SHOT};
use super::mmlu::{self, MmluLoglik};
use super::mmlu_tables::METRICS as MMLU_METRICS;
use crate::data::DataSource;
use crate::error::{Error, Result};
use crate::task::{int_field, Metric, Request, Response, Task};

/// `mmlu`'s metrics, then `unparseable`.
const MMLU_JOINT_METRICS: [Metric; MMLU_METRICS.len() + 1] = {
    let mut out = [UNPARSEABLE; MMLU_METRICS.len() + 1];
    let mut i = 0;
    while i < MMLU_METRICS.len() {
        out[i] = MMLU_METRICS[i];
        i += 1;
    }
    out
};

/// `mmlu_joint`: MMLU's 5-shot letter prompt, answered generatively.
pub struct MmluJoint;

/// The reply names the answer letter (A-D).
fn mmlu_correct(doc: &Value, r: &[Response]) -> bool {
    let named = r
        .first()
        .and_then(|r| extract_letter(r.text(), 4, Letters::Upper));
    named.is_some() && named == mmlu::answer_index(doc)
}

impl Task for MmluJoint {
    fn num_fewshot(&self) -> usize {
        mmlu::NTRAIN
    }
    fn name(&self) -> &'static str {
        "mmlu_joint"
    }
    fn version(&self) -> u32 {
        0
    }
    fn docs(&self, data: &DataSource) -> Result<Vec<Value>> {
        MmluLoglik.docs(data)
    }
    fn requests(&self, doc: &Value) -> Result<Vec<Request>> {
        Ok(vec![ask(mmlu::loglik_context(doc)?)])
    }
    /// `acc` (the reply names the answer letter), the breakdown columns NaN (corpus metrics),
    /// `unparseable`.
    fn process_results(&self, doc: &Value, responses: &[Response]) -> Result<Vec<f64>> {
        let text = reply(self.name(), responses, 0)?;
        let mut v = mmlu::per_document(mmlu_correct(doc, responses));
        v.push(score(extract_letter(text, 4, Letters::Upper).is_none()));
        Ok(v)
    }
    fn metrics(&self) -> &'static [Metric] {
        &MMLU_JOINT_METRICS
    }
    fn corpus_metrics(&self, docs: &[&Value], responses: &[&[Response]]) -> Result<Vec<f64>> {
        Ok(mmlu::corpus(docs, responses, mmlu_correct))
    }
    fn extracted(&self, _doc: &Value, responses: &[Response]) -> Option<Value> {
        let k = extract_letter(responses.first()?.text(), 4, Letters::Upper);
        Some(json!(k.map(|k| Letters::Upper.letter(k).to_string())))
    }
    fn protocol(&self) -> Option<Value> {
        Some(json!({
            "name": "multiple_choice_joint",
            "prompt": "mmlu_loglik's prompt: \"The following are multiple choice questions (with answers) about {subject}.\\n\\n\" + 5 dev examples (\"{question}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer: {letter}\\n\\n\") + \"{question}\\nA. {a}\\nB. {b}\\nC. {c}\\nD. {d}\\nAnswer:\"",
            "shuffle": null,
            "options": "the data's order, lettered A-D as the data letters them",
            "request": request_json(),
            "extraction": LETTER_RULE,
            "metrics": {
                "acc": "1 when the reply names the answer letter, else 0 (unparseable: 0); acc_* are its means per category, subcategory and subject",
                "unparseable": UNPARSEABLE_MEANS,
            },
        }))
    }
}

const ACC: &[Metric] = &[Metric::mean("acc"), UNPARSEABLE];

/// `mathqa_joint`: zero-shot MathQA with its lettered choices in the prompt.
pub struct MathQaJoint;

impl MathQaJoint {
    fn prompt(doc: &Value) -> Result<String> {
        let choices = mathqa::choices(doc)?;
        check_count("mathqa_joint", choices.len())?;
        Ok(letter_prompt(
            mathqa::problem(doc)?,
            choices,
            Letters::Lower,
        ))
    }
}

impl Task for MathQaJoint {
    fn name(&self) -> &'static str {
        "mathqa_joint"
    }
    fn version(&self) -> u32 {
        0
    }
    fn docs(&self, data: &DataSource) -> Result<Vec<Value>> {
        MATHQA_0SHOT.docs(data)
    }
    fn requests(&self, doc: &Value) -> Result<Vec<Request>> {
        Ok(vec![ask(Self::prompt(doc)?)])
    }
    /// `acc`: the reply names the letter of `gold` (the data's `correct`); `unparseable`.
    fn process_results(&self, doc: &Value, responses: &[Response]) -> Result<Vec<f64>> {
        let gold = usize::try_from(int_field(doc, "gold")?)
            .map_err(|_| Error::Config(format!("mathqa: negative gold index: {doc}")))?;
        let n = mathqa::choices(doc)?.len();
        let named = extract_letter(reply(self.name(), responses, 0)?, n, Letters::Lower);
        Ok(vec![score(named == Some(gold)), score(named.is_none())])
    }
    fn metrics(&self) -> &'static [Metric] {
        ACC
    }
    fn extracted(&self, doc: &Value, responses: &[Response]) -> Option<Value> {
        let n = mathqa::choices(doc).ok()?.len();
        let k = extract_letter(responses.first()?.text(), n, Letters::Lower);
        Some(json!(k.map(|k| Letters::Lower.letter(k).to_string())))
    }
    fn protocol(&self) -> Option<Value> {
        Some(json!({
            "name": "multiple_choice_joint",
            "prompt": letter_template(Letters::Lower),
            "shuffle": null,
            "options": "the choices lm-eval's regex cuts out of `options` (as mathqa scores them), in the data's order, lettered a, b, ... as the data letters them; zero-shot",
            "request": request_json(),
            "extraction": LETTER_RULE,
            "metrics": {
                "acc": "1 when the reply names the letter in the data's `correct`, else 0 (unparseable: 0)",
                "unparseable": UNPARSEABLE_MEANS,
            },
        }))
    }
}

const YES_NO: [&str; 2] = ["yes", "no"];

/// `boolq_gen`: BoolQ's harness prompt with a yes/no instruction line.
pub struct BoolQGen;

impl BoolQGen {
    fn prompt(question: &str) -> String {
        format!("{question}\nAnswer with yes or no only.\nAnswer:")
    }
}

impl Task for BoolQGen {
    fn name(&self) -> &'static str {
        "boolq_gen"
    }
    fn version(&self) -> u32 {
        0
    }
    fn docs(&self, data: &DataSource) -> Result<Vec<Value>> {
        BoolQ.docs(data)
    }
    fn requests(&self, doc: &Value) -> Result<Vec<Request>> {
        Ok(vec![ask(Self::prompt(&boolq::question(doc)?))])
    }
    /// `acc`: the reply's word is `yes` for a true label, `no` for a false one; `unparseable`.
    fn process_results(&self, doc: &Value, responses: &[Response]) -> Result<Vec<f64>> {
        let label = doc["label"]
            .as_bool()
            .ok_or_else(|| Error::Config(format!("boolq: label must be true or false: {doc}")))?;
        yes_no_results(self.name(), responses, YES_NO, usize::from(!label), 0)
    }
    fn metrics(&self) -> &'static [Metric] {
        ACC
    }
    fn extracted(&self, _doc: &Value, responses: &[Response]) -> Option<Value> {
        Some(json!(
            extract_word(responses.first()?.text(), YES_NO).map(|k| YES_NO[k])
        ))
    }
    fn protocol(&self) -> Option<Value> {
        let template = Self::prompt("{passage}\nQuestion: {question}?");
        Some(yes_no_protocol(
            &template,
            YES_NO,
            json!({
                "acc": "1 when the reply's word is yes for a true label, no for a false one, else 0 (unparseable: 0)",
                "unparseable": UNPARSEABLE_MEANS,
            }),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn say(s: &str) -> Vec<Response> {
        vec![Response::Generated(s.into())]
    }

    fn context(t: &dyn Task, doc: &Value) -> String {
        match &t.requests(doc).unwrap()[..] {
            [Request::GenerateUntil { context, until }] if until == &["\n"] => context.clone(),
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn mathqa_prompt_and_scoring() {
        let docs = MathQaJoint.docs(&DataSource::default()).unwrap();
        let d = &docs[0];
        let choices = mathqa::choices(d).unwrap();
        let want = format!(
            "The following is a multiple-choice question. Answer with the letter of the correct option only.\n\nQuestion: {}\na. {}\nb. {}\nc. {}\nd. {}\ne. {}\nAnswer:",
            mathqa::problem(d).unwrap(),
            choices[0], choices[1], choices[2], choices[3], choices[4]
        );
        assert_eq!(context(&MathQaJoint, d), want);
        // A hand-made document: exact prompt, right / wrong / unparseable letters.
        let doc = json!({"query": "Question: 2 + 3 = ?\nAnswer:", "choices": ["4", "5", "6", "7", "8"], "gold": 1});
        assert_eq!(
            context(&MathQaJoint, &doc),
            "The following is a multiple-choice question. Answer with the letter of the correct option only.\n\nQuestion: 2 + 3 = ?\na. 4\nb. 5\nc. 6\nd. 7\ne. 8\nAnswer:"
        );
        let run = |s: &str| MathQaJoint.process_results(&doc, &say(s)).unwrap();
        assert_eq!(run(" b"), [1.0, 0.0]);
        assert_eq!(run(" b ) 5"), [1.0, 0.0]);
        assert_eq!(run(" c"), [0.0, 0.0]);
        assert_eq!(run(" B"), [0.0, 1.0]);
        assert_eq!(run(" 5"), [0.0, 1.0]);
        assert_eq!(MathQaJoint.extracted(&doc, &say("(e)")), Some(json!("e")));
        let bad = json!({"query": "2 + 3", "choices": ["4"], "gold": 0});
        assert!(MathQaJoint.requests(&bad).is_err());
    }

    #[test]
    fn boolq_prompt_and_scoring() {
        let doc = json!({"question": "is the sky blue", "passage": "Sky -- The sky is blue.", "label": true});
        assert_eq!(
            context(&BoolQGen, &doc),
            "Sky -- The sky is blue.\nQuestion: is the sky blue?\nAnswer with yes or no only.\nAnswer:"
        );
        let Request::Loglikelihood { context: ll, .. } = &BoolQ.requests(&doc).unwrap()[0] else {
            panic!()
        };
        assert_eq!(
            ll,
            "Sky -- The sky is blue.\nQuestion: is the sky blue?\nAnswer:"
        );
        assert_eq!(
            BoolQGen.process_results(&doc, &say(" Yes")).unwrap(),
            [1.0, 0.0]
        );
        assert_eq!(
            BoolQGen.process_results(&doc, &say(" no")).unwrap(),
            [0.0, 0.0]
        );
        assert_eq!(
            BoolQGen.process_results(&doc, &say(" Sure")).unwrap(),
            [0.0, 1.0]
        );
        let no = json!({"question": "q", "passage": "p", "label": false});
        assert_eq!(
            BoolQGen.process_results(&no, &say("No.")).unwrap(),
            [1.0, 0.0]
        );
        let bad = json!({"question": "q", "passage": "p", "label": "yes"});
        assert!(BoolQGen.process_results(&bad, &say(" yes")).is_err());
    }

    #[test]
    fn mmlu_joint_uses_the_loglik_prompt_and_reads_a_letter() {
        let docs = MmluJoint.docs(&DataSource::default()).unwrap();
        let d = &docs[0];
        let Request::Loglikelihood { context: ll, .. } = &MmluLoglik.requests(d).unwrap()[0] else {
            panic!()
        };
        assert_eq!(&context(&MmluJoint, d), ll);
        assert!(ll.ends_with("\nAnswer:"));
        let m = MmluJoint.metrics();
        assert_eq!(m.len(), MMLU_METRICS.len() + 1);
        assert_eq!(m[0].name, "acc");
        assert_eq!(m[m.len() - 1].name, "unparseable");
        let answer = d["answer"].as_str().unwrap();
        let other = if answer == "A" { "B" } else { "A" };
        let v = MmluJoint
            .process_results(d, &say(&format!(" {answer}")))
            .unwrap();
        assert_eq!((v[0], v[m.len() - 1], v.len()), (1.0, 0.0, m.len()));
        let v = MmluJoint
            .process_results(d, &say(&format!(" {other}. x")))
            .unwrap();
        assert_eq!((v[0], v[m.len() - 1]), (0.0, 0.0));
        let v = MmluJoint.process_results(d, &say(" The answer")).unwrap();
        assert_eq!((v[0], v[m.len() - 1]), (0.0, 1.0));
        // The breakdown is the corpus one: two documents of the first subject, one right.
        let resp = [say(&format!(" {answer}")), say(" E")];
        let c = MmluJoint
            .corpus_metrics(&[d, d], &[&resp[0], &resp[1]])
            .unwrap();
        let subject = MMLU_METRICS
            .iter()
            .skip(1)
            .position(|m| m.name == "acc_abstract_algebra")
            .unwrap();
        assert_eq!(c[subject], 0.5);
    }
}
