//! A JPEG decoder that gives the same pixels as Pillow, i.e. as libjpeg-turbo with the settings
//! Pillow leaves at their defaults: the `JDCT_ISLOW` integer IDCT, "fancy" chroma upsampling and
//! table-driven YCbCr→RGB, all scans of a progressive file accumulated before the IDCT.
//!
//! Scope: 8-bit Huffman-coded JPEGs, sequential (SOF0/SOF1) and progressive (SOF2), greyscale or
//! three components (YCbCr, or RGB when an Adobe marker or the component ids say so), any
//! integral sampling factors, restart intervals. The rest (CMYK/YCCK, 12-bit, arithmetic coding,
//! lossless, hierarchical, DNL, fractional sampling) is [`JpegError::Unsupported`], for the caller
//! to hand to another decoder.
//!
//! Written from the JPEG specification (ITU T.81) and the algorithms libjpeg documents; each
//! stage reproduces libjpeg-turbo's integer arithmetic:
//! * Huffman decoding to quantised coefficients, with progressive successive approximation;
//! * the Loeffler–Ligtenberg–Moschytz IDCT with 13-bit fixed-point constants, columns first, 2
//!   extra bits kept between the passes, round-half-up descaling, level shift and clamp;
//! * chroma upsampling: triangle filters for 2×1, 2×2 and 1×2 factors (3/4 of the nearer sample,
//!   1/4 of the farther, with libjpeg's alternating rounding biases and replicated edges), plain
//!   replication for other integral factors and for components at most 2 samples wide;
//! * YCbCr→RGB through libjpeg's 16-bit fixed-point tables.
//!
//! Corrupt data is handled as libjpeg handles it where that is cheap (Pillow ignores libjpeg's
//! warnings): a bit pattern that is no Huffman code decodes as 0, data that ends early (or runs
//! into a marker) leaves the remaining blocks until the next restart marker untouched. Not
//! reproduced: libjpeg's block smoothing, which only applies to progressive files whose scans
//! never refine some low-frequency coefficients to full precision, and its resynchronisation on
//! a wrong restart marker.
//!
//! The stages, one file each, imports running one way (`decoder` uses the other three):
//! [`entropy`] (Huffman tables, bit reader, one block of a scan), [`idct`], [`color`]
//! (upsampling, YCbCr→RGB), and [`decoder`], the marker state machine that drives them.

/// Why a JPEG was not decoded.
#[derive(Debug)]
pub(super) enum JpegError {
    /// A valid file using a feature this decoder does not implement.
    Unsupported(String),
    /// A malformed file.
    Invalid(String),
}

type Result<T> = std::result::Result<T, JpegError>;

fn invalid<T>(msg: impl Into<String>) -> Result<T> {
    Err(JpegError::Invalid(msg.into()))
}

fn unsupported<T>(msg: impl Into<String>) -> Result<T> {
    Err(JpegError::Unsupported(msg.into()))
}

/// Largest image decoded, in pixels: by default Pillow's decompression-bomb error threshold
/// (2 × `Image.MAX_IMAGE_PIXELS`), above which `Image.open` refuses the file;
/// `SIGHTLINE_MAX_IMAGE_PIXELS` raises it ([`sightline_guard::limits::IMAGE_PIXELS`]).
fn max_pixels() -> u64 {
    sightline_guard::limits::IMAGE_PIXELS.get_or_default()
}

/// libjpeg's `JPEG_MAX_DIMENSION`: larger images are refused.
const MAX_DIMENSION: usize = 65_500;

/// Most scans accepted in one file (a progressive file has about 10); bounds the work a
/// malicious file can ask for, since every scan visits every block of its components.
const MAX_SCANS: usize = 1000;

mod color;
mod decoder;
mod entropy;
mod idct;

use decoder::Decoder;

/// Decodes a JPEG to packed RGB (greyscale is copied to the three channels, as Pillow's
/// `convert('RGB')` does). Returns `(width, height, pixels)`.
pub(super) fn decode(data: &[u8]) -> Result<(u32, u32, Vec<u8>)> {
    let mut d = Decoder::default();
    d.read(data)?;
    d.finish()
}
