#!/usr/bin/env python3
"""Golden fixtures for sightline's CLIP image preprocessing (crates/vision/src/preprocess.rs and preprocess/),
written by transformers' own CLIPImageProcessor on top of Pillow.

Run from the repository root (Pillow is needed on top of scripts/reference/requirements.txt;
the fixtures were written with Pillow 13.0.0 built against libjpeg-turbo 3.2 and libwebp 1.6):

    python3 -m venv .venv-ref && .venv-ref/bin/pip install -r scripts/reference/requirements.txt pillow
    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/reference/make_image_fixtures.py
    # optional, for the ignored full-image decoder comparison in preprocess_parity.rs:
    HF_HUB_OFFLINE=1 .venv-ref/bin/python scripts/reference/make_image_fixtures.py --full-decodes /tmp/pil-decoded

It writes tests/fixtures/image/:
  inputs/            tiny synthetic inputs for the decoder edge cases: RGBA with varying alpha, LA,
                     palette with tRNS, 16-bit grey and 16-bit RGB PNG, lossless (RGBA) and lossy
                     WebP, a greyscale JPEG, an image smaller than the crop (upscaling), a very
                     wide one, a 1-pixel-wide one
  configs/           preprocessor_config.json as CLIPImageProcessor.save_pretrained writes it for
                     the 224 and 336 towers
  golden/<case>.png  the uint8 image after the processor's own resize + center_crop (the exact
                     array that CLIPImageProcessor rescales and normalises), one per case
  inputs/jpeg/       small JPEGs covering the decoder's cases: 4:2:0 / 4:2:2 / 4:4:4 / 4:1:1 /
                     4:4:0 (h1v2) chroma, odd sizes, a chroma plane 2 samples wide, baseline and
                     progressive, restart intervals, optimised Huffman tables, greyscale,
                     saturating colours, Adobe RGB (no colour transform); and a CMYK one,
                     which only has to load
  decoded/<img>.png  Pillow's decode (convert('RGB')) of the lossy inputs (JPEG, lossy WebP), whole
                     or a window of it: our decoder must reproduce these bytes exactly
  golden.json        per case: source, config, aspect mode, sizes, crop offset, per-channel mean
                     of pixel_values and a strided sample of pixel_values; plus the processor's
                     value for every (channel, grey level), a solid-colour result and the
                     decode windows

Every golden crop is checked here to be the processor's: the normalisation table applied to it
reproduces `CLIPImageProcessor(...)(img).pixel_values` bit for bit, so the Rust test can rebuild
the processor's full pixel_values from golden/<case>.png and the table.

`--full-decodes DIR` also writes Pillow's full decode of every lossy source as raw RGB
(<stem>.rgb, with <stem>.json holding width and height) to DIR, outside the repository; the
ignored test `full_decode_and_resampler_report` reads it (SIGHTLINE_PIL_DECODED=DIR) and reports
decoder and resampler differences over whole images.
"""
import argparse
import io
import json
import os
import struct
import sys
import zlib
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import PIL  # noqa: E402
import transformers  # noqa: E402
from PIL import Image, features  # noqa: E402
from transformers import CLIPImageProcessor  # noqa: E402
from transformers.image_transforms import get_resize_output_image_size  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/fixtures/image"

MEAN = [0.48145466, 0.4578275, 0.40821073]
STD = [0.26862954, 0.26130258, 0.27577711]
# LLaVA's expand2square fill: tuple(int(x * 255) for x in image_processor.image_mean)
PAD_FILL = tuple(int(x * 255) for x in MEAN)
assert PAD_FILL == (122, 116, 104)

# Sample pixel_values on this stride (in both axes) for golden.json.
SAMPLE_STRIDE = 37


def processor(size):
    """openai/clip-vit-large-patch14(-336)'s processor, built locally (no hub access)."""
    return CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": size}, resample=3, do_center_crop=True,
        crop_size={"height": size, "width": size}, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=MEAN, image_std=STD, do_convert_rgb=True)


def expand2square(pil_img, background_color):
    """LLaVA's train.py / mm_utils.py expand2square, verbatim in behaviour."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    elif width > height:
        result = Image.new(pil_img.mode, (width, width), background_color)
        result.paste(pil_img, (0, (width - height) // 2))
        return result
    else:
        result = Image.new(pil_img.mode, (height, height), background_color)
        result.paste(pil_img, ((height - width) // 2, 0))
        return result


def write_png(path, w, h, color_type, depth, rows):
    """A minimal PNG writer for what Pillow cannot save (16-bit RGB)."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    ihdr = struct.pack(">IIBBBBB", w, h, depth, color_type, 0, 0, 0)
    raw = b"".join(b"\x00" + r for r in rows)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 9))
                     + chunk(b"IEND", b""))


def pattern(w, h, seed, noise=0):
    """A deterministic RGB test pattern: gradients and hard edges (so that the resampler's
    overshoot and clipping are exercised), plus optional noise; without noise the upscaled
    goldens compress well."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    r = (x * 255 // max(w - 1, 1)).astype(np.int64)
    g = (y * 255 // max(h - 1, 1)).astype(np.int64)
    b = np.where(((x // 7) + (y // 5) + seed) % 2 == 0, 235 - 2 * seed, 10 + seed)
    img = np.stack([r, g, b], -1) + rng.integers(-noise, noise + 1, size=(h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def pattern_640x427():
    """Procedural 640x427 input for the size/crop-offset test; preprocess_parity.rs builds the
    same pixels with the same integer formula, so no input file is stored."""
    y, x = np.mgrid[0:427, 0:640]
    r = x * 255 // 639
    g = y * 255 // 426
    b = (x * 7 + y * 13) % 256
    return np.stack([r, g, b], -1).astype(np.uint8)


def make_inputs():
    d = OUT / "inputs"
    d.mkdir(parents=True, exist_ok=True)
    files = {}

    # RGBA with alpha 0..255 and non-zero colour under alpha 0: convert('RGB') must drop alpha,
    # not composite or premultiply.
    rgb = pattern(96, 64, 1)
    alpha = (np.mgrid[0:64, 0:96][1] * 255 // 95).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(d / "rgba.png", optimize=True)
    files["rgba"] = d / "rgba.png"

    # LA (grey + alpha).
    grey = pattern(40, 30, 2)[..., 0]
    la = np.dstack([grey, 255 - grey])
    Image.fromarray(la, "LA").save(d / "la.png", optimize=True)
    files["la"] = d / "la.png"

    # Palette with a transparent index (tRNS): convert('RGB') takes the palette colour.
    pal = Image.fromarray(pattern(80, 60, 3)).quantize(colors=16, method=Image.Quantize.MEDIANCUT)
    pal.save(d / "palette.png", transparency=3, optimize=True)
    files["palette"] = d / "palette.png"

    # 16-bit grey: Pillow opens it as I;16 and convert('RGB') clips to 255 (not >> 8).
    vals = np.linspace(0, 65535, 40 * 30).astype(">u2").reshape(30, 40)
    vals[0, :8] = [0, 1, 127, 128, 255, 256, 257, 1000]
    write_png(d / "grey16.png", 40, 30, 0, 16, [r.tobytes() for r in vals])
    files["grey16"] = d / "grey16.png"

    # 16-bit RGB: Pillow keeps the high byte.
    rgb16 = (pattern(40, 30, 4).astype(np.uint32) * 257 + np.random.default_rng(5).integers(0, 257, (30, 40, 3)))
    rgb16 = rgb16.astype(">u2")
    write_png(d / "rgb16.png", 40, 30, 2, 16, [r.tobytes() for r in rgb16])
    files["rgb16"] = d / "rgb16.png"

    # WebP: lossless with alpha (exact decode expected), lossy (decoder-dependent).
    rgba = np.dstack([pattern(120, 90, 6), (np.mgrid[0:90, 0:120][0] * 255 // 89).astype(np.uint8)])
    Image.fromarray(rgba, "RGBA").save(d / "lossless.webp", lossless=True, exact=True, quality=100)
    files["lossless_webp"] = d / "lossless.webp"
    Image.fromarray(pattern(120, 90, 7)).save(d / "lossy.webp", quality=80)
    files["lossy_webp"] = d / "lossy.webp"

    # Greyscale baseline JPEG (one component: no chroma upsampling, IDCT only).
    Image.fromarray(pattern(64, 48, 8)[..., 1]).save(d / "grey.jpg", quality=90)
    files["grey_jpg"] = d / "grey.jpg"

    # Smaller than the crop (upscaling), very wide, 1 pixel wide.
    Image.fromarray(pattern(50, 37, 9, noise=12)).save(d / "small_50x37.png", optimize=True)
    files["small"] = d / "small_50x37.png"
    Image.fromarray(pattern(600, 90, 10)).save(d / "wide_600x90.png", optimize=True)
    files["wide"] = d / "wide_600x90.png"
    Image.fromarray(pattern(1, 40, 11)).save(d / "thin_1x40.png", optimize=True)
    files["thin"] = d / "thin_1x40.png"
    return files


def make_jpeg_variants():
    """Small JPEGs for the decoder parity test, each decoded by Pillow (libjpeg-turbo) as the
    reference. Photo crops (realistic spectra) and a noisy pattern (clamping at 0 and 255)."""
    d = OUT / "inputs/jpeg"
    d.mkdir(parents=True, exist_ok=True)
    ironing = Image.open(ROOT / "data/llava/examples/extreme_ironing.jpg").convert("RGB")
    water = Image.open(ROOT / "data/llava/examples/waterview.jpg").convert("RGB")
    noisy = Image.fromarray(pattern(48, 40, 12, noise=90))
    variants = [
        ("q75_420_101x67", ironing.crop((230, 140, 331, 207)), dict(quality=75, subsampling=2)),
        ("q95_422_101x67", water.crop((420, 250, 521, 317)), dict(quality=95, subsampling=1)),
        ("q90_444_101x67", ironing.crop((300, 60, 401, 127)), dict(quality=90, subsampling=0)),
        ("q85_411_77x45", water.crop((500, 300, 577, 345)), dict(quality=85, subsampling="4:1:1")),
        ("prog_420_101x67", water.crop((100, 400, 201, 467)), dict(quality=85, subsampling=2, progressive=True)),
        ("prog_444_noisy", noisy, dict(quality=95, subsampling=0, progressive=True)),
        ("q100_420_noisy", noisy, dict(quality=100, subsampling=2)),
        ("restart_420_96x64", ironing.crop((150, 200, 246, 264)), dict(quality=80, subsampling=2, restart_marker_blocks=3)),
        ("prog_restart_420_96x64", water.crop((600, 450, 696, 514)), dict(quality=80, subsampling=2, progressive=True, restart_marker_rows=1)),
        ("optimized_420_83x61", ironing.crop((50, 250, 133, 311)), dict(quality=70, subsampling=2, optimize=True)),
        ("grey_prog_77x51", ironing.convert("L").crop((240, 120, 317, 171)), dict(quality=80, progressive=True)),
        ("tiny_3x2_420", ironing.crop((300, 100, 303, 102)), dict(quality=90, subsampling=2)),
        ("adobe_rgb_444", ironing.crop((200, 150, 264, 198)), dict(quality=90, subsampling=0, keep_rgb=True)),
    ]
    files = []
    for name, img, kw in variants:
        img.save(d / f"{name}.jpg", "JPEG", **kw)
        files.append((name, d / f"{name}.jpg"))
    # 4:4:0 (luma 1x2, chroma upsampled vertically only), which Pillow cannot write: a 64x64
    # 4:2:2 file has as many MCUs of 2 luma + 2 chroma blocks as a 4:4:0 one, so changing the
    # luma sampling factors in the frame header gives a valid (if scrambled) 4:4:0 image.
    buf = io.BytesIO()
    water.crop((300, 200, 364, 264)).save(buf, "JPEG", quality=90, subsampling=1)
    data = bytearray(buf.getvalue())
    sof = data.index(b"\xff\xc0")
    assert data[sof + 9] == 3 and data[sof + 11] == 0x21, "4:2:2 luma sampling"
    data[sof + 11] = 0x12
    (d / "h1v2_440_64x64.jpg").write_bytes(bytes(data))
    files.append(("h1v2_440_64x64", d / "h1v2_440_64x64.jpg"))
    # CMYK is outside our decoder's scope (the `image` crate decodes it): only checked to load.
    ironing.crop((0, 0, 40, 30)).convert("CMYK").save(d / "cmyk_fallback.jpg", "JPEG", quality=90)
    return files


def rel(p):
    return str(Path(p).resolve().relative_to(ROOT))


def processor_steps(proc, rgb):
    """The processor's own resize and center_crop on a uint8 HWC array: the uint8 image that
    `preprocess` then rescales and normalises."""
    arr = np.array(rgb)
    size = proc.size["shortest_edge"]
    out_h, out_w = get_resize_output_image_size(arr, size=size, default_to_square=False)
    resized = proc.resize(arr, size=proc.size, resample=proc.resample)
    assert resized.dtype == np.uint8 and resized.shape == (out_h, out_w, 3), resized.shape
    crop = proc.center_crop(resized, size=proc.crop_size)
    assert crop.dtype == np.uint8, crop.dtype
    return crop, (out_w, out_h)


def norm_table():
    """The processor's output for every grey level in every channel (no resize, no crop)."""
    levels = np.arange(256, dtype=np.uint8).reshape(16, 16)
    img = np.stack([levels] * 3, -1)
    pv = processor(224)(img, do_resize=False, do_center_crop=False, return_tensors="np").pixel_values[0]
    assert pv.dtype == np.float32 and pv.shape == (3, 16, 16)
    return pv.reshape(3, 256)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full-decodes", type=Path, help="also write Pillow's full decodes here")
    args = ap.parse_args()

    print(f"transformers {transformers.__version__}, Pillow {PIL.__version__}, "
          f"libjpeg-turbo {features.version_feature('libjpeg_turbo')}, libwebp {features.version('webp')}", file=sys.stderr)
    OUT.mkdir(parents=True, exist_ok=True)
    for sub in ("golden", "decoded", "configs"):
        (OUT / sub).mkdir(exist_ok=True)
    files = make_inputs()
    jpeg_variants = make_jpeg_variants()
    table = norm_table()

    for size in (224, 336):
        d = OUT / f"configs/clip-{size}"
        processor(size).save_pretrained(d)

    photo_ironing = ROOT / "data/llava/examples/extreme_ironing.jpg"
    photo_water = ROOT / "data/llava/examples/waterview.jpg"
    sketches = ROOT / "data/unicorn/sketchy-vqa/images/skechydata/sketchespng"
    cases = [
        ("ironing_224", photo_ironing, 224, "square"),
        ("ironing_224_pad", photo_ironing, 224, "pad"),
        ("waterview_224", photo_water, 224, "square"),
        ("waterview_336", photo_water, 336, "square"),
        ("sketch_dog_224", sketches / "dog/5291.png", 224, "square"),
        ("sketch_blimp_224", sketches / "blimp/1909.png", 224, "square"),
        ("rgba_224", files["rgba"], 224, "square"),
        ("la_224", files["la"], 224, "square"),
        ("palette_224", files["palette"], 224, "square"),
        ("palette_224_pad", files["palette"], 224, "pad"),
        ("grey16_224", files["grey16"], 224, "square"),
        ("rgb16_224", files["rgb16"], 224, "square"),
        ("lossless_webp_224", files["lossless_webp"], 224, "square"),
        ("lossy_webp_224", files["lossy_webp"], 224, "square"),
        ("grey_jpg_224", files["grey_jpg"], 224, "square"),
        ("small_224", files["small"], 224, "square"),
        ("wide_224", files["wide"], 224, "square"),
        ("wide_336_pad", files["wide"], 336, "pad"),
        ("thin_224", files["thin"], 224, "square"),
        ("thin_224_pad", files["thin"], 224, "pad"),
        ("pattern_640x427_224", None, 224, "square"),
    ]

    out_cases = []
    for name, src, size, mode in cases:
        proc = processor(size)
        if src is None:
            rgb = Image.fromarray(pattern_640x427())
        else:
            # The LLaVA / SBT loaders: Image.open(path).convert('RGB').
            rgb = Image.open(src).convert("RGB")
        decoded_size = rgb.size
        if mode == "pad":
            rgb = expand2square(rgb, PAD_FILL)
        crop, resized = processor_steps(proc, rgb)
        pv = proc(rgb, return_tensors="np").pixel_values[0]
        assert pv.shape == (3, size, size) and pv.dtype == np.float32
        # The golden crop is provably the processor's: table[crop] == pixel_values bit for bit.
        rebuilt = np.stack([table[c][crop[..., c]] for c in range(3)])
        assert np.array_equal(rebuilt.view(np.uint32), pv.view(np.uint32)), name
        Image.fromarray(crop).save(OUT / f"golden/{name}.png", optimize=True)
        ys = list(range(0, size, SAMPLE_STRIDE))
        samples = [[c, y, x, float(pv[c, y, x])] for c in range(3) for y in ys for x in ys]
        w, h = resized
        out_cases.append(dict(
            name=name, source=rel(src) if src is not None else "procedural:pattern_640x427",
            size=size, mode=mode, decoded_size=list(decoded_size), input_size=list(rgb.size),
            resized_size=[w, h], crop_left=(w - size) // 2, crop_top=(h - size) // 2,
            golden=f"golden/{name}.png",
            channel_means=[float(pv[c].astype(np.float64).mean()) for c in range(3)],
            samples=samples))
        print(f"{name}: {decoded_size} -> {rgb.size} -> resized {resized}", file=sys.stderr)

    # Pillow's decode of the lossy sources: whole (small ones) or a window (photos).
    decode_windows = []
    for src, win in [(photo_ironing, (200, 120, 128, 128)), (photo_water, (430, 260, 128, 128)),
                     (files["lossy_webp"], None), (files["grey_jpg"], None)]:
        rgb = np.array(Image.open(src).convert("RGB"))
        h, w = rgb.shape[:2]
        x0, y0, ww, wh = win if win is not None else (0, 0, w, h)
        stem = Path(src).stem
        Image.fromarray(rgb[y0:y0 + wh, x0:x0 + ww]).save(OUT / f"decoded/{stem}.png", optimize=True)
        decode_windows.append(dict(source=rel(src), file=f"decoded/{stem}.png", x=x0, y=y0, width=ww, height=wh))
        if args.full_decodes is not None:
            args.full_decodes.mkdir(parents=True, exist_ok=True)
            (args.full_decodes / f"{stem}.rgb").write_bytes(rgb.tobytes())
            (args.full_decodes / f"{stem}.json").write_text(json.dumps(dict(
                source=rel(src), width=w, height=h)))

    # Pillow's whole decode of each JPEG variant.
    (OUT / "decoded/jpeg").mkdir(exist_ok=True)
    for name, src in jpeg_variants:
        rgb = np.array(Image.open(src).convert("RGB"))
        h, w = rgb.shape[:2]
        Image.fromarray(rgb).save(OUT / f"decoded/jpeg/{name}.png", optimize=True)
        decode_windows.append(dict(source=rel(src), file=f"decoded/jpeg/{name}.png", x=0, y=0, width=w, height=h))

    # A solid colour maps to (v/255 - mean)/std everywhere.
    solid_rgb = (200, 100, 50)
    solid = np.full((200, 300, 3), solid_rgb, dtype=np.uint8)
    spv = processor(224)(solid, return_tensors="np").pixel_values[0]
    solid_values = [float(spv[c, 0, 0]) for c in range(3)]
    assert all(np.all(spv[c] == solid_values[c]) for c in range(3))

    golden = dict(
        reference=dict(transformers=transformers.__version__, pillow=PIL.__version__,
                       libjpeg_turbo=features.version_feature("libjpeg_turbo"), libwebp=features.version("webp")),
        image_mean=MEAN, image_std=STD, pad_fill=list(PAD_FILL), sample_stride=SAMPLE_STRIDE,
        norm_table=[[float(v) for v in table[c]] for c in range(3)],
        solid=dict(rgb=list(solid_rgb), width=300, height=200, values=solid_values),
        decode_windows=decode_windows,
        cases=out_cases)
    # One line per case / table row: readable diffs without a line per number.
    text = json.dumps(golden, separators=(",", ":"))
    text = text.replace(',{"name"', ',\n{"name"').replace('],[', '],\n[')
    (OUT / "golden.json").write_text(text + "\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
