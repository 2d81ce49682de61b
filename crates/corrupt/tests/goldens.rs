//! Every corruption at every severity against hendrycks' functions run by
//! `scripts/reference/make_corrupt_fixtures.py` on the same 224×224 photo with the same
//! `np.random.seed`. Two kinds of check, chosen per corruption (see each test):
//!
//! * **exact**: the whole uint8 output is byte-identical to the reference's (FNV-1a 64 of its
//!   bytes in golden.json), or, for elastic_transform, the reference's top-left 72×72 window
//!   (stored as PNG) is reproduced within 1/255 per pixel and the whole image's per-channel
//!   mean is within 0.05 levels of the reference's;
//! * **statistical**: the random stream or codec cannot be reproduced, so the whole output's
//!   per-channel mean and standard deviation must be within 1% of the reference's, and the
//!   residual's (output − input) standard deviation within 5% (the spec's tolerance).

use image::RgbImage;
use serde_json::Value;
use sightline_corrupt::{corrupt, Corruption};

fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/corrupt")
}

fn golden() -> Value {
    let text = std::fs::read_to_string(fixtures().join("golden.json"))
        .expect("golden.json (run make_corrupt_fixtures.py)");
    serde_json::from_str(&text).expect("valid JSON")
}

fn input() -> RgbImage {
    image::open(fixtures().join("input.png"))
        .expect("input.png")
        .to_rgb8()
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number"))
        .collect()
}

/// Per-channel (mean, std) of `values` laid out as interleaved RGB.
fn stats(values: &[f64]) -> ([f64; 3], [f64; 3]) {
    let n = (values.len() / 3) as f64;
    let mut mean = [0.0; 3];
    let mut var = [0.0; 3];
    for (i, v) in values.iter().enumerate() {
        mean[i % 3] += v / n;
    }
    for (i, v) in values.iter().enumerate() {
        var[i % 3] += (v - mean[i % 3]).powi(2) / n;
    }
    (mean, var.map(f64::sqrt))
}

struct Case {
    severity: u8,
    out: RgbImage,
    golden: Value,
}

/// Runs `c` at severities 1–5 with the reference's seeds.
fn run(c: Corruption) -> Vec<Case> {
    let g = golden();
    let x = input();
    g["corruptions"][c.name()]
        .as_array()
        .expect("the corruption is in golden.json")
        .iter()
        .map(|e| {
            let severity = e["severity"].as_u64().expect("severity") as u8;
            let seed = e["seed"].as_u64().expect("seed");
            let out = corrupt(&x, c, severity, seed).expect("corrupts");
            Case {
                severity,
                out,
                golden: e.clone(),
            }
        })
        .collect()
}

/// Largest per-pixel difference from the reference window, and the fraction of values that
/// differ at all.
fn window_diff(c: Corruption, case: &Case) -> (u8, f64) {
    let path = fixtures().join(format!("window/{}-{}.png", c.name(), case.severity));
    let want = image::open(&path).expect("window png").to_rgb8();
    let (mut max, mut differ, mut n) = (0u8, 0usize, 0usize);
    for (x, y, p) in want.enumerate_pixels() {
        let q = case.out.get_pixel(x, y);
        for ch in 0..3 {
            let d = p[ch].abs_diff(q[ch]);
            max = max.max(d);
            differ += usize::from(d > 0);
            n += 1;
        }
    }
    (max, differ as f64 / n as f64)
}

/// FNV-1a 64 over the image's bytes, as the fixture script computes it.
fn fnv1a64(img: &RgbImage) -> u64 {
    img.as_raw().iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Window within 1/255 and mean within 0.05 levels; with `whole`, also the whole image byte
/// for byte.
fn assert_exact(c: Corruption, whole: bool) {
    for case in run(c) {
        if whole {
            assert_eq!(
                Some(fnv1a64(&case.out)),
                case.golden["fnv1a64"].as_u64(),
                "{} severity {}: the whole image differs from the reference",
                c.name(),
                case.severity
            );
        }
        let (max, frac) = window_diff(c, &case);
        let out: Vec<f64> = case.out.as_raw().iter().map(|&v| f64::from(v)).collect();
        let (mean, _) = stats(&out);
        let want = floats(&case.golden["output"]["mean"]);
        let dmean = (0..3)
            .map(|i| (mean[i] - want[i]).abs())
            .fold(0.0, f64::max);
        eprintln!(
            "{} s{}: window max diff {max}, {:.4}% of values differ, mean diff {dmean:.5}",
            c.name(),
            case.severity,
            frac * 100.0
        );
        assert!(
            max <= 1,
            "{} severity {}: max diff {max} > 1",
            c.name(),
            case.severity
        );
        assert!(
            dmean <= 0.05,
            "{} severity {}: mean off by {dmean}",
            c.name(),
            case.severity
        );
    }
}

fn assert_statistics(c: Corruption) {
    let x: Vec<f64> = input().as_raw().iter().map(|&v| f64::from(v)).collect();
    for case in run(c) {
        let out: Vec<f64> = case.out.as_raw().iter().map(|&v| f64::from(v)).collect();
        let resid: Vec<f64> = out.iter().zip(&x).map(|(o, i)| o - i).collect();
        let (mean, std) = stats(&out);
        let (_, rstd) = stats(&resid);
        let (wm, ws) = (
            floats(&case.golden["output"]["mean"]),
            floats(&case.golden["output"]["std"]),
        );
        let wr = floats(&case.golden["residual"]["std"]);
        let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
        let worst = |a: &[f64; 3], b: &[f64]| (0..3).map(|i| rel(a[i], b[i])).fold(0.0, f64::max);
        let (em, es, er) = (worst(&mean, &wm), worst(&std, &ws), worst(&rstd, &wr));
        eprintln!(
            "{} s{}: relative error mean {:.3}%, std {:.3}%, residual std {:.3}%",
            c.name(),
            case.severity,
            em * 100.0,
            es * 100.0,
            er * 100.0
        );
        assert!(
            em <= 0.01 && es <= 0.01,
            "{} severity {}: mean/std off by {em}/{es}",
            c.name(),
            case.severity
        );
        assert!(
            er <= 0.05,
            "{} severity {}: residual std off by {er}",
            c.name(),
            case.severity
        );
    }
}

/// Exact stream: `np.random.normal` / `poisson` are numpy's legacy algorithms on MT19937
/// (checked draw for draw in `rng.rs`), and the arithmetic is the reference's float64
/// arithmetic, so the whole images are byte-identical.
#[test]
fn noise_from_numpy_stream_is_exact() {
    for c in [
        Corruption::GaussianNoise,
        Corruption::ShotNoise,
        Corruption::SpeckleNoise,
    ] {
        assert_exact(c, true);
    }
}

/// Statistical: skimage's `random_noise` draws salt and pepper from its own PCG64
/// `default_rng`, not numpy's legacy stream, so only the amount of noise can match. One
/// 224² image leaves ~1–2% sampling noise in its statistics, so both sides pool 8 seeds
/// (`impulse_pooled` in golden.json). The pooled output mean and std must agree within 1%;
/// the residual std (noise energy) within 3%, since the reference against itself, with two
/// disjoint sets of 8 seeds, already spreads by up to 1.4% (the spec allows 5%).
#[test]
fn impulse_noise_matches_statistics() {
    let g = golden();
    let x = input();
    let xs: Vec<f64> = x.as_raw().iter().map(|&v| f64::from(v)).collect();
    for e in g["impulse_pooled"].as_array().expect("impulse_pooled") {
        let severity = e["severity"].as_u64().expect("severity") as u8;
        let (mut out, mut resid) = (Vec::new(), Vec::new());
        for seed in e["seeds"].as_array().expect("seeds") {
            let seed = seed.as_u64().expect("seed");
            let o = corrupt(&x, Corruption::ImpulseNoise, severity, seed).expect("corrupts");
            for (v, i) in o.as_raw().iter().zip(&xs) {
                out.push(f64::from(*v));
                resid.push(f64::from(*v) - i);
            }
        }
        let (mean, std) = stats(&out);
        let (_, rstd) = stats(&resid);
        let rel = |a: f64, b: f64| (a - b).abs() / b.abs();
        for (what, got, want, tol) in [
            ("mean", mean, floats(&e["output"]["mean"]), 0.01),
            ("std", std, floats(&e["output"]["std"]), 0.01),
            ("residual std", rstd, floats(&e["residual"]["std"]), 0.03),
        ] {
            let worst = (0..3).map(|i| rel(got[i], want[i])).fold(0.0, f64::max);
            eprintln!(
                "impulse_noise s{severity}: {what} off by {:.3}%",
                worst * 100.0
            );
            assert!(
                worst <= tol,
                "impulse_noise severity {severity}: {what} off by {worst}"
            );
        }
    }
}

/// Deterministic filters (scipy `gaussian_filter`, OpenCV `GaussianBlur` + `filter2D`, scipy
/// `zoom`) ported with their borders and summation order; glass and motion blur also draw
/// from the exact stream (`randint`, `uniform`). Byte-identical whole images, except
/// defocus_blur, whose 17×17 OpenCV `filter2D` sums in another order (severity 4: one value of
/// 150,528 is off by 1 in `full_image_report`), so it is held to the window and mean.
#[test]
fn blurs_are_exact() {
    for c in [
        Corruption::GaussianBlur,
        Corruption::GlassBlur,
        Corruption::MotionBlur,
        Corruption::ZoomBlur,
    ] {
        assert_exact(c, true);
    }
    assert_exact(Corruption::DefocusBlur, false);
}

/// Snow (normal layer, scipy zoom, motion blur port, float32 blend) and fog (plasma fractal
/// from `uniform`): stream and arithmetic both reproduced. Fog is byte-identical; snow is held
/// to the window and mean, since OpenCV's float32 `cvtColor` rounds differently in a handful
/// of pixels (severity 1: 15 values off by 1 in `full_image_report`).
#[test]
fn snow_and_fog_are_exact() {
    assert_exact(Corruption::Snow, false);
    assert_exact(Corruption::Fog, true);
}

/// Frost draws the overlay and its crop from the exact stream. The PNG overlays decode
/// identically, so those severities are exact; where the reference picked a JPEG overlay
/// (frost4/5), OpenCV's libjpeg and `image`'s zune-jpeg decoders differ by up to 2 levels
/// on a few percent of pixels, times the overlay weight (whole image: up to 3 levels in
/// `full_image_report`). Checked: every severity's window within 2/255
/// per pixel, mean within 0.1 levels (observed 0.051); at least one severity exact.
#[test]
fn frost_matches_within_decoder_differences() {
    let mut exact = 0;
    for case in run(Corruption::Frost) {
        let (max, frac) = window_diff(Corruption::Frost, &case);
        eprintln!(
            "frost s{}: window max diff {max}, {:.4}% differ",
            case.severity,
            frac * 100.0
        );
        assert!(max <= 2, "frost severity {}: max diff {max}", case.severity);
        exact += usize::from(max == 0);
        let out: Vec<f64> = case.out.as_raw().iter().map(|&v| f64::from(v)).collect();
        let (mean, _) = stats(&out);
        let want = floats(&case.golden["output"]["mean"]);
        for ch in 0..3 {
            let d = (mean[ch] - want[ch]).abs();
            assert!(
                d <= 0.1,
                "frost severity {}: mean off by {d}",
                case.severity
            );
        }
    }
    assert!(
        exact >= 1,
        "no severity picked a PNG overlay with the fixture seeds"
    );
}

/// Deterministic: skimage's HSV round trip, numpy's pairwise mean, Pillow's fixed-point BOX
/// resize. Byte-identical whole images.
#[test]
fn digital_are_exact() {
    for c in [
        Corruption::Brightness,
        Corruption::Contrast,
        Corruption::Saturate,
        Corruption::Pixelate,
    ] {
        assert_exact(c, true);
    }
}

/// Statistical: the spec asks for any IJG-table JPEG encoder, not libjpeg's bytes; ours is
/// `jpeg-encoder` (IJG tables, 4:2:0 like Pillow) and `image`'s decoder, so blocks differ by a
/// few levels but the image's statistics match.
#[test]
fn jpeg_matches_statistics() {
    assert_statistics(Corruption::JpegCompression);
}

/// Exact stream (`uniform` for the affine jitter and both displacement fields) and ported
/// arithmetic: OpenCV's `getAffineTransform` LU and OpenCV 5's float `warpAffine`, scipy's
/// `gaussian_filter(mode='reflect')` and `map_coordinates(order=1, mode='reflect')` with its
/// coordinate folding, all in float32 where the reference is. Observed max diff 1 (one value
/// of the 5 windows; at most 3 values of each whole image in `full_image_report`: float32
/// rounding inside the warp).
#[test]
fn elastic_transform_is_exact() {
    assert_exact(Corruption::ElasticTransform, false);
}

/// Exact stream (`normal` liquid layer) and ported arithmetic: scipy/skimage `gaussian`,
/// then for water (severities 1–3) OpenCV's Canny (Sobel, L1 magnitude, fixed-point
/// non-maximum suppression, hysteresis), 5×5 chamfer `distanceTransform`, `threshold`,
/// `blur`, `equalizeHist` and `filter2D`; for mud (4–5) a float32 `gaussian`. Observed max
/// diff 0: byte-identical whole images.
#[test]
fn spatter_is_exact() {
    assert_exact(Corruption::Spatter, true);
}

/// Whole-image comparison against outputs written by `make_corrupt_fixtures.py --full DIR`
/// (not stored in the repository): `SIGHTLINE_CORRUPT_FULL=DIR cargo test -p
/// sightline-corrupt --test goldens -- --ignored`. Prints, per corruption and severity, the
/// largest per-pixel difference and the share of values that differ.
#[test]
#[ignore = "needs SIGHTLINE_CORRUPT_FULL from make_corrupt_fixtures.py --full"]
fn full_image_report() {
    let Ok(dir) = std::env::var("SIGHTLINE_CORRUPT_FULL") else {
        panic!("set SIGHTLINE_CORRUPT_FULL to the --full folder of make_corrupt_fixtures.py");
    };
    for &c in Corruption::ALL {
        for case in run(c) {
            let path =
                std::path::Path::new(&dir).join(format!("{}-{}.png", c.name(), case.severity));
            let want = image::open(&path).expect("full output").to_rgb8();
            let diffs: Vec<u8> = want
                .as_raw()
                .iter()
                .zip(case.out.as_raw())
                .map(|(a, b)| a.abs_diff(*b))
                .collect();
            let max = diffs.iter().copied().max().unwrap_or(0);
            let differ = diffs.iter().filter(|&&d| d > 0).count();
            eprintln!(
                "FULL {} s{}: max diff {max}, {differ} of {} values differ",
                c.name(),
                case.severity,
                diffs.len()
            );
        }
    }
}

/// Every corruption is covered by one of the tests above.
#[test]
fn every_corruption_has_goldens() {
    let g = golden();
    for c in Corruption::ALL {
        assert_eq!(
            g["corruptions"][c.name()].as_array().map(Vec::len),
            Some(5),
            "{c}"
        );
    }
}
