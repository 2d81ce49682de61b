//! Training sets: given files, and sets built by `sightline data` verbs (strip-images,
//! convert, sample, groups), each a step.

use std::path::Path;

use super::{dedup, p, s, Builder, Data, Kind, Step};
use crate::config::DataSet;
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
