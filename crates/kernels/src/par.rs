//! Parallel tasks writing disjoint parts of one output (leaf module).

/// An output buffer's pointer shared by parallel tasks that each write their own disjoint
/// elements of it (the GEMM's blocks, the tiled attention's rows).
#[derive(Clone, Copy)]
pub(crate) struct SharedOut<T>(pub *mut T);
// SAFETY: the users write disjoint elements (each says why at its use).
unsafe impl<T: Send> Sync for SharedOut<T> {}

impl<T> SharedOut<T> {
    /// (A method, so that closures capture the `Sync` wrapper rather than its raw field.)
    pub fn ptr(&self) -> *mut T {
        self.0
    }
}

/// The variable with which candle 0.11 sets how long its CPU pool's idle workers spin before
/// they park (`DEFAULT_BARRIER_POOL_SPIN_LIMIT`: 25,000 `pause`s, about half a millisecond).
const CANDLE_SPIN_ENV: &str = "CANDLE_BARRIER_POOL_SPIN_LIMIT";

/// Makes candle's CPU thread pool park its workers as soon as an op ends, unless the user set
/// `CANDLE_BARRIER_POOL_SPIN_LIMIT`. Call first thing in `main`, before any thread exists
/// (candle reads the variable once, when its pool starts).
///
/// Why: candle runs its element-wise ops on a pool of its own, beside the rayon pool that runs
/// sightline's kernels and candle's matmul. After each candle op its workers spin for about
/// half a millisecond waiting for the next one, on the cores rayon's workers need for the GEMM
/// or attention that usually comes next: in a steady-state profile of a bf16 LoRA step of
/// SmolLM2-135M on 2 cores, 22% of all samples were candle workers spinning (0% after). Parked
/// workers cost a wake-up (microseconds) per parallel candle op instead. Measured on 2 cores
/// against the build before, alternated: SmolLM2 bf16 TruthfulQA scoring with the shared prefix
/// (whole process) 2.22–2.69 → 1.98–2.31 s wall, 3.2–3.6 → 2.8–3.3 s CPU; the bf16 LoRA step
/// unchanged within this machine's noise (the spinning mostly filled cores that had no other
/// work).
pub fn park_idle_candle_workers() {
    if std::env::var_os(CANDLE_SPIN_ENV).is_none() {
        std::env::set_var(CANDLE_SPIN_ENV, "0");
    }
}
