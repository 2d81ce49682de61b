//! Training steps: a variant's run file with the study's paths and overrides, and the model
//! references its evaluations use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sightline_train::config::TrainConfig;

use super::data::dataset;
use super::{bundled_file, dedup, p, s, toml_str, Builder, Kind, ModelRef, Step, Tower};
use crate::config::Variant;
use crate::error::{Error, Result};

/// What a variant's run file makes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunKind {
    Stage1,
    Stage2 { lora: bool },
    TextOnly { lora: bool },
}

/// Reads the run file (from the binary for `bundled:` ones) with the study's overrides.
pub(super) fn read_run(
    b: &Builder,
    v: &Variant,
    overrides: &[String],
) -> Result<Option<TrainConfig>> {
    let (text, path) = if let Some(rel) = v.run.strip_prefix("bundled:") {
        let bytes = bundled_file(rel).ok_or_else(|| {
            Error::Plan(format!(
                "[[variant]] `{}`: run `{}` is not a bundled file",
                v.name, v.run
            ))
        })?;
        (
            String::from_utf8_lossy(bytes).into_owned(),
            b.bundled_root.join(rel),
        )
    } else {
        let path = PathBuf::from(&v.run);
        match std::fs::read_to_string(&path) {
            Ok(t) => (t, path),
            Err(_) => return Ok(None),
        }
    };
    TrainConfig::from_toml_str(&text, &path, overrides)
        .map(Some)
        .map_err(|e| Error::Plan(format!("[[variant]] `{}`: {e}", v.name)))
}

#[allow(clippy::too_many_arguments)]
pub(super) fn plan_variant(
    b: &mut Builder,
    v: &Variant,
    base_name: &str,
    base: &ModelRef,
    tower: Option<&Tower>,
    stage1_out: &mut BTreeMap<(String, String), PathBuf>,
    study_path: &Path,
) -> Result<ModelRef> {
    let label = if b.study.bases.len() == 1 {
        v.name.clone()
    } else {
        format!("{base_name}-{}", v.name)
    };
    let step = format!("train-{label}");
    let out = b.step_dir(&step).join("out");
    let where_ = format!("{}: [[variant]] `{}`", study_path.display(), v.name);
    let data = dataset(b, &v.data, &where_)?.clone();
    let base_model = base.text_args[1].clone();
    let (run_path, run_step, run_inputs) = b.path(&v.run);
    let mut deps: Vec<String> = base.step.iter().cloned().collect();
    deps.extend(data.step.clone());
    deps.extend(run_step);
    let mut inputs = base.inputs.clone();
    inputs.extend(data.inputs.clone());
    inputs.extend(run_inputs);
    let mut overrides = vec![
        format!("model_name_or_path={}", toml_str(&base_model)),
        format!("data_path={}", toml_str(&p(&data.file))),
        format!("output_dir={}", toml_str(&p(&out))),
    ];
    if let Some(f) = &data.image_folder {
        overrides.push(format!("image_folder={}", toml_str(&p(f))));
    }
    // The run file says whether the run is multimodal; the study names the tower.
    let probe = read_run(b, v, &[])?;
    let multimodal = probe.as_ref().is_some_and(|c| c.vision_tower.is_some());
    if multimodal {
        let (spec, tstep, tin) = tower.cloned().ok_or_else(|| {
            Error::Plan(format!(
                "{where_}: run `{}` trains with images but the study has no vision_tower",
                v.run
            ))
        })?;
        overrides.push(format!("vision_tower={}", toml_str(&spec)));
        deps.extend(tstep);
        inputs.extend(tin);
    }
    if let Some(s1) = &v.stage1 {
        let (projector, dep) = stage1_projector(b, s1, base_name, stage1_out, &where_)?;
        overrides.push(projector);
        deps.push(dep);
    }
    overrides.extend(b.study.train.overrides.iter().cloned());
    overrides.extend(v.overrides.iter().cloned());
    let cfg = read_run(b, v, &overrides)?;
    let kind = RunKind::of(cfg.as_ref());
    if kind == RunKind::Stage1 {
        stage1_out.insert((base_name.to_string(), v.name.clone()), out.clone());
    }
    let mut cmd = vec![s("train"), s("--config"), p(&run_path)];
    cmd.extend(overrides);
    let cost = train_cost(cfg.as_ref(), &data_bytes(b, &data.file));
    b.push(Step {
        name: step.clone(),
        kind: Kind::Train,
        commands: vec![cmd],
        deps: dedup(deps),
        inputs,
        outputs: vec![out.clone()],
        cost,
        train_output: Some(out.clone()),
        resolved: cfg.as_ref().and_then(|c| serde_json::to_value(c).ok()),
    });
    let (text_args, image_args) = eval_args(kind, &base_model, &out, tower);
    let wants = |what: &str, default: bool| {
        v.eval
            .as_ref()
            .map_or(default, |e| e.iter().any(|x| x == what))
    };
    let mut model_inputs = base.inputs.clone();
    if let Some((_, _, tin)) = tower {
        model_inputs.extend(tin.iter().cloned());
    }
    Ok(ModelRef {
        label,
        text_args,
        eval_text: wants("text", kind != RunKind::Stage1),
        eval_image: image_args.is_some() && wants("image", true),
        image_args,
        step: Some(step),
        inputs: model_inputs,
    })
}

impl RunKind {
    /// The kind of run a run file describes (a missing file plans as plain text training).
    fn of(cfg: Option<&TrainConfig>) -> Self {
        match cfg {
            Some(c) if c.tune_mm_mlp_adapter => RunKind::Stage1,
            Some(c) if c.vision_tower.is_some() => RunKind::Stage2 {
                lora: c.lora_enable,
            },
            Some(c) => RunKind::TextOnly {
                lora: c.lora_enable,
            },
            None => RunKind::TextOnly { lora: false },
        }
    }
}

/// The `pretrain_mm_mlp_adapter` override and the step dependency of a variant that starts
/// from stage-1 run `s1`'s projector.
fn stage1_projector(
    b: &Builder,
    s1: &str,
    base_name: &str,
    stage1_out: &BTreeMap<(String, String), PathBuf>,
    where_: &str,
) -> Result<(String, String)> {
    let Some(proj) = stage1_out
        .get(&(base_name.to_string(), s1.to_string()))
        .cloned()
    else {
        // A stage-1 variant whose run file is missing plans as a text run: name the file
        // rather than call it "not a stage-1 run".
        if let Some(run) = b
            .study
            .variants
            .iter()
            .find(|x| x.name == s1)
            .map(|x| &x.run)
            .filter(|run| !run.starts_with("bundled:") && !Path::new(run).exists())
        {
            return Err(Error::Plan(format!(
                "{where_}: stage1 `{s1}`: its run file {run} does not exist"
            )));
        }
        return Err(Error::Plan(format!(
            "{where_}: stage1 `{s1}` is not a stage-1 run (tune_mm_mlp_adapter)"
        )));
    };
    let projector = format!(
        "pretrain_mm_mlp_adapter={}",
        toml_str(&p(&proj.join("mm_projector.safetensors")))
    );
    let s1_label = if b.study.bases.len() == 1 {
        s1.to_string()
    } else {
        format!("{base_name}-{s1}")
    };
    Ok((projector, format!("train-{s1_label}")))
}

/// The `sightline eval` model arguments of a trained variant: for text tasks, and for image
/// tasks when the variant has a vision side (stage 1's projector on the base, or a stage-2
/// model), given the run's output directory `out`.
fn eval_args(
    kind: RunKind,
    base_model: &str,
    out: &Path,
    tower: Option<&Tower>,
) -> (Vec<String>, Option<Vec<String>>) {
    let tower_args = |mut args: Vec<String>| {
        if let Some((spec, _, _)) = tower {
            args.extend([s("--vision-tower"), spec.clone()]);
        }
        args
    };
    let base_model = s(base_model);
    let o = p(out);
    match kind {
        RunKind::Stage1 => (
            vec![s("--model"), base_model.clone()],
            Some(tower_args(vec![
                s("--model"),
                base_model,
                s("--mm-projector"),
                p(&out.join("mm_projector.safetensors")),
            ])),
        ),
        RunKind::Stage2 { lora: false } => (
            vec![s("--model"), o.clone()],
            Some(tower_args(vec![s("--model"), o])),
        ),
        RunKind::Stage2 { lora: true } => (
            vec![s("--model"), base_model.clone(), s("--adapter"), o.clone()],
            Some(tower_args(vec![
                s("--model"),
                base_model,
                s("--adapter"),
                o,
                s("--mm-projector"),
                p(&out.join("mm_projector.safetensors")),
            ])),
        ),
        RunKind::TextOnly { lora: false } => (vec![s("--model"), o], None),
        RunKind::TextOnly { lora: true } => {
            (vec![s("--model"), base_model, s("--adapter"), o], None)
        }
    }
}

/// A training set's text when it can be read at plan time: a file that exists, or a bundled
/// one (written by the inputs step later).
pub(super) fn data_bytes(b: &Builder, file: &Path) -> Option<String> {
    if let Ok(rel) = file.strip_prefix(&b.bundled_root) {
        let rel = rel.to_string_lossy().replace('\\', "/");
        return bundled_file(&rel).map(|x| String::from_utf8_lossy(x).into_owned());
    }
    std::fs::read_to_string(file).ok()
}

/// Records × epochs of a run, and tokens at ~4 bytes each (a rough figure for the plan).
pub(super) fn train_cost(cfg: Option<&TrainConfig>, data: &Option<String>) -> String {
    let Some(cfg) = cfg else {
        return s("run file missing");
    };
    let Some(text) = data else {
        return format!(
            "{} epochs of a set built earlier in the plan",
            cfg.num_train_epochs
        );
    };
    let records = count_records(text).unwrap_or(0).max(1);
    let steps = cfg.total_steps(records);
    let per_step = cfg.per_device_train_batch_size * cfg.gradient_accumulation_steps;
    let epochs = cfg.num_train_epochs.max(0.0).ceil() as usize;
    let seen = if cfg.max_steps > 0 {
        steps * per_step
    } else {
        records * epochs
    };
    let tokens = text.len() as f64 / 4.0 / records as f64 * seen as f64;
    format!("{steps} optimizer steps over {records} records, ≈{tokens:.0} tokens to train")
}

/// Records in the text of a LLaVA JSON array or JSONL file.
pub fn count_records(text: &str) -> Option<usize> {
    if text.trim_start().starts_with('[') {
        serde_json::from_str::<Vec<serde_json::Value>>(text)
            .ok()
            .map(|v| v.len())
    } else {
        Some(text.lines().filter(|l| !l.trim().is_empty()).count())
    }
}
