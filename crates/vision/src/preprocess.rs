//! CLIP image preprocessing, equal to transformers' `CLIPImageProcessor` on Pillow (spec
//! llava-model.md M3/M4).
//!
//! The reference pipeline is `Image.open(path).convert('RGB')` (LLaVA / SBT), optionally LLaVA's
//! `expand2square`, then the processor: resize the shortest side to `shortest_edge` with Pillow's
//! BICUBIC on uint8, center crop, rescale by 1/255, normalise with the CLIP mean/std, CHW f32.
//!
//! What is exact and what is not:
//! * Resize + crop is bit-exact with Pillow on the same decoded pixels. It is a re-implementation
//!   of Pillow's `ImagingResample` (two separable passes, horizontal first, each rounded to uint8,
//!   22-bit fixed-point weights). `fast_image_resize`'s CatmullRom is *not* used: it follows
//!   Pillow-SIMD (weights quantised to i16 with a per-kernel precision), not the Pillow that
//!   transformers runs on, and on Pillow's own decode it was off by up to 3 grey levels on 38% of
//!   the extreme_ironing crop, 9 levels on the upscaled noise fixture and 10 levels at the edges
//!   of the line-art sketches (fast_image_resize 5.5.0 vs Pillow 13.0.0).
//! * Rescale + normalise is bit-exact with transformers (float64 rescale, cast to float32,
//!   float32 `(x - mean) / std`), done through a 256-entry table per channel.
//! * Decoding is bit-exact with Pillow for PNG, WebP (lossless, and lossy on the fixtures) and
//!   JPEG. JPEGs go through our own decoder (`preprocess/jpeg/`), which reproduces
//!   libjpeg-turbo's integer IDCT, "fancy" chroma upsampling and YCbCr→RGB tables; the `image`
//!   crate's zune-jpeg differed from Pillow by up to 4 grey levels on 10-25% of the pixels of
//!   colour photos (its IDCT and chroma upsampling round differently), jpeg-decoder 0.3 by up
//!   to 3 levels on 7-11%. JPEGs outside our decoder's scope (CMYK, 12-bit, arithmetic-coded,
//!   lossless) still go to the `image` crate. See `tests/preprocess_parity.rs` for the numbers.
//!
//! Resize and crop are fused: only the resized pixels that survive the crop are computed. Each
//! output pixel of Pillow's passes depends only on its own taps, so this gives the same bytes as
//! resizing everything and cropping, while bounding time and memory for extreme aspect ratios
//! (a 1×40 image is "resized" to 224×8960 by the processor).
//!
//! Files: `config` (the processor's settings), `decode` (files → RGB), `resample` (Pillow's
//! bicubic passes), `jpeg` (the JPEG decoder); this file is the pipeline that runs them in
//! order. Imports run one way: `decode` → `jpeg`, and this file → the rest.

use std::ops::Range;
use std::path::Path;

use image::RgbImage;

use crate::{Error, Result};

mod config;
mod decode;
mod jpeg;
mod resample;

pub use config::{AspectMode, ImageProcessorConfig, CLIP_MEAN, CLIP_STD};
pub use decode::{decode_rgb, load_rgb};
use resample::{resample_window, Canvas};

/// Largest output (in pixels) when the crop is off and the resized image is returned whole.
const MAX_OUTPUT_PIXELS: usize = 1 << 26;

/// transformers' `get_resize_output_image_size(size=shortest_edge, default_to_square=False)`:
/// the short side becomes `shortest_edge`, the long one `int(shortest_edge * long / short)`
/// (the product is taken first, then a float64 true division, then truncation; a square stays
/// square). Returns `(width, height)`.
pub fn resize_output_size(width: usize, height: usize, shortest_edge: usize) -> (usize, usize) {
    let (short, long) = if width <= height {
        (width, height)
    } else {
        (height, width)
    };
    if short == 0 {
        return (width, height);
    }
    let new_long = ((shortest_edge as u128 * long as u128) as f64 / short as f64) as usize;
    if width <= height {
        (shortest_edge, new_long)
    } else {
        (new_long, shortest_edge)
    }
}

/// Offset of transformers' `center_crop` along one axis: output index `i` takes input index
/// `i + offset`, and indices outside `0..size` are zero padding. transformers computes
/// `(size - crop) // 2` (Python floor division) when the image is large enough, and otherwise
/// pads by `ceil((crop - size) / 2)` first; both are the same floor division, which can be
/// negative.
pub fn center_crop_offset(size: usize, crop: usize) -> i64 {
    (size as i64 - crop as i64).div_euclid(2)
}

/// LLaVA's `expand2square` fill, `tuple(int(x * 255) for x in image_processor.image_mean)`:
/// (122, 116, 104) for CLIP.
pub fn pad_fill(cfg: &ImageProcessorConfig) -> [u8; 3] {
    cfg.image_mean
        .map(|m| (f64::from(m) * 255.0).clamp(0.0, 255.0) as u8)
}

/// Steps 2-6 up to the uint8 image the processor rescales: (optional `expand2square`), resize
/// the shortest side with Pillow BICUBIC, center crop. Bit-exact with Pillow + transformers on
/// the same input pixels. The result is `crop_size`² unless `do_center_crop` is off.
pub fn resize_and_crop(
    img: &RgbImage,
    cfg: &ImageProcessorConfig,
    mode: AspectMode,
) -> Result<RgbImage> {
    cfg.check()?;
    let (iw, ih) = (img.width() as usize, img.height() as usize);
    if iw == 0 || ih == 0 {
        return Err(Error::Request(format!(
            "image preprocessing: the image has zero size ({iw}x{ih})"
        )));
    }
    let canvas = match mode {
        AspectMode::Square => Canvas::plain(img),
        AspectMode::Pad => Canvas::expand2square(img, pad_fill(cfg)),
    };
    let (rw, rh) = if cfg.do_resize {
        resize_output_size(canvas.width, canvas.height, cfg.shortest_edge)
    } else {
        (canvas.width, canvas.height)
    };
    let (cw, ch, off_x, off_y) = if cfg.do_center_crop {
        let c = cfg.crop_size;
        (c, c, center_crop_offset(rw, c), center_crop_offset(rh, c))
    } else {
        (rw, rh, 0, 0)
    };
    // The part of the resized image that lands inside the crop; the rest of the crop is zeros.
    let clip = |off: i64, crop: usize, size: usize| -> Range<usize> {
        let start = off.max(0) as usize;
        let end = (off + crop as i64).clamp(0, size as i64) as usize;
        start..end.max(start)
    };

    let too_big = || {
        Error::Request(format!(
            "image preprocessing: output {cw}x{ch} is larger than {MAX_OUTPUT_PIXELS} pixels"
        ))
    };
    if cw.checked_mul(ch).is_none_or(|n| n > MAX_OUTPUT_PIXELS) {
        return Err(too_big());
    }
    let out_w = u32::try_from(cw).map_err(|_| too_big())?;
    let out_h = u32::try_from(ch).map_err(|_| too_big())?;
    let (xs, ys) = (clip(off_x, cw, rw), clip(off_y, ch, rh));
    let window = resample_window(&canvas, rw, rh, xs.clone(), ys.clone());
    let (ww, wh) = (xs.len(), ys.len());
    let buf = if ww == cw && wh == ch {
        window
    } else if ww == 0 || wh == 0 {
        vec![0u8; cw * ch * 3]
    } else {
        let mut buf = vec![0u8; cw * ch * 3];
        let dx = (xs.start as i64 - off_x) as usize;
        let dy = (ys.start as i64 - off_y) as usize;
        for (r, src) in window.chunks_exact(ww * 3).enumerate() {
            let at = ((dy + r) * cw + dx) * 3;
            buf[at..at + ww * 3].copy_from_slice(src);
        }
        buf
    };
    RgbImage::from_raw(out_w, out_h, buf).ok_or_else(too_big)
}

/// Steps 2-6 on an RGB image → CHW f32 values, length `3 * crop_size * crop_size` (or
/// `3 * H * W` of the resized image when `do_center_crop` is off).
pub fn preprocess(
    img: &RgbImage,
    cfg: &ImageProcessorConfig,
    mode: AspectMode,
) -> Result<Vec<f32>> {
    let crop = resize_and_crop(img, cfg, mode)?;
    Ok(normalize_chw(&crop, cfg))
}

/// [`load_rgb`] + [`preprocess`] → a `[3, crop, crop]` f32 tensor on `device`.
pub fn pixel_values(
    path: &Path,
    cfg: &ImageProcessorConfig,
    mode: AspectMode,
    device: &candle_core::Device,
) -> Result<candle_core::Tensor> {
    let img = load_rgb(path)?;
    let crop = resize_and_crop(&img, cfg, mode).map_err(|e| match e {
        Error::Request(msg) => Error::format(path, msg),
        e => e,
    })?;
    let (w, h) = (crop.width() as usize, crop.height() as usize);
    let values = normalize_chw(&crop, cfg);
    Ok(candle_core::Tensor::from_vec(values, (3, h, w), device)?)
}

/// The processor's value for every grey level of every channel: `rescale` in float64 cast to
/// float32, then float32 `(x - mean) / std` (transformers `rescale` then `normalize`).
pub fn normalization_table(cfg: &ImageProcessorConfig) -> [[f32; 256]; 3] {
    let scale = cfg.rescale_factor_f64();
    let mut table = [[0f32; 256]; 3];
    for (c, row) in table.iter_mut().enumerate() {
        for (v, out) in row.iter_mut().enumerate() {
            let x = if cfg.do_rescale {
                (v as f64 * scale) as f32
            } else {
                v as f32
            };
            *out = if cfg.do_normalize {
                (x - cfg.image_mean[c]) / cfg.image_std[c]
            } else {
                x
            };
        }
    }
    table
}

/// HWC uint8 → CHW f32 through [`normalization_table`].
fn normalize_chw(img: &RgbImage, cfg: &ImageProcessorConfig) -> Vec<f32> {
    let table = normalization_table(cfg);
    let n = img.width() as usize * img.height() as usize;
    let mut out = vec![0f32; 3 * n];
    let (r, rest) = out.split_at_mut(n);
    let (g, b) = rest.split_at_mut(n);
    for (i, px) in img.as_raw().chunks_exact(3).enumerate() {
        r[i] = table[0][px[0] as usize];
        g[i] = table[1][px[1] as usize];
        b[i] = table[2][px[2] as usize];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_sizes_follow_transformers() {
        // 640x427: int(224 * 640 / 427) = int(335.73...) = 335.
        assert_eq!(resize_output_size(640, 427, 224), (335, 224));
        assert_eq!(resize_output_size(427, 640, 224), (224, 335));
        assert_eq!(resize_output_size(1000, 667, 224), (335, 224));
        assert_eq!(resize_output_size(1000, 667, 336), (503, 336));
        assert_eq!(resize_output_size(570, 380, 224), (336, 224));
        assert_eq!(resize_output_size(1111, 1111, 224), (224, 224));
        assert_eq!(resize_output_size(50, 37, 224), (302, 224));
        assert_eq!(resize_output_size(600, 90, 224), (1493, 224));
        assert_eq!(resize_output_size(1, 40, 224), (224, 8960));
        // Product first, then the division: int(224 * 3 / 2) = 336 either way, but
        // 224 * (7 / 3) in floats would be 522.666..; int(224 * 7 / 3) = int(522.67) = 522.
        assert_eq!(resize_output_size(7, 3, 224), (522, 224));
    }

    #[test]
    fn crop_offsets_floor_and_pad() {
        assert_eq!(center_crop_offset(335, 224), 55);
        assert_eq!(center_crop_offset(224, 224), 0);
        assert_eq!(center_crop_offset(336, 224), 56);
        assert_eq!(center_crop_offset(225, 224), 0);
        // Smaller than the crop: padded by ceil((224 - 100) / 2) = 62 on the leading side,
        // ceil(123 / 2) = 62 for 101.
        assert_eq!(center_crop_offset(100, 224), -62);
        assert_eq!(center_crop_offset(101, 224), -62);
    }

    #[test]
    fn crop_pads_with_zeros_when_smaller() {
        let img = RgbImage::from_pixel(5, 4, image::Rgb([9, 8, 7]));
        let cfg = ImageProcessorConfig {
            do_resize: false,
            crop_size: 8,
            ..ImageProcessorConfig::clip(8)
        };
        let out = resize_and_crop(&img, &cfg, AspectMode::Square).unwrap();
        assert_eq!(out.dimensions(), (8, 8));
        // transformers pads ceil((8 - 5) / 2) = 2 columns and ceil((8 - 4) / 2) = 2 rows first.
        assert_eq!(
            (center_crop_offset(5, 8), center_crop_offset(4, 8)),
            (-2, -2)
        );
        for (x, y, px) in out.enumerate_pixels() {
            let inside = (2..7).contains(&x) && (2..6).contains(&y);
            assert_eq!(px.0, if inside { [9, 8, 7] } else { [0, 0, 0] }, "{x},{y}");
        }
    }

    #[test]
    fn absurd_sizes_are_errors_not_allocations() {
        let img = RgbImage::new(1, 100_000);
        let cfg = ImageProcessorConfig {
            do_center_crop: false,
            ..ImageProcessorConfig::clip(224)
        };
        // 224 x 22_400_000 would be 15 GB.
        assert!(resize_and_crop(&img, &cfg, AspectMode::Square).is_err());
        let cfg = ImageProcessorConfig {
            crop_size: 1 << 40,
            ..ImageProcessorConfig::clip(224)
        };
        assert!(resize_and_crop(&img, &cfg, AspectMode::Square).is_err());
        let cfg = ImageProcessorConfig {
            shortest_edge: 0,
            ..ImageProcessorConfig::clip(224)
        };
        assert!(preprocess(&img, &cfg, AspectMode::Pad).is_err());
        assert!(resize_and_crop(
            &RgbImage::new(0, 5),
            &ImageProcessorConfig::clip(224),
            AspectMode::Square
        )
        .is_err());
    }

    #[test]
    fn pad_fill_is_llava_colour() {
        assert_eq!(pad_fill(&ImageProcessorConfig::clip(224)), [122, 116, 104]);
    }

    #[test]
    fn normalization_matches_formula() {
        let cfg = ImageProcessorConfig::clip(224);
        let t = normalization_table(&cfg);
        for c in 0..3 {
            for v in [0usize, 1, 127, 128, 255] {
                let want = ((v as f64 / 255.0) as f32 - CLIP_MEAN[c]) / CLIP_STD[c];
                assert_eq!(t[c][v], want);
            }
        }
        let raw = ImageProcessorConfig {
            do_rescale: false,
            do_normalize: false,
            ..cfg
        };
        assert_eq!(normalization_table(&raw)[1][200], 200.0);
    }
}
