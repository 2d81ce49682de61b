//! Images: every file an image task, a training record or `generate --image` names goes through
//! `load_rgb` (= read + [`decode_rgb`]) and then the CLIP preprocessing.

use std::path::Path;

use sightline_vision::preprocess::{decode_rgb, preprocess, AspectMode, ImageProcessorConfig};

/// Any image file: the format sniffing, the pixel limit, the JPEG decoder (PNG and WebP
/// through the `image` crate), Pillow's RGB conversion, then resize + crop (square and pad
/// modes) to 224 × 224 as `pixel_values` does.
pub fn image(data: &[u8]) {
    let path = Path::new("image");
    if let Ok(img) = decode_rgb(data, path) {
        let cfg = ImageProcessorConfig::clip(224);
        let _ = preprocess(&img, &cfg, AspectMode::Square);
        let _ = preprocess(&img, &cfg, AspectMode::Pad);
    }
}

/// JPEGs only: the input is given the JPEG signature (`FF D8`) when it lacks it, so that every
/// mutation reaches sightline's own decoder (`preprocess/jpeg/`) rather than the format
/// sniffing's refusal.
pub fn jpeg(data: &[u8]) {
    let path = Path::new("image.jpg");
    let owned;
    let bytes = if data.starts_with(&[0xFF, 0xD8]) {
        data
    } else {
        owned = [&[0xFF, 0xD8][..], data].concat();
        &owned
    };
    let _ = decode_rgb(bytes, path);
}
