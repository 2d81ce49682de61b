//! Evaluation steps (text, image, corruption sweeps) and the report step.

use std::path::PathBuf;

use super::{p, s, Builder, Kind, ModelRef, Step};
use crate::config::EvalSet;
use crate::error::{Error, Result};

pub(super) fn eval_step(
    b: &mut Builder,
    m: &ModelRef,
    name: String,
    model_args: &[String],
    set: &EvalSet,
    extra: &[String],
) -> PathBuf {
    let out = b.step_dir(&name).join("out");
    let mut cmd = vec![s("eval")];
    cmd.extend(model_args.iter().cloned());
    cmd.extend([s("--tasks"), set.tasks.clone()]);
    if let Some(n) = set.limit {
        cmd.extend([s("--limit"), n.to_string()]);
    }
    cmd.extend([
        s("--output"),
        p(&out),
        s("--log-samples"),
        s("--cache"),
        p(&b.step_dir(&name).join("cache")),
        s("--overwrite"),
    ]);
    cmd.extend(b.study.eval.args.iter().cloned());
    cmd.extend(set.args.iter().cloned());
    cmd.extend(extra.iter().cloned());
    let mut cost = eval_cost(&set.tasks, set.limit);
    if set.args.iter().any(|a| a == "--skip-missing-images") {
        cost.push_str(" before --skip-missing-images drops records without their image");
    }
    b.push(Step {
        name,
        kind: Kind::Eval,
        commands: vec![cmd],
        deps: m.step.iter().cloned().collect(),
        inputs: m.inputs.clone(),
        outputs: vec![out.clone()],
        cost,
        train_output: None,
        resolved: None,
    });
    out
}

/// Requests to score for built-in tasks (documents × choices); image tasks with user data
/// are counted when they run.
pub(super) fn eval_cost(tasks: &str, limit: Option<usize>) -> String {
    match sightline_eval::evaluator::count_requests(tasks, limit) {
        Ok((docs, requests)) => format!("{docs} documents, {requests} requests"),
        Err(_) => format!("tasks {tasks} (size known when they run)"),
    }
}

pub(super) fn plan_evals(
    b: &mut Builder,
    m: &ModelRef,
    report: &mut Vec<(PathBuf, String)>,
) -> Result<()> {
    if let Some(step) = &m.step {
        if step.starts_with("train-") {
            if let Some(t) = b.steps.iter().find(|s| &s.name == step) {
                if let Some(out) = &t.train_output {
                    report.push((out.clone(), m.label.clone()));
                }
            }
        }
    }
    if m.eval_text {
        if let Some(set) = b.study.eval.text.clone() {
            let out = eval_step(
                b,
                m,
                format!("eval-{}-text", m.label),
                &m.text_args.clone(),
                &set,
                &[],
            );
            report.push((out, m.label.clone()));
        }
    }
    if m.eval_image {
        if let (Some(set), Some(args)) = (b.study.eval.image.clone(), m.image_args.clone()) {
            let out = eval_step(b, m, format!("eval-{}-image", m.label), &args, &set, &[]);
            report.push((out, m.label.clone()));
            if let Some(c) = b.study.eval.corrupt.clone() {
                for name in &c.corruptions {
                    for sev in &c.severities {
                        let out = eval_step(
                            b,
                            m,
                            format!("eval-{}-{name}-{sev}", m.label),
                            &args,
                            &set,
                            &[s("--corrupt"), format!("{name}:{sev}")],
                        );
                        report.push((out, m.label.clone()));
                    }
                }
            }
        }
    }
    Ok(())
}

pub(super) fn plan_report(
    b: &mut Builder,
    models: &[ModelRef],
    inputs: &[(PathBuf, String)],
) -> Result<()> {
    let baseline = b
        .study
        .report
        .baseline
        .clone()
        .unwrap_or_else(|| b.study.bases[0].name.clone());
    if !models.iter().any(|m| m.label == baseline) {
        return Err(Error::Plan(format!(
            "[report] baseline `{baseline}` is not a base or variant label (labels: {})",
            models
                .iter()
                .map(|m| m.label.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    let mut cmd = vec![s("report")];
    for (dir, _) in inputs {
        cmd.push(p(dir));
    }
    for (dir, label) in inputs {
        cmd.extend([s("--label"), format!("{}={label}", p(dir))]);
    }
    cmd.extend([
        s("--baseline"),
        baseline,
        s("--output"),
        p(&b.dir),
        s("--overwrite"),
    ]);
    if let Some(note) = &b.study.report.note {
        cmd.extend([s("--note"), note.clone()]);
    }
    let deps: Vec<String> = b
        .steps
        .iter()
        .filter(|s| matches!(s.kind, Kind::Eval | Kind::Train))
        .map(|s| s.name.clone())
        .collect();
    let out = b.dir.clone();
    b.push(Step {
        name: s("report"),
        kind: Kind::Report,
        commands: vec![cmd],
        deps,
        inputs: vec![],
        outputs: vec![
            out.join("report.md"),
            out.join("report.html"),
            out.join("report.json"),
            out.join("plots"),
        ],
        cost: format!("{} models", models.len()),
        train_output: None,
        resolved: None,
    });
    Ok(())
}
