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
//!   JPEG. JPEGs go through our own decoder (`preprocess/jpeg.rs`), which reproduces
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

use std::ops::Range;
use std::path::Path;

use image::{DynamicImage, ImageFormat, RgbImage};

use crate::{Error, Result};

mod jpeg;

/// OpenAI CLIP's per-channel mean (`OPENAI_CLIP_MEAN` in transformers).
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// OpenAI CLIP's per-channel standard deviation (`OPENAI_CLIP_STD` in transformers). Written
/// as transformers writes it; the f32 rounding is the same as numpy's `float32` of those values.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Largest `shortest_edge` / `crop_size` accepted (CLIP towers use 224..448); keeps the output
/// allocation sane whatever a config file says.
const MAX_SIDE: usize = 16_384;
/// Largest output (in pixels) when the crop is off and the resized image is returned whole.
const MAX_OUTPUT_PIXELS: usize = 1 << 26;

/// Preprocessor settings, = HF `preprocessor_config.json` of a `CLIPImageProcessor`.
///
/// Resampling is always Pillow BICUBIC (`resample: 3`), the only value CLIP checkpoints use;
/// [`ImageProcessorConfig::from_file`] refuses any other.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageProcessorConfig {
    /// `size.shortest_edge`: the short side after resizing (the long side keeps the aspect ratio).
    pub shortest_edge: usize,
    /// Side of the square center crop.
    pub crop_size: usize,
    pub do_resize: bool,
    pub do_center_crop: bool,
    pub do_rescale: bool,
    /// Usually 1/255. Stored as f32; the standard value is mapped back to the exact float64
    /// `1/255` transformers multiplies with (otherwise 126 of 256 levels are one ulp off).
    pub rescale_factor: f32,
    pub do_normalize: bool,
    pub image_mean: [f32; 3],
    pub image_std: [f32; 3],
}

impl Default for ImageProcessorConfig {
    fn default() -> Self {
        Self::clip(224)
    }
}

impl ImageProcessorConfig {
    /// openai/clip-vit-large-patch14 settings for a given image size (224, or 336 for the
    /// `-336` tower): shortest edge and crop both `image_size`, rescale 1/255, CLIP mean/std.
    pub fn clip(image_size: usize) -> Self {
        Self {
            shortest_edge: image_size,
            crop_size: image_size,
            do_resize: true,
            do_center_crop: true,
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            image_mean: CLIP_MEAN,
            image_std: CLIP_STD,
        }
    }

    /// Parses a `preprocessor_config.json`.
    ///
    /// `CLIPImageProcessorFast` configs are accepted too: same fields, and LLaVA loads them with
    /// the (Pillow) `CLIPImageProcessor` class anyway.
    ///
    /// Accepts what transformers reads into a `CLIPImageProcessor`: `size` as an int or
    /// `{"shortest_edge": n}`, `crop_size` as an int or a square `{"height": n, "width": n}`,
    /// the `do_*` flags, `rescale_factor`, `image_mean`/`image_std` (3 numbers, or one number for
    /// all channels). Missing fields take `CLIPImageProcessor`'s defaults (= [`Self::clip`]`(224)`),
    /// unknown fields are ignored. Refused with an error naming the file and field: a processor
    /// type other than CLIP's (`image_processor_type` / `feature_extractor_type`), a fixed
    /// `{"height", "width"}` resize or a `longest_edge`, a non-square crop, `resample` other than
    /// 3 (BICUBIC), zero sizes, std of zero.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::io(
                path,
                std::io::Error::new(e.kind(), format!("cannot read preprocessor config: {e}")),
            )
        })?;
        Self::from_json_str(&text, path)
    }

    /// [`Self::from_file`] on text already read; `path` is only used in error messages.
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            Error::format(
                path,
                format!("not valid JSON (expected a preprocessor config): {e}"),
            )
        })?;
        let obj = value.as_object().ok_or_else(|| {
            Error::format(path, "expected a JSON object (a preprocessor_config.json)")
        })?;
        let bad = |field: &str, expected: &str, got: &serde_json::Value| {
            Error::format(
                path,
                format!("field `{field}`: expected {expected}, got {got}"),
            )
        };

        for (field, allowed) in [
            ("image_processor_type", "CLIPImageProcessor"),
            ("feature_extractor_type", "CLIPFeatureExtractor"),
        ] {
            if let Some(v) = obj.get(field) {
                match v.as_str() {
                    Some(s) if s == allowed || s == "CLIPImageProcessorFast" => {}
                    _ => {
                        return Err(bad(
                            field,
                            &format!("\"{allowed}\" (only CLIP preprocessing is implemented)"),
                            v,
                        ))
                    }
                }
            }
        }

        let mut cfg = Self::clip(224);
        let positive = |field: &str, v: &serde_json::Value| -> Result<usize> {
            match v.as_u64() {
                Some(n) if n > 0 => usize::try_from(n)
                    .map_err(|_| bad(field, "a positive integer that fits in memory", v)),
                _ => Err(bad(field, "a positive integer", v)),
            }
        };
        let flag = |field: &str, default: bool| -> Result<bool> {
            match obj.get(field) {
                None | Some(serde_json::Value::Null) => Ok(default),
                Some(v) => v.as_bool().ok_or_else(|| bad(field, "true or false", v)),
            }
        };

        if let Some(v) = obj.get("size") {
            cfg.shortest_edge = match v {
                serde_json::Value::Object(m) => {
                    if m.contains_key("longest_edge") || !m.contains_key("shortest_edge") {
                        return Err(bad(
                            "size",
                            "an integer or {\"shortest_edge\": n} (a fixed {\"height\", \"width\"} \
                             resize or a longest_edge limit is not CLIP's and not implemented)",
                            v,
                        ));
                    }
                    positive("size.shortest_edge", &m["shortest_edge"])?
                }
                _ => positive("size", v)?,
            };
        }
        if let Some(v) = obj.get("crop_size") {
            cfg.crop_size = match v {
                serde_json::Value::Object(m) => match (m.get("height"), m.get("width")) {
                    (Some(h), Some(w)) => {
                        let (h, w) = (
                            positive("crop_size.height", h)?,
                            positive("crop_size.width", w)?,
                        );
                        if h != w {
                            return Err(bad("crop_size", "a square crop (height == width)", v));
                        }
                        h
                    }
                    _ => {
                        return Err(bad(
                            "crop_size",
                            "an integer or {\"height\": n, \"width\": n}",
                            v,
                        ))
                    }
                },
                _ => positive("crop_size", v)?,
            };
        }
        if let Some(v) = obj.get("resample") {
            if v.as_u64() != Some(3) {
                return Err(bad(
                    "resample",
                    "3 (PIL BICUBIC, the only filter implemented)",
                    v,
                ));
            }
        }
        cfg.do_resize = flag("do_resize", cfg.do_resize)?;
        cfg.do_center_crop = flag("do_center_crop", cfg.do_center_crop)?;
        cfg.do_rescale = flag("do_rescale", cfg.do_rescale)?;
        cfg.do_normalize = flag("do_normalize", cfg.do_normalize)?;
        if let Some(v) = obj.get("rescale_factor") {
            match v.as_f64() {
                Some(x) if x.is_finite() => cfg.rescale_factor = x as f32,
                _ => return Err(bad("rescale_factor", "a number", v)),
            }
        }
        let triple = |field: &str, v: &serde_json::Value| -> Result<[f32; 3]> {
            let expected = "3 numbers (one per RGB channel) or one number";
            if let Some(x) = v.as_f64() {
                return Ok([x as f32; 3]);
            }
            match v
                .as_array()
                .map(|a| a.iter().map(|x| x.as_f64()).collect::<Vec<_>>())
            {
                Some(xs) if xs.len() == 3 && xs.iter().all(Option::is_some) => {
                    let mut out = [0f32; 3];
                    for (o, x) in out.iter_mut().zip(xs) {
                        *o = x.unwrap_or_default() as f32;
                    }
                    Ok(out)
                }
                _ => Err(bad(field, expected, v)),
            }
        };
        if let Some(v) = obj.get("image_mean") {
            cfg.image_mean = triple("image_mean", v)?;
        }
        if let Some(v) = obj.get("image_std") {
            cfg.image_std = triple("image_std", v)?;
            if cfg.image_std.iter().any(|&s| s == 0.0 || !s.is_finite()) {
                return Err(bad("image_std", "finite non-zero numbers", v));
            }
        }
        Ok(cfg)
    }

    /// The float64 factor transformers multiplies with. The config keeps an f32, but
    /// transformers rescales in float64 with the JSON's (or its default's) double `1/255`; using
    /// `(1/255f32) as f64` instead changes the float32 result by one ulp for 126 of the 256 grey
    /// levels. So the standard factor maps back to the exact double.
    fn rescale_factor_f64(&self) -> f64 {
        if self.rescale_factor == (1.0f64 / 255.0) as f32 {
            1.0 / 255.0
        } else {
            f64::from(self.rescale_factor)
        }
    }

    fn check(&self) -> Result<()> {
        for (on, name, v) in [
            (self.do_resize, "shortest_edge", self.shortest_edge),
            (self.do_center_crop, "crop_size", self.crop_size),
        ] {
            if on && !(1..=MAX_SIDE).contains(&v) {
                return Err(Error::Request(format!(
                    "image preprocessing: {name} = {v}, expected 1..={MAX_SIDE}"
                )));
            }
        }
        Ok(())
    }
}

/// How a non-square image is made square before the processor (LLaVA's `image_aspect_ratio`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AspectMode {
    /// The processor directly (resize shortest side, center crop): the SBT default.
    #[default]
    Square,
    /// LLaVA-1.5's `expand2square`: pad to a square with the mean colour, then the processor.
    Pad,
}

impl AspectMode {
    /// Parses LLaVA's `image_aspect_ratio` values `"square"` and `"pad"`. (`"anyres"` is not
    /// supported and gives `None`, like any other string.)
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "square" => Some(Self::Square),
            "pad" => Some(Self::Pad),
            _ => None,
        }
    }
}

/// Decodes a file into RGB like Pillow's `Image.open(path).convert('RGB')`.
///
/// JPEG (baseline and progressive), PNG (any colour type and depth) and WebP (lossy and
/// lossless) are read; the format comes from the file's signature, not its extension. JPEGs
/// decode to the same bytes as Pillow's libjpeg-turbo (see the module docs). The
/// conversion follows Pillow: alpha is dropped (no compositing on any background), grey is
/// copied to R, G and B, 16-bit RGB(A) and grey+alpha keep the high byte, and 16-bit grey (which
/// Pillow opens as `I;16`) is *clipped* to 255, so most 16-bit grey pixels become white, as they
/// do in Pillow. EXIF orientation is not applied (neither does `Image.open`).
///
/// Errors name the file: it cannot be opened, is empty, is not a JPEG/PNG/WebP, is
/// truncated or corrupt, or has zero width or height.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::io(
            path,
            std::io::Error::new(e.kind(), format!("cannot open image: {e}")),
        )
    })?;
    decode_rgb(&bytes, path)
}

/// [`load_rgb`] on bytes already in memory; `path` is only used in error messages.
pub fn decode_rgb(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    const EXPECTED: &str = "expected a JPEG, PNG or WebP image";
    if bytes.is_empty() {
        return Err(Error::format(
            path,
            format!("empty file (0 bytes); {EXPECTED}"),
        ));
    }
    let format = image::guess_format(bytes).map_err(|_| {
        Error::format(
            path,
            format!("not an image (unrecognised file signature); {EXPECTED}"),
        )
    })?;
    let name = match format {
        ImageFormat::Jpeg => "JPEG",
        ImageFormat::Png => "PNG",
        ImageFormat::WebP => "WebP",
        other => {
            return Err(Error::format(
                path,
                format!("unsupported image format {other:?}; {EXPECTED}"),
            ))
        }
    };
    // Why our JPEG decoder passed the file on to the `image` crate, for its error message.
    let mut passed_on = String::new();
    if format == ImageFormat::Jpeg {
        // libjpeg decodes a truncated JPEG with a warning (the missing part comes out grey), but
        // Pillow refuses it ("image file is truncated"), and so do we.
        if !jpeg_reaches_eoi(bytes) {
            return Err(Error::format(
                path,
                "truncated JPEG (the data ends before the end-of-image marker); expected a complete image",
            ));
        }
        match jpeg::decode(bytes) {
            Ok((width, height, rgb)) => {
                return RgbImage::from_raw(width, height, rgb)
                    .ok_or_else(|| Error::format(path, "decoded JPEG buffer has the wrong size"))
            }
            Err(jpeg::JpegError::Invalid(msg)) => {
                return Err(Error::format(
                    path,
                    format!("cannot decode JPEG image (corrupt or truncated?): {msg}"),
                ))
            }
            // CMYK, 12-bit, arithmetic-coded, lossless...: the `image` crate's decoder below.
            Err(jpeg::JpegError::Unsupported(why)) => passed_on = format!("{why}; "),
        }
    }
    let img = image::load_from_memory_with_format(bytes, format).map_err(|e| {
        Error::format(
            path,
            format!("cannot decode {name} image ({passed_on}corrupt or truncated?): {e}"),
        )
    })?;
    if img.width() == 0 || img.height() == 0 {
        return Err(Error::format(
            path,
            format!(
                "image has zero size ({}x{}); {EXPECTED}",
                img.width(),
                img.height()
            ),
        ));
    }
    to_rgb_like_pil(img).map_err(|msg| Error::format(path, msg))
}

/// Whether a JPEG's marker structure runs from SOI to an EOI marker. Segments are skipped by
/// their length (so the EOI of an EXIF thumbnail inside APP1 does not count), entropy-coded data
/// is scanned for the next real marker (`FF 00` is a stuffed byte, `FF D0..D7` restart markers).
/// Trailing bytes after EOI are fine, as in Pillow.
fn jpeg_reaches_eoi(b: &[u8]) -> bool {
    if b.len() < 4 || b[0] != 0xFF || b[1] != 0xD8 {
        return false;
    }
    let mut i = 2;
    while i < b.len() {
        if b[i] != 0xFF {
            // Entropy-coded data (or junk, which libjpeg skips with a warning).
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < b.len() && b[j] == 0xFF {
            j += 1; // fill bytes
        }
        let Some(&marker) = b.get(j) else {
            return false;
        };
        match marker {
            0xD9 => return true,
            // Stuffed zero, restart markers, TEM, a stray SOI: no length field.
            0x00 | 0x01 | 0xD0..=0xD8 => i = j + 1,
            _ => {
                let Some(len) = b.get(j + 1..j + 3) else {
                    return false;
                };
                i = j + 1 + usize::from(u16::from_be_bytes([len[0], len[1]]));
            }
        }
    }
    false
}

/// Pillow's `convert('RGB')` on what the `image` crate decoded (see [`load_rgb`]).
fn to_rgb_like_pil(img: DynamicImage) -> std::result::Result<RgbImage, String> {
    let (w, h) = (img.width(), img.height());
    let n = w as usize * h as usize;
    let rgb: Vec<u8> = match img {
        DynamicImage::ImageRgb8(im) => return Ok(im),
        DynamicImage::ImageRgba8(im) => rgb_from(im.as_raw(), 4, n, |v| v),
        DynamicImage::ImageLuma8(im) => grey_from(im.as_raw(), 1, n, |v| v),
        DynamicImage::ImageLumaA8(im) => grey_from(im.as_raw(), 2, n, |v| v),
        // Pillow: I;16 -> RGB saturates at 255 (it is an integer mode, not a 16-bit scale).
        DynamicImage::ImageLuma16(im) => grey_from(im.as_raw(), 1, n, |v: u16| v.min(255) as u8),
        // Pillow reads these through the "LA;16B" / "RGB;16B" / "RGBA;16B" raw modes: high byte.
        DynamicImage::ImageLumaA16(im) => grey_from(im.as_raw(), 2, n, |v: u16| (v >> 8) as u8),
        DynamicImage::ImageRgb16(im) => rgb_from(im.as_raw(), 3, n, |v: u16| (v >> 8) as u8),
        DynamicImage::ImageRgba16(im) => rgb_from(im.as_raw(), 4, n, |v: u16| (v >> 8) as u8),
        other => {
            let layout = other.color();
            return Err(format!(
                "unsupported pixel layout {layout:?}; expected 8/16-bit grey, grey+alpha, RGB(A)"
            ));
        }
    };
    RgbImage::from_raw(w, h, rgb).ok_or_else(|| "decoded buffer has the wrong size".to_string())
}

/// First three channels of each `stride`-channel pixel (drops alpha without compositing).
fn rgb_from<T: Copy>(raw: &[T], stride: usize, n: usize, to8: impl Fn(T) -> u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 3);
    for px in raw.chunks_exact(stride) {
        out.extend_from_slice(&[to8(px[0]), to8(px[1]), to8(px[2])]);
    }
    out
}

/// Grey (first channel of each `stride`-channel pixel) copied to R, G and B.
fn grey_from<T: Copy>(raw: &[T], stride: usize, n: usize, to8: impl Fn(T) -> u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * 3);
    for px in raw.chunks_exact(stride) {
        let v = to8(px[0]);
        out.extend_from_slice(&[v, v, v]);
    }
    out
}

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

/// The image the processor sees: the decoded image, or it pasted on a square of the fill colour
/// (`expand2square`). Rows are produced on demand so the padded square is never allocated whole.
struct Canvas<'a> {
    img: &'a RgbImage,
    width: usize,
    height: usize,
    /// Where the image's top-left pixel sits on the canvas.
    left: usize,
    top: usize,
    fill: [u8; 3],
}

impl<'a> Canvas<'a> {
    fn plain(img: &'a RgbImage) -> Self {
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
    fn expand2square(img: &'a RgbImage, fill: [u8; 3]) -> Self {
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
fn resample_window(
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

    fn p() -> &'static Path {
        Path::new("cfg/preprocessor_config.json")
    }

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

    #[test]
    fn jpeg_eoi_scan() {
        // SOI, APP1 (length 8) holding an EXIF-thumbnail-like FF D9, SOS (length 4), entropy data
        // with a stuffed FF 00 and a restart marker, then EOI.
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x08, 1, 2, 0xFF, 0xD9, 3, 4];
        jpeg.extend_from_slice(&[
            0xFF, 0xDA, 0x00, 0x04, 9, 9, 0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56,
        ]);
        assert!(
            !jpeg_reaches_eoi(&jpeg),
            "the thumbnail's EOI is inside APP1"
        );
        jpeg.extend_from_slice(&[0xFF, 0xD9]);
        assert!(jpeg_reaches_eoi(&jpeg));
        jpeg.extend_from_slice(b"trailing junk");
        assert!(jpeg_reaches_eoi(&jpeg));
        assert!(!jpeg_reaches_eoi(&jpeg[..5]));
        assert!(!jpeg_reaches_eoi(b"not a jpeg"));
    }

    #[test]
    fn aspect_modes_parse() {
        assert_eq!(AspectMode::parse("square"), Some(AspectMode::Square));
        assert_eq!(AspectMode::parse("pad"), Some(AspectMode::Pad));
        assert_eq!(AspectMode::parse("anyres"), None);
        assert_eq!(AspectMode::default(), AspectMode::Square);
    }

    #[test]
    fn config_old_style_clip_large() {
        // openai/clip-vit-large-patch14's preprocessor_config.json (feature-extractor era).
        let text = r#"{
          "crop_size": 224, "do_center_crop": true, "do_normalize": true, "do_resize": true,
          "feature_extractor_type": "CLIPFeatureExtractor",
          "image_mean": [0.48145466, 0.4578275, 0.40821073],
          "image_std": [0.26862954, 0.26130258, 0.27577711],
          "resample": 3, "size": 224
        }"#;
        let cfg = ImageProcessorConfig::from_json_str(text, p()).unwrap();
        assert_eq!(cfg, ImageProcessorConfig::clip(224));
    }

    #[test]
    fn config_new_style_336() {
        let text = r#"{
          "crop_size": {"height": 336, "width": 336}, "do_convert_rgb": true,
          "image_processor_type": "CLIPImageProcessor", "processor_class": "LlavaProcessor",
          "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 336}
        }"#;
        let cfg = ImageProcessorConfig::from_json_str(text, p()).unwrap();
        assert_eq!(cfg, ImageProcessorConfig::clip(336));
        assert_eq!(cfg.rescale_factor_f64(), 1.0 / 255.0);
    }

    #[test]
    fn config_errors_name_file_and_field() {
        let cases = [
            (
                r#"{"image_processor_type": "SiglipImageProcessor"}"#,
                "image_processor_type",
            ),
            (r#"{"size": {"height": 384, "width": 384}}"#, "size"),
            (
                r#"{"size": {"shortest_edge": 224, "longest_edge": 448}}"#,
                "size",
            ),
            (r#"{"size": 0}"#, "size"),
            (r#"{"size": "224"}"#, "size"),
            (
                r#"{"crop_size": {"height": 224, "width": 300}}"#,
                "crop_size",
            ),
            (r#"{"crop_size": {"height": 224}}"#, "crop_size"),
            (r#"{"resample": 2}"#, "resample"),
            (r#"{"do_resize": "yes"}"#, "do_resize"),
            (r#"{"image_mean": [0.5, 0.5]}"#, "image_mean"),
            (r#"{"image_std": [0.5, 0.0, 0.5]}"#, "image_std"),
            (r#"[1, 2]"#, "JSON object"),
            (r#"{"size": 224"#, "JSON"),
        ];
        for (text, field) in cases {
            let err = ImageProcessorConfig::from_json_str(text, p())
                .unwrap_err()
                .to_string();
            assert!(err.contains("cfg/preprocessor_config.json"), "{err}");
            assert!(err.contains(field), "{text}: {err}");
        }
    }

    #[test]
    fn config_scalar_mean_and_unknown_fields() {
        let text = r#"{"image_mean": 0.5, "image_std": [1, 1, 1], "whatever": {"x": 1}}"#;
        let cfg = ImageProcessorConfig::from_json_str(text, p()).unwrap();
        assert_eq!(cfg.image_mean, [0.5; 3]);
        assert_eq!(cfg.image_std, [1.0; 3]);
    }
}
