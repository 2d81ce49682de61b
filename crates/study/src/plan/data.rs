//! Training sets: given files, and sets built by `sightline data` verbs (strip-images,
//! convert, sample, groups), each a step.

use std::path::{Path, PathBuf};

use super::{dedup, p, s, Builder, Data, Input, Kind, Step};
use crate::config::{Convert, DataSet, Groups, Sample};
use crate::error::{Error, Result};

pub(super) fn dataset<'b>(b: &'b Builder, name: &str, user: &str) -> Result<&'b Data> {
    b.data.get(name).ok_or_else(|| {
        Error::Plan(format!(
            "{user}: no [[data]] named `{name}` above it (known: {})",
            b.data.keys().cloned().collect::<Vec<_>>().join(", ")
        ))
    })
}

pub(super) fn plan_data(b: &mut Builder, d: &DataSet, study_path: &Path) -> Result<()> {
    let where_ = format!("{}: [[data]] `{}`", study_path.display(), d.name);
    if let Some(file) = &d.file {
        given_file(b, d, file);
        return Ok(());
    }
    let step_name = format!("data-{}", d.name);
    let out_dir = b.step_dir(&step_name);
    let out = out_dir.join(format!("{}.json", d.name));
    // One way of building the set, in this order of precedence.
    let built = if let Some(from) = &d.strip_images {
        strip_images(b, from, &out, &where_)?
    } else if let Some(conv) = &d.convert {
        convert(b, d, conv, &out_dir, &out)
    } else if let Some(smp) = &d.sample {
        sample(b, smp, &out, &where_)?
    } else if let Some(g) = &d.groups {
        groups(b, d, g, step_name, &out_dir);
        return Ok(());
    } else {
        Built::default()
    };
    b.data.insert(
        d.name.clone(),
        Data {
            file: out.clone(),
            image_folder: built.image_folder,
            step: Some(step_name.clone()),
            inputs: vec![],
        },
    );
    b.push(Step {
        name: step_name,
        kind: Kind::Data,
        commands: built.commands,
        deps: dedup(built.deps),
        inputs: built.inputs,
        outputs: vec![out],
        cost: built.cost,
        train_output: None,
        resolved: None,
    });
    Ok(())
}

/// A set given as a file (and image folder): no step, only what it reads.
fn given_file(b: &mut Builder, d: &DataSet, file: &str) {
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
}

/// The parts of a step that builds one set file.
#[derive(Default)]
struct Built {
    deps: Vec<String>,
    inputs: Vec<Input>,
    commands: Vec<Vec<String>>,
    image_folder: Option<PathBuf>,
    cost: String,
}

/// `strip-images` of an earlier set.
fn strip_images(b: &Builder, from: &str, out: &Path, where_: &str) -> Result<Built> {
    let src = dataset(b, from, where_)?.clone();
    Ok(Built {
        deps: src.step.into_iter().collect(),
        inputs: src.inputs,
        commands: vec![vec![
            s("data"),
            s("strip-images"),
            p(&src.file),
            s("--output"),
            p(out),
        ]],
        image_folder: None,
        cost: format!("`{from}` without images"),
    })
}

/// `convert` of a file in another format, then `sample` of the result when asked.
fn convert(b: &mut Builder, d: &DataSet, conv: &Convert, out_dir: &Path, out: &Path) -> Built {
    let (file, step, inputs) = b.path(&conv.file);
    let converted = if d.sample.is_some() {
        out_dir.join("converted.json")
    } else {
        out.to_path_buf()
    };
    let mut cmd = vec![s("data"), s("convert"), conv.format.clone(), p(&file)];
    cmd.extend(conv.args.iter().cloned());
    cmd.extend([s("--output"), p(&converted)]);
    let mut commands = vec![cmd];
    let mut cost = format!("{} records → LLaVA conversations", conv.format);
    if let Some(smp) = &d.sample {
        commands.push(sample_cmd(&converted, smp.count, smp.seed, out));
        cost.push_str(&format!(", {} sampled (seed {})", smp.count, smp.seed));
    }
    Built {
        deps: step.into_iter().collect(),
        inputs,
        commands,
        image_folder: None,
        cost,
    }
}

/// `sample` of an earlier set (keeping its image folder).
fn sample(b: &Builder, smp: &Sample, out: &Path, where_: &str) -> Result<Built> {
    let from = smp.from.clone().unwrap_or_default();
    let src = dataset(b, &from, where_)?.clone();
    Ok(Built {
        deps: src.step.into_iter().collect(),
        inputs: src.inputs,
        commands: vec![sample_cmd(&src.file, smp.count, smp.seed, out)],
        image_folder: src.image_folder,
        cost: format!("{} records of `{from}` (seed {})", smp.count, smp.seed),
    })
}

/// `groups`: one step, three sets (`<name>.conversation`, `.detail`, `.reasoning`).
fn groups(b: &mut Builder, d: &DataSet, g: &Groups, step_name: String, out_dir: &Path) {
    let mut deps = Vec::new();
    let mut inputs = Vec::new();
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
}

pub(super) fn sample_cmd(input: &Path, count: usize, seed: u64, out: &Path) -> Vec<String> {
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
