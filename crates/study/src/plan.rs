//! From a [`StudyFile`] to the ordered list of steps that carry it out, each a `sightline`
//! command line working in its own folder `DIR/<step>/`:
//!
//! inputs → bases → vision tower → data → stage 1 → stage 2 and text-only variants → eval of
//! every base and variant (text; image and corruption sweeps on the multimodal ones) → report.
//!
//! Steps come out in dependency order. Nothing runs here; [`crate::runner`] runs the plan.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sightline_train::config::TrainConfig;

use crate::config::{DataSet, EvalSet, StudyFile, Variant};
use crate::error::{Error, Result};

/// What a step does, for the plan's display and the ETA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Prepare,
    Data,
    Train,
    Eval,
    Report,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Prepare => "prepare",
            Kind::Data => "data",
            Kind::Train => "train",
            Kind::Eval => "eval",
            Kind::Report => "report",
        }
    }
}

/// A path or name the step reads from outside the study folder; its fingerprint enters the
/// step's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// A local file or folder.
    Path(PathBuf),
    /// A hub id (`org/name[@rev]`): resolved by the command that loads it.
    Hub(String),
    /// The files compiled into the binary (`bundled:` paths), fingerprinted by content so a
    /// build that bundles other files redoes what reads them.
    Bundled,
}

/// One step of the plan.
#[derive(Debug, Clone)]
pub struct Step {
    /// Unique; also the folder `DIR/<name>/` that holds its outputs and manifest.
    pub name: String,
    pub kind: Kind,
    /// `sightline` argument lists (without the program name), run in order.
    pub commands: Vec<Vec<String>>,
    /// Steps whose outputs this one reads.
    pub deps: Vec<String>,
    pub inputs: Vec<Input>,
    pub outputs: Vec<PathBuf>,
    /// Rough cost for `--dry-run`: what it trains or scores.
    pub cost: String,
    /// Where a `sightline train` step writes (checkpoints to resume from).
    pub train_output: Option<PathBuf>,
    /// A training step's run settings as `sightline train` will see them (run file +
    /// overrides), recorded in its manifest.
    pub resolved: Option<serde_json::Value>,
}

/// The whole plan.
#[derive(Debug, Clone)]
pub struct Plan {
    pub dir: PathBuf,
    pub steps: Vec<Step>,
    /// Inputs that do not exist (shown by `--dry-run`; running stops at the first step that
    /// needs one).
    pub missing: Vec<PathBuf>,
}

/// A model as the eval commands name it.
#[derive(Debug, Clone)]
struct ModelRef {
    label: String,
    /// `--model ...` flags for the decoder alone.
    text_args: Vec<String>,
    /// Flags for image tasks; `None` for a text-only model.
    image_args: Option<Vec<String>>,
    eval_text: bool,
    eval_image: bool,
    /// The step that produced it (none for a given base).
    step: Option<String>,
    /// External inputs the eval reads (a given base).
    inputs: Vec<Input>,
}

/// A training set once resolved.
#[derive(Debug, Clone)]
struct Data {
    file: PathBuf,
    image_folder: Option<PathBuf>,
    step: Option<String>,
    inputs: Vec<Input>,
}

fn s(x: impl AsRef<str>) -> String {
    x.as_ref().to_string()
}

fn p(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Whether a spec names a hub repository rather than a path: `org/name` or `org/name@rev`
/// that does not exist locally.
pub fn is_hub_id(spec: &str) -> bool {
    let base = spec.split('@').next().unwrap_or(spec);
    !spec.starts_with("builtin:")
        && !spec.starts_with("bundled:")
        && !Path::new(spec).exists()
        && !base.starts_with('.')
        && !base.starts_with('/')
        && base.matches('/').count() == 1
        && base
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

/// Builds plans; holds what earlier steps made available to later ones.
struct Builder<'a> {
    study: &'a StudyFile,
    /// Folder `bundled:` paths resolve into.
    bundled_root: PathBuf,
    dir: PathBuf,
    steps: Vec<Step>,
    missing: Vec<PathBuf>,
    uses_bundled: bool,
    data: BTreeMap<String, Data>,
}

impl<'a> Builder<'a> {
    /// A path from the study file: `bundled:` into the inputs folder (and a dependency on
    /// the inputs step), anything else as given (and an external input).
    fn path(&mut self, spec: &str) -> (PathBuf, Option<String>, Vec<Input>) {
        if let Some(rel) = spec.strip_prefix("bundled:") {
            self.uses_bundled = true;
            return (self.bundled_root.join(rel), Some(s("inputs")), vec![]);
        }
        let path = PathBuf::from(spec);
        if !path.exists() && !self.missing.contains(&path) {
            self.missing.push(path.clone());
        }
        (path.clone(), None, vec![Input::Path(path)])
    }

    /// A model spec: `builtin:` stays (materialised by a step elsewhere), a hub id is an
    /// input resolved at run time, a path is a path.
    fn model_input(&mut self, spec: &str) -> Vec<Input> {
        if spec.starts_with("builtin:") {
            vec![]
        } else if is_hub_id(spec) {
            vec![Input::Hub(spec.to_string())]
        } else {
            self.path(spec).2
        }
    }

    fn push(&mut self, step: Step) {
        self.steps.push(step);
    }

    fn step_dir(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Plans `study` in `dir`.
pub fn plan(study: &StudyFile, dir: &Path, study_path: &Path) -> Result<Plan> {
    let mut b = Builder {
        study,
        bundled_root: dir.join("inputs").join("files"),
        dir: dir.to_path_buf(),
        steps: Vec::new(),
        missing: Vec::new(),
        uses_bundled: false,
        data: BTreeMap::new(),
    };
    let bases = plan_bases(&mut b)?;
    let tower = plan_tower(&mut b);
    for d in &study.data {
        plan_data(&mut b, d, study_path)?;
    }
    let mut models: Vec<ModelRef> = bases.iter().map(|(_, m)| m.clone()).collect();
    let mut stage1_out: BTreeMap<(String, String), PathBuf> = BTreeMap::new();
    // Stage-1 variants first: stage 2 reads their projector.
    let mut order: Vec<&Variant> = study.variants.iter().collect();
    order.sort_by_key(|v| v.stage1.is_some());
    for (base_name, base_model) in &bases {
        for v in &order {
            let m = plan_variant(
                &mut b,
                v,
                base_name,
                base_model,
                tower.as_ref(),
                &mut stage1_out,
                study_path,
            )?;
            models.push(m);
        }
    }
    let mut report_inputs: Vec<(PathBuf, String)> = Vec::new();
    for m in &models {
        plan_evals(&mut b, m, &mut report_inputs)?;
    }
    plan_report(&mut b, &models, &report_inputs)?;
    if b.uses_bundled {
        let out = b.bundled_root.clone();
        b.steps.insert(
            0,
            Step {
                name: s("inputs"),
                kind: Kind::Prepare,
                commands: vec![vec![s("data"), s("bundled"), p(&out)]],
                deps: vec![],
                inputs: vec![Input::Bundled],
                outputs: vec![out],
                cost: s("the training samples, sketches and run files built into the binary"),
                train_output: None,
                resolved: None,
            },
        );
    }
    Ok(Plan {
        dir: dir.to_path_buf(),
        steps: b.steps,
        missing: b.missing,
    })
}

/// Bases: a `builtin:` one is written out as an HF directory (training needs one).
fn plan_bases(b: &mut Builder) -> Result<Vec<(String, ModelRef)>> {
    let mut out = Vec::new();
    for base in &b.study.bases {
        let (model, step, inputs) = if let Some(name) = base.model.strip_prefix("builtin:") {
            let step = format!("base-{}", base.name);
            let dir = b.step_dir(&step).join("model");
            let mut cmd = vec![s("convert"), s("builtin"), s(name), p(&dir)];
            if let Some(n) = base.max_position_embeddings {
                cmd.extend([s("--max-position-embeddings"), n.to_string()]);
            }
            b.push(Step {
                name: step.clone(),
                kind: Kind::Prepare,
                commands: vec![cmd],
                deps: vec![],
                inputs: vec![],
                outputs: vec![dir.clone()],
                cost: format!("builtin:{name} as an HF directory"),
                train_output: None,
                resolved: None,
            });
            (p(&dir), Some(step), vec![])
        } else {
            let inputs = b.model_input(&base.model);
            (base.model.clone(), None, inputs)
        };
        out.push((
            base.name.clone(),
            ModelRef {
                label: base.name.clone(),
                text_args: vec![s("--model"), model],
                image_args: None,
                eval_text: true,
                eval_image: false,
                step,
                inputs,
            },
        ));
    }
    Ok(out)
}

/// The vision tower as (spec for commands, producing step, inputs).
type Tower = (String, Option<String>, Vec<Input>);

fn plan_tower(b: &mut Builder) -> Option<Tower> {
    let spec = b.study.vision_tower.clone()?;
    if let Some(name) = spec.strip_prefix("builtin:") {
        let dir = b.step_dir("vision-tower").join("clip");
        b.push(Step {
            name: s("vision-tower"),
            kind: Kind::Prepare,
            commands: vec![vec![s("convert"), s("builtin"), s(name), p(&dir)]],
            deps: vec![],
            inputs: vec![],
            outputs: vec![dir.clone()],
            cost: format!("builtin:{name} (seeded random weights) as a CLIP directory"),
            train_output: None,
            resolved: None,
        });
        return Some((p(&dir), Some(s("vision-tower")), vec![]));
    }
    let inputs = b.model_input(&spec);
    Some((spec, None, inputs))
}

fn dataset<'b>(b: &'b Builder, name: &str, user: &str) -> Result<&'b Data> {
    b.data.get(name).ok_or_else(|| {
        Error::Plan(format!(
            "{user}: no [[data]] named `{name}` above it (known: {})",
            b.data.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })
}

fn plan_data(b: &mut Builder, d: &DataSet, study_path: &Path) -> Result<()> {
    let where_ = format!("{}: [[data]] `{}`", study_path.display(), d.name);
    if let Some(file) = &d.file {
        let (file, step, mut inputs) = b.path(file);
        let image_folder = match &d.image_folder {
            Some(f) => {
                let (dir, _, more) = b.path(f);
                inputs.extend(more);
                Some(dir)
            }
            None => None,
        };
        b.data.insert(
            d.name.clone(),
            Data {
                file,
                image_folder,
                step,
                inputs,
            },
        );
        return Ok(());
    }
    let step_name = format!("data-{}", d.name);
    let out_dir = b.step_dir(&step_name);
    let out = out_dir.join(format!("{}.json", d.name));
    let mut deps = Vec::new();
    let mut inputs = Vec::new();
    let mut commands = Vec::new();
    let mut image_folder = None;
    let mut cost = String::new();
    if let Some(from) = &d.strip_images {
        let src = dataset(b, from, &where_)?.clone();
        deps.extend(src.step.clone());
        inputs.extend(src.inputs.clone());
        commands.push(vec![
            s("data"),
            s("strip-images"),
            p(&src.file),
            s("--output"),
            p(&out),
        ]);
        cost = format!("`{from}` without images");
    } else if let Some(conv) = &d.convert {
        let (file, step, more) = b.path(&conv.file);
        deps.extend(step);
        inputs.extend(more);
        let converted = if d.sample.is_some() {
            out_dir.join("converted.json")
        } else {
            out.clone()
        };
        let mut cmd = vec![s("data"), s("convert"), conv.format.clone(), p(&file)];
        cmd.extend(conv.args.iter().cloned());
        cmd.extend([s("--output"), p(&converted)]);
        commands.push(cmd);
        cost = format!("{} records → LLaVA conversations", conv.format);
        if let Some(smp) = &d.sample {
            commands.push(sample_cmd(&converted, smp.count, smp.seed, &out));
            cost.push_str(&format!(", {} sampled (seed {})", smp.count, smp.seed));
        }
    } else if let Some(smp) = &d.sample {
        let from = smp.from.clone().unwrap_or_default();
        let src = dataset(b, &from, &where_)?.clone();
        deps.extend(src.step.clone());
        inputs.extend(src.inputs.clone());
        image_folder = src.image_folder.clone();
        commands.push(sample_cmd(&src.file, smp.count, smp.seed, &out));
        cost = format!("{} records of `{from}` (seed {})", smp.count, smp.seed);
    } else if let Some(g) = &d.groups {
        let mut cmd = vec![s("data"), s("groups")];
        for (flag, spec) in [
            ("--conversation", &g.conversation),
            ("--detail", &g.detail),
            ("--reasoning", &g.reasoning),
        ] {
            let (file, step, more) = b.path(spec);
            deps.extend(step);
            inputs.extend(more);
            cmd.extend([s(flag), p(&file)]);
        }
        let groups_dir = out_dir.join("groups");
        cmd.extend([
            s("--count"),
            g.count.to_string(),
            s("--seed"),
            g.seed.to_string(),
            s("--output-dir"),
            p(&groups_dir),
        ]);
        if g.text_only {
            cmd.push(s("--text-only"));
        }
        let folder = match &d.image_folder {
            Some(f) if !g.text_only => {
                let (dir, _, more) = b.path(f);
                inputs.extend(more);
                Some(dir)
            }
            _ => None,
        };
        for group in ["conversation", "detail", "reasoning"] {
            b.data.insert(
                format!("{}.{group}", d.name),
                Data {
                    file: groups_dir.join(format!("{group}_{}.json", g.count)),
                    image_folder: folder.clone(),
                    step: Some(step_name.clone()),
                    inputs: vec![],
                },
            );
        }
        b.push(Step {
            name: step_name,
            kind: Kind::Data,
            commands: vec![cmd],
            deps: dedup(deps),
            inputs,
            outputs: vec![groups_dir],
            cost: format!(
                "{} records from each of 3 groups (seed {})",
                g.count, g.seed
            ),
            train_output: None,
            resolved: None,
        });
        return Ok(());
    }
    b.data.insert(
        d.name.clone(),
        Data {
            file: out.clone(),
            image_folder,
            step: Some(step_name.clone()),
            inputs: vec![],
        },
    );
    b.push(Step {
        name: step_name,
        kind: Kind::Data,
        commands,
        deps: dedup(deps),
        inputs,
        outputs: vec![out],
        cost,
        train_output: None,
        resolved: None,
    });
    Ok(())
}

fn sample_cmd(input: &Path, count: usize, seed: u64, out: &Path) -> Vec<String> {
    vec![
        s("data"),
        s("sample"),
        p(input),
        s("--count"),
        count.to_string(),
        s("--seed"),
        seed.to_string(),
        s("--output"),
        p(out),
    ]
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    v.retain(|x| seen.insert(x.clone()));
    v
}

/// A TOML string for a `key=value` override.
fn toml_str(v: &str) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| format!("{v:?}"))
}

/// What a variant's run file makes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunKind {
    Stage1,
    Stage2 { lora: bool },
    TextOnly { lora: bool },
}

/// Reads the run file (from the binary for `bundled:` ones) with the study's overrides.
fn read_run(b: &Builder, v: &Variant, overrides: &[String]) -> Result<Option<TrainConfig>> {
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

/// A file compiled into the binary (`sightline_data::bundled`), by its `bundled:` path.
fn bundled_file(rel: &str) -> Option<&'static [u8]> {
    sightline_data::bundled::FILES
        .iter()
        .find(|(name, _)| *name == rel)
        .map(|(_, bytes)| *bytes)
}

#[allow(clippy::too_many_arguments)]
fn plan_variant(
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
        let proj = stage1_out
            .get(&(base_name.to_string(), s1.clone()))
            .cloned()
            .ok_or_else(|| {
                Error::Plan(format!(
                    "{where_}: stage1 `{s1}` is not a stage-1 run (tune_mm_mlp_adapter)"
                ))
            })?;
        overrides.push(format!(
            "pretrain_mm_mlp_adapter={}",
            toml_str(&p(&proj.join("mm_projector.safetensors")))
        ));
        let s1_label = if b.study.bases.len() == 1 {
            s1.clone()
        } else {
            format!("{base_name}-{s1}")
        };
        deps.push(format!("train-{s1_label}"));
    }
    overrides.extend(b.study.train.overrides.iter().cloned());
    overrides.extend(v.overrides.iter().cloned());
    let cfg = read_run(b, v, &overrides)?;
    let kind = match &cfg {
        Some(c) if c.tune_mm_mlp_adapter => RunKind::Stage1,
        Some(c) if c.vision_tower.is_some() => RunKind::Stage2 {
            lora: c.lora_enable,
        },
        Some(c) => RunKind::TextOnly {
            lora: c.lora_enable,
        },
        None => RunKind::TextOnly { lora: false },
    };
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
    let tower_args = |mut args: Vec<String>| {
        if let Some((spec, _, _)) = tower {
            args.extend([s("--vision-tower"), spec.clone()]);
        }
        args
    };
    let o = p(&out);
    let (text_args, image_args) = match kind {
        RunKind::Stage1 => (
            vec![s("--model"), base_model.clone()],
            Some(tower_args(vec![
                s("--model"),
                base_model.clone(),
                s("--mm-projector"),
                p(&out.join("mm_projector.safetensors")),
            ])),
        ),
        RunKind::Stage2 { lora: false } => (
            vec![s("--model"), o.clone()],
            Some(tower_args(vec![s("--model"), o.clone()])),
        ),
        RunKind::Stage2 { lora: true } => (
            vec![s("--model"), base_model.clone(), s("--adapter"), o.clone()],
            Some(tower_args(vec![
                s("--model"),
                base_model.clone(),
                s("--adapter"),
                o.clone(),
                s("--mm-projector"),
                p(&out.join("mm_projector.safetensors")),
            ])),
        ),
        RunKind::TextOnly { lora: false } => (vec![s("--model"), o.clone()], None),
        RunKind::TextOnly { lora: true } => (
            vec![s("--model"), base_model.clone(), s("--adapter"), o],
            None,
        ),
    };
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

/// A training set's text when it can be read at plan time: a file that exists, or a bundled
/// one (written by the inputs step later).
fn data_bytes(b: &Builder, file: &Path) -> Option<String> {
    if let Ok(rel) = file.strip_prefix(&b.bundled_root) {
        let rel = rel.to_string_lossy().replace('\\', "/");
        return bundled_file(&rel).map(|x| String::from_utf8_lossy(x).into_owned());
    }
    std::fs::read_to_string(file).ok()
}

/// Records × epochs of a run, and tokens at ~4 bytes each (a rough figure for the plan).
fn train_cost(cfg: Option<&TrainConfig>, data: &Option<String>) -> String {
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

fn eval_step(
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
fn eval_cost(tasks: &str, limit: Option<usize>) -> String {
    match sightline_eval::evaluator::count_requests(tasks, limit) {
        Ok((docs, requests)) => format!("{docs} documents, {requests} requests"),
        Err(_) => format!("tasks {tasks} (size known when they run)"),
    }
}

fn plan_evals(b: &mut Builder, m: &ModelRef, report: &mut Vec<(PathBuf, String)>) -> Result<()> {
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

fn plan_report(b: &mut Builder, models: &[ModelRef], inputs: &[(PathBuf, String)]) -> Result<()> {
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

/// SHA-256 over every file compiled into the binary for `bundled:` paths.
pub fn bundled_fingerprint() -> String {
    let mut all: Vec<u8> = Vec::new();
    let files = sightline_data::bundled::FILES
        .iter()
        .copied()
        .chain(sightline_eval::data::bundled_images());
    for (name, bytes) in files {
        all.extend_from_slice(name.as_bytes());
        all.push(0);
        all.extend_from_slice(crate::fingerprint::sha256_hex(bytes).as_bytes());
    }
    crate::fingerprint::sha256_hex(&all)
}
