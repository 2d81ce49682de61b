//! `sightline train --config RUN.toml [key=value ...]`: one training run (LLaVA stage 1,
//! stage 2 full or LoRA, or text-only tuning), settings under HF Trainer / LLaVA names.
//!
//! Under `mpirun -np N` (a build with `--features mpi`) or `torchrun --nproc-per-node N` (the
//! CUDA build, NCCL) each process is one data-parallel rank (`sightline_train::run::run_on`);
//! rank 0 prints and writes, the others stay quiet. A launcher this build cannot serve (MPI
//! without the `mpi` feature, torchrun's `WORLD_SIZE` without NCCL) is refused in one line
//! before anything is read.

use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use sightline_train::config::TrainConfig;
use sightline_train::run::{run_on, Event, RunOptions, Summary};

#[derive(clap::Args)]
pub struct Args {
    /// The run's TOML file (see configs/ for the paper's runs).
    #[arg(long)]
    config: PathBuf,
    /// Continue from the newest checkpoint-N in output_dir (model, optimizer, schedule, data
    /// position and dropout stream; the losses equal an uninterrupted run's).
    #[arg(long)]
    resume: bool,
    /// Stop after this many optimizer steps of this invocation, leaving a checkpoint to
    /// resume from (for splitting a run across sessions).
    #[arg(long)]
    stop_after: Option<usize>,
    /// Let records' `image` paths leave image_folder (absolute paths, `..`, symlinks out of
    /// it); the same as `allow_outside_paths=true`.
    #[arg(long)]
    allow_outside_paths: bool,
    /// Where the run computes: cpu, or cuda / cuda:N in the CUDA build (scripts/cuda/build.sh).
    /// The same run file trains on either; `bf16 = true` is the precision for a GPU.
    /// Under an NCCL launch `cuda` means `cuda:LOCAL_RANK`, each rank its own GPU.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// How data-parallel ranks sum their gradients (HF Trainer's `ddp_backend`): `auto` reads
    /// the launcher's variables (MPI's for `mpirun`/`srun --mpi`, torchrun's `WORLD_SIZE` for
    /// NCCL); `nccl` or `mpi` names the library, also for one rank.
    #[arg(long, default_value = "auto")]
    ddp_backend: sightline_collective::launch::Backend,
    /// Settings that override the file, in TOML syntax: `learning_rate=1e-4 max_steps=10`.
    overrides: Vec<String>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    // A training loop frees and reallocates its activations every step: keep freed memory.
    sightline_train::alloc::keep_freed_memory();
    // Before the run file: a wrong launch or --device is one line whatever the run says.
    let mut launch =
        sightline_collective::launch::detect_for(a.ddp_backend, |k| std::env::var(k).ok())?;
    let device = open_rank_device(&a.device, &mut launch)?;
    let comm = sightline_collective::connect_to(launch)?;
    let mut cfg = TrainConfig::from_toml(&a.config, &a.overrides)?;
    cfg.allow_outside_paths |= a.allow_outside_paths;
    let lead = comm.rank() == 0;
    let bar = progress_bar(lead);
    // Rank 0's lines above the bar; where there is no terminal to draw it on (a batch job's
    // log) the bar is hidden and would drop them, so they go to stderr.
    let say = |line: String| match (lead, bar.is_hidden()) {
        (false, _) => {}
        (true, true) => eprintln!("{line}"),
        (true, false) => bar.println(line),
    };
    let (world, comm_name) = (comm.size(), comm.name());
    let mut on_event = |e: Event| match e {
        Event::Start {
            total_steps,
            start_step,
            samples,
            skipped_mismatch,
            optimizer_values: (held, all),
        } => {
            bar.set_length(total_steps as u64);
            bar.set_position(start_step as u64);
            say(start_line(
                samples,
                skipped_mismatch,
                total_steps,
                start_step,
                world,
                comm_name,
            ));
            if held < all {
                say(format!(
                    "optimizer state sharded over {world} ranks (zero_stage = 1): rank 0 holds {held} of {all} AdamW values ({:.1} of {:.1} MB)",
                    held as f64 * 4e-6,
                    all as f64 * 4e-6
                ));
            }
        }
        Event::Step(s) => {
            bar.set_position(s.step as u64);
            bar.set_prefix(format!(
                "loss {} lr {:.2e} {:.0} tok/s",
                s.loss.map_or("-".to_string(), |l| format!("{l:.4}")),
                s.lr,
                s.tokens as f64 / s.seconds.max(1e-9)
            ));
        }
        Event::Saved(dir) => say(format!("saved {}", dir.display())),
    };
    let opts = RunOptions {
        device,
        resume: a.resume,
        stop_after: a.stop_after,
    };
    let summary = match run_on(&cfg, &opts, comm.as_ref(), &mut on_event)
        .with_context(|| format!("training run {}", a.config.display()))
    {
        Ok(s) => s,
        // The other ranks would wait for this one forever: end them all.
        Err(e) if comm.size() > 1 => {
            eprintln!("error: rank {} of {}: {e:#}", comm.rank(), comm.size());
            comm.abort(1)
        }
        Err(e) => return Err(e),
    };
    bar.finish_and_clear();
    if !lead {
        return Ok(());
    }
    print_summary(&summary, world, comm_name, cfg.model_max_length);
    Ok(())
}

/// Opens `--device` for this rank. NCCL's ranks compute on GPUs: there `cuda` is the rank's
/// own GPU, `cuda:LOCAL_RANK`, and the GPU opened is the one NCCL joins on. (A build without
/// NCCL leaves an NCCL launch to `connect_to`, which says what to build instead.)
fn open_rank_device(
    spec: &str,
    launch: &mut sightline_collective::launch::Launch,
) -> anyhow::Result<candle_core::Device> {
    use sightline_collective::launch::Launch;
    let n = match launch {
        Launch::Nccl(n) if sightline_collective::HAS_NCCL => n,
        _ => return Ok(sightline_model::open_device(spec)?),
    };
    let spec = match spec {
        "cuda" => format!("cuda:{}", n.local_rank),
        s if s.starts_with("cuda:") => s.to_string(),
        s => anyhow::bail!(
            "--device {s}: the NCCL ranks of this launch ({}) compute on GPUs: pass --device \
             cuda (each rank takes cuda:LOCAL_RANK), or launch CPU ranks with `mpirun`",
            n.var
        ),
    };
    let device = sightline_model::open_device(&spec)?;
    if let candle_core::DeviceLocation::Cuda { gpu_id } = device.location() {
        n.gpu = gpu_id;
    }
    Ok(device)
}

/// The progress bar: shown on rank 0, hidden on the others.
fn progress_bar(lead: bool) -> ProgressBar {
    let bar = if lead {
        ProgressBar::new(0)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} {bar:30} {pos}/{len} steps [{elapsed} < {eta}] {prefix}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("training");
    bar
}

/// The line printed when the run starts (or resumes).
fn start_line(
    samples: usize,
    skipped_mismatch: usize,
    total_steps: usize,
    start_step: usize,
    world: usize,
    comm_name: &str,
) -> String {
    let skipped = if skipped_mismatch > 0 {
        format!(" ({skipped_mismatch} skipped: tokenization mismatch)")
    } else {
        String::new()
    };
    let resuming = if start_step > 0 {
        format!(", resuming at step {start_step}")
    } else {
        String::new()
    };
    // A named backend with one rank (`--ddp-backend nccl`) is shown too.
    let ranks = match (world, comm_name) {
        (1, "single") => String::new(),
        (1, _) => format!(", 1 rank ({comm_name})"),
        _ => format!(", {world} ranks ({comm_name})"),
    };
    format!("{samples} samples{skipped}, {total_steps} optimizer steps{resuming}{ranks}")
}

/// Rank 0's closing lines: the summary, and warnings about steps that learned nothing and
/// skipped samples.
fn print_summary(summary: &Summary, world: usize, comm_name: &str, model_max_length: usize) {
    println!(
        "{} steps, {} samples, {} tokens in {:.1} s ({:.0} tok/s{}); last loss {}; output in {}",
        summary.steps,
        summary.samples,
        summary.tokens,
        summary.seconds,
        summary.tokens as f64 / summary.seconds.max(1e-9),
        if world > 1 {
            format!(" on {world} ranks, {comm_name}")
        } else {
            String::new()
        },
        summary
            .final_loss
            .map_or("- (no trained tokens)".to_string(), |l| format!("{l:.4}")),
        summary.output_dir.display()
    );
    if summary.empty_steps > 0 {
        eprintln!(
            "warning: {} optimizer steps had no trained token (every label masked, e.g. the \
             answers were cut by model_max_length = {}); nothing was learned in them",
            summary.empty_steps, model_max_length
        );
    }
    if summary.skipped_mismatch > 0 {
        println!(
            "{} samples skipped for tokenization mismatches (skip_mismatched_samples)",
            summary.skipped_mismatch
        );
    }
}
