// Kept as one file (~630 lines): every test reads the one golden fixture through the shared case
// helpers, the whole-image report needs both the decoder and the processor halves, and a second
// test binary would relink candle for no gain.
//! Image preprocessing against transformers' CLIPImageProcessor on Pillow (spec llava-model.md
//! M3/M4). Goldens: tests/fixtures/image, written by scripts/reference/make_image_fixtures.py.
//!
//! Everything must be equal: decoding (JPEG, PNG, WebP) gives Pillow's bytes, resize + crop is
//! bit-exact with Pillow, and pixel values are bit-exact with the processor. Every case is
//! checked that way: the JPEG photos (baseline and progressive 4:2:0), PNG of every colour type,
//! lossless and lossy WebP, the procedural 640x427 pattern; and the decoders alone on a set of
//! small JPEGs covering every chroma layout, progressive and restart-interval coding
//! (`decodes_match_pillow`).
//!
//! JPEG used to be the exception: the `image` crate's zune-jpeg rounds its IDCT and its 4:2:0
//! chroma upsampling differently from libjpeg-turbo and came out up to 4 grey levels apart on
//! 10-25% of the photos' pixels (3 levels on up to 38% of the crop pixels, i.e. pixel values up
//! to 0.044 apart, where one grey level is 1/255/std ≈ 0.0146..0.0150 after normalisation).
//! `preprocess/jpeg/` now reproduces libjpeg-turbo's arithmetic instead.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use image::RgbImage;
use serde_json::Value;
use sightline_vision::preprocess::{
    center_crop_offset, decode_rgb, load_rgb, normalization_table, pixel_values, preprocess,
    resize_and_crop, resize_output_size, AspectMode, ImageProcessorConfig,
};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixtures() -> PathBuf {
    root().join("tests/fixtures/image")
}

fn golden() -> Result<Value> {
    let path = fixtures().join("golden.json");
    let text = std::fs::read_to_string(&path).with_context(|| path.display().to_string())?;
    Ok(serde_json::from_str(&text)?)
}

/// The 640x427 input of the size/offset test, the same integer formula as the fixture script.
fn pattern_640x427() -> RgbImage {
    RgbImage::from_fn(640, 427, |x, y| {
        image::Rgb([
            (x * 255 / 639) as u8,
            (y * 255 / 426) as u8,
            ((x * 7 + y * 13) % 256) as u8,
        ])
    })
}

fn case_input(case: &Value) -> Result<RgbImage> {
    let source = case["source"].as_str().context("source")?;
    if source == "procedural:pattern_640x427" {
        return Ok(pattern_640x427());
    }
    Ok(load_rgb(&root().join(source))?)
}

fn case_config(case: &Value) -> Result<(ImageProcessorConfig, AspectMode)> {
    let size = case["size"].as_u64().context("size")? as usize;
    let mode = AspectMode::parse(case["mode"].as_str().context("mode")?).context("mode value")?;
    Ok((ImageProcessorConfig::clip(size), mode))
}

fn table_from_json(g: &Value) -> Result<Vec<Vec<f32>>> {
    g["norm_table"]
        .as_array()
        .context("norm_table")?
        .iter()
        .map(|row| {
            row.as_array()
                .context("norm_table row")?
                .iter()
                .map(|v| v.as_f64().map(|v| v as f32).context("number"))
                .collect()
        })
        .collect()
}

/// Differences between two RGB images of the same size: (max per-channel difference, number of
/// differing pixels, total pixels).
fn diff(a: &RgbImage, b: &RgbImage) -> (u8, usize, usize) {
    assert_eq!(a.dimensions(), b.dimensions());
    let mut max = 0;
    let mut count = 0;
    for (p, q) in a.pixels().zip(b.pixels()) {
        let d =
            p.0.iter()
                .zip(q.0)
                .map(|(&x, y)| x.abs_diff(y))
                .max()
                .unwrap_or(0);
        max = max.max(d);
        count += usize::from(d > 0);
    }
    (max, count, a.pixels().len())
}

/// The processor's full pixel_values, rebuilt from the golden crop and the processor's own
/// per-level table (the fixture script asserts this reproduces them bit for bit).
fn processor_pixel_values(crop: &RgbImage, table: &[Vec<f32>]) -> Vec<f32> {
    let n = crop.pixels().len();
    let mut out = vec![0f32; 3 * n];
    for (i, p) in crop.pixels().enumerate() {
        for c in 0..3 {
            out[c * n + i] = table[c][p.0[c] as usize];
        }
    }
    out
}

struct CaseResult {
    name: String,
    max_level: u8,
    differing: usize,
    pixels: usize,
    max_value_diff: f32,
    /// Largest |difference| of a per-channel mean of the pixel values.
    max_mean_diff: f64,
}

/// Runs every golden case: sizes, crop offset, uint8 crop, all pixel values, strided samples and
/// channel means of the processor's output.
fn run_cases() -> Result<Vec<CaseResult>> {
    let g = golden()?;
    let table = table_from_json(&g)?;
    let mut results = Vec::new();
    for case in g["cases"].as_array().context("cases")? {
        let name = case["name"].as_str().context("name")?.to_string();
        let (cfg, mode) = case_config(case)?;
        let img = case_input(case)?;
        let decoded: Vec<u64> = serde_json::from_value(case["decoded_size"].clone())?;
        assert_eq!(
            [img.width() as u64, img.height() as u64],
            decoded[..],
            "{name}: decoded size"
        );

        // Sizes and offsets, as transformers computes them.
        let input: Vec<usize> = serde_json::from_value(case["input_size"].clone())?;
        let resized: Vec<usize> = serde_json::from_value(case["resized_size"].clone())?;
        let (rw, rh) = resize_output_size(input[0], input[1], cfg.shortest_edge);
        assert_eq!([rw, rh], resized[..], "{name}: resized size");
        assert_eq!(
            center_crop_offset(rw, cfg.crop_size),
            case["crop_left"].as_i64().context("left")?
        );
        assert_eq!(
            center_crop_offset(rh, cfg.crop_size),
            case["crop_top"].as_i64().context("top")?
        );

        let want = load_rgb(&fixtures().join(case["golden"].as_str().context("golden")?))?;
        let got = resize_and_crop(&img, &cfg, mode)?;
        assert_eq!(
            got.dimensions(),
            (cfg.crop_size as u32, cfg.crop_size as u32),
            "{name}"
        );
        let (max_level, differing, pixels) = diff(&got, &want);

        let values = preprocess(&img, &cfg, mode)?;
        let reference = processor_pixel_values(&want, &table);
        assert_eq!(values.len(), reference.len(), "{name}");
        let max_value_diff = values
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);

        // The strided samples straight from the processor's pixel_values.
        let s = cfg.crop_size;
        for sample in case["samples"].as_array().context("samples")? {
            let v: Vec<f64> = serde_json::from_value(sample.clone())?;
            let (c, y, x, value) = (v[0] as usize, v[1] as usize, v[2] as usize, v[3] as f32);
            assert_eq!(
                reference[(c * s + y) * s + x],
                value,
                "{name}: processor sample {c},{y},{x}"
            );
            let tol = if differing == 0 { 0.0 } else { max_value_diff };
            assert!(
                (values[(c * s + y) * s + x] - value).abs() <= tol,
                "{name}: sample {c},{y},{x}"
            );
        }
        // Per-channel means of the processor's pixel_values.
        let mut max_mean_diff = 0f64;
        for (c, m) in case["channel_means"]
            .as_array()
            .context("means")?
            .iter()
            .enumerate()
        {
            let m = m.as_f64().context("mean")?;
            let n = (s * s) as f64;
            let ours: f64 = values[c * s * s..(c + 1) * s * s]
                .iter()
                .map(|&v| f64::from(v))
                .sum::<f64>()
                / n;
            let theirs: f64 = reference[c * s * s..(c + 1) * s * s]
                .iter()
                .map(|&v| f64::from(v))
                .sum::<f64>()
                / n;
            assert!(
                (theirs - m).abs() < 1e-6,
                "{name}: mean of the rebuilt reference, channel {c}"
            );
            max_mean_diff = max_mean_diff.max((ours - m).abs());
        }
        results.push(CaseResult {
            name,
            max_level,
            differing,
            pixels,
            max_value_diff,
            max_mean_diff,
        });
    }
    Ok(results)
}

#[test]
fn goldens_match_the_processor() -> Result<()> {
    let results = run_cases()?;
    assert!(results.len() >= 21, "all cases ran");
    for r in &results {
        eprintln!(
            "{:<20} crop max diff {} level(s), {:>5} of {:>6} pixels differ, pixel values max |diff| {:.4}, \
             channel means max |diff| {:.1e}",
            r.name, r.max_level, r.differing, r.pixels, r.max_value_diff, r.max_mean_diff
        );
    }
    // All bit-exact, the JPEG photos included (ironing_224, ironing_224_pad, waterview_224 and
    // waterview_336 were 2-3 levels apart on 20-38% of the crop pixels with zune-jpeg).
    for r in &results {
        assert_eq!(
            (r.max_level, r.differing),
            (0, 0),
            "{}: must match Pillow exactly",
            r.name
        );
        assert_eq!(r.max_value_diff, 0.0, "{}", r.name);
        assert!(r.max_mean_diff < 1e-9, "{}", r.name);
    }
    Ok(())
}

#[test]
fn normalization_is_bit_exact() -> Result<()> {
    let g = golden()?;
    let table = table_from_json(&g)?;
    let ours = normalization_table(&ImageProcessorConfig::clip(224));
    for c in 0..3 {
        for v in 0..256 {
            assert_eq!(
                ours[c][v].to_bits(),
                table[c][v].to_bits(),
                "channel {c}, level {v}"
            );
        }
    }
    Ok(())
}

#[test]
fn solid_colour_maps_to_normalised_value() -> Result<()> {
    let g = golden()?;
    let solid = &g["solid"];
    let rgb: Vec<u8> = serde_json::from_value(solid["rgb"].clone())?;
    let want: Vec<f32> = serde_json::from_value::<Vec<f64>>(solid["values"].clone())?
        .into_iter()
        .map(|v| v as f32)
        .collect();
    let (w, h) = (
        solid["width"].as_u64().context("w")? as u32,
        solid["height"].as_u64().context("h")? as u32,
    );
    let img = RgbImage::from_pixel(w, h, image::Rgb([rgb[0], rgb[1], rgb[2]]));
    let cfg = ImageProcessorConfig::clip(224);
    for mode in [AspectMode::Square, AspectMode::Pad] {
        let values = preprocess(&img, &cfg, mode)?;
        let n = 224 * 224;
        assert_eq!(values.len(), 3 * n);
        if mode == AspectMode::Square {
            for c in 0..3 {
                let formula = (f64::from(rgb[c]) / 255.0 - f64::from(cfg.image_mean[c]))
                    / f64::from(cfg.image_std[c]);
                assert!((f64::from(want[c]) - formula).abs() < 1e-6);
                assert!(
                    values[c * n..(c + 1) * n].iter().all(|&v| v == want[c]),
                    "channel {c}"
                );
            }
        } else {
            // Padded: the middle rows are the colour, the bands above and below the fill colour.
            for c in 0..3 {
                assert_eq!(values[c * n + 112 * 224 + 112], want[c]);
            }
        }
    }
    Ok(())
}

#[test]
fn size_and_offset_of_640x427() -> Result<()> {
    assert_eq!(resize_output_size(640, 427, 224), (335, 224));
    assert_eq!(center_crop_offset(335, 224), 55);
    assert_eq!(center_crop_offset(224, 224), 0);
    // The crop is columns 55..279 of the full resize.
    let img = pattern_640x427();
    let cfg = ImageProcessorConfig::clip(224);
    let full = resize_and_crop(
        &img,
        &ImageProcessorConfig {
            do_center_crop: false,
            ..cfg.clone()
        },
        AspectMode::Square,
    )?;
    assert_eq!(full.dimensions(), (335, 224));
    let crop = resize_and_crop(&img, &cfg, AspectMode::Square)?;
    let expect = image::imageops::crop_imm(&full, 55, 0, 224, 224).to_image();
    assert_eq!(crop, expect);
    // And it is the processor's (the pattern_640x427_224 golden is checked bit-exact too).
    let golden = load_rgb(&fixtures().join("golden/pattern_640x427_224.png"))?;
    assert_eq!(crop, golden);
    Ok(())
}

#[test]
fn decodes_match_pillow() -> Result<()> {
    // Our decode vs Pillow's (libjpeg-turbo 3.2.0 / libwebp 1.6.0) before any resizing, on the
    // stored windows of Pillow's decode: 128x128 windows of extreme_ironing.jpg (baseline 4:2:0)
    // and waterview.jpg (progressive 4:2:0), the whole lossy.webp and grey.jpg, and the whole of
    // each small JPEG in inputs/jpeg (4:2:0, 4:2:2, 4:4:4, 4:1:1, 4:4:0; odd sizes, a chroma
    // plane 2 samples wide, progressive, restart intervals, optimised Huffman tables, greyscale,
    // saturating colours, Adobe RGB). All bit-exact. With zune-jpeg the photo windows were 3
    // levels apart on 41.9% / 26.6% of the pixels, and the colour JPEGs here up to 4 levels on
    // up to 48%; jpeg-decoder 0.3 gets within 3 levels, on 5-30% of the pixels.
    let g = golden()?;
    let windows = g["decode_windows"].as_array().context("decode_windows")?;
    assert!(windows.len() >= 18, "all decode windows");
    for w in windows {
        let source = w["source"].as_str().context("source")?;
        let ours = load_rgb(&root().join(source))?;
        let pil = load_rgb(&fixtures().join(w["file"].as_str().context("file")?))?;
        let (x, y) = (
            w["x"].as_u64().context("x")? as u32,
            w["y"].as_u64().context("y")? as u32,
        );
        let window = image::imageops::crop_imm(&ours, x, y, pil.width(), pil.height()).to_image();
        let (max, count, n) = diff(&window, &pil);
        assert_eq!(
            (max, count),
            (0, 0),
            "{source}: decode max diff {max}, {count} of {n} pixels differ"
        );
    }
    Ok(())
}

/// JPEGs outside our decoder's scope still load, through the `image` crate.
#[test]
fn cmyk_jpeg_falls_back_to_the_image_crate() -> Result<()> {
    let img = load_rgb(&fixtures().join("inputs/jpeg/cmyk_fallback.jpg"))?;
    assert_eq!(img.dimensions(), (40, 30));
    Ok(())
}

/// Damaged JPEGs (bytes changed, inserted, removed; the end-of-image marker kept) give an image
/// or an error naming the file, never a panic, however the damage falls. Deterministic.
#[test]
fn damaged_jpegs_never_panic() -> Result<()> {
    let dir = fixtures().join("inputs/jpeg");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.sort();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let (mut decoded, mut refused) = (0, 0);
    for path in &files {
        let original = std::fs::read(path)?;
        for _ in 0..60 {
            let mut bytes = original[..original.len() - 2].to_vec();
            for _ in 0..1 + next() % 4 {
                // Half of the damage lands in the headers (tables, frame, scan headers).
                let i = if next() % 2 == 0 {
                    next() as usize % bytes.len()
                } else {
                    next() as usize % bytes.len().min(700)
                };
                match next() % 4 {
                    0 => bytes[i] = next() as u8,
                    1 => bytes[i] ^= 1 << (next() % 8),
                    2 => {
                        bytes.drain(i..(i + 1 + next() as usize % 16).min(bytes.len()));
                    }
                    _ => bytes.insert(i, next() as u8),
                }
                if bytes.is_empty() {
                    bytes.push(0xFF);
                }
            }
            bytes.extend_from_slice(&[0xFF, 0xD9]);
            match decode_rgb(&bytes, path) {
                Ok(_) => decoded += 1,
                Err(err) => {
                    assert!(err.to_string().contains(&path.display().to_string()));
                    refused += 1;
                }
            }
        }
    }
    assert!(
        decoded > 0 && refused > 0,
        "{decoded} decoded, {refused} refused"
    );
    Ok(())
}

#[test]
fn configs_written_by_transformers_parse() -> Result<()> {
    for size in [224, 336] {
        let path = fixtures().join(format!("configs/clip-{size}/preprocessor_config.json"));
        assert_eq!(
            ImageProcessorConfig::from_file(&path)?,
            ImageProcessorConfig::clip(size)
        );
    }
    let missing = fixtures().join("configs/nope/preprocessor_config.json");
    let err = ImageProcessorConfig::from_file(&missing)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("configs/nope/preprocessor_config.json"),
        "{err}"
    );
    Ok(())
}

#[test]
fn pixel_values_tensor() -> Result<()> {
    let path = root().join("data/llava/examples/extreme_ironing.jpg");
    let cfg = ImageProcessorConfig::clip(336);
    let t = pixel_values(&path, &cfg, AspectMode::Pad, &candle_core::Device::Cpu)?;
    assert_eq!(t.dims(), &[3, 336, 336]);
    assert_eq!(t.dtype(), candle_core::DType::F32);
    let values = preprocess(&load_rgb(&path)?, &cfg, AspectMode::Pad)?;
    assert_eq!(t.flatten_all()?.to_vec1::<f32>()?, values);
    Ok(())
}

#[test]
fn extreme_aspect_ratios_stay_cheap() -> Result<()> {
    // The processor "resizes" 2x30000 to 224x3360000 before cropping; only the crop is computed.
    let tall = RgbImage::from_fn(2, 30_000, |x, y| {
        image::Rgb([x as u8 * 200, (y % 256) as u8, 9])
    });
    let cfg = ImageProcessorConfig::clip(224);
    assert_eq!(resize_output_size(2, 30_000, 224), (224, 3_360_000));
    let crop = resize_and_crop(&tall, &cfg, AspectMode::Square)?;
    assert_eq!(crop.dimensions(), (224, 224));
    // Padded, 30000x2 becomes a 30000² canvas that is never allocated; its rows of pure fill
    // colour cost one multiply per output pixel.
    let wide = RgbImage::from_fn(30_000, 2, |x, y| {
        image::Rgb([(x % 256) as u8, y as u8 * 200, 9])
    });
    let padded = resize_and_crop(&wide, &cfg, AspectMode::Pad)?;
    assert_eq!(padded.dimensions(), (224, 224));
    assert_eq!(padded.get_pixel(100, 0).0, [122, 116, 104]);
    assert_eq!(padded.get_pixel(100, 223).0, [122, 116, 104]);
    Ok(())
}

fn assert_err_names(err: sightline_vision::Error, path: &Path, what: &str) {
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "error must name {}: {msg}",
        path.display()
    );
    assert!(msg.contains(what), "error should say {what:?}: {msg}");
}

#[test]
fn bad_files_are_errors_naming_the_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cfg = ImageProcessorConfig::clip(224);
    let cpu = candle_core::Device::Cpu;

    let missing = dir.path().join("missing.jpg");
    assert_err_names(load_rgb(&missing).unwrap_err(), &missing, "cannot open");
    assert_err_names(
        pixel_values(&missing, &cfg, AspectMode::Square, &cpu).unwrap_err(),
        &missing,
        "cannot open",
    );

    let text = dir.path().join("notes.jpg");
    std::fs::write(&text, "this is a text file, not a JPEG\n")?;
    assert_err_names(load_rgb(&text).unwrap_err(), &text, "not an image");

    let empty = dir.path().join("empty.png");
    std::fs::write(&empty, b"")?;
    assert_err_names(load_rgb(&empty).unwrap_err(), &empty, "empty file");

    let jpeg = std::fs::read(root().join("data/llava/examples/extreme_ironing.jpg"))?;
    for (name, len) in [
        ("cut-half.jpg", jpeg.len() / 2),
        ("cut-header.jpg", 300),
        ("cut-magic.jpg", 3),
    ] {
        let cut = dir.path().join(name);
        std::fs::write(&cut, &jpeg[..len])?;
        match load_rgb(&cut) {
            Ok(img) => panic!(
                "{name}: truncated JPEG decoded as {}x{}",
                img.width(),
                img.height()
            ),
            Err(err) => assert_err_names(err, &cut, ""),
        }
    }

    let png = std::fs::read(fixtures().join("inputs/small_50x37.png"))?;
    let cut = dir.path().join("cut.png");
    std::fs::write(&cut, &png[..png.len() - 40])?;
    assert_err_names(load_rgb(&cut).unwrap_err(), &cut, "PNG");

    let webp = std::fs::read(fixtures().join("inputs/lossless.webp"))?;
    let cut = dir.path().join("cut.webp");
    std::fs::write(&cut, &webp[..webp.len() / 2])?;
    assert_err_names(load_rgb(&cut).unwrap_err(), &cut, "WebP");

    let gif = dir.path().join("anim.gif");
    std::fs::write(&gif, b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")?;
    assert_err_names(
        load_rgb(&gif).unwrap_err(),
        &gif,
        "expected a JPEG, PNG or WebP",
    );

    let folder = dir.path().join("folder.png");
    std::fs::create_dir(&folder)?;
    assert_err_names(load_rgb(&folder).unwrap_err(), &folder, "cannot open");
    Ok(())
}

/// Fastest of a few runs (the timings in the report are noisy on a shared machine).
fn min_time(mut f: impl FnMut() -> sightline_vision::Result<()>) -> Result<std::time::Duration> {
    let mut best = std::time::Duration::MAX;
    for _ in 0..15 {
        let t = std::time::Instant::now();
        f()?;
        best = best.min(t.elapsed());
    }
    Ok(best)
}

/// Whole-image decoder and resampler comparison against Pillow, for the report in the module
/// docs. Needs Pillow's full decodes, which are too large to commit:
///
///     python scripts/reference/make_image_fixtures.py --full-decodes /tmp/pil-decoded
///     SIGHTLINE_PIL_DECODED=/tmp/pil-decoded cargo test -p sightline-vision --release \
///         --test preprocess_parity -- --ignored --nocapture
#[test]
#[ignore = "needs SIGHTLINE_PIL_DECODED (see doc comment)"]
fn full_decode_and_resampler_report() -> Result<()> {
    let dir =
        PathBuf::from(std::env::var("SIGHTLINE_PIL_DECODED").context("SIGHTLINE_PIL_DECODED")?);
    let g = golden()?;
    for entry in std::fs::read_dir(&dir)? {
        let meta_path = entry?.path();
        if meta_path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let meta: Value = serde_json::from_str(&std::fs::read_to_string(&meta_path)?)?;
        let source = meta["source"].as_str().context("source")?;
        let (w, h) = (
            meta["width"].as_u64().context("w")? as u32,
            meta["height"].as_u64().context("h")? as u32,
        );
        let raw = std::fs::read(meta_path.with_extension("rgb"))?;
        let pil = RgbImage::from_raw(w, h, raw).context("raw size")?;
        let ours = load_rgb(&root().join(source))?;
        let decode_time = min_time(|| load_rgb(&root().join(source)).map(drop))?;
        let (max, count, n) = diff(&ours, &pil);
        eprintln!(
            "{source}: decode max diff {max}, {count} of {n} pixels ({:.1}%) differ; decode takes {:.2} ms",
            100.0 * count as f64 / n as f64,
            decode_time.as_secs_f64() * 1e3
        );
        assert_eq!((max, count), (0, 0), "{source}: the decode must be exact");
        for case in g["cases"].as_array().context("cases")? {
            if case["source"].as_str() != Some(source) {
                continue;
            }
            let (cfg, mode) = case_config(case)?;
            let want = load_rgb(&fixtures().join(case["golden"].as_str().context("golden")?))?;
            let from_pil = resize_and_crop(&pil, &cfg, mode)?;
            let resize_time = min_time(|| preprocess(&pil, &cfg, mode).map(drop))?;
            let from_ours = resize_and_crop(&ours, &cfg, mode)?;
            let (rmax, rcount, rn) = diff(&from_pil, &want);
            let (emax, ecount, _) = diff(&from_ours, &want);
            eprintln!(
                "  {}: resampler on Pillow's decode: max diff {rmax}, {rcount} of {rn} differ; \
                 end to end: max diff {emax}, {ecount} differ; preprocess takes {:.2} ms",
                case["name"].as_str().unwrap_or("?"),
                resize_time.as_secs_f64() * 1e3
            );
            assert_eq!(
                (rmax, rcount),
                (0, 0),
                "the resampler must be exact on Pillow's own decode"
            );
        }
    }
    Ok(())
}
