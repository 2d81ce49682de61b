//! The task registry: one line per task, one line per group.

pub mod boolq;
pub mod caption;
pub mod ethics;
pub mod ethics_gen;
pub mod generative;
pub mod gsm8k;
pub mod mathqa;
pub mod mc_joint;
pub mod mme;
pub mod mmlu;
pub mod mmlu_tables;
pub mod pope;
pub mod retention_gen;
pub mod squad2;
pub mod squad2_data;
pub mod truthfulqa;
pub mod unicorn;
pub mod unicorn_oodcv;
pub mod vqav2;

use crate::error::{Error, Result};
use crate::task::Task;

/// Every task, in the order `sightline tasks` lists them.
pub fn all() -> Vec<Box<dyn Task>> {
    vec![
        Box::new(truthfulqa::TruthfulQaMc1),
        Box::new(truthfulqa::TruthfulQaMc2),
        Box::new(truthfulqa::TruthfulQaGen),
        Box::new(mc_joint::TRUTHFULQA_MC1_JOINT),
        Box::new(mc_joint::TRUTHFULQA_MC1_CIRCULAR),
        Box::new(mc_joint::TRUTHFULQA_MC2_JOINT),
        Box::new(mc_joint::TRUTHFULQA_MC2_CIRCULAR),
        Box::new(ethics::EthicsCm),
        Box::new(ethics::EthicsDeontology),
        Box::new(ethics::EthicsJustice),
        Box::new(ethics::EthicsUtilitarianism),
        Box::new(ethics::EthicsVirtue),
        Box::new(ethics_gen::CM),
        Box::new(ethics_gen::DEONTOLOGY),
        Box::new(ethics_gen::JUSTICE),
        Box::new(ethics_gen::UTILITARIANISM),
        Box::new(ethics_gen::VIRTUE),
        Box::new(mmlu::MMLU),
        Box::new(mmlu::MmluLoglik),
        Box::new(retention_gen::MmluJoint),
        Box::new(gsm8k::Gsm8k),
        Box::new(mathqa::MATHQA),
        Box::new(mathqa::MATHQA_0SHOT),
        Box::new(retention_gen::MathQaJoint),
        Box::new(boolq::BoolQ),
        Box::new(retention_gen::BoolQGen),
        Box::new(squad2::Squad2),
        Box::new(pope::RANDOM),
        Box::new(pope::POPULAR),
        Box::new(pope::ADVERSARIAL),
        Box::new(unicorn::SKETCHY_VQA),
        Box::new(unicorn::SKETCHY_CHALLENGING),
        Box::new(unicorn_oodcv::OODCV_VQA),
        Box::new(unicorn_oodcv::OODCV_COUNTERFACTUAL),
        Box::new(vqav2::Vqav2),
        Box::new(mme::Mme),
        Box::new(caption::COCO),
        Box::new(caption::FLICKR30K),
    ]
}

/// Named groups of tasks.
pub const GROUPS: &[(&str, &[&str])] = &[
    (
        "truthfulqa",
        &["truthfulqa_mc1", "truthfulqa_mc2", "truthfulqa_gen"],
    ),
    (
        "ethics",
        &[
            "ethics_cm",
            "ethics_deontology",
            "ethics_justice",
            "ethics_utilitarianism",
            "ethics_virtue",
        ],
    ),
    ("pope", &["pope_random", "pope_popular", "pope_adversarial"]),
    // The paper's checks that the other skills survive (issue 16).
    ("retention", &["mmlu", "gsm8k", "mathqa", "boolq", "squad2"]),
    // The generative protocols (issue 18 item 2): every option in the prompt, a letter or a
    // word as the answer, read by fixed rules; what a chat API can run.
    (
        "generative",
        &[
            "truthfulqa_mc1_joint",
            "truthfulqa_mc1_circular",
            "truthfulqa_mc2_joint",
            "truthfulqa_mc2_circular",
            "ethics_cm_gen",
            "ethics_deontology_gen",
            "ethics_justice_gen",
            "ethics_utilitarianism_gen",
            "ethics_virtue_gen",
            "mmlu_joint",
            "mathqa_joint",
            "boolq_gen",
        ],
    ),
];

/// Where harness versions differ in a task's protocol, which one to run (the defaults are the
/// paper's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Variants {
    /// `--gsm8k-harness`: the paper's 0.3-era GSM8K or lm-eval 0.4.9.1's.
    pub gsm8k: gsm8k::Harness,
}

/// [`resolve`], with the tasks that have another harness version's protocol set to `variants`.
pub fn resolve_with(list: &str, variants: Variants) -> Result<Vec<Box<dyn Task>>> {
    let mut tasks = resolve(list)?;
    for t in &mut tasks {
        if t.name() == "gsm8k" && variants.gsm8k == gsm8k::Harness::V04 {
            *t = Box::new(gsm8k::Gsm8kV04);
        }
    }
    Ok(tasks)
}

/// Resolves a comma-separated list of task and group names, keeping first-mention order and
/// dropping repeats.
pub fn resolve(list: &str) -> Result<Vec<Box<dyn Task>>> {
    let mut names: Vec<&str> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let members: Vec<&str> = match GROUPS.iter().find(|(g, _)| *g == item) {
            Some((_, m)) => m.to_vec(),
            None => vec![item],
        };
        for m in members {
            if !names.contains(&m) {
                names.push(m);
            }
        }
    }
    if names.is_empty() {
        return Err(Error::Config("no tasks given".into()));
    }
    let mut registry = all();
    names
        .iter()
        .map(|n| {
            let pos = registry
                .iter()
                .position(|t| t.name() == *n)
                .ok_or_else(|| {
                    let known: Vec<&str> = all()
                        .iter()
                        .map(|t| t.name())
                        .chain(GROUPS.iter().map(|g| g.0))
                        .collect();
                    Error::Config(format!("unknown task `{n}` (known: {})", known.join(", ")))
                })?;
            Ok(registry.remove(pos))
        })
        .collect()
}
