//! From decoded component planes to RGB, as libjpeg-turbo does it: "fancy" chroma upsampling
//! (`jdsample.c`) and the fixed-point YCbCr→RGB tables (`jdcolor.c`).

/// The shape of a component's decoded sample plane: the samples that belong to the image
/// (`width` × `height`) in rows `stride` apart (whole blocks).
pub(super) struct Plane {
    pub(super) width: usize,
    pub(super) height: usize,
    pub(super) stride: usize,
}

/// Row `y` of a component's `plane` (shaped `c`) upsampled by (`fx`, `fy`) into
/// `out[..c.width * fx]`, as libjpeg-turbo's `jdsample.c` does it with fancy upsampling on.
pub(super) fn upsample_row(
    c: &Plane,
    plane: &[u8],
    fx: usize,
    fy: usize,
    y: usize,
    out: &mut [u8],
) {
    let (stride, w) = (c.stride, c.width);
    let last = c.height - 1;
    let iy = (y / fy).min(last);
    let row = |r: usize| &plane[r * stride..r * stride + w];
    let cur = row(iy);
    // libjpeg uses the triangle filters only for components more than 2 samples wide.
    let fancy = w > 2;
    match (fx, fy) {
        (1, 1) => out[..w].copy_from_slice(cur),
        (2, 1) if fancy => {
            // Nearer sample ×3 + farther one; bias 1 towards the left, 2 towards the right.
            out[0] = cur[0];
            out[1] = ((3 * u32::from(cur[0]) + u32::from(cur[1]) + 2) >> 2) as u8;
            for i in 1..w - 1 {
                let c3 = 3 * u32::from(cur[i]);
                out[2 * i] = ((c3 + u32::from(cur[i - 1]) + 1) >> 2) as u8;
                out[2 * i + 1] = ((c3 + u32::from(cur[i + 1]) + 2) >> 2) as u8;
            }
            out[2 * w - 2] = ((3 * u32::from(cur[w - 1]) + u32::from(cur[w - 2]) + 1) >> 2) as u8;
            out[2 * w - 1] = cur[w - 1];
        }
        (2, 2) if fancy => {
            // Vertical: 3 × this row + the nearer neighbour row (the row itself at the edges);
            // horizontal: 3 × this column sum + the neighbouring one, /16 with bias 8 to the
            // left and 7 to the right.
            let near = if y.is_multiple_of(2) {
                row(iy.saturating_sub(1))
            } else {
                row((iy + 1).min(last))
            };
            let sum = |i: usize| 3 * u32::from(cur[i]) + u32::from(near[i]);
            let (mut prev, mut this) = (sum(0), sum(0));
            for i in 0..w {
                let next = if i + 1 < w { sum(i + 1) } else { this };
                if i == 0 {
                    out[0] = ((this * 4 + 8) >> 4) as u8;
                } else {
                    out[2 * i] = ((this * 3 + prev + 8) >> 4) as u8;
                }
                out[2 * i + 1] = if i + 1 < w {
                    ((this * 3 + next + 7) >> 4) as u8
                } else {
                    ((this * 4 + 7) >> 4) as u8
                };
                prev = this;
                this = next;
            }
        }
        (1, 2) if fancy => {
            let (near, bias) = if y.is_multiple_of(2) {
                (row(iy.saturating_sub(1)), 1)
            } else {
                (row((iy + 1).min(last)), 2)
            };
            for ((o, &a), &b) in out.iter_mut().zip(cur).zip(near) {
                *o = ((3 * u32::from(a) + u32::from(b) + bias) >> 2) as u8;
            }
        }
        _ => {
            for (chunk, &v) in out.chunks_exact_mut(fx).zip(cur) {
                chunk.fill(v);
            }
        }
    }
}

/// libjpeg's YCbCr→RGB tables (`jdcolor.c`): 16-bit fixed point, rounded per table entry.
pub(super) struct ColorTables {
    cr_r: [i32; 256],
    cb_b: [i32; 256],
    cr_g: [i32; 256],
    cb_g: [i32; 256],
}

pub(super) const COLOR: ColorTables = color_tables();

pub(super) const fn color_tables() -> ColorTables {
    const HALF: i32 = 1 << 15;
    // FIX(x) = round(x · 2^16).
    const FIX_1_40200: i32 = 91881;
    const FIX_1_77200: i32 = 116130;
    const FIX_0_71414: i32 = 46802;
    const FIX_0_34414: i32 = 22554;
    let mut t = ColorTables {
        cr_r: [0; 256],
        cb_b: [0; 256],
        cr_g: [0; 256],
        cb_g: [0; 256],
    };
    let mut i = 0;
    while i < 256 {
        let x = i as i32 - 128;
        t.cr_r[i] = (FIX_1_40200 * x + HALF) >> 16;
        t.cb_b[i] = (FIX_1_77200 * x + HALF) >> 16;
        t.cr_g[i] = -FIX_0_71414 * x;
        t.cb_g[i] = -FIX_0_34414 * x + HALF;
        i += 1;
    }
    t
}

pub(super) fn ycc_to_rgb(y: &[u8], cb: &[u8], cr: &[u8], out: &mut [u8]) {
    let t = &COLOR;
    for (((px, &y), &cb), &cr) in out.chunks_exact_mut(3).zip(y).zip(cb).zip(cr) {
        let (y, cb, cr) = (i32::from(y), usize::from(cb), usize::from(cr));
        px[0] = (y + t.cr_r[cr]).clamp(0, 255) as u8;
        px[1] = (y + ((t.cb_g[cb] + t.cr_g[cr]) >> 16)).clamp(0, 255) as u8;
        px[2] = (y + t.cb_b[cb]).clamp(0, 255) as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_tables() {
        let mut px = [0u8; 3];
        for y in [0u8, 1, 127, 128, 254, 255] {
            ycc_to_rgb(&[y], &[128], &[128], &mut px);
            assert_eq!(px, [y; 3]);
        }
        // R = 128 + round(1.402 · 127) saturates; G = 128 + floor(-0.71414 · 127 + 0.5).
        ycc_to_rgb(&[128], &[128], &[255], &mut px);
        assert_eq!(px, [255, 37, 128]);
    }

    fn component(width: usize, height: usize) -> Plane {
        Plane {
            width,
            height,
            stride: 8,
        }
    }

    #[test]
    fn fancy_upsampling() {
        let mut plane = [0u8; 64];
        plane[..3].copy_from_slice(&[0, 16, 32]);
        plane[8..11].copy_from_slice(&[0, 16, 32]);
        let mut out = [0u8; 8];
        // h2v2: (3·this + neighbour column sums) / 16, biases 8 and 7.
        upsample_row(&component(3, 2), &plane, 2, 2, 0, &mut out);
        assert_eq!(out[..6], [0, 4, 12, 20, 28, 32]);
        // h2v1: (3·this + neighbour) / 4, biases 1 and 2.
        upsample_row(&component(3, 1), &plane, 2, 1, 0, &mut out);
        assert_eq!(out[..6], [0, 4, 12, 20, 28, 32]);
        // Vertical neighbour rows: 3/4 this row + 1/4 the nearer one, biases 1 (above) and 2.
        plane[8..11].copy_from_slice(&[4, 4, 4]);
        upsample_row(&component(3, 2), &plane, 1, 2, 1, &mut out);
        assert_eq!(out[..3], [1, 13, 25]);
        upsample_row(&component(3, 2), &plane, 1, 2, 2, &mut out);
        assert_eq!(out[..3], [3, 7, 11]);
        // At most 2 samples wide: replication.
        upsample_row(&component(2, 2), &plane, 2, 2, 0, &mut out);
        assert_eq!(out[..4], [0, 0, 16, 16]);
    }
}
