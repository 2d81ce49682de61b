//! bf16 matrix products on the CPU's bf16 dot-product instructions: `y = x · Wᵀ` with bf16
//! inputs, f32 accumulation and a bf16 (or f32) result, as PyTorch computes a bf16 `matmul`.
//!
//! Why by hand: candle 0.11's CPU matmul has no bf16 kernel; it widens *both whole storages* to
//! f32 on every call (the full weight matrix included), multiplies in f32 and narrows back, which
//! makes bf16 slower than f32. The `gemm` crate has f16 kernels but none for bf16.
//!
//! What runs where ([`Bf16Gemm::detect`]):
//! - **AVX512-BF16** (`VDPBF16PS`; AMD Zen 4+, Intel Cooper Lake / Sapphire Rapids+): the kernel
//!   in `avx512.rs`, reading weights in their checkpoint layout (nothing is re-packed, so a
//!   memory-mapped checkpoint needs no second copy); for an inner dimension of at most
//!   [`SMALL_K`] (LoRA's rank), a second kernel there that packs `w` per call (`m × k` values,
//!   small by definition).
//! - **AMX-BF16** tiles (`TDPBF16PS`; Intel Sapphire Rapids+, where Linux grants the tile
//!   data): the kernel in `amx.rs` for every product of at least [`AMX_MIN_ROWS`] rows, short
//!   inner dimensions included (LoRA's rank 64 at 1024 rows: 430–460 GFLOP/s against the
//!   pair-broadcast kernel's 143–161, and ahead at every shape measured), weights again in
//!   their checkpoint layout (each task copies the 32 rows it multiplies into an aligned panel
//!   while it uses them; the activations are packed once per call).
//!   `SIGHTLINE_AMX=off` keeps such a CPU on the AVX512-BF16 kernel.
//! - Otherwise, or with `SIGHTLINE_BF16_GEMM=off`: no kernel here, and callers keep candle's
//!   path (results exactly as before this module existed).
//!
//! Rounding: see [`reference`], which states every addition of each kernel; each equals it bit
//! for bit. The two kernels add in different orders, so a product's last bits depend on
//! whether the CPU has AMX and, there, on whether it had at least [`AMX_MIN_ROWS`] rows; never
//! on the blocking or the threads.

mod amx;
mod avx512;
pub mod reference;

use std::mem::MaybeUninit;
use std::sync::OnceLock;

use half::bf16;
use rayon::prelude::*;

use crate::par::SharedOut;
use crate::switch::switched_off;

/// The bf16 GEMM this process uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bf16Gemm {
    /// `TDPBF16PS` on AMX tiles (and `VDPBF16PS` for short inner dimensions).
    Amx,
    /// `VDPBF16PS` on 512-bit vectors.
    Avx512Bf16,
    /// No bf16 kernel: candle's widening matmul.
    Unavailable,
}

impl Bf16Gemm {
    /// The CPU's best kernel, unless `SIGHTLINE_BF16_GEMM=off` (or `0`/`false`) forces the
    /// fallback, or `SIGHTLINE_AMX=off` the AVX512-BF16 kernel on an AMX CPU (to compare, or to
    /// test what a machine without the instructions computes). Decided once.
    pub fn detect() -> Self {
        static CHOICE: OnceLock<Bf16Gemm> = OnceLock::new();
        *CHOICE.get_or_init(|| {
            if switched_off("SIGHTLINE_BF16_GEMM") || !cpu_has_avx512_bf16() {
                Bf16Gemm::Unavailable
            } else if !switched_off("SIGHTLINE_AMX") && amx::available() {
                Bf16Gemm::Amx
            } else {
                Bf16Gemm::Avx512Bf16
            }
        })
    }

    /// Whether there is a bf16 kernel at all (callers otherwise keep candle's f32 path).
    pub fn is_available(self) -> bool {
        self != Bf16Gemm::Unavailable
    }
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_avx512_bf16() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bf16")
}

#[cfg(not(target_arch = "x86_64"))]
fn cpu_has_avx512_bf16() -> bool {
    false
}

/// An element type the product can be written in.
///
/// bf16 results are the f32 sums rounded to nearest-even, as PyTorch rounds a bf16 matmul's
/// f32 accumulator (a sum in the f32 denormal range, below 1.2e-38, becomes zero).
pub trait GemmOut: Copy + Send + Sync + 'static {
    /// bf16 (rounded) rather than f32 (as summed).
    const BF16: bool;
    const ZERO: Self;
}

impl GemmOut for f32 {
    const BF16: bool = false;
    const ZERO: Self = 0.0;
}

impl GemmOut for bf16 {
    const BF16: bool = true;
    const ZERO: Self = bf16::ZERO;
}

/// Bytes of weight rows a thread keeps hot in L2 (half of a 1 MiB L2) while it sweeps every
/// row block of `x` past them: the tasks run column block by column block (see [`matmul_nt`]),
/// so each weight is read from memory once per product.
const W_BLOCK_BYTES: usize = 512 << 10;
/// Bytes of `x` rows per task (each row block is re-read once per weight block, from L3).
const X_BLOCK_BYTES: usize = 128 << 10;

/// Inner dimensions up to this run the pair-broadcast kernel (`avx512::block_small_k`) where
/// the AVX512-BF16 kernel runs (no AMX, or fewer than [`AMX_MIN_ROWS`] rows), whose lanes are
/// output columns: a dot-product tile spends most of a row this short reducing its
/// 16 lane sums. Measured (`gemm_bf16_timing`, n = 1024, m = 512, 2 threads, GFLOP/s, dot
/// product → pairs): k = 64 94 → 265, k = 96 166 → 221–248, k = 128 276 → 290, k = 256 343 →
/// 269. LoRA's products through the rank (`[n, r]·[r, out]`, forward and `dX`) are the case.
/// The summation order differs between the two kernels, so [`reference`] states both.
pub const SMALL_K: usize = 128;

/// One core's `TDPBF16PS` throughput with operands in tiles (GFLOP/s), where [`Bf16Gemm::detect`]
/// chose AMX: the ceiling for the GEMM's figures (a measurement of about 0.05 s).
pub fn amx_tile_peak_gflops() -> Option<f64> {
    // SAFETY: `detect` returns `Amx` only after checking the instructions and the permission.
    (Bf16Gemm::detect() == Bf16Gemm::Amx).then(|| unsafe { amx::tile_peak_gflops() })
}

/// Products of fewer activation rows than this run the AVX512-BF16 kernel on an AMX CPU too
/// (see `amx.rs`): so there a row's last bits depend on whether it was multiplied with at least
/// this many rows (decoding one to three sequences against a longer batch), as with oneDNN.
pub const AMX_MIN_ROWS: usize = 4;

/// `w: [m, k]` as the pair-broadcast kernel reads it: for each pair `p` of `k` (the last one
/// padded with a zero when `k` is odd) the `m` columns' pairs `(w[j][2p], w[j][2p + 1])` as
/// 32-bit words, the even element low, padded with zero columns to `mp`, a multiple of 16.
fn pack_pairs(w: &[bf16], k: usize, m: usize) -> (Vec<u32>, usize) {
    let (kp, mp) = (k.div_ceil(2), m.next_multiple_of(16));
    let mut wp = vec![0u32; kp * mp];
    for j in 0..m {
        let row = &w[j * k..(j + 1) * k];
        for p in 0..kp {
            wp[p * mp + j] = pair_word(row, p);
        }
    }
    (wp, mp)
}

/// Pair `p` of a row, `(row[2p], row[2p + 1])`, as one 32-bit word with the even element low
/// (the lane layout `VDPBF16PS` reads); past an odd row's end the odd element is zero.
#[inline(always)]
fn pair_word(row: &[bf16], p: usize) -> u32 {
    let lo = row[2 * p].to_bits() as u32;
    let hi = row.get(2 * p + 1).map_or(0, |v| v.to_bits() as u32);
    lo | (hi << 16)
}

/// `y = x · wᵀ` for `x: [n, k]`, `w: [m, k]` (row-major, bf16) into `y: [n, m]`.
///
/// Returns `false`, leaving `y` untouched, when this CPU has no bf16 kernel (see
/// [`Bf16Gemm::detect`]); the caller then uses another path. Slice lengths must match the
/// shapes (checked: a mismatch is an `Err`).
pub fn matmul_nt<O: GemmOut>(
    x: &[bf16],
    w: &[bf16],
    shape: (usize, usize, usize),
    y: &mut [O],
) -> Result<bool, String> {
    // SAFETY: `MaybeUninit<O>` has `O`'s layout, and only initialised values are written.
    let y = unsafe { &mut *(y as *mut [O] as *mut [MaybeUninit<O>]) };
    matmul_nt_uninit(x, w, shape, y)
}

/// [`matmul_nt`] into memory that need not be initialised: when it returns `Ok(true)`, every
/// element of `y` was written. Callers allocating the result save zeroing it first (a pass
/// over every output of every linear layer).
pub fn matmul_nt_uninit<O: GemmOut>(
    x: &[bf16],
    w: &[bf16],
    (n, k, m): (usize, usize, usize),
    y: &mut [MaybeUninit<O>],
) -> Result<bool, String> {
    if x.len() != n * k || w.len() != m * k || y.len() != n * m {
        return Err(format!(
            "bf16 gemm: x has {} values, w {}, y {}, for n={n} k={k} m={m}",
            x.len(),
            w.len(),
            y.len()
        ));
    }
    let kernel = Bf16Gemm::detect();
    if !kernel.is_available() {
        return Ok(false);
    }
    if n == 0 || m == 0 {
        return Ok(true);
    }
    if k == 0 {
        y.fill(MaybeUninit::new(O::ZERO));
        return Ok(true);
    }
    let y = y.as_mut_ptr() as *mut O;
    if kernel == Bf16Gemm::Amx && n >= AMX_MIN_ROWS {
        amx_product(x, w, (n, k, m), y);
        return Ok(true);
    }
    if k <= SMALL_K {
        let (wp, mp) = pack_pairs(w, k, m);
        let rows = 64;
        let out = SharedOut(y);
        (0..n.div_ceil(rows)).into_par_iter().for_each(|rb| {
            let r = rb * rows..((rb + 1) * rows).min(n);
            // SAFETY: the CPU was checked above; tasks write disjoint rows of `y`, whose length
            // was checked against n·m; `wp` was packed for these k and m.
            unsafe { avx512::block_small_k(x, &wp, mp, k, m, r, out.ptr()) };
        });
        return Ok(true);
    }
    // Blocks of whole tiles (columns: a multiple of 48 = lcm of the 6- and 16-wide tiles; rows:
    // of 4), at least 48 × 16 so that long rows (k = 11,008) still make tasks worth a thread.
    let row_bytes = k.max(1) * 2;
    let cols = (W_BLOCK_BYTES / row_bytes).max(48) / 48 * 48;
    let rows = ((X_BLOCK_BYTES / row_bytes).max(16) / 4 * 4).min(n.next_multiple_of(4));
    let out = SharedOut(y);
    for_each_block((n, m), (rows, cols), TaskOrder::WeightsStay, |r, c| {
        // SAFETY: the CPU was checked above; blocks are disjoint (row, column) blocks of `y`,
        // whose length was checked against n·m.
        unsafe { avx512::block(x, w, k, m, r, c, out.ptr()) };
    });
    Ok(true)
}

/// Which blocks a thread's consecutive tasks share (rayon hands each thread a contiguous run of
/// tasks, so this is what stays in its L2 from task to task).
#[derive(Clone, Copy)]
enum TaskOrder {
    /// Column block by column block: a thread sweeps all row blocks through one weight block.
    WeightsStay,
    /// Row block by row block: a thread sweeps all weight blocks past one block of activations.
    ActivationsStay,
}

/// Runs `f` on the (rows, columns) blocks of an `n × m` product in parallel, in `order`. For
/// the AVX512-BF16 kernel the weights stay: row-major order read every weight block from
/// memory once per row block, which held LLaMA-2-7B's shapes (32–86 MiB of weights) to 51–62%
/// of the VDPBF16PS ceiling at n = 256; now 86–91% (`gemm_bf16_timing --sightline-only`). The
/// order of tasks changes no sum, so no bit.
fn for_each_block(
    (n, m): (usize, usize),
    (rows, cols): (usize, usize),
    order: TaskOrder,
    f: impl Fn(std::ops::Range<usize>, std::ops::Range<usize>) + Sync,
) {
    let (row_blocks, col_blocks) = (n.div_ceil(rows), m.div_ceil(cols));
    (0..row_blocks * col_blocks)
        .into_par_iter()
        .for_each(|task| {
            let (rb, cb) = match order {
                TaskOrder::WeightsStay => (task % row_blocks, task / row_blocks),
                TaskOrder::ActivationsStay => (task / col_blocks, task % col_blocks),
            };
            f(
                rb * rows..((rb + 1) * rows).min(n),
                cb * cols..((cb + 1) * cols).min(m),
            );
        });
}

/// [`matmul_nt`] on AMX tiles, for products of at least [`AMX_MIN_ROWS`] rows on a CPU that
/// [`Bf16Gemm::detect`] found AMX on. Tasks of [`amx::TASK_ROWS`] × [`amx::TASK_COLS`] in
/// row-block order: a thread keeps one block of packed activations in its L2 while the weights
/// stream past it, each panel copied once per task (see [`amx::block`]), or all weights copied
/// once per call for long batches ([`amx::pack_weights`]).
fn amx_product<O: GemmOut>(x: &[bf16], w: &[bf16], (n, k, m): (usize, usize, usize), y: *mut O) {
    let xp = amx::pack_x(x, n, k);
    let (w, w_stride) = amx::weights_for_tiles(w, m, k);
    let packed = (n.div_ceil(amx::TASK_ROWS) >= amx::PACK_ALL_FROM_ROW_BLOCKS)
        .then(|| amx::pack_weights(&w, w_stride, m, k));
    // Smaller tasks where the full-size ones would leave threads idle (SmolLM2's k/v product,
    // 1600 × 576 × 192, makes 7 full-size tasks): halve the columns, then the rows, down to 64,
    // until every thread has about 4 tasks, keeping both multiples of 32 as `amx::block` wants
    // them (a plain halving took 96 columns to 48). On 2 cores this changed nothing
    // measurable; it is for machines with many more cores than such a product has tasks.
    let (mut rows, mut cols) = (
        amx::TASK_ROWS.min(n.next_multiple_of(32)),
        amx::TASK_COLS.min(m.next_multiple_of(32)),
    );
    let wanted = 4 * rayon::current_num_threads();
    while n.div_ceil(rows) * m.div_ceil(cols) < wanted {
        if cols > 64 {
            cols = (cols / 2).next_multiple_of(32);
        } else if rows > 64 {
            rows = (rows / 2).next_multiple_of(32);
        } else {
            break;
        }
    }
    let out = SharedOut(y);
    let order = TaskOrder::ActivationsStay;
    for_each_block((n, m), (rows, cols), order, |r, c| {
        // SAFETY: AMX and its tile permission were checked by `detect`; `xp` was packed from
        // `x` for these n and k, `w` has `m` rounded up to 16 rows of `w_stride` values;
        // blocks are disjoint (row, column) blocks of `y` of at most TASK_ROWS × TASK_COLS,
        // whose length was checked.
        unsafe { amx::block(&xp, &w, w_stride, packed.as_deref(), k, m, r, c, out.ptr()) };
    });
}
