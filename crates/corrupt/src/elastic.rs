//! `elastic_transform`: a random affine warp (OpenCV `getAffineTransform` + `warpAffine`), then
//! a smooth random displacement field (scipy `gaussian_filter` of uniform noise) sampled with
//! scipy `map_coordinates(order=1, mode='reflect')`. The image is float32 throughout, as in the
//! reference.

use image::RgbImage;
use sightline_random::RandomState;

use crate::filters::{self, Border};
use crate::{Img, SIZE};

/// (α, σ, affine jitter) = 244·[…]: upstream writes 244 where 224 was meant; kept.
const ELASTIC: [(f64, f64, f64); 5] = [
    (244.0 * 2.0, 244.0 * 0.7, 244.0 * 0.1),
    (244.0 * 2.0, 244.0 * 0.08, 244.0 * 0.2),
    (244.0 * 0.05, 244.0 * 0.01, 244.0 * 0.02),
    (244.0 * 0.07, 244.0 * 0.01, 244.0 * 0.02),
    (244.0 * 0.12, 244.0 * 0.01, 244.0 * 0.02),
];

pub fn elastic(img: &RgbImage, s: usize, rng: &mut RandomState) -> RgbImage {
    let (alpha, sigma, jitter) = ELASTIC[s];
    let n = SIZE as usize;
    let x: Vec<f32> = img.as_raw().iter().map(|&v| f32::from(v) / 255.0).collect();

    // Three points around the centre (x, y order, as OpenCV), each moved by U(−jitter, jitter)
    // rounded to float32.
    let (c, sq) = (112.0f32, 74.0f32);
    let pts1 = [[c + sq, c + sq], [c + sq, c - sq], [c - sq, c - sq]];
    let mut pts2 = pts1;
    for p in &mut pts2 {
        for v in p.iter_mut() {
            *v += rng.uniform(-jitter, jitter) as f32;
        }
    }
    let m = affine_transform(&pts1, &pts2);
    let warped = warp_affine(&x, n, &m);

    let mut field = || {
        let mut noise = Img::zeros(n, n, 1);
        for v in &mut noise.data {
            *v = rng.uniform(-1.0, 1.0);
        }
        let smooth = filters::gaussian_filter(&noise, sigma, Border::Reflect, 3.0);
        smooth
            .data
            .iter()
            .map(|v| (v * alpha) as f32)
            .collect::<Vec<f32>>()
    };
    let dx = field();
    let dy = field();

    let mut out = vec![0u8; n * n * 3];
    for i in 0..n {
        for j in 0..n {
            let p = i * n + j;
            let (cy, cx) = (i as f64 + f64::from(dy[p]), j as f64 + f64::from(dx[p]));
            let (ys, wy) = linear_taps(cy, n);
            let (xs, wx) = linear_taps(cx, n);
            for ch in 0..3 {
                // scipy sums the 2×2×2 products (the channel taps weigh 1 and 0) in C order.
                let mut t = 0.0f64;
                for (a, &yy) in ys.iter().enumerate() {
                    for (b, &xx) in xs.iter().enumerate() {
                        t += f64::from(warped[(yy * n + xx) * 3 + ch]) * wy[a] * wx[b];
                    }
                }
                let v = (t as f32).clamp(0.0, 1.0) * 255.0;
                out[p * 3 + ch] = v as u8;
            }
        }
    }
    RgbImage::from_raw(SIZE, SIZE, out).expect("elastic keeps the size")
}

/// scipy's order-1 taps for coordinate `cc` on an axis of `len` with mode `reflect`: the
/// coordinate is folded by `map_coordinate`, and taps that fall outside are folded by the same
/// rule (scipy's spline boundary mode for `reflect` is `reflect`); weights are `1 − t` and
/// `1 − (1 − t)`.
fn linear_taps(cc: f64, len: usize) -> ([usize; 2], [f64; 2]) {
    let cc = fold_reflect(cc, len);
    let start = cc.floor();
    let w0 = 1.0 - (cc - start);
    let tap = |i: f64| -> usize {
        if i < 0.0 || i >= len as f64 {
            (fold_reflect(i, len) as i64).clamp(0, len as i64 - 1) as usize
        } else {
            i as usize
        }
    };
    ([tap(start), tap(start + 1.0)], [w0, 1.0 - w0])
}

/// scipy `map_coordinate(in, len, NI_EXTEND_REFLECT)`.
fn fold_reflect(mut x: f64, len: usize) -> f64 {
    let len_f = len as f64;
    if len <= 1 {
        return 0.0;
    }
    let sz2 = 2.0 * len_f;
    if x < 0.0 {
        if x < -sz2 {
            x += sz2 * ((-x / sz2) as i64) as f64;
        }
        x = if x < -len_f {
            x + sz2
        } else {
            (if x > -1e-15 { 1e-15 } else { -x }) - 1.0
        };
    } else if x > len_f - 1.0 {
        x -= sz2 * ((x / sz2) as i64) as f64;
        if x >= len_f {
            x = sz2 - x - 1.0;
        }
    }
    x
}

/// OpenCV `getAffineTransform`: the 6×6 system solved by Gaussian elimination with partial
/// pivoting (`cv::solve`, `DECOMP_LU`), row-major 2×3 result.
fn affine_transform(src: &[[f32; 2]; 3], dst: &[[f32; 2]; 3]) -> [f64; 6] {
    let mut a = [[0.0f64; 6]; 6];
    let mut b = [0.0f64; 6];
    for i in 0..3 {
        let (x, y) = (f64::from(src[i][0]), f64::from(src[i][1]));
        a[2 * i] = [x, y, 1.0, 0.0, 0.0, 0.0];
        a[2 * i + 1] = [0.0, 0.0, 0.0, x, y, 1.0];
        b[2 * i] = f64::from(dst[i][0]);
        b[2 * i + 1] = f64::from(dst[i][1]);
    }
    for i in 0..6 {
        let k = (i..6)
            .max_by(|&p, &q| a[p][i].abs().total_cmp(&a[q][i].abs()).then(q.cmp(&p)))
            .unwrap_or(i);
        if k != i {
            a.swap(i, k);
            b.swap(i, k);
        }
        let d = -1.0 / a[i][i];
        let pivot = a[i];
        for j in i + 1..6 {
            let alpha = a[j][i] * d;
            for (v, p) in a[j][i + 1..].iter_mut().zip(&pivot[i + 1..]) {
                *v += alpha * p;
            }
            b[j] += alpha * b[i];
        }
    }
    for i in (0..6).rev() {
        let mut s = b[i];
        for k in i + 1..6 {
            s -= a[i][k] * b[k];
        }
        b[i] = s / a[i][i];
    }
    b
}

/// OpenCV `warpAffine(img, M, (n, n), INTER_LINEAR, BORDER_REFLECT_101)` on float32 RGB: the
/// matrix is inverted in double, each destination pixel reads source `(sx, sy)` computed in
/// float32, and is interpolated with float32 weights (OpenCV 5's float path, which does not
/// quantise coordinates to 1/32).
fn warp_affine(src: &[f32], n: usize, m: &[f64; 6]) -> Vec<f32> {
    let d = m[0] * m[4] - m[1] * m[3];
    let d = if d != 0.0 { 1.0 / d } else { 0.0 };
    let (a11, a22) = (m[4] * d, m[0] * d);
    let (a12, a21) = (-m[1] * d, -m[3] * d);
    let b1 = -a11 * m[2] - a12 * m[5];
    let b2 = -a21 * m[2] - a22 * m[5];
    let inv = [a11, a12, b1, a21, a22, b2].map(|v| v as f32);
    let border = Border::Reflect101;
    let mut out = vec![0f32; n * n * 3];
    for y in 0..n {
        for x in 0..n {
            let (xf, yf) = (x as f32, y as f32);
            let sx = inv[0] * xf + (inv[1] * yf + inv[2]);
            let sy = inv[3] * xf + (inv[4] * yf + inv[5]);
            let (ix, iy) = (sx.floor(), sy.floor());
            let (ax, ay) = (sx - ix, sy - iy);
            let (ix, iy) = (ix as isize, iy as isize);
            let (x0, x1) = (border.index(ix, n), border.index(ix + 1, n));
            let (y0, y1) = (border.index(iy, n), border.index(iy + 1, n));
            for ch in 0..3 {
                let px = |yy: usize, xx: usize| src[(yy * n + xx) * 3 + ch];
                let top = ax.mul_add(px(y0, x1) - px(y0, x0), px(y0, x0));
                let bottom = ax.mul_add(px(y1, x1) - px(y1, x0), px(y1, x0));
                out[(y * n + x) * 3 + ch] = ay.mul_add(bottom - top, top);
            }
        }
    }
    out
}
