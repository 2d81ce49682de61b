//! Digital: brightness, contrast, saturate (skimage HSV), pixelate (Pillow BOX) and JPEG.

use image::RgbImage;

use crate::filters;
use crate::{Error, Img, Result, SIZE};

const BRIGHTNESS: [f64; 5] = [0.1, 0.2, 0.3, 0.4, 0.5];
const CONTRAST: [f64; 5] = [0.4, 0.3, 0.2, 0.1, 0.05];
/// (factor, offset) on saturation.
const SATURATE: [(f64, f64); 5] = [(0.3, 0.0), (0.1, 0.0), (2.0, 0.0), (5.0, 0.1), (20.0, 0.2)];
const PIXELATE: [f64; 5] = [0.6, 0.5, 0.4, 0.3, 0.25];
const JPEG_QUALITY: [u8; 5] = [25, 18, 15, 10, 7];

/// HSV: `V = clip(V + c, 0, 1)`.
pub fn brightness(x: &Img, s: usize) -> Img {
    let c = BRIGHTNESS[s];
    map_hsv(x, |hsv| hsv[2] = (hsv[2] + c).clamp(0.0, 1.0))
}

/// HSV: `S = clip(S·k + b, 0, 1)`.
pub fn saturate(x: &Img, s: usize) -> Img {
    let (k, b) = SATURATE[s];
    map_hsv(x, |hsv| hsv[1] = (hsv[1] * k + b).clamp(0.0, 1.0))
}

/// `(x − mean)·c + mean` with the per-channel spatial mean.
pub fn contrast(x: &Img, s: usize) -> Img {
    let c = CONTRAST[s];
    let n = (x.h * x.w) as f64;
    let means: [f64; 3] = std::array::from_fn(|ch| {
        let channel: Vec<f64> = x.data.iter().skip(ch).step_by(3).copied().collect();
        pairwise_sum(&channel) / n
    });
    let mut out = x.clone();
    for (i, v) in out.data.iter_mut().enumerate() {
        let m = means[i % 3];
        *v = (*v - m) * c + m;
    }
    out
}

/// numpy's pairwise summation (blocks of 8 accumulators below 128 elements), so the mean has
/// numpy's rounding.
fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        return a.iter().fold(-0.0, |acc, v| acc + v);
    }
    if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i + 8 <= n {
            for k in 0..8 {
                r[k] += a[i + k];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for v in &a[i..] {
            res += v;
        }
        return res;
    }
    let mut half = n / 2;
    half -= half % 8;
    pairwise_sum(&a[..half]) + pairwise_sum(&a[half..])
}

/// skimage `rgb2hsv`, `f` on the HSV triple, skimage `hsv2rgb`.
fn map_hsv(x: &Img, mut f: impl FnMut(&mut [f64; 3])) -> Img {
    let mut out = x.clone();
    for px in out.data.chunks_exact_mut(3) {
        let mut hsv = rgb2hsv([px[0], px[1], px[2]]);
        f(&mut hsv);
        px.copy_from_slice(&hsv2rgb(hsv));
    }
    out
}

/// skimage `rgb2hsv` for one pixel: later maxima win (blue over green over red), grey has
/// hue and saturation 0.
fn rgb2hsv([r, g, b]: [f64; 3]) -> [f64; 3] {
    let v = r.max(g).max(b);
    let delta = v - r.min(g).min(b);
    if delta == 0.0 {
        return [0.0, 0.0, v];
    }
    let s = delta / v;
    let mut h = 0.0;
    if r == v {
        h = (g - b) / delta;
    }
    if g == v {
        h = 2.0 + (b - r) / delta;
    }
    if b == v {
        h = 4.0 + (r - g) / delta;
    }
    [(h / 6.0).rem_euclid(1.0), s, v]
}

/// skimage `hsv2rgb` for one pixel.
fn hsv2rgb([h, s, v]: [f64; 3]) -> [f64; 3] {
    let hi = (h * 6.0).floor();
    let f = h * 6.0 - hi;
    let p = v * (1.0 - s);
    let q = v * (1.0 - f * s);
    let t = v * (1.0 - (1.0 - f) * s);
    match (hi as i64).rem_euclid(6) {
        0 => [v, t, p],
        1 => [q, v, p],
        2 => [p, v, t],
        3 => [p, q, v],
        4 => [t, p, v],
        _ => [v, p, q],
    }
}

/// Pillow BOX resize down to `int(224·c)`² and back up.
pub fn pixelate(img: &RgbImage, s: usize) -> RgbImage {
    let n = SIZE as usize;
    let small = (SIZE as f64 * PIXELATE[s]) as usize;
    let down = filters::pil_box_resize(img.as_raw(), n, n, small, small);
    let up = filters::pil_box_resize(&down, small, small, n, n);
    RgbImage::from_raw(SIZE, SIZE, up).expect("pixelate keeps the size")
}

/// Baseline JPEG bytes of a 224×224 image at `quality`, 4:2:0 chroma (Pillow's default) and
/// IJG tables: what `jpeg_compression` round-trips through, and the ImageNet-C protocol's q85
/// output of `sightline data corrupt --protocol imagenet-c`.
pub fn encode_jpeg(img: &RgbImage, quality: u8) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let mut enc = jpeg_encoder::Encoder::new(&mut buf, quality);
    enc.set_sampling_factor(jpeg_encoder::SamplingFactor::R_4_2_0);
    let (w, h) = img.dimensions();
    let side = |v: u32| {
        u16::try_from(v).map_err(|_| Error::Codec {
            what: "jpeg",
            msg: format!("{v} pixels is too large for JPEG"),
        })
    };
    enc.encode(
        img.as_raw(),
        side(w)?,
        side(h)?,
        jpeg_encoder::ColorType::Rgb,
    )
    .map_err(|e| Error::Codec {
        what: "jpeg",
        msg: e.to_string(),
    })?;
    Ok(buf)
}

/// JPEG at quality 25…7 with 4:2:0 chroma (Pillow's default) and IJG tables, decoded again.
/// Encoder and decoder are not libjpeg's, so pixels differ from Pillow's by a few levels.
pub fn jpeg(img: &RgbImage, s: usize) -> Result<RgbImage> {
    let buf = encode_jpeg(img, JPEG_QUALITY[s])?;
    let decoded =
        image::load_from_memory_with_format(&buf, image::ImageFormat::Jpeg).map_err(|e| {
            Error::Codec {
                what: "jpeg_compression",
                msg: e.to_string(),
            }
        })?;
    Ok(decoded.to_rgb8())
}
