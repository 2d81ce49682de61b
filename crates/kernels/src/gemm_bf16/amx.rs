//! The AMX-BF16 micro-kernel: `TDPBF16PS` on 16 × 16 f32 tiles (Intel Sapphire Rapids+).
//!
//! Operand roles are swapped from the textbook `x · wᵀ`: a tile product computes
//! `C[16 × 16] += A[16 × 32] · B[32 × 16]` with A read row by row (32 consecutive bf16 of a row
//! per tile row) and B in the "VNNI" layout (pairs of consecutive inner elements interleaved).
//! A linear weight `w: [m, k]` already has A's layout, so **weights are read in their checkpoint
//! layout, never packed** (no second copy of a memory-mapped model, nothing to pack at load); the
//! activations `x: [n, k]`, small next to the weights when scoring and tiny when decoding, are
//! packed once per call into B's layout ([`pack_x`]). A tile then holds `yᵀ`: 16 output columns
//! (weight rows) × 16 output rows (activation rows), transposed on the way out.
//!
//! Register blocking: 4 accumulators (tmm0–3) for 32 weight rows × 32 activation rows, 2 A tiles
//! (tmm4–5), 2 B tiles (tmm6–7); k in steps of 32. A lone 16-row block on either side reuses the
//! other half's operands and drops its results. Products of fewer than
//! [`super::AMX_MIN_ROWS`] activation rows (decoding one to three sequences) do not come here:
//! there the tiles compute mostly padding and the AVX512-BF16 kernel streams the weights faster
//! (measured 1 row × 2048 × 5632: 34–38 against 48 GFLOP/s; 4 rows: on par; 8 rows: 2×).
//!
//! Stable Rust has no AMX intrinsics, so the instructions are emitted with `asm!`. The tile
//! registers are not known to the compiler, which never uses them: tile state set by one `asm!`
//! block is still there in the next. Tile data needs the kernel's permission, asked once per
//! process ([`available`]); without it a tile instruction raises SIGILL.
//!
//! Rounding: whatever `TDPBF16PS` does per 32-value chunk, in `k` order chunk by chunk, the same
//! for every output whatever the blocking, the batch or the threads; `reference::dot_tiles`
//! states it as measured, and `tests/gemm_bf16.rs` checks it bit for bit.

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
/// dimension (padded to a multiple of 32), the 16 rows' pairs `(x[i][2p], x[i][2p + 1])` as
/// 32-bit words, the even element low; padding rows and pairs are zero. A block is
/// `kp · 16` words (`kp = k.next_multiple_of(32) / 2`).
pub(super) fn pack_x(x: &[bf16], n: usize, k: usize) -> Vec<u32> {
    use rayon::prelude::*;
    let kp = k.next_multiple_of(32) / 2;
    let mut xp = vec![0u32; n.div_ceil(16) * kp * 16];
    if k == 0 {
        return xp;
    }
    // One block of 16 rows at a time: whole blocks of even rows by gathers (each output line
    // written whole), the last partial block and odd rows word by word.
    let pack = |(block, rows): (&mut [u32], &[bf16])| {
        if rows.len() == 16 * k && k.is_multiple_of(2) {
            // SAFETY: AVX-512F comes with every AMX CPU; 16 whole rows of even length.
            unsafe { pack_block_gather(rows, k, block) };
            return;
        }
        for (c, row) in rows.chunks_exact(k).enumerate() {
            for (p, slot) in block[c..]
                .iter_mut()
                .step_by(16)
                .take(k.div_ceil(2))
                .enumerate()
            {
                *slot = super::pair_word(row, p);
            }
        }
    };
    // Waking the other threads costs more than packing a short batch.
    if n * k >= PARALLEL_PACK {
        xp.par_chunks_mut(kp * 16)
            .zip(x.par_chunks(16 * k))
            .for_each(pack);
    } else {
        xp.chunks_mut(kp * 16).zip(x.chunks(16 * k)).for_each(pack);
    }
    xp
}

/// [`pack_x`] for one block of 16 rows of even length `k`: each output line (pair `p` of the
/// 16 rows) is one gather of 32-bit words, which are the pairs as stored (little-endian: the
/// even element low), written whole. A scalar scatter wrote every word to another cache line
/// and cost more than the product for short rows.
///
/// # Safety
/// AVX-512F; `rows` holds 16 rows of `k` values (`k` even), `block` at least `k / 2 · 16` words.
#[target_feature(enable = "avx512f")]
unsafe fn pack_block_gather(rows: &[bf16], k: usize, block: &mut [u32]) {
    let stride = (k / 2) as i32;
    let idx = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(stride),
    );
    let base = rows.as_ptr() as *const i32;
    for p in 0..k / 2 {
        let v = _mm512_i32gather_epi32::<4>(idx, base.add(p));
        _mm512_storeu_si512(block.as_mut_ptr().add(p * 16) as *mut __m512i, v);
    }
}

/// Activation values from which [`pack_x`] runs on every thread.
const PARALLEL_PACK: usize = 1 << 20;

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

/// Rows `r` × columns `c` of `y = x · wᵀ` (`r` and `c` start at multiples of 32), from `xp`
/// ([`pack_x`]) and weight rows `w` of `w_stride` elements ([`weights_for_tiles`]).
///
/// # Safety
/// The CPU must have AMX-BF16 and AVX512-BF16 and the tile permission ([`available`]); `xp`
/// must be `pack_x(x, n, k)` with `n ≥ r.end`, `w` must hold `m.next_multiple_of(16)` rows of
/// `w_stride ≥ k.next_multiple_of(32)` values, and `y` must cover rows `r`, columns `c` of
/// `[_, m]`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn block<O: GemmOut>(
    xp: &[u32],
    w: &[bf16],
    w_stride: usize,
    k: usize,
    m: usize,
    r: Range<usize>,
    c: Range<usize>,
    y: *mut O,
) {
    let kp = k.next_multiple_of(32) / 2;
    let steps = kp / 16;
    let cfg = TileConfig::full();
    asm!("ldtilecfg [{}]", in(reg) cfg.0.as_ptr(), options(nostack, readonly));
    let mut out = Accumulators([[0f32; 256]; 4]);
    let mut j = c.start;
    while j < c.end {
        // Weight rows j..j + 16 and j + 16..j + 32 (the first again when only 16 remain).
        let j1 = if j + 16 < c.end { j + 16 } else { j };
        let a0 = w.as_ptr().add(j * w_stride) as *const u8;
        let a1 = w.as_ptr().add(j1 * w_stride) as *const u8;
        let mut i = r.start;
        while i < r.end {
            let i1 = if i + 16 < r.end { i + 16 } else { i };
            let b0 = xp.as_ptr().add(i / 16 * kp * 16) as *const u8;
            let b1 = xp.as_ptr().add(i1 / 16 * kp * 16) as *const u8;
            tiles_2x2(a0, a1, w_stride * 2, b0, b1, steps, &mut out);
            // Tile t holds rows `is[t % 2]` × columns `js[t / 2]`; a half that repeated the
            // other one's operands is not stored.
            let (is, js) = ([i, i1], [j, j1]);
            for (t, tile) in out.0.iter().enumerate() {
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
            i += 32;
        }
        j += 32;
    }
    asm!("tilerelease", options(nostack, nomem));
}

/// Four C tiles, as `TILESTORED` writes them (16 rows of 16 f32, 64-byte aligned).
#[repr(C, align(64))]
struct Accumulators([[f32; 256]; 4]);

/// `C[a][b] = A_a · B_b` over `steps` k-steps of 32 into `out` (`0: (a0, b0)`, `1: (a0, b1)`,
/// `2: (a1, b0)`, `3: (a1, b1)`).
///
/// # Safety
/// Tiles configured by [`TileConfig::full`]; `a*` valid for 16 rows of `a_stride` bytes with
/// `steps · 64` bytes each, `b*` for `steps · 1024` bytes.
#[inline]
unsafe fn tiles_2x2(
    a0: *const u8,
    a1: *const u8,
    a_stride: usize,
    b0: *const u8,
    b1: *const u8,
    steps: usize,
    out: &mut Accumulators,
) {
    asm!(
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3",
        options(nostack, nomem)
    );
    for s in 0..steps {
        asm!(
            "tileloadd tmm4, [{a0} + {sa} * 1]",
            "tileloadd tmm5, [{a1} + {sa} * 1]",
            "tileloadd tmm6, [{b0} + {sb} * 1]",
            "tileloadd tmm7, [{b1} + {sb} * 1]",
            "tdpbf16ps tmm0, tmm4, tmm6",
            "tdpbf16ps tmm1, tmm4, tmm7",
            "tdpbf16ps tmm2, tmm5, tmm6",
            "tdpbf16ps tmm3, tmm5, tmm7",
            a0 = in(reg) a0.add(s * ROW_BYTES),
            a1 = in(reg) a1.add(s * ROW_BYTES),
            b0 = in(reg) b0.add(s * 16 * ROW_BYTES),
            b1 = in(reg) b1.add(s * 16 * ROW_BYTES),
            sa = in(reg) a_stride,
            sb = in(reg) ROW_BYTES,
            options(nostack, readonly)
        );
    }
    store_tiles(out);
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
/// `c` (each at most 16 long).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn store<O: GemmOut>(t: &[f32; 256], y: *mut O, m: usize, r: Range<usize>, c: Range<usize>) {
    let mask: __mmask16 = (1u32 << c.len()).wrapping_sub(1) as __mmask16;
    let column = _mm512_setr_epi32(
        0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176, 192, 208, 224, 240,
    );
    for (a, i) in r.enumerate() {
        let idx = _mm512_add_epi32(column, _mm512_set1_epi32(a as i32));
        let sums = _mm512_mask_i32gather_ps::<4>(_mm512_setzero_ps(), mask, idx, t.as_ptr());
        store_sums(y.add(i * m + c.start), mask, sums);
    }
}
