//! `sightline data <verb>`: build and check the paper's training sets (LLaVA visual
//! instructions, the same without images, Alpaca / Orca samples, Conversation / Detail /
//! Reasoning groups) in LLaVA's JSON format. Every verb streams its input one record at a time;
//! the work is done by `sightline-data`.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args as ClapArgs, Subcommand, ValueEnum};
use serde_json::Value;
use sightline_data::formats::{self, AlpacaPrompt, SourceFormat, SystemPrompt};
use sightline_data::groups::{self, Group};
use sightline_data::labels::{
    self, OnMismatch, Preprocess, Sample, IGNORE_INDEX, IMAGE_TOKEN_INDEX,
};
use sightline_data::preprocess::Template;
use sightline_data::record::id_of;
use sightline_data::stats::Stats;
use sightline_data::stream::{self, Flow, Format, RecordWriter};
use sightline_data::{sample, strip, validate, Error, Record};
use sightline_guard::Folder;
use sightline_model::Tokenizer;

use crate::io::Output;

mod bundled;
mod convert;
mod corrupt;
mod preview;
mod stats;

use bundled::{run_bundled, BundledArgs};
use convert::{run_convert, ConvertArgs};
use corrupt::{run_corrupt, CorruptArgs};
use preview::{run_preview, PreviewArgs};
use stats::{run_stats, StatsArgs};

#[derive(Subcommand)]
pub enum Command {
    /// Check records against everything LLaVA's trainer assumes; one line per problem, exit
    /// code 1 if there is any.
    Validate(ValidateArgs),
    /// Record, turn and image counts; token lengths with --tokenizer.
    Stats(StatsArgs),
    /// Visual instructions without images: drop `image` and the `<image>` placeholder.
    StripImages(StripArgs),
    /// Alpaca, Orca, ShareGPT or LLaVA-Bench QA records → LLaVA conversations.
    Convert(ConvertArgs),
    /// A uniform sample of N records, the same for the same seed on any machine.
    Sample(SampleArgs),
    /// N records each from LLaVA-Instruct's conversation, detail and reasoning files.
    Groups(GroupsArgs),
    /// Show records as the model sees them in training, trained tokens marked.
    Preview(PreviewArgs),
    /// ImageNet-C corruptions (19, severities 1–5) of an image or a folder of images,
    /// as OUT_DIR/<corruption>/<severity>/<image>.png, with an optional contact sheet.
    Corrupt(CorruptArgs),
    /// Write the training samples, sketches and example run files built into the binary to a
    /// new folder (the embedded study's inputs).
    Bundled(BundledArgs),
}

pub fn run(cmd: Command) -> Result<()> {
    let result = match cmd {
        Command::Validate(a) => run_validate(a),
        Command::Stats(a) => run_stats(a),
        Command::StripImages(a) => run_strip(a),
        Command::Convert(a) => run_convert(a),
        Command::Sample(a) => run_sample(a),
        Command::Groups(a) => run_groups(a),
        Command::Preview(a) => run_preview(a),
        Command::Corrupt(a) => run_corrupt(a),
        Command::Bundled(a) => run_bundled(a),
    };
    match result {
        // `sightline data sample ... | head`: the reader has seen enough; not an error.
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    let broken = |io: &std::io::Error| io.kind() == std::io::ErrorKind::BrokenPipe;
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(broken)
            || matches!(c.downcast_ref::<Error>(), Some(Error::Io { err, .. }) if broken(err))
    })
}

// ------------------------------------------------------------------------------ outputs

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    /// One JSON array (what LLaVA's train.py reads).
    Json,
    /// One record per line.
    Jsonl,
}

#[derive(ClapArgs)]
struct OutputArgs {
    /// Output file (default: stdout).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Replace --output if it exists.
    #[arg(long)]
    overwrite: bool,
    /// Output layout (default: JSON Lines for a `.jsonl` name or stdout, else a JSON array).
    #[arg(long, value_enum)]
    format: Option<FormatArg>,
}

impl OutputArgs {
    fn format(&self) -> Format {
        match (self.format, &self.output) {
            (Some(FormatArg::Json), _) => Format::Json,
            (Some(FormatArg::Jsonl), _) | (None, None) => Format::Jsonl,
            (None, Some(p)) => Format::from_path(p),
        }
    }

    fn name(&self) -> PathBuf {
        self.output.clone().unwrap_or_else(|| PathBuf::from("-"))
    }
}

/// Opens the output, refusing to write over one of the inputs.
fn open_output(args: &OutputArgs, inputs: &[&Path]) -> Result<Output> {
    if let Some(out) = &args.output {
        for input in inputs {
            if same_file(out, input) {
                bail!(
                    "{}: the output would replace the input; choose another --output",
                    out.display()
                );
            }
        }
    }
    Output::create(args.output.as_deref(), args.overwrite)
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// `(id "x")` or `(no id)`.
fn id_label(v: &Value) -> String {
    id_of(v).map_or_else(|| "(no id)".to_string(), |id| format!("(id {id:?})"))
}

// ------------------------------------------------------------------------------ validate

#[derive(ClapArgs)]
pub struct ValidateArgs {
    /// LLaVA-format files (JSON array or JSON Lines).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// Folder that `image` paths are relative to; each image must be a non-empty file there.
    /// Without it, images are not looked up.
    #[arg(long, value_name = "DIR")]
    image_folder: Option<PathBuf>,
    /// Let `image` paths leave --image-folder (absolute paths, `..`, symlinks out of it);
    /// without it such a record is a problem.
    #[arg(long)]
    allow_outside_paths: bool,
}

fn run_validate(a: ValidateArgs) -> Result<()> {
    let folder = match &a.image_folder {
        Some(dir) if !dir.is_dir() => {
            bail!("{}: --image-folder is not a directory", dir.display())
        }
        Some(dir) => Some(Folder::new(dir, a.allow_outside_paths)?),
        None => None,
    };
    let opts = validate::Options {
        image_folder: folder.as_ref(),
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let (mut problems, mut bad_records, mut records, mut with_image) =
        (0usize, 0usize, 0usize, 0usize);
    for path in &a.files {
        let mut file_problems = 0;
        let mut file_records = 0;
        let result = stream::for_each(path, |i, v| {
            file_records = i + 1;
            with_image += usize::from(v.get("image").is_some());
            let found = validate::check(&v, &opts);
            if !found.is_empty() {
                bad_records += 1;
                let label = id_label(&v);
                for p in &found {
                    writeln!(out, "{}: record {i} {label}: {p}", path.display())
                        .map_err(|e| Error::io("-", e))?;
                }
            }
            file_problems += found.len();
            Ok(Flow::Continue)
        });
        match result {
            Ok(_) => eprintln!(
                "{}: {file_records} records, {file_problems} problems",
                path.display()
            ),
            // A file that cannot be read to the end is one more problem (in the record where
            // it breaks off, when there is one); go on with the other files.
            Err(e) => {
                writeln!(out, "{e}")?;
                file_problems += 1;
                bad_records += 1;
                if matches!(e, Error::Json { .. }) {
                    file_records += 1;
                }
                eprintln!(
                    "{}: {file_problems} problems (reading stopped where the file breaks)",
                    path.display()
                );
            }
        }
        records += file_records;
        problems += file_problems;
    }
    out.flush()?;
    if a.image_folder.is_none() && with_image > 0 {
        eprintln!("note: {with_image} records name an image; pass --image-folder to check that the files exist");
    }
    if problems > 0 {
        bail!("{problems} problems in {bad_records} of {records} records");
    }
    eprintln!("{records} records: no problems");
    Ok(())
}

// ------------------------------------------------------------------------------ tokenizer

#[derive(ClapArgs)]
struct TokenizerArgs {
    /// Tokenizer: a model directory with tokenizer.json, a Hub id, or `builtin:stories260k`.
    #[arg(long, value_name = "MODEL")]
    tokenizer: Option<String>,
    /// LLaVA conversation template (`--version` in LLaVA's train.py): v0, v1, llava_v1,
    /// llava_llama_2, llama_2, plain, ...
    #[arg(long, default_value = "v1")]
    template: String,
    /// Do not wrap `<image>` in `<im_start>…<im_end>` (LLaVA's mm_use_im_start_end, on in
    /// every Sight-Beyond-Text script).
    #[arg(long)]
    no_im_start_end: bool,
    /// LLaVA's model_max_length: text-only samples are cut to it.
    #[arg(long, default_value_t = 2048)]
    model_max_length: usize,
}

/// Loads a tokenizer from a model directory or `builtin:NAME`, with LLaVA's image tokens added
/// as training adds them.
fn load_tokenizer(spec: &str, template: &Template, mm_use_im_start_end: bool) -> Result<Tokenizer> {
    let mut tok = if let Some(name) = spec.strip_prefix("builtin:") {
        let b = sightline_model::builtin::builtin(name)?;
        Tokenizer::from_bytes(
            &b.tokenizer_json,
            Some(&b.tokenizer_config_json),
            b.origin,
            None,
            None,
        )?
    } else {
        let dir = sightline_model::hub::resolve(spec, sightline_model::hub::Need::Tokenizer)?.path;
        if !dir.is_dir() {
            bail!("{spec}: not a directory (give a model directory with tokenizer.json, a Hub id, or builtin:stories260k)");
        }
        Tokenizer::from_dir(&dir, None, None)?
    };
    labels::add_training_tokens(&mut tok, template, mm_use_im_start_end);
    Ok(tok)
}

impl TokenizerArgs {
    fn options(&self, template: &Template, tok: &Tokenizer) -> labels::Options {
        let mut o = labels::Options::for_template(template, tok);
        o.mm_use_im_start_end = !self.no_im_start_end;
        o.model_max_length = self.model_max_length;
        o
    }
}

// ------------------------------------------------------------------------------ stats

#[derive(ClapArgs)]
pub struct StripArgs {
    /// LLaVA-format input (JSON array or JSON Lines).
    input: PathBuf,
    #[command(flatten)]
    out: OutputArgs,
    /// Also remove `<image>` from turns other than the first human turn.
    #[arg(long)]
    all_turns: bool,
    /// Drop records whose human turn is empty once the placeholder is gone.
    #[arg(long)]
    drop_empty: bool,
}

fn run_strip(a: StripArgs) -> Result<()> {
    let opts = strip::Options {
        all_turns: a.all_turns,
        drop_empty: a.drop_empty,
    };
    let mut out = open_output(&a.out, &[&a.input])?;
    let mut w = RecordWriter::new(out.writer(), a.out.format(), a.out.name());
    let (mut images, mut placeholders, mut emptied, mut dropped) = (0, 0, 0, 0);
    let n = stream::for_each(&a.input, |_, mut v| {
        let o = strip::strip_record(&mut v, opts);
        images += usize::from(o.image_removed);
        placeholders += o.placeholders;
        emptied += usize::from(o.emptied);
        dropped += usize::from(o.dropped);
        if !o.dropped {
            w.write(&v)?;
        }
        Ok(Flow::Continue)
    })?;
    let written = w.count();
    w.finish()?;
    out.finish()?;
    eprintln!(
        "{}: {n} records; {written} written to {}: {images} images and {placeholders} <image> placeholders removed",
        a.input.display(),
        a.out.name().display()
    );
    if emptied > dropped {
        eprintln!(
            "warning: {} records have an empty human turn now (LLaVA drops empty messages); --drop-empty removes them",
            emptied - dropped
        );
    } else if dropped > 0 {
        eprintln!("{dropped} records dropped: their human turn was only <image>");
    }
    Ok(())
}

// ------------------------------------------------------------------------------ convert

#[derive(ClapArgs)]
pub struct SampleArgs {
    /// Input file (JSON array or JSON Lines).
    input: PathBuf,
    /// How many records to keep (all of them if the file has fewer).
    #[arg(short = 'n', long = "count")]
    n: usize,
    /// Seed of the ChaCha20 stream that picks them.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    #[command(flatten)]
    out: OutputArgs,
}

/// Writes the records of `input` at the (ascending) `picked` indices (stripped of images with
/// `text_only`), showing each to `on_pick` first.
fn write_picked(
    input: &Path,
    picked: &[usize],
    w: &mut RecordWriter<&mut dyn Write>,
    text_only: bool,
    mut on_pick: impl FnMut(&Value),
) -> Result<()> {
    let mut next = picked.iter().peekable();
    stream::for_each(input, |i, mut v| {
        if next.peek() == Some(&&i) {
            next.next();
            on_pick(&v);
            if text_only {
                strip::strip_record(&mut v, strip::Options::default());
            }
            w.write(&v)?;
        }
        Ok(if next.peek().is_some() {
            Flow::Continue
        } else {
            Flow::Stop
        })
    })?;
    if let Some(i) = next.next() {
        bail!(
            "{}: changed while it was read (record {i} is gone)",
            input.display()
        );
    }
    Ok(())
}

fn run_sample(a: SampleArgs) -> Result<()> {
    let total = stream::count(&a.input)?;
    let picked = sample::choose(total, a.n, a.seed);
    let mut out = open_output(&a.out, &[&a.input])?;
    let mut w = RecordWriter::new(out.writer(), a.out.format(), a.out.name());
    write_picked(&a.input, &picked, &mut w, false, |_| {})?;
    w.finish()?;
    out.finish()?;
    if a.n >= total {
        eprintln!(
            "{}: only {total} records, all kept (asked for {})",
            a.input.display(),
            a.n
        );
    } else {
        eprintln!(
            "{}: sampled {} of {total} records with seed {} (ChaCha20, partial Fisher-Yates), in file order, to {}",
            a.input.display(),
            picked.len(),
            a.seed,
            a.out.name().display()
        );
    }
    Ok(())
}

// ------------------------------------------------------------------------------ groups

#[derive(ClapArgs)]
pub struct GroupsArgs {
    /// LLaVA-Instruct's conversation_58k.json.
    #[arg(long, value_name = "FILE")]
    conversation: PathBuf,
    /// LLaVA-Instruct's detail_23k.json.
    #[arg(long, value_name = "FILE")]
    detail: PathBuf,
    /// LLaVA-Instruct's complex_reasoning_77k.json.
    #[arg(long, value_name = "FILE")]
    reasoning: PathBuf,
    /// Records per group.
    #[arg(short = 'n', long = "count", default_value_t = 20_000)]
    n: usize,
    /// Seed of the sampler (each group is `sightline data sample -n N --seed S` of its file).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Folder for conversation_<N>.json, detail_<N>.json, reasoning_<N>.json (created if
    /// missing).
    #[arg(long, value_name = "DIR")]
    output_dir: PathBuf,
    /// Replace existing group files.
    #[arg(long)]
    overwrite: bool,
    /// Remove images as strip-images does (for text-only runs).
    #[arg(long)]
    text_only: bool,
}

fn run_groups(a: GroupsArgs) -> Result<()> {
    let sources = [
        (Group::Conversation, &a.conversation),
        (Group::Detail, &a.detail),
        (Group::Reasoning, &a.reasoning),
    ];
    // A file named after another group's source is almost certainly passed to the wrong flag.
    for (g, path) in &sources {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if let Some(other) = Group::ALL
            .iter()
            .find(|o| *o != g && o.source_file() == name)
        {
            bail!(
                "{}: passed as --{} but it is LLaVA-Instruct's {} file (--{})",
                path.display(),
                g.name(),
                other.name(),
                other.name()
            );
        }
    }
    // Everything that can fail before a file is written: existing outputs, unreadable inputs.
    let targets = sources.map(|(g, _)| a.output_dir.join(g.output_file(a.n)));
    if let Some(t) = targets.iter().find(|t| t.exists() && !a.overwrite) {
        bail!(
            "{}: already exists (pass --overwrite to replace it)",
            t.display()
        );
    }
    let mut totals = [0; 3];
    for (k, (_, path)) in sources.iter().enumerate() {
        totals[k] = stream::count(path)?;
    }
    std::fs::create_dir_all(&a.output_dir)
        .with_context(|| format!("{}: cannot create", a.output_dir.display()))?;
    // Identities of the picked records, to report records that land in two groups.
    let mut seen: HashMap<(String, String), Group> = HashMap::new();
    let mut shared = 0usize;
    for (k, (g, path)) in sources.into_iter().enumerate() {
        let (total, target) = (totals[k], &targets[k]);
        let picked = sample::choose(total, a.n, a.seed);
        let mut out = Output::create(Some(target), a.overwrite)?;
        let mut w = RecordWriter::new(out.writer(), Format::Json, target);
        write_picked(path, &picked, &mut w, a.text_only, |v| {
            if let Some(id) = groups::identity(v) {
                if let Some(prev) = seen.insert(id, g) {
                    shared += usize::from(prev != g);
                }
            }
        })?;
        w.finish()?;
        out.finish()?;
        let note = if total < a.n {
            format!(" (the file has only {total}: all kept)")
        } else {
            String::new()
        };
        eprintln!(
            "{}: {} of {total} records{note} → {}",
            g.name(),
            picked.len(),
            target.display()
        );
    }
    if shared > 0 {
        eprintln!(
            "warning: {shared} records (same id and first question) are in more than one group"
        );
    }
    eprintln!(
        "seed {}{}",
        a.seed,
        if a.text_only { ", images stripped" } else { "" }
    );
    Ok(())
}

// ------------------------------------------------------------------------------ preview
