//! `spatter`: a thresholded, blurred random "liquid" layer. Severities 1–3 draw water (its
//! outline through OpenCV's Canny, distance transform, histogram equalisation and an emboss
//! kernel), 4–5 mud. The OpenCV steps are ported here as OpenCV 4/5 computes them on 8-bit
//! and float32 images.

use image::RgbImage;
use sightline_random::RandomState;

use crate::filters::{self, Border};
use crate::{Img, SIZE};

/// (μ, σ, blur σ, threshold, intensity, mode 0 = water / 1 = mud).
const SPATTER: [(f64, f64, f64, f64, f64, u8); 5] = [
    (0.65, 0.3, 4.0, 0.69, 0.6, 0),
    (0.65, 0.3, 3.0, 0.68, 0.6, 0),
    (0.65, 0.3, 2.0, 0.68, 0.5, 0),
    (0.65, 0.3, 1.0, 0.65, 1.5, 1),
    (0.67, 0.4, 1.0, 0.65, 1.5, 1),
];

pub fn spatter(img: &RgbImage, s: usize, rng: &mut RandomState) -> RgbImage {
    let (mu, sigma, blur, thr, intensity, mode) = SPATTER[s];
    let n = SIZE as usize;
    let x: Vec<f32> = img.as_raw().iter().map(|&v| f32::from(v) / 255.0).collect();
    let mut liquid = Img::zeros(n, n, 1);
    for v in &mut liquid.data {
        *v = rng.normal(mu, sigma);
    }
    let mut liquid = filters::gaussian_filter(&liquid, blur, Border::Nearest, 4.0);
    liquid
        .data
        .iter_mut()
        .filter(|v| **v < thr)
        .for_each(|v| *v = 0.0);
    let out: Vec<f32> = if mode == 0 {
        water(&x, &liquid.data, n, intensity as f32)
    } else {
        mud(&x, &liquid, thr, intensity)
    };
    let buf = out
        .iter()
        .map(|&v| (v.clamp(0.0, 1.0) * 255.0) as u8)
        .collect();
    RgbImage::from_raw(SIZE, SIZE, buf).expect("spatter keeps the size")
}

/// Water: the liquid's outline, smeared and embossed, tints the image pale turquoise.
fn water(x: &[f32], liquid: &[f64], n: usize, intensity: f32) -> Vec<f32> {
    // (liquid * 255).astype(np.uint8): numpy wraps values past 255.
    let u: Vec<u8> = liquid.iter().map(|&v| (v * 255.0) as i64 as u8).collect();
    let edges = canny(&u, n, n, 50, 150);
    let inv: Vec<u8> = edges.iter().map(|&e| 255 - e).collect();
    let dist: Vec<f32> = distance_transform_l2_5(&inv, n, n)
        .into_iter()
        .map(|d| if d > 20.0 { 20.0 } else { d })
        .collect();
    let dist: Vec<u8> = box_blur_f32(&dist, n, n)
        .into_iter()
        .map(|v| v as u8)
        .collect();
    let dist = equalize_hist(&dist);
    const KER: [i32; 9] = [-2, -1, 0, -1, 1, 1, 0, 1, 2];
    let dist = filter2d_u8(&dist, n, n, &KER);
    let dist = box_blur_u8(&dist, n, n);
    let m: Vec<f32> = u
        .iter()
        .zip(&dist)
        .map(|(&a, &b)| f32::from(a) * f32::from(b))
        .collect();
    let max = m.iter().copied().fold(0.0f32, f32::max);
    let color = [175.0 / 255.0, 238.0 / 255.0, 238.0 / 255.0].map(|c: f64| c as f32);
    let mut out = x.to_vec();
    for (p, &mv) in m.iter().enumerate() {
        let mv = if max > 0.0 { mv / max } else { 0.0 } * intensity;
        for ch in 0..3 {
            out[p * 3 + ch] = x[p * 3 + ch] + mv * color[ch];
        }
    }
    out
}

/// Mud: where the liquid is thick, the image fades to brown.
fn mud(x: &[f32], liquid: &Img, thr: f64, intensity: f64) -> Vec<f32> {
    let mask = Img {
        data: liquid
            .data
            .iter()
            .map(|&v| if v > thr { 1.0 } else { 0.0 })
            .collect(),
        ..*liquid
    };
    let m = filters::gaussian_filter_f32(&mask, intensity, Border::Nearest, 4.0);
    let color = [63.0 / 255.0, 42.0 / 255.0, 20.0 / 255.0].map(|c: f64| c as f32);
    let mut out = x.to_vec();
    for (p, &mv) in m.data.iter().enumerate() {
        let mv = mv as f32;
        let mv = if mv < 0.8 { 0.0 } else { mv };
        for ch in 0..3 {
            out[p * 3 + ch] = x[p * 3 + ch] * (1.0 - mv) + color[ch] * mv;
        }
    }
    out
}

/// OpenCV `Canny(img, low, high)` (aperture 3, L1 gradient): 3×3 Sobel with replicated borders,
/// `|dx| + |dy|`, non-maximum suppression in four directions split at tan 22.5° (OpenCV's
/// fixed-point test), then hysteresis from pixels above `high` through 8-connected pixels
/// above `low`. 255 on edges.
fn canny(src: &[u8], h: usize, w: usize, low: i32, high: i32) -> Vec<u8> {
    let b = Border::Nearest;
    let at = |y: isize, x: isize| i32::from(src[b.index(y, h) * w + b.index(x, w)]);
    let mut dx = vec![0i32; h * w];
    let mut dy = vec![0i32; h * w];
    let mut mag = vec![0i32; (h + 2) * (w + 2)];
    for y in 0..h as isize {
        for x in 0..w as isize {
            let gx = (at(y - 1, x + 1) + 2 * at(y, x + 1) + at(y + 1, x + 1))
                - (at(y - 1, x - 1) + 2 * at(y, x - 1) + at(y + 1, x - 1));
            let gy = (at(y + 1, x - 1) + 2 * at(y + 1, x) + at(y + 1, x + 1))
                - (at(y - 1, x - 1) + 2 * at(y - 1, x) + at(y - 1, x + 1));
            let i = y as usize * w + x as usize;
            dx[i] = gx;
            dy[i] = gy;
            mag[(y as usize + 1) * (w + 2) + x as usize + 1] = gx.abs() + gy.abs();
        }
    }
    const SHIFT: i32 = 15;
    let tg22 = (0.414_213_562_373_095_05 * f64::from(1 << SHIFT) + 0.5) as i64;
    // 0: not an edge, 1: candidate (passes suppression, above low), 2: edge.
    let mut map = vec![0u8; h * w];
    let mut stack = Vec::new();
    let m_at = |y: usize, x: usize| mag[(y + 1) * (w + 2) + x + 1];
    for y in 0..h {
        for x in 0..w {
            let i = y * w + x;
            let m = m_at(y, x);
            if m <= low {
                continue;
            }
            let (xs, ys) = (dx[i], dy[i]);
            let ax = i64::from(xs.abs());
            let ay = i64::from(ys.abs()) << SHIFT;
            let tg22x = ax * tg22;
            // Neighbours through the padded magnitude (zero outside the image).
            let pm = |yy: isize, xx: isize| {
                mag[((y as isize + 1 + yy) as usize) * (w + 2) + (x as isize + 1 + xx) as usize]
            };
            let keep = if ay < tg22x {
                m > pm(0, -1) && m >= pm(0, 1)
            } else {
                let tg67x = tg22x + (ax << (SHIFT + 1));
                if ay > tg67x {
                    m > pm(-1, 0) && m >= pm(1, 0)
                } else {
                    let s = if (xs ^ ys) < 0 { -1 } else { 1 };
                    m > pm(-1, -s) && m > pm(1, s)
                }
            };
            if keep {
                map[i] = 1;
                if m > high {
                    map[i] = 2;
                    stack.push(i);
                }
            }
        }
    }
    while let Some(i) = stack.pop() {
        let (y, x) = ((i / w) as isize, (i % w) as isize);
        for yy in y - 1..=y + 1 {
            for xx in x - 1..=x + 1 {
                if yy < 0 || xx < 0 || yy >= h as isize || xx >= w as isize {
                    continue;
                }
                let j = yy as usize * w + xx as usize;
                if map[j] == 1 {
                    map[j] = 2;
                    stack.push(j);
                }
            }
        }
    }
    map.iter().map(|&v| if v == 2 { 255 } else { 0 }).collect()
}

/// OpenCV `distanceTransform(src, DIST_L2, 5)`: the 5×5 chamfer (1, 1.4, 2.1969) in 16-bit
/// fixed point, a forward and a backward pass, distances to the nearest zero pixel.
fn distance_transform_l2_5(src: &[u8], h: usize, w: usize) -> Vec<f32> {
    const SHIFT: u32 = 16;
    let fix = |v: f32| (f64::from(v) * f64::from(1u32 << SHIFT)).round_ties_even() as u32;
    let (hv, diag, long) = (fix(1.0), fix(1.4), fix(2.1969));
    const BORDER: usize = 2;
    let step = w + 2 * BORDER;
    let init = i32::MAX as u32;
    let mut t = vec![init; (h + 2 * BORDER) * step];
    let idx = |y: usize, x: usize| (y + BORDER) * step + x + BORDER;
    for y in 0..h {
        for x in 0..w {
            let j = idx(y, x);
            t[j] = if src[y * w + x] == 0 {
                0
            } else {
                [
                    t[j - 2 * step - 1] + long,
                    t[j - 2 * step + 1] + long,
                    t[j - step - 2] + long,
                    t[j - step - 1] + diag,
                    t[j - step] + hv,
                    t[j - step + 1] + diag,
                    t[j - step + 2] + long,
                    t[j - 1] + hv,
                ]
                .into_iter()
                .min()
                .unwrap_or(init)
            };
        }
    }
    let scale = 1.0f32 / (1u32 << SHIFT) as f32;
    let mut out = vec![0f32; h * w];
    for y in (0..h).rev() {
        for x in (0..w).rev() {
            let j = idx(y, x);
            let mut t0 = t[j];
            if t0 > hv {
                t0 = [
                    t0,
                    t[j + 2 * step + 1] + long,
                    t[j + 2 * step - 1] + long,
                    t[j + step + 2] + long,
                    t[j + step + 1] + diag,
                    t[j + step] + hv,
                    t[j + step - 1] + diag,
                    t[j + step - 2] + long,
                    t[j + 1] + hv,
                ]
                .into_iter()
                .min()
                .unwrap_or(t0);
                t[j] = t0;
            }
            out[y * w + x] = t0 as f32 * scale;
        }
    }
    out
}

/// OpenCV `blur(src, (3, 3))` on float32: sums in double, times 1/9, stored as float32;
/// `BORDER_REFLECT_101`.
fn box_blur_f32(src: &[f32], h: usize, w: usize) -> Vec<f32> {
    let b = Border::Reflect101;
    let mut out = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            let mut s = 0.0f64;
            for dy in -1..=1isize {
                let mut row = 0.0f64;
                for dx in -1..=1isize {
                    row += f64::from(
                        src[b.index(y as isize + dy, h) * w + b.index(x as isize + dx, w)],
                    );
                }
                s += row;
            }
            out[y * w + x] = (s * (1.0 / 9.0)) as f32;
        }
    }
    out
}

/// OpenCV `blur(src, (3, 3))` on 8-bit: integer sums times 1/9, rounded half to even.
fn box_blur_u8(src: &[u8], h: usize, w: usize) -> Vec<u8> {
    let b = Border::Reflect101;
    let mut out = vec![0u8; h * w];
    for y in 0..h {
        for x in 0..w {
            let mut s = 0i32;
            for dy in -1..=1isize {
                for dx in -1..=1isize {
                    s += i32::from(
                        src[b.index(y as isize + dy, h) * w + b.index(x as isize + dx, w)],
                    );
                }
            }
            out[y * w + x] = (f64::from(s) * (1.0 / 9.0))
                .round_ties_even()
                .clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// OpenCV `equalizeHist`: levels mapped through the cumulative histogram above the lowest
/// used level, scaled by `255 / (total − count[lowest])` in float32 and rounded.
fn equalize_hist(src: &[u8]) -> Vec<u8> {
    let mut hist = [0i32; 256];
    for &v in src {
        hist[usize::from(v)] += 1;
    }
    let Some(first) = hist.iter().position(|&c| c > 0) else {
        return src.to_vec();
    };
    let total = src.len() as i32;
    if hist[first] == total {
        return vec![first as u8; src.len()];
    }
    let scale = 255.0f32 / (total - hist[first]) as f32;
    let mut lut = [0u8; 256];
    let mut sum = 0i32;
    for i in first + 1..256 {
        sum += hist[i];
        lut[i] = (sum as f32 * scale).round_ties_even().clamp(0.0, 255.0) as u8;
    }
    src.iter().map(|&v| lut[usize::from(v)]).collect()
}

/// OpenCV `filter2D(src, CV_8U, kernel)` with a small integer 3×3 kernel: exact integer sums,
/// saturated to 0..255, `BORDER_REFLECT_101`.
fn filter2d_u8(src: &[u8], h: usize, w: usize, k: &[i32; 9]) -> Vec<u8> {
    let b = Border::Reflect101;
    let mut out = vec![0u8; h * w];
    for y in 0..h {
        for x in 0..w {
            let mut s = 0i32;
            for ky in 0..3 {
                for kx in 0..3 {
                    let sy = b.index(y as isize + ky as isize - 1, h);
                    let sx = b.index(x as isize + kx as isize - 1, w);
                    s += k[ky * 3 + kx] * i32::from(src[sy * w + sx]);
                }
            }
            out[y * w + x] = s.clamp(0, 255) as u8;
        }
    }
    out
}
