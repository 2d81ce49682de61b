//! The library filters the reference calls, ported with their border rules and summation order:
//! scipy's `gaussian_filter` / `zoom(order=1)`, OpenCV's `GaussianBlur` / `filter2D`, Pillow's
//! BOX resize and ImageMagick's motion blur (through the spec's port).

use crate::Img;

/// How a filter reads outside the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Border {
    /// scipy `nearest`: the edge value repeats.
    Nearest,
    /// OpenCV `BORDER_REFLECT_101`: `gfedcb|abcdefgh|gfedcba` (edge not repeated).
    Reflect101,
    /// scipy `reflect`: `dcba|abcd|dcba` (edge repeated), periodic with period 2n however far
    /// out (a σ = 171 kernel reaches 512 pixels past a 224 image).
    Reflect,
}

impl Border {
    /// Maps any index to one inside `0..n`.
    pub fn index(self, i: isize, n: usize) -> usize {
        let n = n as isize;
        match self {
            Border::Nearest => i.clamp(0, n - 1) as usize,
            Border::Reflect101 => {
                if n == 1 {
                    return 0;
                }
                let period = 2 * (n - 1);
                let i = i.rem_euclid(period);
                (if i < n { i } else { period - i }) as usize
            }
            Border::Reflect => {
                let i = i.rem_euclid(2 * n);
                (if i < n { i } else { 2 * n - 1 - i }) as usize
            }
        }
    }
}

/// scipy's `_gaussian_kernel1d(sigma, 0, radius)` with `radius = int(truncate·σ + 0.5)`:
/// returns the weights from the centre outwards (`w[0]` is the centre).
fn scipy_gaussian_half(sigma: f64, truncate: f64) -> Vec<f64> {
    let radius = (truncate * sigma + 0.5) as isize;
    let full: Vec<f64> = (-radius..=radius)
        .map(|x| (-0.5 / (sigma * sigma) * (x * x) as f64).exp())
        .collect();
    let sum: f64 = full.iter().sum();
    full[radius as usize..].iter().map(|w| w / sum).collect()
}

/// scipy `gaussian_filter(x, sigma=(σ, σ, 0), mode, truncate)`, i.e. skimage `gaussian` with a
/// channel axis: a 1-D correlation along rows, then along columns, in float64. scipy's
/// `correlate1d` sums a symmetric kernel as `c·w0 + Σ_{j=r..1} (x[−j] + x[+j])·w_j`; so does
/// this, so the rounding matches too.
pub fn gaussian_filter(x: &Img, sigma: f64, border: Border, truncate: f64) -> Img {
    let half = scipy_gaussian_half(sigma, truncate);
    let axis0 = correlate_axis(x, &half, border, true);
    correlate_axis(&axis0, &half, border, false)
}

/// [`gaussian_filter`] on float32 data, as scipy runs it with a float32 output array: each
/// axis pass is computed in float64 and stored as float32.
pub fn gaussian_filter_f32(x: &Img, sigma: f64, border: Border, truncate: f64) -> Img {
    let half = scipy_gaussian_half(sigma, truncate);
    let round = |mut img: Img| {
        img.data.iter_mut().for_each(|v| *v = f64::from(*v as f32));
        img
    };
    let axis0 = round(correlate_axis(x, &half, border, true));
    round(correlate_axis(&axis0, &half, border, false))
}

fn correlate_axis(x: &Img, half: &[f64], border: Border, along_rows: bool) -> Img {
    let (h, w, c) = (x.h, x.w, x.c);
    let r = half.len() as isize - 1;
    let mut out = Img::zeros(h, w, c);
    let (n, other) = if along_rows { (h, w) } else { (w, h) };
    let at = |i: usize, o: usize, ch: usize| {
        if along_rows {
            (i * w + o) * c + ch
        } else {
            (o * w + i) * c + ch
        }
    };
    let mut line = vec![0.0; n + 2 * r as usize];
    for o in 0..other {
        for ch in 0..c {
            for (k, v) in line.iter_mut().enumerate() {
                *v = x.data[at(border.index(k as isize - r, n), o, ch)];
            }
            for i in 0..n {
                let centre = i + r as usize;
                let mut acc = line[centre] * half[0];
                for j in (1..=r as usize).rev() {
                    acc += (line[centre - j] + line[centre + j]) * half[j];
                }
                out.data[at(i, o, ch)] = acc;
            }
        }
    }
    out
}

/// `scipy.ndimage.zoom(img, (z, z, 1), order=1)` on a square `(n, n, c)` image: output side
/// `round(n·z)` (Python's half-to-even), and output index `o` reads input coordinate
/// `o·(n−1)/(out−1)` (scipy's default `grid_mode=False`, corners aligned), interpolated
/// linearly in float64. Coordinates never leave `[0, n−1]` beyond rounding, so the `constant`
/// border only ever gets weight ~0; it is treated as the edge.
pub fn zoom_linear(x: &Img, z: f64) -> Img {
    let n = x.h;
    let out_n = round_half_even(n as f64 * z);
    let scale = if out_n > 1 {
        (n as f64 - 1.0) / (out_n as f64 - 1.0)
    } else {
        0.0
    };
    // Per output index: the two input indices and the weight of the second.
    let taps: Vec<(usize, usize, f64)> = (0..out_n)
        .map(|o| {
            let cc = o as f64 * scale;
            let f = cc.floor();
            let t = cc - f;
            let i0 = (f as usize).min(n - 1);
            (i0, (i0 + 1).min(n - 1), t)
        })
        .collect();
    let c = x.c;
    let mut out = Img::zeros(out_n, out_n, c);
    for (oy, &(y0, y1, ty)) in taps.iter().enumerate() {
        for (ox, &(x0, x1, tx)) in taps.iter().enumerate() {
            for ch in 0..c {
                let px = |y: usize, xx: usize| x.data[(y * n + xx) * c + ch];
                let v = (1.0 - ty) * ((1.0 - tx) * px(y0, x0) + tx * px(y0, x1))
                    + ty * ((1.0 - tx) * px(y1, x0) + tx * px(y1, x1));
                out.data[(oy * out_n + ox) * c + ch] = v;
            }
        }
    }
    out
}

/// Python's `round()` of a non-negative float to an integer (ties to even).
fn round_half_even(v: f64) -> usize {
    let f = v.floor();
    let d = v - f;
    let r = if d > 0.5 || (d == 0.5 && f % 2.0 != 0.0) {
        f + 1.0
    } else {
        f
    };
    r as usize
}

/// hendrycks' `clipped_zoom`: crop the central `ceil(n/z)` square, zoom it by `z`, trim the
/// centre `n` back out.
pub fn clipped_zoom(x: &Img, z: f64) -> Img {
    let n = x.h;
    let ch = (n as f64 / z).ceil() as usize;
    let top = (n - ch) / 2;
    let c = x.c;
    let mut crop = Img::zeros(ch, ch, c);
    for y in 0..ch {
        let src = ((top + y) * n + top) * c;
        crop.data[y * ch * c..(y + 1) * ch * c].copy_from_slice(&x.data[src..src + ch * c]);
    }
    let zoomed = zoom_linear(&crop, z);
    let m = zoomed.h;
    let trim = m.saturating_sub(n) / 2;
    let keep = n.min(m - trim);
    let mut out = Img::zeros(keep, keep, c);
    for y in 0..keep {
        let src = ((trim + y) * m + trim) * c;
        out.data[y * keep * c..(y + 1) * keep * c]
            .copy_from_slice(&zoomed.data[src..src + keep * c]);
    }
    out
}

/// OpenCV `getGaussianKernel(ksize, sigma, CV_32F)` for σ > 0: computed in double, scaled to sum
/// 1, stored as float.
pub fn cv_gaussian_kernel(ksize: usize, sigma: f64) -> Vec<f32> {
    let scale2x = -0.5 / (sigma * sigma);
    let half = (ksize as f64 - 1.0) * 0.5;
    let k: Vec<f64> = (0..ksize)
        .map(|i| {
            let x = i as f64 - half;
            (scale2x * x * x).exp()
        })
        .collect();
    let sum: f64 = k.iter().sum();
    k.iter().map(|v| (v / sum) as f32).collect()
}

/// OpenCV `GaussianBlur(src, (k, k), σ)` on a single-channel float32 image: the separable
/// filter, rows first then columns, float32 sums, `BORDER_REFLECT_101`.
pub fn cv_gaussian_blur_f32(src: &[f32], h: usize, w: usize, ksize: usize, sigma: f64) -> Vec<f32> {
    let k = cv_gaussian_kernel(ksize, sigma);
    let r = (ksize / 2) as isize;
    let b = Border::Reflect101;
    let mut rows = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0f32;
            for (j, kj) in k.iter().enumerate() {
                acc += kj * src[y * w + b.index(x as isize + j as isize - r, w)];
            }
            rows[y * w + x] = acc;
        }
    }
    let mut out = vec![0f32; h * w];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0f32;
            for (j, kj) in k.iter().enumerate() {
                acc += kj * rows[b.index(y as isize + j as isize - r, h) * w + x];
            }
            out[y * w + x] = acc;
        }
    }
    out
}

/// OpenCV `filter2D(channel, -1, kernel)` on each channel of a float64 image: correlation
/// with the kernel anchored at its centre, `BORDER_REFLECT_101`.
pub fn cv_filter2d(x: &Img, kernel: &[f64], ksize: usize) -> Img {
    let r = (ksize / 2) as isize;
    let b = Border::Reflect101;
    let (h, w, c) = (x.h, x.w, x.c);
    let mut out = Img::zeros(h, w, c);
    // Pad once so the inner loop has no border logic.
    let (ph, pw) = (h + 2 * r as usize, w + 2 * r as usize);
    let mut padded = vec![0.0; ph * pw * c];
    for y in 0..ph {
        let sy = b.index(y as isize - r, h);
        for xx in 0..pw {
            let sx = b.index(xx as isize - r, w);
            for ch in 0..c {
                padded[(y * pw + xx) * c + ch] = x.data[(sy * w + sx) * c + ch];
            }
        }
    }
    for y in 0..h {
        for xx in 0..w {
            for ch in 0..c {
                let mut acc = 0.0;
                for ky in 0..ksize {
                    let row = ((y + ky) * pw + xx) * c + ch;
                    for kx in 0..ksize {
                        acc += kernel[ky * ksize + kx] * padded[row + kx * c];
                    }
                }
                out.data[(y * w + xx) * c + ch] = acc;
            }
        }
    }
    out
}

/// ImageMagick's `MotionBlurImage(radius, sigma, angle)` on 8-bit pixels (any number of
/// channels), as the spec ports it: a one-sided Gaussian of `2·ceil(radius)+1` taps, tap `i` at
/// offset `(ceil(i·cosθ − ½), ceil(i·sinθ − ½))`, edge pixels repeated outside the image
/// (ImageMagick's default virtual pixels), rounded half up to 8 bits (its quantum scaling).
pub fn motion_blur(
    src: &[u8],
    h: usize,
    w: usize,
    c: usize,
    radius: f64,
    sigma: f64,
    angle_deg: f64,
) -> Vec<u8> {
    let width = 2 * radius.ceil() as usize + 1;
    let mut k: Vec<f64> = (0..width)
        .map(|i| (-((i * i) as f64) / (2.0 * sigma * sigma)).exp())
        .collect();
    let sum: f64 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= sum);
    let theta = angle_deg.to_radians();
    let offsets: Vec<(isize, isize)> = (0..width)
        .map(|i| {
            let i = i as f64;
            (
                (i * theta.cos() - 0.5).ceil() as isize,
                (i * theta.sin() - 0.5).ceil() as isize,
            )
        })
        .collect();
    let mut out = vec![0u8; h * w * c];
    for y in 0..h {
        for x in 0..w {
            for ch in 0..c {
                let mut acc = 0.0;
                for (kv, &(ox, oy)) in k.iter().zip(&offsets) {
                    let sx = (x as isize + ox).clamp(0, w as isize - 1) as usize;
                    let sy = (y as isize + oy).clamp(0, h as isize - 1) as usize;
                    acc += kv * f64::from(src[(sy * w + sx) * c + ch]);
                }
                out[(y * w + x) * c + ch] = (acc + 0.5).floor().clamp(0.0, 255.0) as u8;
            }
        }
    }
    out
}

/// Pillow's `resize(size, Image.BOX)` of an 8-bit RGB image (`ImagingResample`): per axis,
/// box weights over `[center − support, center + support)` normalised in double, converted to
/// 22-bit fixed point, horizontal pass first, each pass rounded and clipped to 8 bits.
pub fn pil_box_resize(src: &[u8], w: usize, h: usize, out_w: usize, out_h: usize) -> Vec<u8> {
    let horiz = pil_box_pass(src, w, h, out_w, true);
    pil_box_pass(&horiz, out_w, h, out_h, false)
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Pillow's `precompute_coeffs` for the box filter, already in fixed point: per output index,
/// the first input index and the weights.
fn pil_box_coeffs(in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 0.5 * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as isize).max(0) as usize;
            let xmax = ((center + support + 0.5) as isize).min(in_size as isize) as usize;
            let raw: Vec<f64> = (xmin..xmax.max(xmin))
                .map(|x| {
                    let t = (x as f64 - center + 0.5) * ss;
                    if t > -0.5 && t <= 0.5 {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect();
            let ww: f64 = raw.iter().sum();
            let fixed = raw
                .iter()
                .map(|&k| {
                    let k = if ww != 0.0 { k / ww } else { k };
                    let v = k * f64::from(1u32 << PRECISION_BITS);
                    (if k < 0.0 { v - 0.5 } else { v + 0.5 }) as i32
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn pil_box_pass(src: &[u8], w: usize, h: usize, out: usize, horizontal: bool) -> Vec<u8> {
    let coeffs = pil_box_coeffs(if horizontal { w } else { h }, out);
    let (ow, oh) = if horizontal { (out, h) } else { (w, out) };
    let mut dst = vec![0u8; ow * oh * 3];
    for y in 0..oh {
        for x in 0..ow {
            let (start, k) = if horizontal { &coeffs[x] } else { &coeffs[y] };
            for ch in 0..3 {
                let mut ss: i64 = 1 << (PRECISION_BITS - 1);
                for (j, &kj) in k.iter().enumerate() {
                    let (sx, sy) = if horizontal {
                        (start + j, y)
                    } else {
                        (x, start + j)
                    };
                    ss += i64::from(src[(sy * w + sx) * 3 + ch]) * i64::from(kj);
                }
                dst[(y * ow + x) * 3 + ch] = (ss >> PRECISION_BITS).clamp(0, 255) as u8;
            }
        }
    }
    dst
}
