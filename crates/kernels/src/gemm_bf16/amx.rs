//! The AMX-BF16 micro-kernel: `TDPBF16PS` on 16 × 16 f32 tiles (Intel Sapphire Rapids+).
//!
//! Operand roles are swapped from the textbook `x · wᵀ`: a tile product computes
//! `C[16 × 16] += A[16 × 32] · B[32 × 16]` with A read row by row (32 consecutive bf16 of a row
//! per tile row) and B in the "VNNI" layout (pairs of consecutive inner elements interleaved).
//! A linear weight `w: [m, k]` already has A's layout, so weights need no re-layout (nothing
//! is packed at load; a memory-mapped model needs no second copy): each task copies the 32
//! weight rows it multiplies into an aligned, contiguous panel only while it uses them
//! ([`block`]). The activations `x: [n, k]`, small next to the weights when scoring and tiny
//! when decoding, are packed once per call into B's layout ([`pack_x`]). A tile then holds
//! `yᵀ`: 16 output columns (weight rows) × 16 output rows (activation rows), transposed in
//! registers on the way out.
//!
//! What bounds the speed (measured on a 2-core Xeon with AMX; `gemm_bf16_timing`): the tile
//! loads, not the products. A 2 × 2 blocking (4 accumulators tmm0–3, 2 A tiles tmm4–5, 2 B
//! tiles tmm6–7, the most the 8 tiles allow) loads one tile per product. A tile whose 16 rows
//! are not 64-byte aligned touches 32 cache lines instead of 16 and loads 2.5–3× slower, so
//! every tile read here is aligned except a checkpoint's rows read in place for a lone block of
//! activation rows; rows `2·k` bytes apart (all in one L1 set for LLaMA's `k`) load slower
//! still, hence the panel copy wherever a panel is reused.
//!
//! Products of fewer than [`super::AMX_MIN_ROWS`] activation rows (decoding one to three
//! sequences) do not come here: there the tiles compute mostly padding and the AVX512-BF16
//! kernel streams the weights faster.
//!
//! Stable Rust has no AMX intrinsics, so the instructions are emitted with `asm!`. The tile
//! registers are not known to the compiler, which never uses them: tile state set by one `asm!`
//! block is still there in the next. Tile data needs the kernel's permission, asked once per
//! process ([`available`]); without it a tile instruction raises SIGILL.
//!
//! Rounding: whatever `TDPBF16PS` does per 32-value chunk, in `k` order chunk by chunk, the same
//! for every output whatever the blocking, the passes, the batch or the threads (sums kept
//! between passes are the f32 tile contents, stored and reloaded exactly);
//! `reference::dot_tiles` states it as measured, and `tests/gemm_bf16.rs` checks it bit for
//! bit.

use std::arch::asm;
use std::arch::x86_64::*;
use std::ops::Range;

use half::bf16;

use super::avx512::store_sums;
use super::GemmOut;

/// Bytes of one tile row: 32 bf16 of A, 16 pairs of B, 16 f32 of C.
const ROW_BYTES: usize = 64;

/// `LDTILECFG`'s 64-byte block: palette 1, all 8 tiles 16 rows × 64 bytes.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

impl TileConfig {
    fn full() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t..18 + 2 * t].copy_from_slice(&(ROW_BYTES as u16).to_le_bytes());
            c[48 + t] = 16;
        }
        Self(c)
    }
}

/// Whether this CPU has AMX-BF16 and AMX-TILE (CPUID leaf 7: EDX bits 22 and 24) and Linux
/// granted this process the tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`).
pub(super) fn available() -> bool {
    // CPUID leaf 7 exists on every x86-64 CPU with AVX-512, which the caller checked.
    let leaf7 = __cpuid_count(7, 0);
    let (amx_bf16, amx_tile) = (leaf7.edx & (1 << 22) != 0, leaf7.edx & (1 << 24) != 0);
    amx_bf16 && amx_tile && request_tile_data()
}

#[cfg(target_os = "linux")]
fn request_tile_data() -> bool {
    const SYS_ARCH_PRCTL: isize = 158;
    const ARCH_REQ_XCOMP_PERM: usize = 0x1023;
    const XFEATURE_XTILEDATA: usize = 18;
    let ret: isize;
    // SAFETY: the arch_prctl system call with these arguments only changes which XSAVE
    // features this process may use; the syscall instruction clobbers rcx and r11.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => ret,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack)
        );
    }
    ret == 0
}

#[cfg(not(target_os = "linux"))]
fn request_tile_data() -> bool {
    false
}

/// GFLOP/s of one core's `TDPBF16PS` with its operands already in tiles: 4 independent
/// accumulators (the kernel's blocking), no memory traffic. The ceiling the GEMM's throughput is
/// read against (`examples/gemm_bf16_timing.rs`).
///
/// # Safety
/// As [`block`]: AMX-BF16 and the tile permission.
pub(super) unsafe fn tile_peak_gflops() -> f64 {
    let cfg = TileConfig::full();
    asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    let zeros = Accumulators([[0f32; 256]; 4]);
    let z = zeros.0.as_ptr() as *const u8;
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        "tileloadd tmm4, [{z} + {s} * 1]",
        "tileloadd tmm5, [{z} + {s} * 1]",
        "tileloadd tmm6, [{z} + {s} * 1]",
        "tileloadd tmm7, [{z} + {s} * 1]",
        z = in(reg) z,
        s = in(reg) ROW_BYTES,
        options(nostack, readonly)
    );
    let rounds = 200_000usize;
    let start = std::time::Instant::now();
    for _ in 0..rounds {
        asm!(
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            options(nostack, nomem)
        );
    }
    let secs = start.elapsed().as_secs_f64();
    asm!("tilerelease", options(nostack, nomem));
    // Each instruction: 16 × 16 outputs × 32 products × 2 FLOP.
    (rounds * 4 * 16 * 16 * 32 * 2) as f64 / secs / 1e9
}

/// `x: [n, k]` in B's layout: for each block of 16 rows and each pair `p` of the inner
/// dimension (padded to a multiple of 32), one line of the 16 rows' pairs
/// `(x[i][2p], x[i][2p + 1])` as 32-bit words, the even element low; padding rows and pairs are
/// zero. A block is `kp` lines (`kp = k.next_multiple_of(32) / 2`). Lines are 64-byte aligned:
/// a tile whose rows straddle cache lines loads 2.5–3× slower (measured), which held the first
/// version of this kernel to a third of its speed.
pub(super) fn pack_x(x: &[bf16], n: usize, k: usize) -> Vec<Line> {
    use rayon::prelude::*;
    use std::mem::MaybeUninit;
    let kp = k.next_multiple_of(32) / 2;
    let len = n.div_ceil(16) * kp;
    // Every line is written below, so the buffer is not zeroed first (a calloc'd copy of a
    // large batch cost a memset pass on every call).
    let mut xp: Vec<Line> = Vec::with_capacity(len);
    let pack = |(block, rows): (&mut [MaybeUninit<Line>], &[bf16])| {
        let words = block.as_mut_ptr() as *mut u32;
        if k.is_multiple_of(2) {
            // SAFETY: AVX-512F comes with every AMX CPU; `rows` holds whole rows of even
            // length `k`, at most 16 of them, and `block` is `kp` lines of 16 words.
            unsafe { pack_block_transposed(rows, k, words) };
            return;
        }
        // Odd rows are not word-aligned: word by word (no LLaMA shape has an odd k).
        block.fill(MaybeUninit::new(Line([0; ROW_BYTES])));
        // SAFETY: the block's `kp` lines were just initialised; a line is 16 words.
        let words = unsafe { std::slice::from_raw_parts_mut(words, kp * 16) };
        for (c, row) in rows.chunks_exact(k).enumerate() {
            for (p, slot) in words[c..]
                .iter_mut()
                .step_by(16)
                .take(k.div_ceil(2))
                .enumerate()
            {
                *slot = super::pair_word(row, p);
            }
        }
    };
    let blocks = &mut xp.spare_capacity_mut()[..len];
    if k > 0 {
        // Waking the other threads costs more than packing a short batch.
        if n * k >= PARALLEL_PACK {
            blocks
                .par_chunks_mut(kp)
                .zip(x.par_chunks(16 * k))
                .for_each(pack);
        } else {
            blocks.chunks_mut(kp).zip(x.chunks(16 * k)).for_each(pack);
        }
    }
    // SAFETY: every one of the `len` lines was written (k = 0 gives len = 0).
    unsafe { xp.set_len(len) };
    xp
}

/// [`pack_x`] for one block of up to 16 rows of even length `k`: per 16 pairs, a 16 × 16
/// transpose of 32-bit words in registers (the words are the pairs as stored: little-endian,
/// the even element low), each output line written whole; missing rows and pairs past the
/// row's end are zero. Gathers instead read 16 rows 2·k bytes apart, which share one L1 set
/// when 2·k is a multiple of 4 KiB, and cost more than the product at short k.
///
/// # Safety
/// AVX-512F; `rows` holds at most 16 rows of `k` values (`k` even), `block` is writable for
/// `k.next_multiple_of(32) / 2 · 16` words.
#[target_feature(enable = "avx512f")]
unsafe fn pack_block_transposed(rows: &[bf16], k: usize, block: *mut u32) {
    let words = k / 2;
    let n_rows = rows.len() / k;
    let base = rows.as_ptr() as *const u32;
    for p0 in (0..words).step_by(16) {
        let mask = lanes_below(words - p0);
        let lines: [__m512i; 16] = std::array::from_fn(|i| {
            if i < n_rows {
                _mm512_maskz_loadu_epi32(mask, base.add(i * words + p0) as *const i32)
            } else {
                _mm512_setzero_si512()
            }
        });
        for (p, line) in transpose16(lines).into_iter().enumerate() {
            _mm512_storeu_si512(block.add((p0 + p) * 16) as *mut __m512i, line);
        }
    }
    // (`k.next_multiple_of(32) / 2` is `words.next_multiple_of(16)`: no padding pairs remain.)
}

/// The mask of the first `count` of 16 lanes (all 16 from 16 on).
#[inline(always)]
fn lanes_below(count: usize) -> __mmask16 {
    if count >= 16 {
        0xffff
    } else {
        ((1u32 << count) - 1) as __mmask16
    }
}

/// The transpose of a 16 × 16 matrix of 32-bit values, one row per register: output `j`
/// holds element `j` of every input, in input order. Four shuffle rounds: 32-bit and 64-bit
/// interleaves make 4 × 4 transposes inside each 128-bit lane, two lane shuffles gather the
/// lanes.
#[inline]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
    // a[2i], a[2i + 1]: rows 2i and 2i + 1 interleaved (columns 4L, 4L+1 | 4L+2, 4L+3 per lane L).
    let a: [__m512i; 16] = std::array::from_fn(|t| {
        let (x, y) = (r[t & !1], r[t | 1]);
        if t % 2 == 0 {
            _mm512_unpacklo_epi32(x, y)
        } else {
            _mm512_unpackhi_epi32(x, y)
        }
    });
    // b[4i + c], lane L: column 4L + c of rows 4i..4i + 4.
    let b: [__m512i; 16] = std::array::from_fn(|t| {
        let (g, c) = (t / 4 * 4, t % 4);
        let (x, y) = (a[g + c / 2], a[g + 2 + c / 2]);
        if c % 2 == 0 {
            _mm512_unpacklo_epi64(x, y)
        } else {
            _mm512_unpackhi_epi64(x, y)
        }
    });
    // d[c]: for column group c, lanes 0 and 2 ([0]) or 1 and 3 ([1]) of rows 0–7 and 8–15.
    let mut out = [_mm512_setzero_si512(); 16];
    for c in 0..4 {
        let d0 = _mm512_shuffle_i32x4::<0x88>(b[c], b[4 + c]);
        let d1 = _mm512_shuffle_i32x4::<0xdd>(b[c], b[4 + c]);
        let d2 = _mm512_shuffle_i32x4::<0x88>(b[8 + c], b[12 + c]);
        let d3 = _mm512_shuffle_i32x4::<0xdd>(b[8 + c], b[12 + c]);
        out[c] = _mm512_shuffle_i32x4::<0x88>(d0, d2);
        out[8 + c] = _mm512_shuffle_i32x4::<0xdd>(d0, d2);
        out[4 + c] = _mm512_shuffle_i32x4::<0x88>(d1, d3);
        out[12 + c] = _mm512_shuffle_i32x4::<0xdd>(d1, d3);
    }
    out
}

/// Activation values from which [`pack_x`] runs on every thread. At 2^20, SmolLM2's scoring
/// batch (1600 × 576 values) packed on one thread while the other waited: 2^18 measured +10%
/// on its q/o product and +23% on k/v (2 threads), no change at 256 × 2048.
const PARALLEL_PACK: usize = 1 << 18;

/// `w: [m, k]` as A reads it: the weights themselves when `k` is a multiple of 32 and `m` of
/// 16 (every LLaMA shape), else a zero-padded copy `[m16, k32]` (a tile row would otherwise read
/// past a row's end, and NaN · 0 is NaN). Returns the rows and their stride in elements.
pub(super) fn weights_for_tiles(
    w: &[bf16],
    m: usize,
    k: usize,
) -> (std::borrow::Cow<'_, [bf16]>, usize) {
    if k.is_multiple_of(32) && m.is_multiple_of(16) {
        return (std::borrow::Cow::Borrowed(w), k);
    }
    let (mp, kp) = (m.next_multiple_of(16), k.next_multiple_of(32));
    let mut padded = vec![bf16::ZERO; mp * kp];
    for j in 0..m {
        padded[j * kp..j * kp + k].copy_from_slice(&w[j * k..(j + 1) * k]);
    }
    (std::borrow::Cow::Owned(padded), kp)
}

/// All of `w` (rows of `w_stride` values, `m` rounded up to 16 of them: [`weights_for_tiles`])
/// as [`pack_panel`] lays out a panel: for each 16 rows, `k.next_multiple_of(32) / 32` tiles of
/// 16 aligned lines. For products of more activation rows than one task takes, where every
/// task would otherwise copy the same panels again (measured: the copies took 20% of a
/// 3600 × 2048 × 2048 product; see [`PACK_ALL_FROM_ROW_BLOCKS`]).
pub(super) fn pack_weights(w: &[bf16], w_stride: usize, m: usize, k: usize) -> Vec<Line> {
    use rayon::prelude::*;
    let steps = k.div_ceil(32);
    let halves = m.div_ceil(16);
    let mut packed: Vec<Line> = Vec::with_capacity(halves * steps * 16);
    packed.spare_capacity_mut()[..halves * steps * 16]
        .par_chunks_mut(steps * 16)
        .enumerate()
        .for_each(|(h, lines)| {
            // SAFETY: `w` holds rows 16h..16h + 16 of `w_stride ≥ 32·steps` values
            // (`weights_for_tiles` pads m to 16); `lines` is `16·steps` lines.
            unsafe {
                pack_panel(
                    w,
                    w_stride,
                    16 * h,
                    0..steps,
                    lines.as_mut_ptr() as *mut Line,
                )
            };
        });
    // SAFETY: every line was written by `pack_panel`.
    unsafe { packed.set_len(halves * steps * 16) };
    packed
}

/// Steps of 32 along `k` per pass over a task's blocks: the task's activation rows for one
/// pass (`rows × 2048` bf16, 1 MiB at [`TASK_ROWS`]) stay in L2 while every weight panel
/// passes them. Longer rows are split into passes of equal length, the running sums kept in f32
/// between passes (exactly what the tiles hold, so no bit changes).
const PASS_STEPS: usize = 64;

/// Activation rows per task: with [`PASS_STEPS`], 1 MiB of packed activations per pass.
pub(super) const TASK_ROWS: usize = 256;

/// Weight rows per task: 8 panels of 32, at most 256 KiB of running sums between passes.
pub(super) const TASK_COLS: usize = 256;

/// Row blocks of [`TASK_ROWS`] from which a product copies all its weights into tiles once
/// ([`pack_weights`]) rather than each task copying its panels: with fewer, the one-off copy
/// (a fresh buffer the size of the weights) cost more than it saved — 2.7× slower at
/// 256 × 4096 × 11008 with tasks of 128 rows, 10% faster at 3,600 rows.
pub(super) const PACK_ALL_FROM_ROW_BLOCKS: usize = 4;

/// Rows `r` × columns `c` of `y = x · wᵀ` (`r` and `c` start at multiples of 32, at most
/// [`TASK_ROWS`] × [`TASK_COLS`]), from `xp` ([`pack_x`]) and weight rows `w` of `w_stride`
/// elements ([`weights_for_tiles`]), or their copy `packed` ([`pack_weights`]) where given.
///
/// Loops: passes over `k` ([`PASS_STEPS`]), then panels of 32 weight rows, then blocks of 32
/// activation rows. Without `packed`, each panel is read as stored when one block of activation
/// rows passes it; when more do, it is first copied tile by tile into a contiguous buffer
/// ([`pack_panel`]): a
/// tile of stored rows is 16 lines `2·k` bytes apart (for LLaMA's `k` a multiple of 4 KiB, so
/// all in one L1 set), and loads 25–35% slower than 1 KiB in a row. Copying changes which
/// addresses are read, never a sum.
///
/// # Safety
/// The CPU must have AMX-BF16 and AVX512-BF16 and the tile permission ([`available`]); `xp`
/// must be `pack_x(x, n, k)` with `n ≥ r.end`, `w` must hold `m.next_multiple_of(16)` rows of
/// `w_stride ≥ k.next_multiple_of(32)` values, `packed` (if any) must be
/// `pack_weights(w, w_stride, m, k)`, and `y` must cover rows `r`, columns `c` of `[_, m]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn block<O: GemmOut>(
    xp: &[Line],
    w: &[bf16],
    w_stride: usize,
    packed: Option<&[Line]>,
    k: usize,
    m: usize,
    r: Range<usize>,
    c: Range<usize>,
    y: *mut O,
) {
    let kp = k.next_multiple_of(32) / 2;
    let steps = kp / 16;
    let passes = steps.div_ceil(PASS_STEPS);
    let pass_steps = steps.div_ceil(passes);
    let copy_panels = packed.is_none() && r.len() > 32;
    let (row_blocks, col_blocks) = (r.len().div_ceil(32), c.len().div_ceil(32));
    SCRATCH.with_borrow_mut(|scratch| {
        // One slot of sums per (panel, row block) while passes remain; one suffices otherwise.
        let slots = if passes > 1 {
            row_blocks * col_blocks
        } else {
            1
        };
        scratch
            .sums
            .resize_with(slots, || Accumulators([[0f32; 256]; 4]));
        if copy_panels {
            scratch
                .panel
                .resize(2 * pass_steps * 16, Line([0; ROW_BYTES]));
        }
        let cfg = TileConfig::full();
        asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
        for pass in 0..passes {
            let (s0, s1) = (pass * pass_steps, ((pass + 1) * pass_steps).min(steps));
            let last = pass + 1 == passes;
            for (jb, j) in c.clone().step_by(32).enumerate() {
                // Weight rows j..j + 16 and j + 16..j + 32 (the first again when only 16 remain).
                let j1 = if j + 16 < c.end { j + 16 } else { j };
                let a = if let Some(packed) = packed {
                    let half = |row: usize| packed.as_ptr().add((row / 16 * steps + s0) * 16);
                    ATiles::contiguous(half(j), half(j1))
                } else if copy_panels {
                    let p0 = scratch.panel.as_mut_ptr();
                    let p1 = if j1 == j { p0 } else { p0.add(pass_steps * 16) };
                    pack_panel(w, w_stride, j, s0..s1, p0);
                    if j1 != j {
                        pack_panel(w, w_stride, j1, s0..s1, p1);
                    }
                    ATiles::contiguous(p0, p1)
                } else {
                    ATiles {
                        a0: w.as_ptr().add(j * w_stride + 32 * s0) as *const u8,
                        a1: w.as_ptr().add(j1 * w_stride + 32 * s0) as *const u8,
                        row: w_stride * 2,
                        step: ROW_BYTES,
                    }
                };
                for (ib, i) in r.clone().step_by(32).enumerate() {
                    let i1 = if i + 16 < r.end { i + 16 } else { i };
                    let b_at = |row: usize| xp.as_ptr().add(row / 16 * kp + 16 * s0);
                    let sums = &mut scratch.sums[if passes > 1 { jb * row_blocks + ib } else { 0 }];
                    let b = [b_at(i) as *const u8, b_at(i1) as *const u8];
                    tiles_2x2(&a, b, s1 - s0, pass > 0, sums);
                    if !last {
                        continue;
                    }
                    // Tile t holds rows `is[t % 2]` × columns `js[t / 2]`; a half that repeated
                    // the other one's operands is not stored.
                    let (is, js) = ([i, i1], [j, j1]);
                    for (t, tile) in sums.0.iter().enumerate() {
                        let (ii, jj) = (is[t % 2], js[t / 2]);
                        if (t % 2 == 1 && ii == i) || (t / 2 == 1 && jj == j) {
                            continue;
                        }
                        store(
                            tile,
                            y,
                            m,
                            ii..(ii + 16).min(r.end),
                            jj..(jj + 16).min(c.end),
                        );
                    }
                }
            }
        }
        asm!("tilerelease", options(nostack, nomem));
    });
}

/// Each thread's buffers for [`block`], kept from call to call.
#[derive(Default)]
struct Scratch {
    /// The panel being multiplied: two halves of a pass's tiles, 16 lines each.
    panel: Vec<Line>,
    /// Running sums between passes, one slot per (panel, block of 32 activation rows).
    sums: Vec<Accumulators>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::default();
}

/// One 64-byte tile row, aligned as a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
pub(super) struct Line([u8; ROW_BYTES]);

/// Copies steps `steps` of weight rows `j..j + 16` into consecutive tiles at `dst`: line
/// `16·s + t` is values `32·(steps.start + s)..` (32 of them) of row `j + t`.
///
/// # Safety
/// `w` holds rows `j..j + 16` of `w_stride ≥ 32·steps.end` values; `dst` is writable for
/// `16·steps.len()` lines.
#[inline]
unsafe fn pack_panel(w: &[bf16], w_stride: usize, j: usize, steps: Range<usize>, dst: *mut Line) {
    for t in 0..16 {
        let row = w.as_ptr().add((j + t) * w_stride + 32 * steps.start) as *const Line;
        for s in 0..steps.len() {
            dst.add(16 * s + t).write(row.add(s).read_unaligned());
        }
    }
}

/// Where the two A tiles of each k-step are: step `s` of half `h` starts at `a_h + s·step`,
/// its 16 lines `row` bytes apart.
struct ATiles {
    a0: *const u8,
    a1: *const u8,
    row: usize,
    step: usize,
}

impl ATiles {
    /// Two halves laid out by [`pack_panel`]: each step's tile is 16 consecutive lines.
    fn contiguous(a0: *const Line, a1: *const Line) -> Self {
        ATiles {
            a0: a0 as *const u8,
            a1: a1 as *const u8,
            row: ROW_BYTES,
            step: 16 * ROW_BYTES,
        }
    }
}

/// Four C tiles, as `TILESTORED` writes them (16 rows of 16 f32, 64-byte aligned).
#[repr(C, align(64))]
struct Accumulators([[f32; 256]; 4]);

/// `C[a][b] += A_a · B_b` over `steps` k-steps of 32 (`0: (a0, b0)`, `1: (a0, b1)`,
/// `2: (a1, b0)`, `3: (a1, b1)`), starting from the sums in `sums` when `resume` (an earlier
/// pass), from zero otherwise, and stored back into `sums`. Each product is issued as soon as
/// its operands are loaded, so the next loads overlap it (measured 10–17% faster than four
/// loads, then four products).
///
/// # Safety
/// Tiles configured by [`TileConfig::full`]; `a` valid for `steps` tiles of each half, `b`
/// for `steps · 1024` bytes each.
#[inline]
unsafe fn tiles_2x2(
    a: &ATiles,
    b: [*const u8; 2],
    steps: usize,
    resume: bool,
    sums: &mut Accumulators,
) {
    if resume {
        let o = sums.0.as_ptr() as *const u8;
        asm!(
            "tileloadd tmm0, [{o} + {s} * 1]",
            "tileloadd tmm1, [{o} + {s} * 1 + 1024]",
            "tileloadd tmm2, [{o} + {s} * 1 + 2048]",
            "tileloadd tmm3, [{o} + {s} * 1 + 3072]",
            o = in(reg) o,
            s = in(reg) ROW_BYTES,
            options(nostack, readonly)
        );
    } else {
        asm!(
            "tilezero tmm0",
            "tilezero tmm1",
            "tilezero tmm2",
            "tilezero tmm3",
            options(nostack, nomem)
        );
    }
    for s in 0..steps {
        // The B tiles two steps ahead into L1 (A's panel is reused from L2 by every row block;
        // B's lines pass once per panel): 5–10% on TinyLlama's and LLaMA-2-7B's shapes.
        // Prefetches past the end are dropped by the CPU, never faulting.
        for line in 0..16 {
            for b in b {
                let ahead = b.wrapping_add((s + 2) * 16 * ROW_BYTES + line * ROW_BYTES);
                _mm_prefetch::<_MM_HINT_T0>(ahead as *const i8);
            }
        }
        asm!(
            "tileloadd tmm4, [{a0} + {sa} * 1]",
            "tileloadd tmm6, [{b0} + {sb} * 1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tileloadd tmm7, [{b1} + {sb} * 1]",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tileloadd tmm5, [{a1} + {sa} * 1]",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a.a0.add(s * a.step),
            a1 = in(reg) a.a1.add(s * a.step),
            b0 = in(reg) b[0].add(s * 16 * ROW_BYTES),
            b1 = in(reg) b[1].add(s * 16 * ROW_BYTES),
            sa = in(reg) a.row,
            sb = in(reg) ROW_BYTES,
            options(nostack, readonly)
        );
    }
    store_tiles(sums);
}

/// `TILESTORED` of tmm0–3 into `out`.
#[inline]
unsafe fn store_tiles(out: &mut Accumulators) {
    let o = out.0.as_mut_ptr() as *mut u8;
    asm!(
        "tilestored [{o0} + {s} * 1], tmm0",
        "tilestored [{o1} + {s} * 1], tmm1",
        "tilestored [{o2} + {s} * 1], tmm2",
        "tilestored [{o3} + {s} * 1], tmm3",
        o0 = in(reg) o,
        o1 = in(reg) o.add(1024),
        o2 = in(reg) o.add(2048),
        o3 = in(reg) o.add(3072),
        s = in(reg) ROW_BYTES,
        options(nostack)
    );
}

/// Writes the transposed tile `t[j - c.start][i - r.start]` to `y[i][j]` for `i` in `r`, `j` in
/// `c` (each at most 16 long), transposed in registers ([`transpose16`]).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn store<O: GemmOut>(t: &[f32; 256], y: *mut O, m: usize, r: Range<usize>, c: Range<usize>) {
    let mask = lanes_below(c.len());
    let lines: [__m512i; 16] =
        std::array::from_fn(|a| _mm512_load_si512(t.as_ptr().add(16 * a) as *const __m512i));
    let rows = transpose16(lines);
    for (b, i) in r.enumerate() {
        store_sums(y.add(i * m + c.start), mask, _mm512_castsi512_ps(rows[b]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose16_moves_element_i_j_to_j_i() {
        if !is_x86_feature_detected!("avx512f") {
            return;
        }
        let m: Vec<i32> = (0..256).map(|v| v * 7 + 3).collect();
        // SAFETY: AVX-512F was detected; each load reads 16 of the 256 values.
        let t: [[i32; 16]; 16] = unsafe {
            let rows = std::array::from_fn(|i| _mm512_loadu_si512(m[16 * i..].as_ptr().cast()));
            transpose16(rows).map(|v| std::mem::transmute::<__m512i, [i32; 16]>(v))
        };
        for (j, line) in t.iter().enumerate() {
            for (i, &v) in line.iter().enumerate() {
                assert_eq!(v, m[16 * i + j], "output {j}, lane {i}");
            }
        }
    }

    #[test]
    fn pack_x_matches_the_word_by_word_layout() {
        if !is_x86_feature_detected!("avx512f") {
            return;
        }
        // Whole and partial blocks of 16 rows, k a multiple of 32 and not, even and odd.
        for &(n, k) in &[
            (16usize, 64usize),
            (5, 32),
            (21, 70),
            (33, 130),
            (3, 33),
            (17, 2),
        ] {
            let x: Vec<bf16> = (0..n * k).map(|v| bf16::from_f32(v as f32 + 0.5)).collect();
            let kp = k.next_multiple_of(32) / 2;
            let mut want = vec![0u32; n.div_ceil(16) * kp * 16];
            for i in 0..n {
                for p in 0..k.div_ceil(2) {
                    want[i / 16 * kp * 16 + p * 16 + i % 16] =
                        super::super::pair_word(&x[i * k..(i + 1) * k], p);
                }
            }
            let got: Vec<u32> = pack_x(&x, n, k)
                .iter()
                .flat_map(|line| line.0.chunks_exact(4))
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            assert_eq!(got, want, "n={n} k={k}");
        }
    }
}
