//! The generative protocols (issue 18 item 2) end to end through `evaluate` and
//! `results_json`, answered by scripted models whose scores are known from the data alone:
//! a model that always says " A" puts, over MC2's circular rotations, exactly one answer on
//! every option, so its `mc2` is each document's share of true options; an oracle that reads the
//! lettered options and names a true one scores 1; constant yes/no answers score the share of
//! labels they match, and `em` follows the log-likelihood task's groups.

use std::collections::{HashMap, HashSet};

use serde_json::Value;
use sightline_eval::data::DataSource;
use sightline_eval::evaluator::{
    evaluate, group_exact_match, select_docs, EvalOptions, TaskResult,
};
use sightline_eval::lm::{DoneSink, LanguageModel, WorkUnit};
use sightline_eval::report::{results_json, RunInfo};
use sightline_eval::tasks::{self, GROUPS};
use sightline_eval::Result;
use sightline_model::score::Scored;

/// Answers every generation with `answer(context)`; log-likelihoods are minus the
/// continuation's length (only the registry's log-likelihood tasks ask).
struct Scripted<F: Fn(&str) -> String>(F);

impl<F: Fn(&str) -> String> LanguageModel for Scripted<F> {
    fn identity(&self) -> String {
        "scripted".into()
    }
    fn loglikelihood(
        &self,
        requests: &[(String, String)],
        skip: &dyn Fn(usize) -> bool,
        on_done: &mut DoneSink<'_>,
    ) -> Result<()> {
        let done: Vec<(usize, Scored)> = (0..requests.len())
            .filter(|&i| !skip(i))
            .map(|i| {
                let logprob = -(requests[i].1.len() as f64);
                (
                    i,
                    Scored {
                        logprob,
                        is_greedy: false,
                    },
                )
            })
            .collect();
        on_done(&done)
    }
    fn loglikelihood_units(&self, requests: &[(String, String)]) -> Result<Vec<WorkUnit>> {
        Ok(vec![WorkUnit {
            requests: (0..requests.len()).collect(),
            cost: requests.len() as u64,
        }])
    }
    fn generate_until(&self, context: &str, _until: &[String]) -> Result<String> {
        Ok((self.0)(context))
    }
}

const LIMIT: usize = 25;

fn opts() -> EvalOptions {
    EvalOptions {
        limit: Some(LIMIT),
        ..Default::default()
    }
}

fn run(lm: &dyn LanguageModel, list: &str) -> Vec<TaskResult> {
    let tasks = tasks::resolve(list).unwrap();
    evaluate(lm, &tasks, &opts(), None, &mut |_, _, _| {}).unwrap()
}

fn metric(results: &[TaskResult], task: &str, name: &str) -> f64 {
    let r = results.iter().find(|r| r.name == task).unwrap();
    r.metrics.iter().find(|m| m.name == name).unwrap().value
}

/// The selected documents of `task` (the evaluator's shuffle and limit).
fn selected(task: &str) -> Vec<Value> {
    let t = tasks::resolve(task).unwrap().remove(0);
    let (_, docs) = select_docs(t.as_ref(), &opts()).unwrap();
    docs.into_iter().map(|(_, d)| d).collect()
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = xs.collect();
    v.iter().sum::<f64>() / v.len() as f64
}

/// MC2's true options of a document: those before the first 0 label.
fn true_count(doc: &Value) -> usize {
    let labels = doc["mc2_targets"]["labels"].as_array().unwrap();
    labels.iter().position(|l| l == 0).unwrap_or(labels.len())
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn always_a_scores_the_share_of_true_options_over_rotations() {
    let lm = Scripted(|_: &str| " A".to_string());
    let r = run(
        &lm,
        "truthfulqa_mc2_circular,truthfulqa_mc1_circular,truthfulqa_mc2_joint",
    );
    let want = mean(selected("truthfulqa_mc2_circular").iter().map(|d| {
        let n = d["mc2_targets"]["choices"].as_array().unwrap().len();
        true_count(d) as f64 / n as f64
    }));
    let got = metric(&r, "truthfulqa_mc2_circular", "mc2");
    assert!(close(got, want), "{got} vs {want}");
    assert!(want > 0.0 && want < 1.0);
    assert_eq!(metric(&r, "truthfulqa_mc2_circular", "unparseable"), 0.0);
    // MC1 circular needs every rotation right: a fixed letter never is.
    assert_eq!(metric(&r, "truthfulqa_mc1_circular", "acc"), 0.0);
    let joint = metric(&r, "truthfulqa_mc2_joint", "mc2");
    assert!((0.0..1.0).contains(&joint), "{joint}");
}

#[test]
fn an_oracle_names_a_true_option_and_scores_one() {
    let docs = tasks::resolve("truthfulqa_mc2_joint").unwrap()[0]
        .docs(&DataSource::default())
        .unwrap();
    let truths: HashMap<String, HashSet<String>> = docs
        .iter()
        .map(|d| {
            let choices = d["mc2_targets"]["choices"].as_array().unwrap();
            let t = choices[..true_count(d)]
                .iter()
                .map(|c| c.as_str().unwrap().to_string())
                .collect();
            (d["question"].as_str().unwrap().to_string(), t)
        })
        .collect();
    let oracle = Scripted(move |ctx: &str| {
        let q = ctx
            .split("\nQuestion: ")
            .nth(1)
            .unwrap()
            .split('\n')
            .next()
            .unwrap();
        let truth = &truths[q];
        let line = ctx
            .lines()
            .find(|l| {
                l.get(3..)
                    .is_some_and(|t| l.get(1..3) == Some(". ") && truth.contains(t))
            })
            .unwrap();
        format!(" {}", &line[..1])
    });
    let r = run(
        &oracle,
        "truthfulqa_mc2_joint,truthfulqa_mc2_circular,truthfulqa_mc1_joint",
    );
    for (task, m) in [
        ("truthfulqa_mc2_joint", "mc2"),
        ("truthfulqa_mc2_circular", "mc2"),
        ("truthfulqa_mc1_joint", "acc"),
    ] {
        assert_eq!(metric(&r, task, m), 1.0, "{task}");
        assert_eq!(metric(&r, task, "unparseable"), 0.0, "{task}");
    }
}

#[test]
fn constant_words_score_the_labels_they_match() {
    let reasonable = Scripted(|_: &str| " Reasonable.".to_string());
    let r = run(&reasonable, "ethics_justice_gen,ethics_deontology_gen");
    for task in ["ethics_justice_gen", "ethics_deontology_gen"] {
        let docs = selected(task);
        let correct: Vec<f64> = docs
            .iter()
            .map(|d| f64::from(u8::from(d["label"] == 1)))
            .collect();
        let ids: Vec<i64> = docs
            .iter()
            .map(|d| d["group_id"].as_i64().unwrap())
            .collect();
        assert!(
            close(metric(&r, task, "acc"), mean(correct.iter().copied())),
            "{task}"
        );
        let em = metric(&r, task, "em");
        assert!(
            close(em, group_exact_match(&ids, &correct, 4)),
            "{task}: {em}"
        );
        assert_eq!(metric(&r, task, "unparseable"), 0.0);
    }
    let yes = Scripted(|ctx: &str| {
        assert!(
            ctx.ends_with("\nAnswer with yes or no only.\nAnswer:"),
            "{ctx}"
        );
        " yes".to_string()
    });
    let r = run(&yes, "boolq_gen,ethics_cm_gen,ethics_virtue_gen");
    let share = |task: &str, yes: &dyn Fn(&Value) -> bool| {
        mean(selected(task).iter().map(|d| f64::from(u8::from(yes(d)))))
    };
    assert!(close(
        metric(&r, "boolq_gen", "acc"),
        share("boolq_gen", &|d| d["label"] == true)
    ));
    assert!(close(
        metric(&r, "ethics_cm_gen", "acc"),
        share("ethics_cm_gen", &|d| d["label"] == 1)
    ));
    assert!(close(
        metric(&r, "ethics_virtue_gen", "acc"),
        share("ethics_virtue_gen", &|d| d["label"] == 1)
    ));
    let mumble = Scripted(|_: &str| " I would rather not say".to_string());
    let r = run(&mumble, "ethics_utilitarianism_gen,mathqa_joint,mmlu_joint");
    for task in ["ethics_utilitarianism_gen", "mathqa_joint", "mmlu_joint"] {
        assert_eq!(metric(&r, task, "acc"), 0.0, "{task}");
        assert_eq!(metric(&r, task, "unparseable"), 1.0, "{task}");
    }
}

#[test]
fn letters_a_score_the_share_of_first_answers() {
    let lm = Scripted(|ctx: &str| if ctx.contains("\na. ") { " a" } else { " A" }.to_string());
    let r = run(&lm, "mathqa_joint,mmlu_joint");
    let mathqa = mean(
        selected("mathqa_joint")
            .iter()
            .map(|d| f64::from(u8::from(d["gold"] == 0))),
    );
    assert!(close(metric(&r, "mathqa_joint", "acc"), mathqa));
    let mmlu = mean(
        selected("mmlu_joint")
            .iter()
            .map(|d| f64::from(u8::from(d["answer"] == "A"))),
    );
    assert!(close(metric(&r, "mmlu_joint", "acc"), mmlu));
    assert_eq!(metric(&r, "mmlu_joint", "unparseable"), 0.0);
}

#[test]
fn results_json_records_protocols_only_for_generative_tasks() {
    let lm = Scripted(|_: &str| " B".to_string());
    let info = RunInfo::default();
    let r = run(&lm, "truthfulqa_mc2_circular,ethics_cm,boolq_gen");
    let j = results_json(&r, &info);
    let configs = j["configs"].as_object().unwrap();
    assert_eq!(
        configs.keys().collect::<Vec<_>>(),
        ["truthfulqa_mc2_circular", "boolq_gen"]
    );
    let p = &configs["truthfulqa_mc2_circular"]["protocol"];
    assert_eq!(p["name"], "circular");
    assert!(p["shuffle"]
        .as_str()
        .unwrap()
        .contains("truthfulqa_mc2_joint|1234|"));
    assert!(p["metrics"]["mc2"]
        .as_str()
        .unwrap()
        .contains("fraction of the n rotations"));
    assert_eq!(configs["boolq_gen"]["protocol"]["name"], "yes_no");
    assert_eq!(
        j["group_subtasks"]["generative"],
        serde_json::json!(["truthfulqa_mc2_circular", "boolq_gen"])
    );
    // A run of the harness's tasks only has no `configs` at all.
    let r = run(&lm, "ethics_cm");
    assert!(results_json(&r, &info).get("configs").is_none());
}

#[test]
fn the_generative_group_is_exactly_the_tasks_with_a_protocol() {
    let (_, members) = GROUPS.iter().find(|(g, _)| *g == "generative").unwrap();
    let with_protocol: Vec<&str> = tasks::all()
        .iter()
        .filter(|t| t.protocol().is_some())
        .map(|t| t.name())
        .collect();
    assert_eq!(&with_protocol[..], *members);
    assert_eq!(members.len(), 12);
    for t in tasks::resolve("generative").unwrap() {
        let p = t.protocol().unwrap();
        for key in ["name", "prompt", "extraction", "metrics", "request"] {
            assert!(p.get(key).is_some(), "{}: {key}", t.name());
        }
        assert!(p.get("shuffle").is_some(), "{}", t.name());
        for m in t.metrics() {
            if !m.name.starts_with("acc_") {
                assert!(p["metrics"][m.name].is_string(), "{}: {}", t.name(), m.name);
            }
        }
    }
}
