//! Data-parallel training without MPI: `run_on` as 2 and 3 ranks in threads of one process,
//! joined by a [`Collective`] over shared memory, against one process with 2× and 3× the
//! accumulation. The same check as `crates/cli/tests/train_mpi.rs` (which needs Open MPI and
//! the `mpi` feature), here in every build: the slicing (3 ranks leave two ranks empty in each
//! epoch's short last group), the summed counts and gradients, rank 0 writing alone.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};

use anyhow::Result;
use candle_core::Device;
use sightline_collective::Collective;
use sightline_train::config::TrainConfig;
use sightline_train::run::{run, run_on, Event, RunOptions, StepLog};

/// What the ranks of one process share: a slot per rank and a barrier.
struct Shared {
    barrier: Barrier,
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
    fn broadcast(&self, buf: &mut [f32]) -> sightline_collective::Result<()> {
        if self.rank == 0 {
            lock(&self.shared.f32s)[0] = buf.to_vec();
        }
        self.shared.barrier.wait();
        if self.rank != 0 {
            buf.copy_from_slice(&lock(&self.shared.f32s)[0]);
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
    let shared = Arc::new(Shared {
        barrier: Barrier::new(world),
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
                s.spawn(move || -> Result<Vec<StepLog>> {
                    let mut seen = Vec::new();
                    run_on(cfg, &opts(), &comm, &mut |e| {
                        if let Event::Step(l) = e {
                            seen.push(l.clone());
                        }
                    })?;
                    Ok(seen)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("a rank panicked"))?)
            .collect()
    })
}

fn log(out: &Path) -> Result<Vec<StepLog>> {
    let text = std::fs::read_to_string(out.join("train_log.jsonl"))?;
    text.lines().map(|l| Ok(serde_json::from_str(l)?)).collect()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-5 * a.abs().max(b.abs())
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
