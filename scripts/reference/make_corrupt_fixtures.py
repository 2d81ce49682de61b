#!/usr/bin/env python3
"""Golden fixtures for sightline's ImageNet-C corruptions (crates/corrupt), written by the
reference functions of hendrycks/robustness@8190fe3 `ImageNet-C/imagenet_c/imagenet_c/corruptions.py`
as shared/spec/multimodal-eval.md E8 gives them, and by numpy's legacy random stream.

Run from the repository root with the pinned stack (numpy, scipy, scikit-image,
opencv-python-headless, pillow from scripts/reference/requirements.txt); it takes ~10 s:

    python3 -m venv .venv-ref && .venv-ref/bin/pip install -r scripts/reference/requirements.txt
    .venv-ref/bin/python scripts/reference/make_corrupt_fixtures.py
    # optional, for the ignored whole-image comparison in crates/corrupt/tests/goldens.rs:
    .venv-ref/bin/python scripts/reference/make_corrupt_fixtures.py --full /tmp/corrupt-full

It writes tests/fixtures/corrupt/:
  input.png                    the 224x224 input: data/llava/examples/extreme_ironing.jpg, shortest
                               side resized to 224 with Pillow BICUBIC, centre-cropped (CLIP's
                               geometry, the spec's ASSUMPTION for SBT)
  window/<name>-<s>.png        the top-left WINDOWxWINDOW pixels of np.uint8(corruption(input, s))
                               after np.random.seed(seed); seeds in golden.json
  golden.json                  impulse_noise statistics pooled over 8 seeds per severity; and
                               per corruption and severity: seed, FNV-1a 64 of the whole uint8
                               output's bytes, per-channel mean and std of the
                               whole uint8 output and of the residual output - input; and the raw
                               numpy streams (rng section, floats as u64 bit patterns) that the
                               Rust RandomState must equal

Where this differs from the original code:
  - motion_blur (and the snow layer's blur) call ImageMagick through Wand upstream; here they are
    the spec's port of MagickCore/effect.c MotionBlurImage (E8.6), the same as the Rust one.
  - impulse_noise is skimage's random_noise, which draws from its own PCG64 generator, so only its
    statistics can match; upstream leaves that generator unseeded, here it is seeded from the
    legacy stream so that the fixtures are reproducible.
  - current library spellings: skimage `channel_axis=-1` for `multichannel=True`, `np.float64`
    for `np.float_`; the frost overlays are read from data/corruptions/frost/.
"""
import argparse
import io
import json
from pathlib import Path

import cv2
import numpy as np
import PIL
import scipy
import skimage as sk
from PIL import Image
from scipy.ndimage import map_coordinates
from scipy.ndimage import zoom as scizoom
from skimage.filters import gaussian

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests/fixtures/corrupt"
SOURCE = ROOT / "data/llava/examples/extreme_ironing.jpg"
FROST_DIR = ROOT / "data/corruptions/frost"
WINDOW = 72


# ----------------------------------------------------------------------------- helpers


def disk(radius, alias_blur=0.1, dtype=np.float32):
    if radius <= 8:
        L = np.arange(-8, 8 + 1)
        ksize = (3, 3)
    else:
        L = np.arange(-radius, radius + 1)
        ksize = (5, 5)
    X, Y = np.meshgrid(L, L)
    aliased_disk = np.array((X**2 + Y**2) <= radius**2, dtype=dtype)
    aliased_disk /= np.sum(aliased_disk)
    return cv2.GaussianBlur(aliased_disk, ksize=ksize, sigmaX=alias_blur)


def plasma_fractal(mapsize=256, wibbledecay=3):
    assert mapsize & (mapsize - 1) == 0
    maparray = np.empty((mapsize, mapsize), dtype=np.float64)
    maparray[0, 0] = 0
    stepsize = mapsize
    wibble = 100

    def wibbledmean(array):
        return array / 4 + wibble * np.random.uniform(-wibble, wibble, array.shape)

    def fillsquares():
        cornerref = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        squareaccum = cornerref + np.roll(cornerref, shift=-1, axis=0)
        squareaccum += np.roll(squareaccum, shift=-1, axis=1)
        maparray[stepsize // 2 : mapsize : stepsize, stepsize // 2 : mapsize : stepsize] = wibbledmean(squareaccum)

    def filldiamonds():
        mapsize = maparray.shape[0]
        drgrid = maparray[stepsize // 2 : mapsize : stepsize, stepsize // 2 : mapsize : stepsize]
        ulgrid = maparray[0:mapsize:stepsize, 0:mapsize:stepsize]
        ldrsum = drgrid + np.roll(drgrid, 1, axis=0)
        lulsum = ulgrid + np.roll(ulgrid, -1, axis=1)
        ltsum = ldrsum + lulsum
        maparray[0:mapsize:stepsize, stepsize // 2 : mapsize : stepsize] = wibbledmean(ltsum)
        tdrsum = drgrid + np.roll(drgrid, 1, axis=1)
        tulsum = ulgrid + np.roll(ulgrid, -1, axis=0)
        ttsum = tdrsum + tulsum
        maparray[stepsize // 2 : mapsize : stepsize, 0:mapsize:stepsize] = wibbledmean(ttsum)

    while stepsize >= 2:
        fillsquares()
        filldiamonds()
        stepsize //= 2
        wibble /= wibbledecay

    maparray -= maparray.min()
    return maparray / maparray.max()


def clipped_zoom(img, zoom_factor):
    h = img.shape[0]
    ch = int(np.ceil(h / zoom_factor))
    top = (h - ch) // 2
    img = scizoom(img[top : top + ch, top : top + ch], (zoom_factor, zoom_factor, 1), order=1)
    trim_top = (img.shape[0] - h) // 2
    return img[trim_top : trim_top + h, trim_top : trim_top + h]


def magick_motion_blur(u8, radius, sigma, angle):
    """Spec E8.6: ImageMagick MotionBlurImage on uint8 (H, W) or (H, W, C), edge pixels repeated,
    rounded half up."""
    width = 2 * int(np.ceil(radius)) + 1
    k = np.exp(-(np.arange(width, dtype=np.float64) ** 2) / (2.0 * sigma * sigma))
    k = k / k.sum()
    theta = np.deg2rad(angle)
    squeeze = u8.ndim == 2
    img = u8[..., None] if squeeze else u8
    h, w = img.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w]
    acc = np.zeros(img.shape, dtype=np.float64)
    for i in range(width):
        ox = int(np.ceil(i * np.cos(theta) - 0.5))
        oy = int(np.ceil(i * np.sin(theta) - 0.5))
        sy = np.clip(ys + oy, 0, h - 1)
        sx = np.clip(xs + ox, 0, w - 1)
        acc += k[i] * img[sy, sx].astype(np.float64)
    out = np.clip(np.floor(acc + 0.5), 0, 255).astype(np.uint8)
    return out[..., 0] if squeeze else out


# ----------------------------------------------------------------------------- corruptions


def gaussian_noise(x, severity=1):
    c = [0.08, 0.12, 0.18, 0.26, 0.38][severity - 1]
    x = np.array(x) / 255.0
    return np.clip(x + np.random.normal(size=x.shape, scale=c), 0, 1) * 255


def shot_noise(x, severity=1):
    c = [60, 25, 12, 5, 3][severity - 1]
    x = np.array(x) / 255.0
    return np.clip(np.random.poisson(x * c) / c, 0, 1) * 255


def impulse_noise(x, severity=1):
    c = [0.03, 0.06, 0.09, 0.17, 0.27][severity - 1]
    # Upstream passes no seed (skimage then seeds PCG64 from the OS); seeding it from the legacy
    # stream keeps these fixtures reproducible without touching anything else.
    x = sk.util.random_noise(np.array(x) / 255.0, mode="s&p", amount=c, rng=np.random.randint(2**31))
    return np.clip(x, 0, 1) * 255


def speckle_noise(x, severity=1):
    c = [0.15, 0.2, 0.35, 0.45, 0.6][severity - 1]
    x = np.array(x) / 255.0
    return np.clip(x + x * np.random.normal(size=x.shape, scale=c), 0, 1) * 255


def gaussian_blur(x, severity=1):
    c = [1, 2, 3, 4, 6][severity - 1]
    x = gaussian(np.array(x) / 255.0, sigma=c, channel_axis=-1)
    return np.clip(x, 0, 1) * 255


def glass_blur(x, severity=1):
    c = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)][severity - 1]
    x = np.uint8(gaussian(np.array(x) / 255.0, sigma=c[0], channel_axis=-1) * 255)
    for i in range(c[2]):
        for h in range(224 - c[1], c[1], -1):
            for w in range(224 - c[1], c[1], -1):
                dx, dy = np.random.randint(-c[1], c[1], size=(2,))
                h_prime, w_prime = h + dy, w + dx
                x[h, w], x[h_prime, w_prime] = x[h_prime, w_prime], x[h, w]
    return np.clip(gaussian(x / 255.0, sigma=c[0], channel_axis=-1), 0, 1) * 255


def defocus_blur(x, severity=1):
    c = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)][severity - 1]
    x = np.array(x) / 255.0
    kernel = disk(radius=c[0], alias_blur=c[1])
    channels = [cv2.filter2D(x[:, :, d], -1, kernel) for d in range(3)]
    channels = np.array(channels).transpose((1, 2, 0))
    return np.clip(channels, 0, 1) * 255


def motion_blur(x, severity=1):
    c = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)][severity - 1]
    out = magick_motion_blur(np.array(x), c[0], c[1], np.random.uniform(-45, 45))
    return np.clip(out, 0, 255)


def zoom_blur(x, severity=1):
    c = [
        np.arange(1, 1.11, 0.01),
        np.arange(1, 1.16, 0.01),
        np.arange(1, 1.21, 0.02),
        np.arange(1, 1.26, 0.02),
        np.arange(1, 1.31, 0.03),
    ][severity - 1]
    x = (np.array(x) / 255.0).astype(np.float32)
    out = np.zeros_like(x)
    for zoom in c:
        out += clipped_zoom(x, zoom)
    x = (x + out) / (len(c) + 1)
    return np.clip(x, 0, 1) * 255


def snow(x, severity=1):
    c = [
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8),
        (0.2, 0.3, 2, 0.5, 12, 4, 0.7),
        (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65),
        (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55),
    ][severity - 1]
    x = np.array(x, dtype=np.float32) / 255.0
    snow_layer = np.random.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    snow_layer = clipped_zoom(snow_layer[..., np.newaxis], c[2])
    snow_layer[snow_layer < c[3]] = 0
    layer_u8 = (np.clip(snow_layer.squeeze(), 0, 1) * 255).astype(np.uint8)
    # Upstream: PIL 'L' image -> PNG -> Wand motion_blur -> cv2.imdecode; the PNG round trips are
    # lossless, so the port works on the uint8 array directly.
    snow_layer = magick_motion_blur(layer_u8, c[4], c[5], np.random.uniform(-135, -45)) / 255.0
    snow_layer = snow_layer[..., np.newaxis]
    x = c[6] * x + (1 - c[6]) * np.maximum(x, cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).reshape(224, 224, 1) * 1.5 + 0.5)
    return np.clip(x + snow_layer + np.rot90(snow_layer, k=2), 0, 1) * 255


def frost(x, severity=1):
    c = [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)][severity - 1]
    idx = np.random.randint(5)
    filename = ["frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg"][idx]
    frost = cv2.imread(str(FROST_DIR / filename))
    x_start, y_start = np.random.randint(0, frost.shape[0] - 224), np.random.randint(0, frost.shape[1] - 224)
    frost = frost[x_start : x_start + 224, y_start : y_start + 224][..., [2, 1, 0]]
    return np.clip(c[0] * np.array(x) + c[1] * frost, 0, 255)


def fog(x, severity=1):
    c = [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)][severity - 1]
    x = np.array(x) / 255.0
    max_val = x.max()
    x += c[0] * plasma_fractal(wibbledecay=c[1])[:224, :224][..., np.newaxis]
    return np.clip(x * max_val / (max_val + c[0]), 0, 1) * 255


def spatter(x, severity=1):
    c = [
        (0.65, 0.3, 4, 0.69, 0.6, 0),
        (0.65, 0.3, 3, 0.68, 0.6, 0),
        (0.65, 0.3, 2, 0.68, 0.5, 0),
        (0.65, 0.3, 1, 0.65, 1.5, 1),
        (0.67, 0.4, 1, 0.65, 1.5, 1),
    ][severity - 1]
    x = np.array(x, dtype=np.float32) / 255.0
    liquid_layer = np.random.normal(size=x.shape[:2], loc=c[0], scale=c[1])
    liquid_layer = gaussian(liquid_layer, sigma=c[2])
    liquid_layer[liquid_layer < c[3]] = 0
    if c[5] == 0:
        liquid_layer = (liquid_layer * 255).astype(np.uint8)
        dist = 255 - cv2.Canny(liquid_layer, 50, 150)
        dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.blur(dist, (3, 3)).astype(np.uint8)
        dist = cv2.equalizeHist(dist)
        ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
        dist = cv2.filter2D(dist, cv2.CV_8U, ker)
        dist = cv2.blur(dist, (3, 3)).astype(np.float32)
        m = cv2.cvtColor(liquid_layer * dist, cv2.COLOR_GRAY2BGRA)
        m /= np.max(m, axis=(0, 1))
        m *= c[4]
        # water is pale turquoise
        color = np.concatenate(
            (175 / 255.0 * np.ones_like(m[..., :1]), 238 / 255.0 * np.ones_like(m[..., :1]), 238 / 255.0 * np.ones_like(m[..., :1])),
            axis=2,
        )
        color = cv2.cvtColor(color, cv2.COLOR_BGR2BGRA)
        x = cv2.cvtColor(x, cv2.COLOR_BGR2BGRA)
        return cv2.cvtColor(np.clip(x + m * color, 0, 1), cv2.COLOR_BGRA2BGR) * 255
    else:
        m = np.where(liquid_layer > c[3], 1, 0)
        m = gaussian(m.astype(np.float32), sigma=c[4])
        m[m < 0.8] = 0
        # mud brown
        color = np.concatenate(
            (63 / 255.0 * np.ones_like(x[..., :1]), 42 / 255.0 * np.ones_like(x[..., :1]), 20 / 255.0 * np.ones_like(x[..., :1])),
            axis=2,
        )
        color *= m[..., np.newaxis]
        x *= 1 - m[..., np.newaxis]
        return np.clip(x + color, 0, 1) * 255


def brightness(x, severity=1):
    c = [0.1, 0.2, 0.3, 0.4, 0.5][severity - 1]
    x = np.array(x) / 255.0
    x = sk.color.rgb2hsv(x)
    x[:, :, 2] = np.clip(x[:, :, 2] + c, 0, 1)
    x = sk.color.hsv2rgb(x)
    return np.clip(x, 0, 1) * 255


def saturate(x, severity=1):
    c = [(0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)][severity - 1]
    x = np.array(x) / 255.0
    x = sk.color.rgb2hsv(x)
    x[:, :, 1] = np.clip(x[:, :, 1] * c[0] + c[1], 0, 1)
    x = sk.color.hsv2rgb(x)
    return np.clip(x, 0, 1) * 255


def contrast(x, severity=1):
    c = [0.4, 0.3, 0.2, 0.1, 0.05][severity - 1]
    x = np.array(x) / 255.0
    means = np.mean(x, axis=(0, 1), keepdims=True)
    return np.clip((x - means) * c + means, 0, 1) * 255


def jpeg_compression(x, severity=1):
    c = [25, 18, 15, 10, 7][severity - 1]
    output = io.BytesIO()
    x.save(output, "JPEG", quality=c)
    return Image.open(output)


def elastic_transform(image, severity=1):
    c = [
        (244 * 2, 244 * 0.7, 244 * 0.1),  # 244 should have been 224, but ultimately nothing is incorrect
        (244 * 2, 244 * 0.08, 244 * 0.2),
        (244 * 0.05, 244 * 0.01, 244 * 0.02),
        (244 * 0.07, 244 * 0.01, 244 * 0.02),
        (244 * 0.12, 244 * 0.01, 244 * 0.02),
    ][severity - 1]
    image = np.array(image, dtype=np.float32) / 255.0
    shape = image.shape
    shape_size = shape[:2]
    center_square = np.float32(shape_size) // 2
    square_size = min(shape_size) // 3
    pts1 = np.float32(
        [center_square + square_size, [center_square[0] + square_size, center_square[1] - square_size], center_square - square_size]
    )
    pts2 = pts1 + np.random.uniform(-c[2], c[2], size=pts1.shape).astype(np.float32)
    M = cv2.getAffineTransform(pts1, pts2)
    image = cv2.warpAffine(image, M, shape_size[::-1], borderMode=cv2.BORDER_REFLECT_101)
    dx = (gaussian(np.random.uniform(-1, 1, size=shape[:2]), c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)
    dy = (gaussian(np.random.uniform(-1, 1, size=shape[:2]), c[1], mode="reflect", truncate=3) * c[0]).astype(np.float32)
    dx, dy = dx[..., np.newaxis], dy[..., np.newaxis]
    x, y, z = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    indices = np.reshape(y + dy, (-1, 1)), np.reshape(x + dx, (-1, 1)), np.reshape(z, (-1, 1))
    return np.clip(map_coordinates(image, indices, order=1, mode="reflect").reshape(shape), 0, 1) * 255


def pixelate(x, severity=1):
    c = [0.6, 0.5, 0.4, 0.3, 0.25][severity - 1]
    x = x.resize((int(224 * c), int(224 * c)), Image.BOX)
    return x.resize((224, 224), Image.BOX)


CORRUPTIONS = [
    gaussian_noise, shot_noise, impulse_noise, defocus_blur, glass_blur, motion_blur, zoom_blur,
    snow, frost, fog, brightness, contrast, elastic_transform, pixelate, jpeg_compression,
    speckle_noise, gaussian_blur, spatter, saturate,
]


# ----------------------------------------------------------------------------- fixtures


def load_input():
    img = Image.open(SOURCE).convert("RGB")
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(224 * long / short)
    size = (224, new_long) if w <= h else (new_long, 224)
    img = img.resize(size, Image.BICUBIC)
    left, top = (size[0] - 224) // 2, (size[1] - 224) // 2
    return img.crop((left, top, left + 224, top + 224))


def fnv1a64(a):
    """FNV-1a over the raw bytes (row-major RGB): lets the test check the whole image for byte
    identity without storing it."""
    h = 0xCBF29CE484222325
    for b in np.ascontiguousarray(a, dtype=np.uint8).tobytes():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def stats(a):
    a = a.astype(np.float64).reshape(-1, 3)
    return {"mean": a.mean(0).tolist(), "std": a.std(0).tolist()}


def bits(values):
    """Floats as their IEEE-754 bit patterns (u64), so that JSON readers cannot round them."""
    return [int(v) for v in np.asarray(values, dtype=np.float64).view(np.uint64)]


def rng_goldens():
    out = {}
    for seed in [0, 1, 42, 123456789]:
        rs = np.random.RandomState(seed)
        g = {}
        g["u32"] = [int(v) for v in rs.randint(0, 2**32, size=5, dtype=np.uint64)]
        g["random_sample"] = bits(rs.random_sample(5))
        g["standard_normal"] = bits(rs.standard_normal(7))
        # The cached second normal survives other draws.
        g["after_uniform"] = bits([rs.uniform(-45, 45), rs.standard_normal()])
        g["poisson_lams"] = [0.0, 0.3, 2.5, 9.99, 10.0, 31.7, 250.0, 5000.0]
        g["poisson"] = [int(rs.poisson(lam)) for lam in g["poisson_lams"] for _ in range(6)]
        g["randint_-3_3"] = [int(v) for v in rs.randint(-3, 3, size=12)]
        g["randint_5"] = [int(rs.randint(5)) for _ in range(6)]
        g["randint_0_376"] = [int(rs.randint(0, 376)) for _ in range(6)]
        out[str(seed)] = g
    # A seed of 2**32 or more: sightline passes [lo, hi] to init_by_array.
    big = 2**32 + 5
    rs = np.random.RandomState([big & 0xFFFFFFFF, big >> 32])
    out[str(big)] = {
        "random_sample": bits(rs.random_sample(5)),
    }
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", type=Path, help="also write every whole output as DIR/<name>-<s>.png "
                    "(outside the repository) for the ignored test full_image_report")
    args = ap.parse_args()
    if args.full:
        args.full.mkdir(parents=True, exist_ok=True)
    (OUT / "window").mkdir(parents=True, exist_ok=True)
    x = load_input()
    x.save(OUT / "input.png")
    xa = np.array(x)
    golden = {
        "versions": {
            "numpy": np.__version__, "scipy": scipy.__version__, "skimage": sk.__version__,
            "cv2": cv2.__version__, "PIL": PIL.__version__,
        },
        "window": WINDOW,
        "input_stats": stats(xa),
        "rng": rng_goldens(),
        "corruptions": {},
    }
    for k, fn in enumerate(CORRUPTIONS):
        name = fn.__name__
        golden["corruptions"][name] = []
        for s in range(1, 6):
            seed = 1000 + 10 * k + s
            np.random.seed(seed)
            out = np.uint8(fn(x, s))
            assert out.shape == (224, 224, 3), (name, s, out.shape)
            Image.fromarray(out[:WINDOW, :WINDOW]).save(OUT / "window" / f"{name}-{s}.png", optimize=True)
            if args.full:
                Image.fromarray(out).save(args.full / f"{name}-{s}.png")
            resid = out.astype(np.float64) - xa
            golden["corruptions"][name].append(
                {"severity": s, "seed": seed, "fnv1a64": fnv1a64(out), "output": stats(out), "residual": stats(resid)}
            )
        print(name, "done", flush=True)
    # impulse_noise cannot share the stream, and one image's statistics carry ~1-2% sampling
    # noise: pool 8 seeds per severity so that the Rust side can be held to 1%.
    golden["impulse_pooled"] = []
    for s in range(1, 6):
        seeds = [5000 + 100 * s + i for i in range(8)]
        outs = []
        for seed in seeds:
            np.random.seed(seed)
            outs.append(np.uint8(impulse_noise(x, s)))
        out = np.concatenate(outs)
        resid = out.astype(np.float64) - np.concatenate([xa] * len(seeds))
        golden["impulse_pooled"].append(
            {"severity": s, "seeds": seeds, "output": stats(out), "residual": stats(resid)}
        )
    (OUT / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")


if __name__ == "__main__":
    main()
