//! From a [`StudyFile`] to the ordered list of steps that carry it out, each a `sightline`
//! command line working in its own folder `DIR/<step>/`:
//!
//! inputs → bases → vision tower → data → stage 1 → stage 2 and text-only variants → eval of
//! every base and variant (text; image and corruption sweeps on the multimodal ones) → report.
//!
//! Steps come out in dependency order. Nothing runs here; [`crate::runner`] runs the plan.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sightline_model::hub::HubId;

use crate::config::{StudyFile, Variant};
use crate::error::Result;

mod data;
mod eval;
mod train;

use data::plan_data;
use eval::{plan_evals, plan_report};
use train::plan_variant;

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

/// Whether a spec names a hub repository rather than a path, by the loader's own rule
/// ([`sightline_model::hub::resolve`]): not a `builtin:`/`bundled:` spec, no such local path,
/// and a valid `org/name[@revision]` ([`HubId::parse`]).
pub fn is_hub_id(spec: &str) -> bool {
    !spec.starts_with("builtin:")
        && !spec.starts_with("bundled:")
        && !Path::new(spec).exists()
        && HubId::parse(spec).is_some()
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

fn dedup(mut v: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    v.retain(|x| seen.insert(x.clone()));
    v
}

/// A TOML string for a `key=value` override.
fn toml_str(v: &str) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| format!("{v:?}"))
}

/// A file compiled into the binary (`sightline_data::bundled`), by its `bundled:` path.
fn bundled_file(rel: &str) -> Option<&'static [u8]> {
    sightline_data::bundled::FILES
        .iter()
        .find(|(name, _)| *name == rel)
        .map(|(_, bytes)| *bytes)
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
