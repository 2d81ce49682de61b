//! The ImageNet-C corruptions (Hendrycks & Dietterich, "Benchmarking Neural Network Robustness
//! to Common Corruptions and Perturbations", ICLR 2019) that Sight-Beyond-Text evaluates on:
//! hendrycks/robustness@8190fe3 `ImageNet-C/imagenet_c/imagenet_c/corruptions.py`, ported
//! function by function with the same constants (severity tables in each family's module).
//!
//! Every function takes a **224×224** RGB image, like the reference (fog, frost and snow only
//! work at that size, and zoom/glass/pixelate hard-code it); resize and crop first (the CLI uses
//! CLIP's resize-shortest-side + center-crop). Pixels go through `x/255` in float64, the
//! operation, `clip(·, 0, 1)·255` and a *truncating* cast to u8, as the reference's `np.uint8`.
//!
//! Randomness is numpy's legacy global stream ([`sightline_random::RandomState`]): `corrupt(img, c, s, seed)`
//! draws the same numbers as `np.random.seed(seed); corruption(img, s)`. Whether the pixels are
//! then equal depends on the corruption; `tests/goldens.rs` says, per corruption, whether it is
//! exact (within 1/255) or matched by statistics, and why.
//!
//! ```
//! use sightline_corrupt::{corrupt, Corruption};
//! let img = image::RgbImage::from_pixel(224, 224, image::Rgb([120, 80, 40]));
//! let out = corrupt(&img, Corruption::GaussianNoise, 3, 7).unwrap();
//! assert_eq!(out.dimensions(), (224, 224));
//! ```
#![deny(missing_docs)]

use std::fmt;
use std::str::FromStr;

use image::RgbImage;
use sightline_random::RandomState;

mod blur;
mod digital;
mod elastic;
mod filters;
mod noise;
pub mod sheet;
mod spatter;
mod weather;

pub use digital::encode_jpeg;
/// The `image` crate this API speaks (its `RgbImage`), for callers that do not depend on it.
pub use image;

/// The ImageNet-C protocol's geometry (spec E8.1, `create_c/make_imagenet_c.py`): torchvision
/// `Resize(256)` (short side to 256, bilinear with antialiasing, here the `image` crate's
/// triangle filter) then `CenterCrop(224)`. The default geometry of sightline's corruption
/// tools is CLIP's instead (bicubic short side 224, center crop), the spec's assumption for SBT.
pub fn imagenet_c_geometry(img: &RgbImage) -> RgbImage {
    let (w, h) = img.dimensions();
    let short = w.min(h).max(1);
    let (nw, nh) = if w <= h {
        (256, ((h as u64 * 256) / short as u64).max(256) as u32)
    } else {
        (((w as u64 * 256) / short as u64).max(256) as u32, 256)
    };
    let resized = image::imageops::resize(img, nw, nh, image::imageops::FilterType::Triangle);
    // torchvision: top = int(round((h - 224) / 2.0)), likewise left.
    let left = ((nw - SIZE) as f64 / 2.0).round() as u32;
    let top = ((nh - SIZE) as f64 / 2.0).round() as u32;
    image::imageops::crop_imm(&resized, left, top, SIZE, SIZE).to_image()
}

/// Side of the square images the corruptions work on.
pub const SIZE: u32 = 224;

/// What can go wrong; nothing here panics on user input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The image is not 224×224.
    #[error("image is {width}x{height}; the ImageNet-C corruptions expect {SIZE}x{SIZE} (resize and center-crop first)")]
    Size {
        /// Width of the image passed in.
        width: u32,
        /// Height of the image passed in.
        height: u32,
    },
    /// Severity outside 1..=5.
    #[error("severity {0} is out of range; expected 1 to 5")]
    Severity(u8),
    /// A name that is no corruption.
    #[error("unknown corruption {0:?}; expected one of: {names}", names = Corruption::names())]
    UnknownCorruption(String),
    /// A bundled asset or an in-memory codec failed (a bug, not bad input).
    #[error("{what}: {msg}")]
    Codec {
        /// Which step failed.
        what: &'static str,
        /// The codec's message.
        msg: String,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

macro_rules! corruptions {
    ($($variant:ident => $name:literal,)*) => {
        /// One ImageNet-C corruption, named as in hendrycks' code and SBT's `DEFAULT_IMAGE_C`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Corruption {
            $(
                #[doc = concat!("`", $name, "`")]
                $variant,
            )*
        }

        impl Corruption {
            /// Every implemented corruption, in the reference's order (the 15 standard ones, then
            /// the 4 extras).
            pub const ALL: &'static [Corruption] = &[$(Corruption::$variant,)*];

            /// The reference's name, e.g. `gaussian_noise`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Corruption::$variant => $name,)*
                }
            }
        }
    };
}

corruptions! {
    GaussianNoise => "gaussian_noise",
    ShotNoise => "shot_noise",
    ImpulseNoise => "impulse_noise",
    DefocusBlur => "defocus_blur",
    GlassBlur => "glass_blur",
    MotionBlur => "motion_blur",
    ZoomBlur => "zoom_blur",
    Snow => "snow",
    Frost => "frost",
    Fog => "fog",
    Brightness => "brightness",
    Contrast => "contrast",
    ElasticTransform => "elastic_transform",
    Pixelate => "pixelate",
    JpegCompression => "jpeg_compression",
    SpeckleNoise => "speckle_noise",
    GaussianBlur => "gaussian_blur",
    Spatter => "spatter",
    Saturate => "saturate",
}

impl Corruption {
    fn names() -> String {
        Self::ALL
            .iter()
            .map(|c| c.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for Corruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Corruption {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        if let Some(c) = Self::ALL.iter().find(|c| c.name() == s) {
            return Ok(*c);
        }
        Err(Error::UnknownCorruption(s.to_string()))
    }
}

/// Applies `c` at `severity` (1–5) to a 224×224 image, drawing random numbers as
/// `np.random.seed(seed)` followed by the reference function would (except impulse_noise,
/// whose reference draws from skimage's own PCG64 generator; see `noise::impulse`).
pub fn corrupt(img: &RgbImage, c: Corruption, severity: u8, seed: u64) -> Result<RgbImage> {
    if img.dimensions() != (SIZE, SIZE) {
        return Err(Error::Size {
            width: img.width(),
            height: img.height(),
        });
    }
    if !(1..=5).contains(&severity) {
        return Err(Error::Severity(severity));
    }
    let s = usize::from(severity - 1);
    let mut rng = RandomState::new(seed);
    let x = Img::from_rgb(img);
    let out = match c {
        Corruption::GaussianNoise => noise::gaussian(&x, s, &mut rng),
        Corruption::ShotNoise => noise::shot(&x, s, &mut rng),
        Corruption::ImpulseNoise => noise::impulse(&x, s, &mut rng),
        Corruption::SpeckleNoise => noise::speckle(&x, s, &mut rng),
        Corruption::GaussianBlur => blur::gaussian(&x, s),
        Corruption::GlassBlur => blur::glass(img, s, &mut rng),
        Corruption::DefocusBlur => blur::defocus(&x, s),
        Corruption::MotionBlur => return Ok(blur::motion(img, s, &mut rng)),
        Corruption::ZoomBlur => return Ok(blur::zoom(img, s)),
        Corruption::Snow => weather::snow(img, s, &mut rng),
        Corruption::Frost => return weather::frost(img, s, &mut rng),
        Corruption::Fog => weather::fog(&x, s, &mut rng),
        Corruption::Brightness => digital::brightness(&x, s),
        Corruption::Contrast => digital::contrast(&x, s),
        Corruption::Saturate => digital::saturate(&x, s),
        Corruption::Spatter => return Ok(spatter::spatter(img, s, &mut rng)),
        Corruption::ElasticTransform => return Ok(elastic::elastic(img, s, &mut rng)),
        Corruption::Pixelate => return Ok(digital::pixelate(img, s)),
        Corruption::JpegCompression => return digital::jpeg(img, s),
    };
    Ok(out.to_rgb())
}

/// A stable 64-bit seed for one (image, corruption, severity), so that every image gets its own
/// noise and a rerun gets the same: FNV-1a over `base`, the image's name, the corruption name
/// and the severity. The reference draws from numpy's unseeded global stream instead, which
/// cannot be reproduced at all.
pub fn derive_seed(base: u64, image_name: &str, c: Corruption, severity: u8) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = base
        .to_le_bytes()
        .into_iter()
        .chain(image_name.bytes())
        .chain([0])
        .chain(c.name().bytes())
        .chain([0, severity]);
    for b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A float image, row-major with interleaved channels (numpy's `(H, W, C)` C order), values
/// usually in 0..1.
#[derive(Clone, Debug)]
pub(crate) struct Img {
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub data: Vec<f64>,
}

impl Img {
    /// `np.array(img) / 255.`
    pub fn from_rgb(img: &RgbImage) -> Self {
        Self {
            h: img.height() as usize,
            w: img.width() as usize,
            c: 3,
            data: img.as_raw().iter().map(|&v| f64::from(v) / 255.0).collect(),
        }
    }

    pub fn zeros(h: usize, w: usize, c: usize) -> Self {
        Self {
            h,
            w,
            c,
            data: vec![0.0; h * w * c],
        }
    }

    /// `np.uint8(np.clip(x, 0, 1) * 255)`: clip, scale, truncate.
    pub fn to_rgb(&self) -> RgbImage {
        let buf = self
            .data
            .iter()
            .map(|&v| to_u8(v.clamp(0.0, 1.0) * 255.0))
            .collect();
        RgbImage::from_raw(self.w as u32, self.h as u32, buf)
            .expect("an Img built by this crate has w*h*3 values")
    }
}

/// numpy's float → uint8 cast for values already in 0..=255: truncation.
pub(crate) fn to_u8(v: f64) -> u8 {
    v as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_errors() {
        assert_eq!(Corruption::ALL.len(), 19);
        for c in Corruption::ALL {
            assert_eq!(c.name().parse::<Corruption>().ok(), Some(*c));
        }
        assert!(matches!(
            "fog2".parse::<Corruption>(),
            Err(Error::UnknownCorruption(_))
        ));
    }

    #[test]
    fn rejects_wrong_size_and_severity() {
        let small = RgbImage::new(100, 224);
        assert!(matches!(
            corrupt(&small, Corruption::Fog, 1, 0),
            Err(Error::Size {
                width: 100,
                height: 224
            })
        ));
        let img = RgbImage::new(SIZE, SIZE);
        for s in [0, 6] {
            assert!(matches!(
                corrupt(&img, Corruption::Fog, s, 0),
                Err(Error::Severity(_))
            ));
        }
    }

    /// Same seed, same output; another seed, other noise; the derived seed depends on every
    /// part.
    #[test]
    fn seeds_are_deterministic() {
        let img = RgbImage::from_pixel(SIZE, SIZE, image::Rgb([100, 150, 200]));
        let a = corrupt(&img, Corruption::GaussianNoise, 2, 5).unwrap();
        assert_eq!(a, corrupt(&img, Corruption::GaussianNoise, 2, 5).unwrap());
        assert_ne!(a, corrupt(&img, Corruption::GaussianNoise, 2, 6).unwrap());
        let base = derive_seed(0, "a.jpg", Corruption::Fog, 1);
        assert_ne!(base, derive_seed(1, "a.jpg", Corruption::Fog, 1));
        assert_ne!(base, derive_seed(0, "b.jpg", Corruption::Fog, 1));
        assert_ne!(base, derive_seed(0, "a.jpg", Corruption::Snow, 1));
        assert_ne!(base, derive_seed(0, "a.jpg", Corruption::Fog, 2));
    }

    /// The zoom lists are numpy's `arange` lengths from the spec: 12, 16, 11, 13, 11.
    #[test]
    fn zoom_factors_match_numpy_arange() {
        let lens: Vec<usize> = [
            (1.11, 0.01),
            (1.16, 0.01),
            (1.21, 0.02),
            (1.26, 0.02),
            (1.31, 0.03),
        ]
        .iter()
        .map(|&(stop, step)| blur::np_arange(1.0, stop, step).len())
        .collect();
        assert_eq!(lens, [12, 16, 11, 13, 11]);
    }
}
