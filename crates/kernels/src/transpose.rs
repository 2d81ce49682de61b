//! The blocked transpose of a bf16 matrix, for the operands the bf16 GEMM wants as rows in the
//! backward of a linear layer (`Wᵀ`, `dYᵀ`, `Xᵀ`).
//!
//! Why by hand: candle's strided copy walks one element at a time through its index
//! arithmetic, and a plain blocked loop still gathers one 2-byte value per load with a bounds
//! check: on a bf16 LoRA step of the 20M bench model that loop was 12% of the step. Here each
//! 8 × 8 tile moves through eight SSE2 registers (baseline on x86-64, so no runtime check): 8
//! loads, 24 unpacks, 8 stores for 64 values. Tiles at the matrix's ragged edges, and other
//! architectures, take the scalar loop.

use std::mem::MaybeUninit;

use half::bf16;
use rayon::prelude::*;

/// Side of the square blocks a task copies (64 × 64 bf16 = 8 KiB: source and destination block
/// stay in L1).
const BLOCK: usize = 64;

/// Side of the register tile.
const TILE: usize = 8;

/// `src: [rows, cols]` transposed into a new `[cols, rows]`, blocks of output rows in parallel.
pub(crate) fn transpose(src: &[bf16], rows: usize, cols: usize) -> Vec<bf16> {
    assert_eq!(
        src.len(),
        rows * cols,
        "transpose: {rows} x {cols} from {}",
        src.len()
    );
    let mut dst: Vec<bf16> = Vec::with_capacity(rows * cols);
    if rows == 0 || cols == 0 {
        return dst;
    }
    dst.spare_capacity_mut()[..rows * cols]
        .par_chunks_mut(BLOCK * rows)
        .enumerate()
        .for_each(|(cb, out)| {
            let c0 = cb * BLOCK;
            let width = out.len() / rows;
            for r0 in (0..rows).step_by(BLOCK) {
                let r1 = (r0 + BLOCK).min(rows);
                block(src, (rows, cols), out, (r0, r1), (c0, width));
            }
        });
    // SAFETY: the chunks cover all rows·cols elements, and `block` writes every element of
    // its chunk's rows r0..r1 for each r0 (every column of the chunk), so every one is set.
    unsafe { dst.set_len(rows * cols) };
    dst
}

/// Source rows `r0..r1` of source columns `c0..c0 + width` into `out`, which holds destination
/// rows `c0..c0 + width` (each `rows` long).
fn block(
    src: &[bf16],
    (rows, cols): (usize, usize),
    out: &mut [MaybeUninit<bf16>],
    (r0, r1): (usize, usize),
    (c0, width): (usize, usize),
) {
    let mut r = r0;
    while r < r1 {
        let full_rows = r + TILE <= r1;
        let mut c = 0;
        while c < width {
            if full_rows && c + TILE <= width {
                #[cfg(target_arch = "x86_64")]
                {
                    let from = &src[r * cols + c0 + c..(r + TILE - 1) * cols + c0 + c + TILE];
                    let to = &mut out[c * rows + r..(c + TILE - 1) * rows + r + TILE];
                    // SAFETY: `from` holds source rows r..r+8 at columns c0+c..c0+c+8 (row
                    // stride `cols`), `to` destination rows c..c+8 at columns r..r+8 (row
                    // stride `rows`); the slices' bounds were checked above.
                    unsafe { sse2::tile(from, cols, to, rows) };
                    c += TILE;
                    continue;
                }
            }
            let (rt, ct) = ((r1 - r).min(TILE), (width - c).min(TILE));
            for i in 0..ct {
                for j in 0..rt {
                    out[(c + i) * rows + r + j] =
                        MaybeUninit::new(src[(r + j) * cols + c0 + c + i]);
                }
            }
            c += ct;
        }
        r += (r1 - r).min(TILE);
    }
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    use half::bf16;

    /// One 8 × 8 tile: `from[j·src_stride + i]` to `to[i·dst_stride + j]` for i, j < 8. Three
    /// rounds of unpacks interleave 16-, 32- and then 64-bit pieces of row pairs, the textbook
    /// 8 × 8 16-bit transpose.
    ///
    /// # Safety
    /// `from` must hold `7·src_stride + 8` values and `to` `7·dst_stride + 8`.
    #[inline(always)]
    pub(super) unsafe fn tile(
        from: &[bf16],
        src_stride: usize,
        to: &mut [MaybeUninit<bf16>],
        dst_stride: usize,
    ) {
        debug_assert!(from.len() > 7 * src_stride + 7 && to.len() > 7 * dst_stride + 7);
        let p = from.as_ptr();
        let row = |j: usize| _mm_loadu_si128(p.add(j * src_stride) as *const __m128i);
        let (a0, a1, a2, a3) = (row(0), row(1), row(2), row(3));
        let (a4, a5, a6, a7) = (row(4), row(5), row(6), row(7));
        // Pairs of rows, 16-bit interleaved: b0 = a00 a10 a01 a11 a02 a12 a03 a13, ...
        let (b0, b1) = (_mm_unpacklo_epi16(a0, a1), _mm_unpackhi_epi16(a0, a1));
        let (b2, b3) = (_mm_unpacklo_epi16(a2, a3), _mm_unpackhi_epi16(a2, a3));
        let (b4, b5) = (_mm_unpacklo_epi16(a4, a5), _mm_unpackhi_epi16(a4, a5));
        let (b6, b7) = (_mm_unpacklo_epi16(a6, a7), _mm_unpackhi_epi16(a6, a7));
        // Quads: c0 = columns 0 and 1 of rows 0-3, c1 = columns 2 and 3, ...
        let (c0, c1) = (_mm_unpacklo_epi32(b0, b2), _mm_unpackhi_epi32(b0, b2));
        let (c2, c3) = (_mm_unpacklo_epi32(b1, b3), _mm_unpackhi_epi32(b1, b3));
        let (c4, c5) = (_mm_unpacklo_epi32(b4, b6), _mm_unpackhi_epi32(b4, b6));
        let (c6, c7) = (_mm_unpacklo_epi32(b5, b7), _mm_unpackhi_epi32(b5, b7));
        // Whole columns: rows 0-3 from c0..c3, rows 4-7 from c4..c7.
        let columns = [
            _mm_unpacklo_epi64(c0, c4),
            _mm_unpackhi_epi64(c0, c4),
            _mm_unpacklo_epi64(c1, c5),
            _mm_unpackhi_epi64(c1, c5),
            _mm_unpacklo_epi64(c2, c6),
            _mm_unpackhi_epi64(c2, c6),
            _mm_unpacklo_epi64(c3, c7),
            _mm_unpackhi_epi64(c3, c7),
        ];
        let q = to.as_mut_ptr();
        for (i, col) in columns.into_iter().enumerate() {
            _mm_storeu_si128(q.add(i * dst_stride) as *mut __m128i, col);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transpose_moves_every_value() {
        let shapes = [
            (1, 1),
            (3, 70),
            (130, 5),
            (65, 129),
            (8, 8),
            (16, 24),
            (64, 64),
            (71, 200),
            (200, 71),
            (1024, 9),
        ];
        for (rows, cols) in shapes {
            let src: Vec<bf16> = (0..rows * cols)
                .map(|i| bf16::from_bits(i as u16))
                .collect();
            let t = transpose(&src, rows, cols);
            assert_eq!(t.len(), rows * cols);
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(
                        t[c * rows + r].to_bits(),
                        src[r * cols + c].to_bits(),
                        "{rows}x{cols} at {r},{c}"
                    );
                }
            }
        }
    }

    #[test]
    fn an_empty_matrix_transposes_to_empty() {
        assert!(transpose(&[], 0, 5).is_empty());
        assert!(transpose(&[], 7, 0).is_empty());
    }
}
