//! Files to RGB pixels exactly as Pillow's `Image.open(path).convert('RGB')` gives them: JPEGs
//! through our libjpeg-turbo–equal decoder ([`super::jpeg`]), PNG and WebP (and the JPEGs outside
//! that decoder's scope) through the `image` crate, then Pillow's conversion rules.

use std::path::Path;

use image::{DynamicImage, ImageFormat, RgbImage};

use super::jpeg;
use crate::{Error, Result};

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
    check_pixels(bytes, format, path)?;
    if format == ImageFormat::WebP {
        check_webp_chunks(bytes, path)?;
    }
    // Why our JPEG decoder passed the file on to the `image` crate, for its error message.
    let mut passed_on = String::new();
    if format == ImageFormat::Jpeg {
        // libjpeg decodes a truncated JPEG with a warning (the missing part comes out grey), but
        // Pillow refuses it ("image file is truncated"), and so do we.
        let walk = jpeg_walk(bytes);
        if !walk.eoi {
            return Err(Error::format(
                path,
                "truncated JPEG (the data ends before the end-of-image marker); expected a complete image",
            ));
        }
        // The pixel limit's message first (the header alone), then the data's size.
        if let Some((w, h)) = walk.size {
            check_pixel_limit(w, h, path)?;
        }
        check_jpeg_data(&walk, path)?;
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
    let img = decoder_for(bytes, format).decode().map_err(|e| {
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

/// Refuses an image whose header declares more pixels than `SIGHTLINE_MAX_IMAGE_PIXELS`
/// allows, from the header alone (nothing is decoded or allocated for the pixels).
fn check_pixels(bytes: &[u8], format: ImageFormat, path: &Path) -> Result<()> {
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    reader.no_limits();
    // A header the `image` crate cannot read is left to the decoders, whose messages say
    // more (and our JPEG decoder checks the same limit on its own header).
    let Ok((w, h)) = reader.into_dimensions() else {
        return Ok(());
    };
    check_pixel_limit(u64::from(w), u64::from(h), path)
}

/// Refuses `w` × `h` pixels over `SIGHTLINE_MAX_IMAGE_PIXELS`.
fn check_pixel_limit(w: u64, h: u64, path: &Path) -> Result<()> {
    let limit = &sightline_guard::limits::IMAGE_PIXELS;
    let pixels = w * h;
    if pixels > limit.get_or_default() {
        return Err(Error::format(
            path,
            format!(
                "the image is {w}x{h} = {pixels} pixels, over the limit of {} (set {} to raise \
                 it)",
                limit.get_or_default(),
                limit.env
            ),
        ));
    }
    Ok(())
}

/// The `image` crate's decoder, allowed what [`check_pixels`] allowed (at up to 8 bytes a
/// pixel for 16-bit RGBA, plus room for the decoder's own buffers) instead of its fixed
/// 512 MiB default, so that a raised limit works.
fn decoder_for(bytes: &[u8], format: ImageFormat) -> image::ImageReader<std::io::Cursor<&[u8]>> {
    let mut reader = image::ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(
        sightline_guard::limits::IMAGE_PIXELS
            .get_or_default()
            .saturating_mul(8)
            .saturating_add(64 << 20),
    );
    reader.limits(limits);
    reader
}

/// Refuses a WebP whose chunks run past the end of the file (or of its RIFF container), as
/// libwebp does ("not enough data"; Pillow: "could not create decoder object"). The `image`
/// crate's decoder instead decodes what is there, so a truncated lossless WebP of 52 bytes came
/// out as a whole 120 × 14426 image (found by fuzzing; fuzz/regressions/image/). Bytes after
/// the RIFF container are ignored, as libwebp ignores them.
fn check_webp_chunks(b: &[u8], path: &Path) -> Result<()> {
    let word = |i: usize| -> Option<u64> {
        Some(u64::from(u32::from_le_bytes(
            b.get(i..i + 4)?.try_into().ok()?,
        )))
    };
    let truncated = |what: String| {
        Err(Error::format(
            path,
            format!(
                "truncated WebP: {what}, but the file holds {} bytes; expected a complete image",
                b.len()
            ),
        ))
    };
    let Some(riff) = word(4) else {
        return truncated("the RIFF header is cut off".into());
    };
    let end = 8 + riff;
    if end > b.len() as u64 {
        return truncated(format!("its RIFF header declares {end} bytes"));
    }
    // Chunks: a fourcc, a little-endian size, the data padded to an even length.
    let mut at = 12u64;
    while at + 8 <= end {
        let Some(size) = word(at as usize + 4) else {
            break;
        };
        let chunk_end = at + 8 + size;
        if chunk_end > end {
            let fourcc = String::from_utf8_lossy(&b[at as usize..at as usize + 4]).into_owned();
            return truncated(format!("its {fourcc:?} chunk at byte {at} declares {size} bytes of data, to byte {chunk_end}"));
        }
        at = chunk_end + (size & 1);
    }
    Ok(())
}

/// What [`jpeg_walk`] found: whether the markers run from SOI to EOI, the bytes of
/// entropy-coded data before it, and the blocks a Huffman-coded frame header declares (all
/// components, unpadded).
#[derive(Debug, Default)]
struct JpegWalk {
    eoi: bool,
    data_bytes: u64,
    huffman_blocks: Option<u64>,
    /// Width and height of the frame header, when there is one.
    size: Option<(u64, u64)>,
}

/// Walks a JPEG's markers from SOI to EOI. Segments are skipped by their length (so the EOI of
/// an EXIF thumbnail inside APP1 does not count), entropy-coded data is scanned for the next
/// real marker (`FF 00` is a stuffed byte, `FF D0..D7` restart markers). Trailing bytes after
/// EOI are fine, as in Pillow.
fn jpeg_walk(b: &[u8]) -> JpegWalk {
    let mut walk = JpegWalk::default();
    if b.len() < 4 || b[0] != 0xFF || b[1] != 0xD8 {
        return walk;
    }
    let mut i = 2;
    while i < b.len() {
        if b[i] != 0xFF {
            // Entropy-coded data (or junk, which libjpeg skips with a warning).
            walk.data_bytes += 1;
            i += 1;
            continue;
        }
        let mut j = i + 1;
        while j < b.len() && b[j] == 0xFF {
            j += 1; // fill bytes
        }
        let Some(&marker) = b.get(j) else {
            return walk;
        };
        match marker {
            0xD9 => {
                walk.eoi = true;
                return walk;
            }
            // A stuffed zero is a data byte.
            0x00 => {
                walk.data_bytes += 1;
                i = j + 1;
            }
            // Restart markers, TEM, a stray SOI: no length field.
            0x01 | 0xD0..=0xD8 => i = j + 1,
            _ => {
                let Some(len) = b.get(j + 1..j + 3) else {
                    return walk;
                };
                let len = usize::from(u16::from_be_bytes([len[0], len[1]]));
                // Baseline, extended and progressive Huffman frames, and lossless Huffman.
                let sof = b.get(j + 3..j + 1 + len).unwrap_or(&[]);
                if (0xC0..=0xC3).contains(&marker) {
                    walk.huffman_blocks = frame_blocks(sof);
                }
                if let [_, y0, y1, x0, x1, ..] = sof {
                    if matches!(marker, 0xC0..=0xCF) && !matches!(marker, 0xC4 | 0xC8 | 0xCC) {
                        walk.size = Some((
                            u64::from(u16::from_be_bytes([*x0, *x1])),
                            u64::from(u16::from_be_bytes([*y0, *y1])),
                        ));
                    }
                }
                i = j + 1 + len;
            }
        }
    }
    walk
}

/// The 8×8 blocks of all components of a frame header (after its length field): per component
/// `ceil(ceil(X·h/hmax)/8) · ceil(ceil(Y·v/vmax)/8)`, as T.81 A.2.4 sizes them.
fn frame_blocks(sof: &[u8]) -> Option<u64> {
    let [_, y0, y1, x0, x1, n, comps @ ..] = sof else {
        return None;
    };
    let (y, x) = (
        u64::from(u16::from_be_bytes([*y0, *y1])),
        u64::from(u16::from_be_bytes([*x0, *x1])),
    );
    let factors: Vec<(u64, u64)> = comps
        .chunks_exact(3)
        .take(usize::from(*n))
        .map(|c| (u64::from(c[1] >> 4).max(1), u64::from(c[1] & 15).max(1)))
        .collect();
    let hmax = factors.iter().map(|f| f.0).max()?;
    let vmax = factors.iter().map(|f| f.1).max()?;
    Some(
        factors
            .iter()
            .map(|&(h, v)| (x * h).div_ceil(hmax).div_ceil(8) * (y * v).div_ceil(vmax).div_ceil(8))
            .sum(),
    )
}

/// Refuses a Huffman-coded JPEG with less image data than its header's blocks need: every
/// block takes at least one bit (its DC code, in the first DC scan). Decoders fill the missing
/// part, so without this a 436-byte file declaring 8232 × 10782 pixels took 8 s to decode
/// (found by fuzzing; fuzz/regressions/jpeg/). Bounds the pixels decoded per byte of file.
fn check_jpeg_data(walk: &JpegWalk, path: &Path) -> Result<()> {
    match walk.huffman_blocks {
        Some(blocks) if walk.data_bytes.saturating_mul(8) < blocks => Err(Error::format(
            path,
            format!(
                "corrupt JPEG: the header declares {blocks} blocks of 8x8 pixels but the file \
                 holds {} bytes of image data, less than one bit a block; expected a complete \
                 image",
                walk.data_bytes
            ),
        )),
        _ => Ok(()),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jpeg_with_less_data_than_its_blocks_is_refused() {
        // SOI, SOF0 8232 x 10782 with Y 2x2 and Cb, Cr 1x1, an SOS, 16 bytes of data, EOI.
        let mut jpeg = vec![
            0xFF, 0xD8, 0xFF, 0xC0, 0x00, 0x11, 8, 0x2A, 0x1E, 0x20, 0x28, 3,
        ];
        jpeg.extend_from_slice(&[1, 0x22, 0, 2, 0x11, 1, 3, 0x11, 1]);
        jpeg.extend_from_slice(&[0xFF, 0xDA, 0x00, 0x0C, 3, 1, 0, 2, 0x11, 3, 0x11, 0, 63, 0]);
        jpeg.extend_from_slice(&[0x55; 16]);
        jpeg.extend_from_slice(&[0xFF, 0xD9]);
        let walk = jpeg_walk(&jpeg);
        assert!(walk.eoi);
        assert_eq!(walk.data_bytes, 16);
        // Y: 1029 x 1348 blocks; Cb, Cr: 515 x 674 each.
        assert_eq!(walk.huffman_blocks, Some(1029 * 1348 + 2 * 515 * 674));
        let e = decode_rgb(&jpeg, Path::new("big.jpg"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("big.jpg") && e.contains("less than one bit a block"),
            "{e}"
        );
    }

    /// A WebP cut short is refused like Pillow refuses it, naming the chunk; a complete one
    /// (with bytes after its container, which libwebp ignores) decodes.
    #[test]
    fn a_truncated_webp_is_refused() {
        let mut webp = Vec::new();
        image::RgbImage::from_pixel(3, 2, image::Rgb([10, 200, 30]))
            .write_to(
                &mut std::io::Cursor::new(&mut webp),
                image::ImageFormat::WebP,
            )
            .unwrap();
        let p = Path::new("x.webp");
        let mut trailing = webp.clone();
        trailing.extend_from_slice(b"junk");
        let img = decode_rgb(&trailing, p).unwrap();
        assert_eq!(
            (img.dimensions(), img.get_pixel(2, 1).0),
            ((3, 2), [10, 200, 30])
        );
        let cut = &webp[..webp.len() - 3];
        let e = decode_rgb(cut, p)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("x.webp: truncated WebP: its RIFF header declares"),
            "{e}"
        );
        // The container's size made to agree with the cut, the chunk's not.
        let mut lying = cut.to_vec();
        let riff = (lying.len() - 8) as u32;
        lying[4..8].copy_from_slice(&riff.to_le_bytes());
        let e = decode_rgb(&lying, p)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("truncated WebP: its \"VP8L\" chunk at byte 12 declares"),
            "{e}"
        );
    }

    #[test]
    fn jpeg_eoi_scan() {
        // SOI, APP1 (length 8) holding an EXIF-thumbnail-like FF D9, SOS (length 4), entropy data
        // with a stuffed FF 00 and a restart marker, then EOI.
        let mut jpeg = vec![0xFF, 0xD8, 0xFF, 0xE1, 0x00, 0x08, 1, 2, 0xFF, 0xD9, 3, 4];
        jpeg.extend_from_slice(&[
            0xFF, 0xDA, 0x00, 0x04, 9, 9, 0x12, 0xFF, 0x00, 0x34, 0xFF, 0xD0, 0x56,
        ]);
        assert!(!jpeg_walk(&jpeg).eoi, "the thumbnail's EOI is inside APP1");
        jpeg.extend_from_slice(&[0xFF, 0xD9]);
        assert!(jpeg_walk(&jpeg).eoi);
        jpeg.extend_from_slice(b"trailing junk");
        assert!(jpeg_walk(&jpeg).eoi);
        assert!(!jpeg_walk(&jpeg[..5]).eoi);
        assert!(!jpeg_walk(b"not a jpeg").eoi);
    }
}
