//! Blurs: gaussian, glass, defocus, motion and zoom.

use image::RgbImage;
use sightline_random::RandomState;

use crate::filters::{self, Border};
use crate::{to_u8, Img, SIZE};

const GAUSSIAN_SIGMA: [f64; 5] = [1.0, 2.0, 3.0, 4.0, 6.0];
/// (σ, max displacement δ, iterations).
const GLASS: [(f64, usize, usize); 5] = [
    (0.7, 1, 2),
    (0.9, 2, 1),
    (1.0, 2, 3),
    (1.1, 3, 2),
    (1.5, 4, 2),
];
/// (disk radius, alias blur σ).
const DEFOCUS: [(usize, f64); 5] = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)];
/// (radius, σ) of ImageMagick's motion blur.
const MOTION: [(f64, f64); 5] = [
    (10.0, 3.0),
    (15.0, 5.0),
    (15.0, 8.0),
    (15.0, 12.0),
    (20.0, 15.0),
];
/// `np.arange(1, stop, step)` per severity.
const ZOOM: [(f64, f64); 5] = [
    (1.11, 0.01),
    (1.16, 0.01),
    (1.21, 0.02),
    (1.26, 0.02),
    (1.31, 0.03),
];

/// skimage `gaussian(x, sigma, channel_axis=-1)`: mode `nearest`, truncate 4.
pub fn gaussian(x: &Img, s: usize) -> Img {
    filters::gaussian_filter(x, GAUSSIAN_SIGMA[s], Border::Nearest, 4.0)
}

/// Blur, then for each pixel (bottom-right to top-left, `iters` times) copy in the pixel at a
/// random offset in `[−δ, δ)` (the reference's tuple "swap" of numpy views is a copy), then
/// blur again.
pub fn glass(img: &RgbImage, s: usize, rng: &mut RandomState) -> Img {
    let (sigma, delta, iters) = GLASS[s];
    let blurred = gaussian_sigma(&Img::from_rgb(img), sigma);
    // np.uint8(gaussian(...) * 255): no clip, the blur stays in 0..1.
    let mut px: Vec<u8> = blurred.data.iter().map(|&v| to_u8(v * 255.0)).collect();
    let n = SIZE as usize;
    let d = delta as i64;
    for _ in 0..iters {
        for h in (delta + 1..=n - delta).rev() {
            for w in (delta + 1..=n - delta).rev() {
                let dx = rng.randint(-d, d);
                let dy = rng.randint(-d, d);
                let (hp, wp) = ((h as i64 + dy) as usize, (w as i64 + dx) as usize);
                let (dst, src) = ((h * n + w) * 3, (hp * n + wp) * 3);
                px.copy_within(src..src + 3, dst);
            }
        }
    }
    let x = Img {
        h: n,
        w: n,
        c: 3,
        data: px.iter().map(|&v| f64::from(v) / 255.0).collect(),
    };
    gaussian_sigma(&x, sigma)
}

fn gaussian_sigma(x: &Img, sigma: f64) -> Img {
    filters::gaussian_filter(x, sigma, Border::Nearest, 4.0)
}

/// hendrycks' `disk`: the 0/1 disk `X²+Y² ≤ r²` on `L = −8..8` (or `−r..r` past 8), divided by
/// its sum in float32, anti-aliased with OpenCV `GaussianBlur` (3×3, or 5×5 past 8).
fn disk(radius: usize, alias: f64) -> (Vec<f64>, usize) {
    let (half, ksize) = if radius <= 8 { (8, 3) } else { (radius, 5) };
    let side = 2 * half + 1;
    let r2 = (radius * radius) as isize;
    let inside: Vec<bool> = (0..side * side)
        .map(|i| {
            let (y, x) = (
                (i / side) as isize - half as isize,
                (i % side) as isize - half as isize,
            );
            x * x + y * y <= r2
        })
        .collect();
    let count = inside.iter().filter(|&&b| b).count() as f32;
    let d: Vec<f32> = inside
        .iter()
        .map(|&b| if b { 1.0 / count } else { 0.0 })
        .collect();
    let blurred = filters::cv_gaussian_blur_f32(&d, side, side, ksize, alias);
    (blurred.into_iter().map(f64::from).collect(), side)
}

/// `filter2D` of each channel with the anti-aliased disk.
pub fn defocus(x: &Img, s: usize) -> Img {
    let (radius, alias) = DEFOCUS[s];
    let (kernel, side) = disk(radius, alias);
    filters::cv_filter2d(x, &kernel, side)
}

/// ImageMagick motion blur at an angle drawn from `uniform(−45, 45)`.
pub fn motion(img: &RgbImage, s: usize, rng: &mut RandomState) -> RgbImage {
    let (radius, sigma) = MOTION[s];
    let angle = rng.uniform(-45.0, 45.0);
    let n = SIZE as usize;
    let out = filters::motion_blur(img.as_raw(), n, n, 3, radius, sigma, angle);
    RgbImage::from_raw(SIZE, SIZE, out).expect("motion_blur keeps the size")
}

/// numpy's `arange(start, stop, step)` for floats: `ceil((stop − start)/step)` values
/// `start + i·((start + step) − start)`, the exact doubles numpy fills in.
pub(crate) fn np_arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    let delta = (start + step) - start;
    (0..len).map(|i| start + i as f64 * delta).collect()
}

/// The mean of the image and its `clipped_zoom`s, all in float32 as the reference
/// (`(x/255.).astype(np.float32)`; scipy interpolates in double and stores float32).
pub fn zoom(img: &RgbImage, s: usize) -> RgbImage {
    let (stop, step) = ZOOM[s];
    let zooms = np_arange(1.0, stop, step);
    let x = Img::from_rgb(img);
    let x32: Vec<f32> = x.data.iter().map(|&v| v as f32).collect();
    let xf = Img {
        data: x32.iter().map(|&v| f64::from(v)).collect(),
        ..x
    };
    let mut out = vec![0f32; x32.len()];
    for &z in &zooms {
        let zoomed = filters::clipped_zoom(&xf, z);
        for (o, v) in out.iter_mut().zip(&zoomed.data) {
            *o += *v as f32;
        }
    }
    let k = (zooms.len() + 1) as f32;
    let buf = x32
        .iter()
        .zip(&out)
        .map(|(&a, &o)| (((a + o) / k).clamp(0.0, 1.0) * 255.0) as u8)
        .collect();
    RgbImage::from_raw(SIZE, SIZE, buf).expect("zoom keeps the size")
}
