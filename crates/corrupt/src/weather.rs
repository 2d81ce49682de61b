//! Weather: snow, frost and fog.

use std::sync::OnceLock;

use image::RgbImage;
use sightline_random::RandomState;

use crate::filters::{self, clipped_zoom};
use crate::{to_u8, Error, Img, Result, SIZE};

/// (μ, σ, zoom, threshold, blur radius, blur σ, blend) of the snow layer.
const SNOW: [(f64, f64, f64, f64, f64, f64, f64); 5] = [
    (0.1, 0.3, 3.0, 0.5, 10.0, 4.0, 0.8),
    (0.2, 0.3, 2.0, 0.5, 12.0, 4.0, 0.7),
    (0.55, 0.3, 4.0, 0.9, 12.0, 8.0, 0.7),
    (0.55, 0.3, 4.5, 0.85, 12.0, 8.0, 0.65),
    (0.55, 0.3, 2.5, 0.85, 12.0, 12.0, 0.55),
];
/// (image weight, frost weight).
const FROST: [(f64, f64); 5] = [(1.0, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)];
/// (plasma strength, wibble decay).
const FOG: [(f64, f64); 5] = [(1.5, 2.0), (2.0, 2.0), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)];

/// The frost overlays the reference draws from (`randint(5)`: frost6 is never picked, so it is
/// not bundled into the binary). Embedded so that the binary needs no data files.
const FROST_FILES: [(&str, &[u8]); 5] = [
    (
        "frost1.png",
        include_bytes!("../../../data/corruptions/frost/frost1.png"),
    ),
    (
        "frost2.png",
        include_bytes!("../../../data/corruptions/frost/frost2.png"),
    ),
    (
        "frost3.png",
        include_bytes!("../../../data/corruptions/frost/frost3.png"),
    ),
    (
        "frost4.jpg",
        include_bytes!("../../../data/corruptions/frost/frost4.jpg"),
    ),
    (
        "frost5.jpg",
        include_bytes!("../../../data/corruptions/frost/frost5.jpg"),
    ),
];

/// A bundled frost image decoded to RGB (alpha dropped, as `cv2.imread` does), once per run.
fn frost_image(i: usize) -> Result<&'static RgbImage> {
    static DECODED: [OnceLock<std::result::Result<RgbImage, String>>; 5] =
        [const { OnceLock::new() }; 5];
    let (name, bytes) = FROST_FILES[i];
    DECODED[i]
        .get_or_init(|| {
            image::load_from_memory(bytes)
                .map(|d| d.to_rgb8())
                .map_err(|e| format!("{name}: {e}"))
        })
        .as_ref()
        .map_err(|msg| Error::Codec {
            what: "bundled frost image",
            msg: msg.clone(),
        })
}

/// `clip(a·x + b·frost_crop, 0, 255)` with a random frost image and a random 224² crop of it.
///
/// The crop is drawn as `randint(0, H − 224)` then `randint(0, W − 224)`, which is the
/// reference's stream; the JPEG overlays are decoded by `image` (zune-jpeg) rather than
/// OpenCV's libjpeg, which can differ by a few levels.
pub fn frost(img: &RgbImage, s: usize, rng: &mut RandomState) -> Result<RgbImage> {
    let (a, b) = FROST[s];
    let idx = rng.randint(0, 5) as usize;
    let f = frost_image(idx)?;
    let (fw, fh) = (f.width() as i64, f.height() as i64);
    let n = SIZE as i64;
    let top = rng.randint(0, fh - n) as u32;
    let left = rng.randint(0, fw - n) as u32;
    let mut out = RgbImage::new(SIZE, SIZE);
    for (x, y, p) in out.enumerate_pixels_mut() {
        let src = img.get_pixel(x, y);
        let fr = f.get_pixel(left + x, top + y);
        for ch in 0..3 {
            let v = a * f64::from(src[ch]) + b * f64::from(fr[ch]);
            p[ch] = to_u8(v.clamp(0.0, 255.0));
        }
    }
    Ok(out)
}

/// hendrycks' `plasma_fractal(256, decay)`: diamond-square with `wibble` starting at 100 and
/// divided by `decay` after every level, normalised to 0..1. Row-major 256×256.
fn plasma_fractal(decay: f64, rng: &mut RandomState) -> Vec<f64> {
    const N: usize = 256;
    let mut m = vec![0.0f64; N * N];
    let mut step = N;
    let mut wibble = 100.0f64;
    // `array / 4 + wibble * uniform(-wibble, wibble)`, drawn in C order over the k×k grid.
    let mut wibbled = |v: f64, wibble: f64| v / 4.0 + wibble * rng.uniform(-wibble, wibble);
    while step >= 2 {
        let k = N / step;
        let half = step / 2;
        let at = |i: usize, j: usize| i * N + j;
        // fillsquares: corners c[i][j] = m[i·step][j·step].
        let corner = |m: &[f64], i: usize, j: usize| m[at((i % k) * step, (j % k) * step)];
        let mut sq = vec![0.0; k * k];
        for i in 0..k {
            for j in 0..k {
                let a = |jj| corner(&m, i, jj) + corner(&m, i + 1, jj);
                sq[i * k + j] = a(j) + a(j + 1);
            }
        }
        for i in 0..k {
            for j in 0..k {
                m[at(i * step + half, j * step + half)] = wibbled(sq[i * k + j], wibble);
            }
        }
        // filldiamonds: dr = centres, ul = corners; np.roll(a, 1) reads index − 1.
        let dr =
            |m: &[f64], i: usize, j: usize| m[at((i % k) * step + half, (j % k) * step + half)];
        let prev = |i: usize| (i + k - 1) % k;
        let mut lt = vec![0.0; k * k];
        let mut tt = vec![0.0; k * k];
        for i in 0..k {
            for j in 0..k {
                let ldr = dr(&m, i, j) + dr(&m, prev(i), j);
                let lul = corner(&m, i, j) + corner(&m, i, j + 1);
                lt[i * k + j] = ldr + lul;
                let tdr = dr(&m, i, j) + dr(&m, i, prev(j));
                let tul = corner(&m, i, j) + corner(&m, i + 1, j);
                tt[i * k + j] = tdr + tul;
            }
        }
        for i in 0..k {
            for j in 0..k {
                m[at(i * step, j * step + half)] = wibbled(lt[i * k + j], wibble);
            }
        }
        for i in 0..k {
            for j in 0..k {
                m[at(i * step + half, j * step)] = wibbled(tt[i * k + j], wibble);
            }
        }
        step /= 2;
        wibble /= decay;
    }
    let min = m.iter().copied().fold(f64::INFINITY, f64::min);
    m.iter_mut().for_each(|v| *v -= min);
    let max = m.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    m.iter().map(|v| v / max).collect()
}

/// `x += s·plasma[:224, :224]` on every channel, then `x·max(x)/(max(x) + s)`.
pub fn fog(x: &Img, s: usize, rng: &mut RandomState) -> Img {
    let (strength, decay) = FOG[s];
    let max = x.data.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let plasma = plasma_fractal(decay, rng);
    let mut out = x.clone();
    for y in 0..x.h {
        for xx in 0..x.w {
            let p = strength * plasma[y * 256 + xx];
            for ch in 0..x.c {
                let v = &mut out.data[(y * x.w + xx) * x.c + ch];
                *v = (*v + p) * max / (max + strength);
            }
        }
    }
    out
}

/// A motion-blurred, zoomed random snow layer, added once as is and once rotated 180°, over
/// the image brightened towards its grey (all in float32 as the reference; the layer in
/// float64).
pub fn snow(img: &RgbImage, s: usize, rng: &mut RandomState) -> Img {
    let (mu, sigma, zoom, thr, radius, blur_sigma, blend) = SNOW[s];
    let n = SIZE as usize;
    let mut layer = Img::zeros(n, n, 1);
    for v in &mut layer.data {
        *v = rng.normal(mu, sigma);
    }
    let layer = clipped_zoom(&layer, zoom);
    let grey: Vec<u8> = layer
        .data
        .iter()
        .map(|&v| {
            let v = if v < thr { 0.0 } else { v };
            to_u8(v.clamp(0.0, 1.0) * 255.0)
        })
        .collect();
    let angle = rng.uniform(-135.0, -45.0);
    let blurred = filters::motion_blur(&grey, n, n, 1, radius, blur_sigma, angle);
    let layer: Vec<f64> = blurred.iter().map(|&v| f64::from(v) / 255.0).collect();

    let x: Vec<f32> = img.as_raw().iter().map(|&v| f32::from(v) / 255.0).collect();
    let (b, nb) = (blend as f32, (1.0 - blend) as f32);
    let mut out = Img::zeros(n, n, 3);
    for p in 0..n * n {
        let px = &x[p * 3..p * 3 + 3];
        // cv2.cvtColor(RGB2GRAY) on float32.
        let grey = px[0] * 0.299f32 + px[1] * 0.587f32 + px[2] * 0.114f32;
        let lift = grey * 1.5 + 0.5;
        let (snow, rotated) = (layer[p], layer[n * n - 1 - p]);
        for (o, &v) in out.data[p * 3..p * 3 + 3].iter_mut().zip(px) {
            *o = f64::from(b * v + nb * v.max(lift)) + snow + rotated;
        }
    }
    out
}
