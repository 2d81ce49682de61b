//! Data-parallel training without MPI: `run_on` as 2 and 3 ranks in threads of one process,
//! joined by a [`Collective`] over shared memory, against one process with 2× and 3× the
//! accumulation. The same check as `crates/cli/tests/train_mpi.rs` (which needs Open MPI and
//! the `mpi` feature), here in every build: the slicing (3 ranks leave two ranks empty in each
//! epoch's short last group), the summed counts and gradients, rank 0 writing alone.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use anyhow::Result;
use candle_core::Device;
use sightline_collective::Collective;
use sightline_train::config::TrainConfig;
use sightline_train::run::{run, run_on, Event, RunOptions, StepLog};

/// What the ranks of one process share: a slot per rank and a barrier.
struct Shared {
    barrier: RankBarrier,
    f32s: Mutex<Vec<Vec<f32>>>,
    f64s: Mutex<Vec<Vec<f64>>>,
    bytes: Mutex<Vec<u8>>,
}

/// One rank: sums add the slots in rank order, so every rank gets the same bits.
struct ThreadRank {
    rank: usize,
    size: usize,
    shared: Arc<Shared>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().expect("a rank panicked")
}

/// `std::sync::Barrier` that a failing rank poisons: the ranks waiting at it (or arriving
/// later) then panic instead of waiting forever, as `MPI_Abort` ends an MPI job, so a rank's
/// error fails the test instead of hanging it.
struct RankBarrier {
    ranks: usize,
    state: Mutex<BarrierState>,
    turned: Condvar,
}

#[derive(Default)]
struct BarrierState {
    arrived: usize,
    generation: u64,
    failed: Option<usize>,
}

impl RankBarrier {
    fn new(ranks: usize) -> Self {
        Self {
            ranks,
            state: Mutex::new(BarrierState::default()),
            turned: Condvar::new(),
        }
    }

    fn wait(&self) {
        let mut s = lock(&self.state);
        let generation = s.generation;
        s.arrived += 1;
        if s.arrived == self.ranks {
            s.arrived = 0;
            s.generation += 1;
            self.turned.notify_all();
            return;
        }
        while s.generation == generation && s.failed.is_none() {
            s = self.turned.wait(s).expect("a rank panicked");
        }
        if let (true, Some(r)) = (s.generation == generation, s.failed) {
            panic!("rank {r} failed, so the others stop waiting for it");
        }
    }

    fn fail(&self, rank: usize) {
        lock(&self.state).failed.get_or_insert(rank);
        self.turned.notify_all();
    }
}

impl ThreadRank {
    fn sum<T: Copy + std::ops::Add<Output = T>>(&self, slots: &Mutex<Vec<Vec<T>>>, buf: &mut [T]) {
        lock(slots)[self.rank] = buf.to_vec();
        self.shared.barrier.wait();
        {
            let s = lock(slots);
            for (i, x) in buf.iter_mut().enumerate() {
                *x = s[0][i];
                for r in &s[1..] {
                    *x = *x + r[i];
                }
            }
        }
        self.shared.barrier.wait();
    }
}

impl Collective for ThreadRank {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn name(&self) -> &'static str {
        "threads"
    }
    fn all_reduce_sum(&self, buf: &mut [f32]) -> sightline_collective::Result<()> {
        self.sum(&self.shared.f32s, buf);
        Ok(())
    }
    fn all_reduce_sum_f64(&self, buf: &mut [f64]) -> sightline_collective::Result<()> {
        self.sum(&self.shared.f64s, buf);
        Ok(())
    }
    fn broadcast_from(&self, root: usize, buf: &mut [f32]) -> sightline_collective::Result<()> {
        if self.rank == root {
            lock(&self.shared.f32s)[root] = buf.to_vec();
        }
        self.shared.barrier.wait();
        if self.rank != root {
            buf.copy_from_slice(&lock(&self.shared.f32s)[root]);
        }
        self.shared.barrier.wait();
        Ok(())
    }
    fn broadcast_bytes(&self, buf: &mut Vec<u8>) -> sightline_collective::Result<()> {
        if self.rank == 0 {
            *lock(&self.shared.bytes) = buf.clone();
        }
        self.shared.barrier.wait();
        if self.rank != 0 {
            *buf = lock(&self.shared.bytes).clone();
        }
        self.shared.barrier.wait();
        Ok(())
    }
    fn barrier(&self) -> sightline_collective::Result<()> {
        self.shared.barrier.wait();
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        panic!("rank {} aborted with {code}", self.rank)
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn config(out: &Path, extra: &[String]) -> Result<TrainConfig> {
    let r = root();
    let mut o = vec![
        format!(
            "model_name_or_path={:?}",
            r.join("tests/fixtures/train/base").display().to_string()
        ),
        format!(
            "data_path={:?}",
            r.join("data/training/sketch/sketch_instruct_text.json")
                .display()
                .to_string()
        ),
        format!("output_dir={:?}", out.display().to_string()),
    ];
    o.extend(extra.iter().cloned());
    Ok(TrainConfig::from_toml(
        &r.join("configs/text-only.toml"),
        &o,
    )?)
}

fn opts() -> RunOptions {
    RunOptions {
        device: Device::Cpu,
        resume: false,
        stop_after: None,
    }
}

/// Runs `world` ranks in threads; returns each rank's steps as its `on_event` saw them.
fn threads(cfg: &TrainConfig, world: usize) -> Result<Vec<Vec<StepLog>>> {
    threads_with(cfg, world, &opts()).map(|(steps, _)| steps)
}

/// [`threads`] with `opts`; also returns the AdamW values each rank held and in all.
#[allow(clippy::type_complexity)]
fn threads_with(
    cfg: &TrainConfig,
    world: usize,
    opts: &RunOptions,
) -> Result<(Vec<Vec<StepLog>>, Vec<(usize, usize)>)> {
    let shared = Arc::new(Shared {
        barrier: RankBarrier::new(world),
        f32s: Mutex::new(vec![Vec::new(); world]),
        f64s: Mutex::new(vec![Vec::new(); world]),
        bytes: Mutex::new(Vec::new()),
    });
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..world)
            .map(|rank| {
                let comm = ThreadRank {
                    rank,
                    size: world,
                    shared: shared.clone(),
                };
                s.spawn(move || -> Result<(Vec<StepLog>, (usize, usize))> {
                    let (mut seen, mut held) = (Vec::new(), (0, 0));
                    let ran = catch_unwind(AssertUnwindSafe(|| {
                        run_on(cfg, opts, &comm, &mut |e| match e {
                            Event::Step(l) => seen.push(l.clone()),
                            Event::Start {
                                optimizer_values, ..
                            } => held = optimizer_values,
                            Event::Saved(_) => {}
                        })
                    }));
                    match ran {
                        Ok(Ok(_)) => Ok((seen, held)),
                        Ok(Err(e)) => {
                            comm.shared.barrier.fail(rank);
                            Err(anyhow::anyhow!("rank {rank}: {e}"))
                        }
                        Err(panic) => {
                            comm.shared.barrier.fail(rank);
                            std::panic::resume_unwind(panic)
                        }
                    }
                })
            })
            .collect();
        // Every rank is joined before any result is read, and a rank's own error wins over
        // the panics it caused in the ranks that were waiting for it.
        let (mut ranks, mut panicked) = (Vec::new(), false);
        for joined in handles.into_iter().map(|h| h.join()) {
            match joined {
                Ok(Ok(r)) => ranks.push(r),
                Ok(Err(e)) => return Err(e),
                Err(_) => panicked = true,
            }
        }
        anyhow::ensure!(!panicked, "a rank panicked");
        Ok(ranks.into_iter().unzip())
    })
}

fn log(out: &Path) -> Result<Vec<StepLog>> {
    let text = std::fs::read_to_string(out.join("train_log.jsonl"))?;
    text.lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 * a.abs().max(b.abs())
}

/// A rank that fails poisons the barrier: a rank waiting there panics instead of waiting
/// forever (checked with a timeout, so a regression fails rather than hangs).
#[test]
fn a_failing_rank_stops_the_ranks_waiting_for_it() {
    let barrier = Arc::new(RankBarrier::new(2));
    let (tx, rx) = std::sync::mpsc::channel();
    let waiting = barrier.clone();
    std::thread::spawn(move || {
        let outcome = catch_unwind(AssertUnwindSafe(|| waiting.wait()));
        let _ = tx.send(outcome.is_err());
    });
    std::thread::sleep(std::time::Duration::from_millis(50));
    barrier.fail(1);
    let stopped = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the waiting rank was still waiting 10 s after the other failed");
    assert!(
        stopped,
        "the waiting rank went on as if the barrier had turned"
    );
}

#[test]
fn ranks_in_threads_train_as_one_process_with_more_accumulation() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let common = [
        "per_device_train_batch_size=4",
        "num_train_epochs=2",
        "learning_rate=1e-3",
        "accum_loss=\"tokens\"",
        "max_grad_norm=1.0",
    ];
    for world in [2usize, 3] {
        let with = |accum: usize| -> Vec<String> {
            let mut v: Vec<String> = common.iter().map(|s| s.to_string()).collect();
            v.push(format!("gradient_accumulation_steps={accum}"));
            v
        };
        let one = dir.path().join(format!("one-{world}"));
        run(&config(&one, &with(world))?, &opts(), &mut |_| {})?;
        let many = dir.path().join(format!("many-{world}"));
        let seen = threads(&config(&many, &with(1))?, world)?;
        let (l1, ln) = (log(&one)?, log(&many)?);
        // 7 micro-batches per epoch: 3 (2 ranks) or 2 (3 ranks) steps per epoch by HF's count.
        assert_eq!(l1.len(), if world == 2 { 6 } else { 4 });
        assert_eq!(ln.len(), l1.len(), "{world} ranks: one log line per step");
        for (x, y) in l1.iter().zip(&ln) {
            assert_eq!((x.step, x.lr, x.tokens), (y.step, y.lr, y.tokens));
            let (a, b) = (x.loss.unwrap_or(f64::NAN), y.loss.unwrap_or(f64::NAN));
            assert!(close(a, b), "{world} ranks, step {}: {a} vs {b}", x.step);
            assert!(close(x.grad_norm, y.grad_norm), "{x:?} vs {y:?}");
        }
        // Every rank saw the same steps; only rank 0 wrote them.
        for s in &seen[1..] {
            let losses = |v: &[StepLog]| v.iter().map(|l| l.loss).collect::<Vec<_>>();
            assert_eq!(losses(s), losses(&seen[0]));
        }
        let (w1, wn) = (
            one.join("model.safetensors"),
            many.join("model.safetensors"),
        );
        let (a, b) = (
            candle_core::safetensors::load(&w1, &Device::Cpu)?,
            candle_core::safetensors::load(&wn, &Device::Cpu)?,
        );
        assert_eq!(a.len(), b.len());
        for (k, x) in &a {
            let y = b.get(k).ok_or_else(|| anyhow::anyhow!("{k} missing"))?;
            let d = (x - y)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
            assert!(d < 1e-5, "{world} ranks: {k} differs by {d}");
        }
    }
    Ok(())
}

/// Every tensor of two safetensors files, bit for bit.
fn assert_same_tensors(a: &Path, b: &Path) -> Result<()> {
    let (x, y) = (
        candle_core::safetensors::load(a, &Device::Cpu)?,
        candle_core::safetensors::load(b, &Device::Cpu)?,
    );
    assert_eq!(x.len(), y.len(), "{} vs {}", a.display(), b.display());
    for (k, t) in &x {
        let u = y.get(k).ok_or_else(|| anyhow::anyhow!("{k} missing"))?;
        let bits = |t: &candle_core::Tensor| -> Result<Vec<u32>> {
            let v = t
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?;
            Ok(v.into_iter().map(f32::to_bits).collect())
        };
        assert!(
            bits(t)? == bits(u)?,
            "{k} differs: {} vs {}",
            a.display(),
            b.display()
        );
    }
    Ok(())
}

/// `zero_stage = 1` (the AdamW moments sharded over the ranks) computes the unsharded run bit
/// for bit: every logged number, the final weights and a checkpoint's whole state (rank 0
/// gathers the moments to save them). Each rank holds only its share of the moments. A
/// sharded checkpoint resumes on another number of ranks, sharded, and on one process.
#[test]
fn zero_stage_1_shards_the_optimizer_state_and_changes_no_number() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let common: Vec<String> = [
        "per_device_train_batch_size=4",
        "num_train_epochs=2",
        "learning_rate=1e-3",
        "accum_loss=\"tokens\"",
        "max_grad_norm=1.0",
        "save_steps=2",
        "gradient_accumulation_steps=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let zero: Vec<String> = common
        .iter()
        .cloned()
        .chain(["zero_stage=1".into()])
        .collect();
    let (plain, sharded) = (dir.path().join("plain"), dir.path().join("sharded"));
    let (_, held) = threads_with(&config(&plain, &common)?, 2, &opts())?;
    let total = held[0].1;
    assert!(held.iter().all(|&(h, t)| h == t && t == total), "{held:?}");
    let (_, held) = threads_with(&config(&sharded, &zero)?, 2, &opts())?;
    assert!(held.iter().all(|&(h, t)| t == total && h < t), "{held:?}");
    assert_eq!(held.iter().map(|h| h.0).sum::<usize>(), total, "{held:?}");
    let (a, b) = (log(&plain)?, log(&sharded)?);
    assert_eq!(a.len(), 6);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (
                x.step,
                x.loss.map(f64::to_bits),
                x.grad_norm.to_bits(),
                x.lr,
                x.tokens
            ),
            (
                y.step,
                y.loss.map(f64::to_bits),
                y.grad_norm.to_bits(),
                y.lr,
                y.tokens
            ),
        );
    }
    assert_same_tensors(
        &plain.join("model.safetensors"),
        &sharded.join("model.safetensors"),
    )?;
    let state = "checkpoint-4/trainer_state.safetensors";
    assert_same_tensors(&plain.join(state), &sharded.join(state))?;

    // Stopped after 2 steps on 2 sharded ranks; resumed on 3 sharded ranks (the global batch
    // kept: 2 × 3 micro-batches = 3 × 2) and, from the same checkpoint, on one process.
    let six = |accum: usize, zero_stage: u8| -> Vec<String> {
        let mut v: Vec<String> = common[..6].to_vec();
        v.push(format!("gradient_accumulation_steps={accum}"));
        v.push(format!("zero_stage={zero_stage}"));
        v
    };
    let whole = dir.path().join("whole");
    run(&config(&whole, &six(6, 0))?, &opts(), &mut |_| {})?;
    let split = dir.path().join("split");
    let stop = RunOptions {
        stop_after: Some(1),
        ..opts()
    };
    threads_with(&config(&split, &six(3, 1))?, 2, &stop)?;
    let copy = dir.path().join("copy");
    std::fs::create_dir(&copy)?;
    for e in std::fs::read_dir(&split)? {
        let e = e?;
        let to = copy.join(e.file_name());
        if e.file_type()?.is_dir() {
            std::fs::create_dir(&to)?;
            for f in std::fs::read_dir(e.path())? {
                let f = f?;
                std::fs::copy(f.path(), to.join(f.file_name()))?;
            }
        } else {
            std::fs::copy(e.path(), to)?;
        }
    }
    let resume = RunOptions {
        resume: true,
        ..opts()
    };
    threads_with(&config(&split, &six(2, 1))?, 3, &resume)?;
    run(&config(&copy, &six(6, 0))?, &resume, &mut |_| {})?;
    let want = log(&whole)?;
    for got in [&split, &copy] {
        let steps = log(got)?;
        assert_eq!(steps.len(), want.len(), "{}", got.display());
        for (x, y) in want.iter().zip(&steps) {
            assert_eq!((x.step, x.lr, x.tokens), (y.step, y.lr, y.tokens));
            let (p, q) = (x.loss.unwrap_or(f64::NAN), y.loss.unwrap_or(f64::NAN));
            assert!(
                close(p, q),
                "{}: step {}: {p} vs {q}",
                got.display(),
                x.step
            );
        }
    }
    Ok(())
}

#[test]
fn zero_stages_past_1_are_refused_in_one_line() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = config(&dir.path().join("x"), &["zero_stage=2".into()])
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("zero_stage = 2 is not built"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}
