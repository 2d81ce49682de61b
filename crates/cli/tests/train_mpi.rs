//! Data-parallel training over MPI: `mpirun -np 2 sightline train` against one process with
//! twice the accumulation. Built only with `--features mpi` (`.ci/run` installs Open MPI and
//! runs it): the losses, learning rates, gradient norms and token counts of every step, and the
//! saved weights, equal the one-process run's to f32 rounding (only the order of the gradient
//! additions differs); a checkpoint written by 2 ranks resumes on 1 rank with the same losses;
//! a resume with another global batch is refused in one line.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

use candle_core::{Device, Tensor};

mod drill_support;
use drill_support::{ok, root, train_args};

/// `mpirun -np N` of the binary, as root where CI runs as root, with shared memory only
/// (no network interfaces needed) and one compute thread per rank (2 ranks on a 2-core
/// machine; the one-process runs get the same thread count).
fn mpirun(np: usize, args: &[String]) -> Output {
    Command::new("mpirun")
        .args([
            "-np",
            &np.to_string(),
            "--oversubscribe",
            "--bind-to",
            "none",
        ])
        .args(["--mca", "btl", "self,vader"])
        .arg(env!("CARGO_BIN_EXE_sightline"))
        .args(args)
        .current_dir(root())
        .env("HF_HUB_OFFLINE", "1")
        .env("RAYON_NUM_THREADS", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none")
        .output()
        .expect("mpirun runs (apt-get install openmpi-bin)")
}

fn single(args: &[String]) -> Output {
    drill_support::command()
        .args(args)
        .env("RAYON_NUM_THREADS", "1")
        .output()
        .expect("runs")
}

#[derive(Debug)]
struct Step {
    step: u64,
    loss: f64,
    lr: f64,
    grad_norm: f64,
    tokens: u64,
}

fn log(out: &Path) -> Vec<Step> {
    let text = std::fs::read_to_string(out.join("train_log.jsonl")).expect("train_log.jsonl");
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("JSON line");
            Step {
                step: v["step"].as_u64().expect("step"),
                loss: v["loss"].as_f64().expect("loss"),
                lr: v["lr"].as_f64().expect("lr"),
                grad_norm: v["grad_norm"].as_f64().expect("grad_norm"),
                tokens: v["tokens"].as_u64().expect("tokens"),
            }
        })
        .collect()
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()).max(1e-12)
}

/// Every step of `b` equals the step of `a` with the same number: the schedule exactly, the
/// loss and gradient norm to f32 rounding.
fn same_steps(a: &[Step], b: &[Step], what: &str) {
    for y in b {
        let x = a
            .iter()
            .find(|x| x.step == y.step)
            .unwrap_or_else(|| panic!("{what}: step {} missing", y.step));
        assert_eq!(
            (x.lr, x.tokens),
            (y.lr, y.tokens),
            "{what}: step {}",
            y.step
        );
        assert!(close(x.loss, y.loss, 1e-5), "{what}: {x:?} vs {y:?}");
        assert!(
            close(x.grad_norm, y.grad_norm, 1e-4),
            "{what}: {x:?} vs {y:?}"
        );
    }
}

fn tensors(path: &Path) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(path, &Device::Cpu).expect("safetensors")
}

/// Largest |a − b| over every tensor of two files with the same names.
fn max_diff(a: &Path, b: &Path) -> f32 {
    let (ta, tb) = (tensors(a), tensors(b));
    assert_eq!(ta.len(), tb.len(), "{} vs {}", a.display(), b.display());
    ta.iter()
        .map(|(k, x)| {
            let y = tb.get(k).unwrap_or_else(|| panic!("{k} missing"));
            (x - y)
                .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
                .expect("diff")
        })
        .fold(0.0, f32::max)
}

const FULL: &[&str] = &[
    "per_device_train_batch_size=4",
    "num_train_epochs=2",
    "learning_rate=1e-3",
    "warmup_ratio=0.0",
    "accum_loss=\"tokens\"",
    "max_grad_norm=1.0",
    "save_steps=3",
];

fn with(base: &[&str], extra: &[&str]) -> Vec<String> {
    base.iter().chain(extra).map(|s| s.to_string()).collect()
}

fn args(out: &Path, overrides: &[String]) -> Vec<String> {
    let o: Vec<&str> = overrides.iter().map(String::as_str).collect();
    train_args(out, &o)
}

/// A full fine-tune with token-count loss and clipping, 28 records in micro-batches of 4 (7 per
/// epoch, so every epoch ends in a group of one micro-batch that rank 1 has nothing of), two
/// epochs: 2 ranks × accumulation 1 against 1 process × accumulation 2; then a 2-rank run
/// stopped at step 3 and resumed on 1 rank.
#[test]
fn two_ranks_train_as_one_process_with_twice_the_accumulation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let one = dir.path().join("one");
    let two = dir.path().join("two");
    let a1 = with(FULL, &["gradient_accumulation_steps=2"]);
    let a2 = with(FULL, &["gradient_accumulation_steps=1"]);
    ok(&single(&args(&one, &a1)), "1 process");
    let o = mpirun(2, &args(&two, &a2));
    let stdout = ok(&o, "mpirun -np 2");
    // Rank 0 alone reports and writes.
    assert_eq!(stdout.matches("6 steps, 28 samples").count(), 1, "{stdout}");
    assert!(stdout.contains("tok/s on 2 ranks, mpi)"), "{stdout}");
    let (l1, l2) = (log(&one), log(&two));
    // 7 micro-batches // 2 = 3 steps per epoch × 2 epochs; the loop steps 4 times in epoch 1.
    assert_eq!(l1.len(), 6);
    assert_eq!(l2.len(), 6, "one log line per step, from rank 0 only");
    same_steps(&l1, &l2, "2 ranks vs 1 process");
    let (w1, w2) = (one.join("model.safetensors"), two.join("model.safetensors"));
    let moved = max_diff(
        &w1,
        &root().join("tests/fixtures/train/base/model.safetensors"),
    );
    assert!(moved > 1e-3, "training changed the weights by only {moved}");
    let d = max_diff(&w1, &w2);
    assert!(d < 1e-5, "final weights differ by {d} (moved by {moved})");
    // The 2-rank checkpoint has the same contents as the 1-process one.
    let (c1, c2) = (one.join("checkpoint-3"), two.join("checkpoint-3"));
    let d = max_diff(
        &c1.join("trainer_state.safetensors"),
        &c2.join("trainer_state.safetensors"),
    );
    assert!(d < 1e-5, "checkpoint-3 states differ by {d}");

    // Stopped at step 3 on 2 ranks, resumed on 1 with twice the accumulation.
    let split = dir.path().join("split");
    ok(
        &mpirun(
            2,
            &args(&split, &a2)
                .into_iter()
                .chain(["--stop-after".into(), "3".into()])
                .collect::<Vec<_>>(),
        ),
        "2 ranks, 3 steps",
    );
    assert_eq!(log(&split).len(), 3);
    let mut wrong = args(&split, &a2);
    wrong.push("--resume".into());
    let o = single(&wrong);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("gradient_accumulation_steps=2"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.starts_with("error:")).count(),
        1,
        "{err}"
    );
    let mut resume = args(&split, &a1);
    resume.push("--resume".into());
    ok(&single(&resume), "resume on 1 rank");
    let ls = log(&split);
    assert_eq!(ls.len(), 6);
    same_steps(&l1, &ls, "2 ranks then 1");
    let d = max_diff(&w1, &split.join("model.safetensors"));
    assert!(d < 1e-5, "resumed weights differ by {d}");
}

/// LoRA with dropout and the paper's `"mean"` loss: the dropout masks follow the micro-batch,
/// not the rank, so 2 ranks still equal 1 process; the adapters too.
#[test]
fn lora_dropout_does_not_depend_on_the_rank() {
    let dir = tempfile::tempdir().expect("tempdir");
    let lora = &[
        "lora_enable=true",
        "lora_r=4",
        "lora_alpha=8",
        "lora_dropout=0.1",
        "learning_rate=1e-2",
        "per_device_train_batch_size=4",
        "max_steps=3",
    ];
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let a1 = with(lora, &["gradient_accumulation_steps=4"]);
    let a2 = with(lora, &["gradient_accumulation_steps=2"]);
    ok(&single(&args(&one, &a1)), "1 process");
    ok(&mpirun(2, &args(&two, &a2)), "mpirun -np 2");
    let (l1, l2) = (log(&one), log(&two));
    assert_eq!((l1.len(), l2.len()), (3, 3));
    same_steps(&l1, &l2, "LoRA, 2 ranks vs 1 process");
    let f = "adapter_model.safetensors";
    let d = max_diff(&one.join(f), &two.join(f));
    assert!(d < 1e-5, "adapters differ by {d}");
}

/// Every tensor of two safetensors files, bit for bit.
fn same_bits(a: &Path, b: &Path) -> bool {
    let (ta, tb) = (tensors(a), tensors(b));
    let bits = |t: &Tensor| -> Vec<u32> {
        t.flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("f32 tensor")
            .into_iter()
            .map(f32::to_bits)
            .collect()
    };
    ta.len() == tb.len()
        && ta
            .iter()
            .all(|(k, x)| tb.get(k).is_some_and(|y| bits(x) == bits(y)))
}

/// `zero_stage = 1` over MPI: each rank keeps half the AdamW moments (rank 0 says how many),
/// and the run is the unsharded 2-rank run bit for bit: every logged number, the weights and
/// checkpoint-3's whole state, which rank 0 gathers from rank 1 to save.
#[test]
fn zero_stage_1_over_mpi_changes_no_number() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (plain, zero) = (dir.path().join("plain"), dir.path().join("zero"));
    let a = with(FULL, &["gradient_accumulation_steps=1"]);
    ok(&mpirun(2, &args(&plain, &a)), "mpirun -np 2");
    let z = with(FULL, &["gradient_accumulation_steps=1", "zero_stage=1"]);
    let o = mpirun(2, &args(&zero, &z));
    ok(&o, "mpirun -np 2, zero_stage=1");
    let stderr = String::from_utf8_lossy(&o.stderr);
    let said = "optimizer state sharded over 2 ranks (zero_stage = 1): rank 0 holds";
    assert_eq!(stderr.matches(said).count(), 1, "{stderr}");
    let (lp, lz) = (log(&plain), log(&zero));
    assert_eq!((lp.len(), lz.len()), (6, 6));
    for (x, y) in lp.iter().zip(&lz) {
        assert_eq!(
            (
                x.step,
                x.loss.to_bits(),
                x.grad_norm.to_bits(),
                x.lr,
                x.tokens
            ),
            (
                y.step,
                y.loss.to_bits(),
                y.grad_norm.to_bits(),
                y.lr,
                y.tokens
            )
        );
    }
    let f = "model.safetensors";
    assert!(
        same_bits(&plain.join(f), &zero.join(f)),
        "final weights differ"
    );
    let s = "checkpoint-3/trainer_state.safetensors";
    assert!(
        same_bits(&plain.join(s), &zero.join(s)),
        "checkpoint-3 states differ"
    );
}
