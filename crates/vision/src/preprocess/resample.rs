//! Pillow's `ImagingResample` for BICUBIC on uint8 RGB (two separable passes, 22-bit
//! fixed-point weights, each pass rounded to uint8), evaluated only on a window of the output,
//! over a [`Canvas`] that is the image or LLaVA's `expand2square` of it.

use std::ops::Range;

use image::RgbImage;

/// The image the processor sees: the decoded image, or it pasted on a square of the fill colour
/// (`expand2square`). Rows are produced on demand so the padded square is never allocated whole.
pub(super) struct Canvas<'a> {
    img: &'a RgbImage,
    pub(super) width: usize,
    pub(super) height: usize,
    /// Where the image's top-left pixel sits on the canvas.
    left: usize,
    top: usize,
    fill: [u8; 3],
}

impl<'a> Canvas<'a> {
    pub(super) fn plain(img: &'a RgbImage) -> Self {
        let (width, height) = (img.width() as usize, img.height() as usize);
        Self {
            img,
            width,
            height,
            left: 0,
            top: 0,
            fill: [0; 3],
        }
    }

    /// LLaVA pastes at `(0, (W - H) // 2)` when wider, `((H - W) // 2, 0)` when taller, which is
    /// `((side - W) // 2, (side - H) // 2)` in both cases; a square image is returned as is.
    pub(super) fn expand2square(img: &'a RgbImage, fill: [u8; 3]) -> Self {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let side = w.max(h);
        Self {
            img,
            width: side,
            height: side,
            left: (side - w) / 2,
            top: (side - h) / 2,
            fill,
        }
    }

    /// Whether row `y` is all fill colour (above or below the pasted image).
    fn is_fill_row(&self, y: usize) -> bool {
        y < self.top || y >= self.top + self.img.height() as usize
    }

    /// Row `y` as packed RGB, borrowed from the image when it needs no padding.
    fn row<'b>(&'b self, y: usize, scratch: &'b mut Vec<u8>) -> &'b [u8] {
        let (iw, ih) = (self.img.width() as usize, self.img.height() as usize);
        let inside = y >= self.top && y < self.top + ih;
        let src = inside.then(|| &self.img.as_raw()[(y - self.top) * iw * 3..][..iw * 3]);
        match src {
            Some(src) if self.width == iw => src,
            _ => {
                scratch.clear();
                for _ in 0..self.width {
                    scratch.extend_from_slice(&self.fill);
                }
                if let Some(src) = src {
                    scratch[self.left * 3..(self.left + iw) * 3].copy_from_slice(src);
                }
                scratch
            }
        }
    }
}

/// Pillow's fixed-point precision for 8-bit resampling: 32 bits, minus 8 for the pixel value,
/// minus 2 so the overshoot of the bicubic's negative lobes cannot overflow an i32.
const PRECISION_BITS: u32 = 22;

/// Pillow's BICUBIC filter: Keys' cubic convolution with a = -0.5, support 2. The expression
/// order follows Pillow so the double results are identical.
fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point taps of one resampling pass, for the output indices of a window only.
struct Kernel {
    /// First input index and tap count, per output index of the window.
    bounds: Vec<(usize, usize)>,
    /// Taps per output index (the stride of `weights`).
    ksize: usize,
    weights: Vec<i32>,
    /// Sum of each output's integer weights (for constant rows).
    sums: Vec<i32>,
}

impl Kernel {
    /// Pillow's `precompute_coeffs` + `normalize_coeffs_8bpc` for resizing `in_size` to
    /// `out_size` (box = the whole input), restricted to the outputs in `outs`. Downscaling
    /// widens the filter by the scale (antialiasing); weights are normalised to sum 1 in double,
    /// then rounded half away from zero to 22-bit integers.
    fn pil_bicubic(in_size: usize, out_size: usize, outs: Range<usize>) -> Self {
        const SUPPORT: f64 = 2.0;
        // Pillow passes the box as C floats: (in1 - in0) is a float, then divided in double.
        let scale = f64::from(in_size as f32) / out_size as f64;
        let filterscale = scale.max(1.0);
        let support = SUPPORT * filterscale;
        let ksize = support.ceil() as usize * 2 + 1;
        let ss = 1.0 / filterscale;
        let mut bounds = Vec::with_capacity(outs.len());
        let mut sums = Vec::with_capacity(outs.len());
        let mut weights = vec![0i32; outs.len() * ksize];
        let mut k = vec![0f64; ksize];
        for (j, xx) in outs.enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            // C's (int) truncates toward zero, as `as` does.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64)
                .min(in_size as i64)
                .max(xmin as i64) as usize;
            let n = (xmax - xmin).min(ksize);
            let mut ww = 0.0;
            for (x, kx) in k[..n].iter_mut().enumerate() {
                let w = bicubic(((x + xmin) as f64 - center + 0.5) * ss);
                *kx = w;
                ww += w;
            }
            let unit = f64::from(1u32 << PRECISION_BITS);
            for (kx, out) in k[..n].iter().zip(&mut weights[j * ksize..]) {
                let w = if ww != 0.0 { kx / ww } else { *kx };
                *out = if w < 0.0 {
                    (-0.5 + w * unit) as i32
                } else {
                    (0.5 + w * unit) as i32
                };
            }
            bounds.push((xmin, n));
            sums.push(weights[j * ksize..j * ksize + n].iter().sum());
        }
        Self {
            bounds,
            ksize,
            weights,
            sums,
        }
    }

    fn taps(&self, j: usize) -> (usize, &[i32]) {
        let (start, n) = self.bounds[j];
        (start, &self.weights[j * self.ksize..j * self.ksize + n])
    }
}

/// Pillow's `clip8`: drop the fraction (arithmetic shift, so negatives floor) and saturate.
#[inline]
fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Rounding bias Pillow starts every accumulator with (0.5 in fixed point).
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// Pillow's `ImagingResampleInner` for an RGB image resized to `out_w`×`out_h`, evaluated only
/// for the output columns `xs` and rows `ys`; returns that window as packed RGB.
///
/// Like Pillow: a pass runs only when its dimension changes; with both, the horizontal pass runs
/// first over just the input rows the vertical taps read, and its uint8 result feeds the
/// vertical pass. The accumulators cannot overflow: the weights' absolute sum stays below 1.3
/// (in units of 2^22) for Keys' cubic, and 255 · 1.3 · 2^22 + 2^21 < 2^31.
pub(super) fn resample_window(
    src: &Canvas<'_>,
    out_w: usize,
    out_h: usize,
    xs: Range<usize>,
    ys: Range<usize>,
) -> Vec<u8> {
    let (ww, wh) = (xs.len(), ys.len());
    if ww == 0 || wh == 0 {
        return Vec::new();
    }
    let hk = (out_w != src.width).then(|| Kernel::pil_bicubic(src.width, out_w, xs.clone()));
    let vk = (out_h != src.height).then(|| Kernel::pil_bicubic(src.height, out_h, ys.clone()));
    // Input rows the vertical pass reads (Pillow's ybox_first..ybox_last), or the window's rows.
    let rows = match &vk {
        Some(k) => {
            let first = k.bounds[0].0;
            let (last_start, last_n) = k.bounds[k.bounds.len() - 1];
            first..(last_start + last_n).max(first)
        }
        None => ys.clone(),
    };

    // Horizontal pass (or a plain copy of the window's columns).
    let row_len = ww * 3;
    let mut tmp = vec![0u8; rows.len() * row_len];
    let mut scratch = Vec::new();
    // Input columns the horizontal taps read.
    let span = hk.as_ref().map_or(0..0, |k| {
        let (last_start, last_n) = k.bounds[k.bounds.len() - 1];
        k.bounds[0].0..last_start + last_n
    });
    // The row widened to four i32 lanes per pixel, so a tap is one vector multiply-add.
    let mut lanes: Vec<[i32; 4]> = Vec::with_capacity(span.len());
    for (y, out) in rows.clone().zip(tmp.chunks_exact_mut(row_len)) {
        let Some(k) = &hk else {
            out.copy_from_slice(&src.row(y, &mut scratch)[xs.start * 3..xs.end * 3]);
            continue;
        };
        if src.is_fill_row(y) {
            // Σ fill·w = fill·Σw in integers: the same bytes as the full sum, without the taps.
            for (px_out, &sum) in out.chunks_exact_mut(3).zip(&k.sums) {
                for (o, &f) in px_out.iter_mut().zip(&src.fill) {
                    *o = clip8(HALF + i32::from(f) * sum);
                }
            }
            continue;
        }
        let row = src.row(y, &mut scratch);
        lanes.clear();
        lanes.extend(
            row[span.start * 3..span.end * 3]
                .chunks_exact(3)
                .map(|p| [i32::from(p[0]), i32::from(p[1]), i32::from(p[2]), 0]),
        );
        for (j, px_out) in out.chunks_exact_mut(3).enumerate() {
            let (start, w) = k.taps(j);
            let mut acc = [HALF; 4];
            for (&wt, p) in w.iter().zip(&lanes[start - span.start..]) {
                for (a, &v) in acc.iter_mut().zip(p) {
                    *a += v * wt;
                }
            }
            px_out.copy_from_slice(&[clip8(acc[0]), clip8(acc[1]), clip8(acc[2])]);
        }
    }

    // Vertical pass: every byte of a row uses the same taps, so accumulate whole rows.
    let Some(k) = vk else { return tmp };
    let mut out = vec![0u8; wh * row_len];
    let mut acc = vec![0i32; row_len];
    for (j, out_row) in out.chunks_exact_mut(row_len).enumerate() {
        let (start, w) = k.taps(j);
        acc.fill(HALF);
        for (t, &wt) in w.iter().enumerate() {
            let at = (start + t - rows.start) * row_len;
            for (a, &v) in acc.iter_mut().zip(&tmp[at..at + row_len]) {
                *a += i32::from(v) * wt;
            }
        }
        for (o, &a) in out_row.iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expand2square_geometry() {
        let wide = RgbImage::new(10, 4);
        let c = Canvas::expand2square(&wide, [1, 2, 3]);
        assert_eq!((c.width, c.height, c.left, c.top), (10, 10, 0, 3));
        let tall = RgbImage::new(3, 10);
        let c = Canvas::expand2square(&tall, [1, 2, 3]);
        assert_eq!((c.width, c.height, c.left, c.top), (10, 10, 3, 0));
        let mut scratch = Vec::new();
        assert_eq!(&c.row(0, &mut scratch)[..6], &[1, 2, 3, 1, 2, 3]);
        assert_eq!(&c.row(0, &mut scratch)[9..18], &[0; 9]);
    }

    #[test]
    fn identity_resize_is_a_copy() {
        let img = RgbImage::from_fn(7, 5, |x, y| image::Rgb([x as u8 * 30, y as u8 * 50, 77]));
        let canvas = Canvas::plain(&img);
        assert_eq!(
            resample_window(&canvas, 7, 5, 0..7, 0..5),
            img.as_raw().clone()
        );
    }

    #[test]
    fn constant_image_stays_constant() {
        // Weights sum to 1 within rounding, so flat areas keep their value in both directions.
        let img = RgbImage::from_pixel(37, 23, image::Rgb([0, 128, 255]));
        for (w, h) in [(224, 224), (11, 5), (300, 17)] {
            let canvas = Canvas::plain(&img);
            let out = resample_window(&canvas, w, h, 0..w, 0..h);
            assert!(out.chunks_exact(3).all(|p| p == [0, 128, 255]), "{w}x{h}");
        }
    }

    #[test]
    fn kernel_weights_sum_to_one() {
        for (i, o) in [(1000, 335), (380, 224), (37, 224), (1, 224)] {
            let k = Kernel::pil_bicubic(i, o, 0..o);
            for j in 0..o {
                let (start, w) = k.taps(j);
                assert!(start + w.len() <= i);
                let sum: i32 = w.iter().sum();
                assert!(
                    (sum - (1 << PRECISION_BITS)).abs() <= w.len() as i32,
                    "{i}->{o} {j}"
                );
            }
        }
    }
}
