"""The built-in procedural matting data set: runs everything with no download.

Foregrounds are drawn with the alpha structure that makes matting hard, in a mix:

* hair and fur: hundreds of thin, curved, anti-aliased strands from sub-pixel to a few pixels
  wide, with varying opacity (drawn at 4x resolution and area-downsampled);
* semi-transparent material: veils, glass and smoke with alpha well inside (0, 1);
* holes and lace: nets and perforated shapes with fine openings;
* opaque structure with gaps (training and validation): branches, flower heads, yarn and coarse
  nets, where only the colour of the background around tells that a gap is background;
* soft (defocus) and motion-blurred boundaries beside sharp ones;
* colour textures, sometimes taken from the palette of the backgrounds they are composited on.

Backgrounds are natural-looking textures (multi-scale noise, gradients, stripes, blurred shapes,
clutter) at COCO-like sizes; ``bg_dir`` replaces them with a folder of the user's own photos.

The output is an Adobe-style folder, so it goes through the same ``data/py_adobe_data.py``
code path as the real data::

    root/fg/fg_0000.png ...          training foregrounds, RGB
    root/alpha/fg_0000.png ...       their alpha, 8-bit grey
    root/bg/bg_0000.jpg ...          training backgrounds
    root/training_fg_names.txt       one foreground file name a line
    root/training_bg_names.txt       foreground i uses lines [k*i, k*i + k), k = bg_per_fg
    root/val/, root/test/            Composition-1k layout: merged/, alpha_copy/, trimaps/,
                                     fg/, bg/ (all NAME.png, NAME = {fg_stem}_{k}), and
                                     merged == round(alpha*fg + (1-alpha)*bg) exactly
    root/meta.json                   version, seed, sizes, counts
    root/COMPLETE                    written last: the file manifest (path -> bytes)

Every item is drawn from its own random stream (seed, VERSION, kind, index), so the bytes
depend only on the seed, VERSION and the sizes, not on the number of worker processes.
Bump VERSION whenever the drawing code changes: the cache folder name carries it. As a
safety net, meta.json also records a hash of this file (``GENERATOR``), and a cached set
made by different code is regenerated in place instead of being reused.

Default size (:class:`Sizes`): 400 training foregrounds of 400-512 px (Adobe's training set
has 431), 400 backgrounds of 480-640 px, 10 backgrounds per foreground (4,000 pairs);
validation 48 foregrounds x 1 background at 320x320; test 8 x 5 at 480x360, with their own
foregrounds and backgrounds. About 140 MB; about 30 s on a 2-core Xeon (two worker processes).

Usage: ``ensure_synthetic()`` returns the cached folder, generating it on first use;
``python data/synthetic.py --help`` regenerates it with other sizes.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, fields
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root

import cv2
import numpy as np

from data.compose import band_kernel, composite, fit_background, morph_trimap
from utils.cli import OneLineParser, declare, existing, number, output
from utils.image_io import IMAGE_EXTS

VERSION = 3
# The test split keeps the random streams of version 2, so its 40 composites - and every
# number measured on them - stay byte-identical across versions that change only training
# and validation data.
TEST_STREAMS = 2
REPO_ROOT = Path(__file__).resolve().parents[1]
MARKER = "COMPLETE"
META_NAME = "DIM built-in synthetic matting set"
# The drawing code is this file plus the compositing/trimap functions it imports.
GENERATOR = hashlib.sha1(
    Path(__file__).read_bytes() + (Path(__file__).parent / "compose.py").read_bytes()
).hexdigest()[:12]
SUPERSAMPLE = 4  # strands and nets are drawn at 4x and area-downsampled: sub-pixel widths
_SHIFT = 3  # cv2 drawing: fixed-point bits of the point coordinates

# Random-stream keys: one independent stream per (kind, index).
_K_TRAIN_FG, _K_BG, _K_VAL_FG, _K_TEST_FG, _K_EVAL_BG, _K_PALETTE, _K_TRIMAP = range(1, 8)
_K_PHOTO_BG = 8
# Photographs that scikit-image ships inside its wheel (skimage/data/), used by default as
# training backgrounds and foreground textures: real image statistics (sensor noise, JPEG,
# defocus, natural edges) that procedural textures lack. Read as files; skimage is never
# imported and nothing is downloaded.
SKIMAGE_PHOTOS = (
    "astronaut.png",
    "chelsea.png",
    "coffee.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "brick.png",
    "grass.png",
    "gravel.png",
    "camera.png",
    "coins.png",
    "page.png",
)
# Share of training backgrounds cut from the photographs (the rest stay procedural).
PHOTO_BG_SHARE = 0.6
# Each foreground leads with one kind of hard structure (index modulo 4), plus random extras.
PRIMARY = ("hair", "transparent", "lace", "soft")
# Training foregrounds add "solid": opaque objects with complex outlines (foliage, twigs,
# wicker) whose alpha is binary up to an anti-aliased edge. Most real photographs look like
# that inside their unknown band; a set of only soft structure teaches the network to paint
# every band grey. The stored validation and test splits keep PRIMARY, so their images (and
# every number measured on them) do not change.
# "gaps" (version 3): opaque structure with background showing through small gaps - branches,
# petals, yarn, coarse nets - where a network that has not learnt to compare colours with the
# known background paints the gaps opaque.
TRAIN_PRIMARY = ("hair", "solid", "gaps", "transparent", "gaps", "lace", "solid", "soft")
# The validation split (which chooses best.pt) covers the test split's kinds and the opaque
# ones of real photographs.
VAL_PRIMARY = (*PRIMARY, "solid", "gaps")


@dataclass(frozen=True)
class Sizes:
    """How much to generate. Sizes are in pixels, (width, height) or (min, max) ranges."""

    n_train_fg: int = 400
    n_bg: int = 400
    bg_per_fg: int = 10
    n_val_fg: int = 48
    val_per_fg: int = 1
    n_test_fg: int = 8
    test_per_fg: int = 5
    fg_size: tuple[int, int] = (400, 512)  # training foreground side range
    bg_size: tuple[int, int] = (480, 640)  # training background side range (COCO-like)
    val_size: tuple[int, int] = (320, 320)  # (width, height) of validation composites
    test_size: tuple[int, int] = (480, 360)  # (width, height) of test composites

    def __post_init__(self):
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list):
                object.__setattr__(self, f.name, v := tuple(v))
            ok = all(int(x) >= 1 for x in v) if isinstance(v, tuple) else int(v) >= 0
            if not ok or (isinstance(v, tuple) and len(v) != 2):
                raise ValueError(f"synthetic data: bad size {f.name}={v!r}")
        if self.n_train_fg > 0 and (self.n_bg < 1 or self.bg_per_fg < 1):
            raise ValueError("synthetic data: n_bg and bg_per_fg must be >= 1 with training fgs")

    def tag(self) -> str:
        """Short folder tag: counts plus a hash of every size, so any change is a new folder."""
        digest = hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        return f"f{self.n_train_fg}-b{self.n_bg}-{digest[:8]}"


# --- random fields and colours ---------------------------------------------------------------
def _rng(seed: int, *key: int, version: int = VERSION) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), version, *map(int, key)]))


def _noise(rng: np.random.Generator, h: int, w: int, cells=(2, 4, 8, 16), persistence=0.55):
    """Multi-scale value noise: float32 (h, w) in [0, 1]; ``cells`` per long side per octave."""
    out = np.zeros((h, w), np.float32)
    amp, long_side = 1.0, max(h, w)
    for c in cells:
        gh, gw = max(2, round(c * h / long_side) + 1), max(2, round(c * w / long_side) + 1)
        grid = rng.random((gh, gw), dtype=np.float32)
        out += amp * cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
        amp *= persistence
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / max(hi - lo, 1e-6)


def _smoothstep(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    t = np.clip((x - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _palette(seed: int, *key: int, version: int = VERSION) -> np.ndarray:
    """Palette ``key``: float32 (5, 3) RGB in 0-255 (a hue family plus an accent)."""
    rng = _rng(seed, _K_PALETTE, *key, version=version)
    hue = rng.uniform(0, 180)
    hues = (hue + rng.normal(0, 12, 5)) % 180
    hues[4] = (hue + rng.uniform(50, 130)) % 180
    hsv = np.stack([hues, rng.uniform(30, 220, 5), rng.uniform(40, 245, 5)], 1)
    rgb = cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0]
    return rgb.astype(np.float32)


def _blend_field(rng, h, w, colours: np.ndarray, cells=(2, 4, 8)) -> np.ndarray:
    """Smooth mixture of ``colours`` (n, 3): float32 (h, w, 3), 0-255."""
    out = np.broadcast_to(colours[0], (h, w, 3)).astype(np.float32)
    for c in colours[1:]:
        m = _smoothstep(_noise(rng, h, w, cells), rng.uniform(0.2, 0.5), rng.uniform(0.55, 0.9))
        out += m[..., None] * (c - out)
    return out


def _read_photo(path: str | os.PathLike) -> np.ndarray:
    """A photograph as uint8 RGB (h, w, 3); grey files come back with 3 equal channels."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"--photo-dir: cannot read image {path} (corrupt or not an image?)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def photo_crop(rng: np.random.Generator, photo: np.ndarray, h: int, w: int, palette: np.ndarray):
    """A random view of ``photo`` as float32 (h, w, 3) 0-255, at about the photo's own scale
    (resized by 0.7-1.4x; mirrored at its borders when it is smaller than the view), flipped
    at random; a grey photo is coloured by a gradient map through two ``palette`` colours;
    colour gains, a saturation change and sometimes a mild defocus blur make many backgrounds
    out of one photo.

    The scale matters: real backgrounds behind a subject keep their full-resolution texture
    (grass, leaves, fabric). Views enlarged 2-3x from small photos are smooth, and a network
    trained on them learns that any fine texture inside the unknown band is foreground."""
    ph, pw = photo.shape[:2]
    f = rng.uniform(0.7, 1.4)  # output px per photo px
    ch, cw = max(8, round(h / f)), max(8, round(w / f))
    if ch > ph or cw > pw:  # mirror the photo outwards: texture at its own frequency, no blur
        py, px = max(0, ch - ph), max(0, cw - pw)
        photo = cv2.copyMakeBorder(
            photo, py // 2, py - py // 2, px // 2, px - px // 2, cv2.BORDER_REFLECT_101
        )
        ph, pw = photo.shape[:2]
    y0, x0 = int(rng.integers(ph - ch + 1)), int(rng.integers(pw - cw + 1))
    crop = photo[y0 : y0 + ch, x0 : x0 + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    interp = cv2.INTER_AREA if ch > h else cv2.INTER_CUBIC
    img = cv2.resize(np.ascontiguousarray(crop), (w, h), interpolation=interp).astype(np.float32)
    if np.ptp(img[..., 0] - img[..., 1]) < 1 and np.ptp(img[..., 1] - img[..., 2]) < 1:
        c0, c1 = palette[rng.choice(len(palette), 2, replace=False)]
        t = img[..., :1] / 255.0
        img = c0 * (1.0 - t) + c1 * t
    else:
        grey = img.mean(axis=2, keepdims=True)
        img = grey + rng.uniform(0.6, 1.3) * (img - grey)
        img *= rng.uniform(0.85, 1.15, 3).astype(np.float32)
    if rng.random() < 0.25:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.8, 3.0))
    return np.clip(img, 0, 255)


def _down(canvas: np.ndarray, w: int, h: int) -> np.ndarray:
    """Supersampled uint8 coverage -> float32 (h, w) in [0, 1] by area averaging."""
    return cv2.resize(canvas, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0


def _fixed(pts: np.ndarray, scale: float) -> np.ndarray:
    """Float points (px) -> int32 fixed-point coordinates for cv2 drawing with _SHIFT."""
    return np.round(pts * scale * (1 << _SHIFT)).astype(np.int32)


def _blob_polygon(rng, cx, cy, r, n=96, harmonics=5, rough=0.25) -> np.ndarray:
    """Star-shaped closed contour: float (n, 2) in px."""
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rad = np.ones(n)
    for k in range(1, harmonics + 1):
        rad += rng.normal(0, rough / k) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
    rad = np.clip(rad, 0.35, 1.8) * r
    sx, sy = rng.uniform(0.7, 1.3, 2)
    return np.stack([cx + sx * rad * np.cos(t), cy + sy * rad * np.sin(t)], 1)


def _fill_poly(polys, w, h, s=SUPERSAMPLE) -> np.ndarray:
    """Anti-aliased coverage of filled polygons: float32 (h, w) in [0, 1]."""
    canvas = np.zeros((h * s, w * s), np.uint8)
    cv2.fillPoly(canvas, [_fixed(p, s) for p in polys], 255, cv2.LINE_AA, _SHIFT)
    return _down(canvas, w, h)


# --- backgrounds -----------------------------------------------------------------------------
def make_background(rng: np.random.Generator, h: int, w: int, palette: np.ndarray) -> np.ndarray:
    """A natural-looking texture: uint8 (h, w, 3) RGB.

    Gradient + multi-scale colour noise, then some of: stripes, defocused shapes, sharp
    clutter (shapes, lines, text), fine grain; sometimes a global defocus; sensor noise.
    """
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    g = (np.cos(ang) * xx + np.sin(ang) * yy) / max(h, w)
    g = (g - g.min()) / max(float(g.max() - g.min()), 1e-6)
    c0, c1 = palette[rng.choice(5, 2, replace=False)]
    img = c0 + g[..., None] * (c1 - c0)
    mix = _blend_field(rng, h, w, palette[rng.permutation(5)[:3]], cells=(2, 4, 8, 16))
    img = img + rng.uniform(0.4, 0.9) * (mix - img)
    img *= (0.75 + 0.5 * _noise(rng, h, w, (3, 6, 12)))[..., None]

    extras = rng.permutation(4)[: rng.integers(1, 4)]
    if 0 in extras:  # stripes: fabric, blinds, bricks
        ang = rng.uniform(0, np.pi)
        period = rng.uniform(6, 60)
        coord = np.cos(ang) * xx + np.sin(ang) * yy
        coord += rng.uniform(0, 25) * _noise(rng, h, w, (2, 4))
        s = 0.5 + 0.5 * np.sin(2 * np.pi * coord / period)
        s = _smoothstep(s, 0.5 - rng.uniform(0.05, 0.5), 0.5 + rng.uniform(0.05, 0.5))
        img += rng.uniform(0.3, 0.8) * s[..., None] * (palette[rng.integers(5)] - img)
    if 1 in extras:  # defocused shapes: out-of-focus objects behind the subject
        layer = np.zeros((h, w, 3), np.float32)
        cover = np.zeros((h, w), np.float32)
        for _ in range(rng.integers(5, 25)):
            col = tuple(float(v) for v in palette[rng.integers(5)] * rng.uniform(0.6, 1.3))
            c = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
            ax = (int(rng.uniform(5, w / 4)), int(rng.uniform(5, h / 4)))
            if rng.random() < 0.6:
                ang = rng.uniform(0, 180)
                for dst, val in ((layer, col), (cover, 1.0)):
                    cv2.ellipse(dst, c, ax, ang, 0, 360, val, -1)
            else:
                p0, p1 = (c[0] - ax[0], c[1] - ax[1]), (c[0] + ax[0], c[1] + ax[1])
                for dst, val in ((layer, col), (cover, 1.0)):
                    cv2.rectangle(dst, p0, p1, val, -1)
        sigma = rng.uniform(2, 12)
        layer = cv2.GaussianBlur(layer, (0, 0), sigma)
        cover = cv2.GaussianBlur(cover, (0, 0), sigma)
        img += cover[..., None] * (layer / np.maximum(cover, 1e-3)[..., None] - img)
    if 2 in extras:  # sharp clutter: in-focus objects, edges, text
        u8 = np.clip(img, 0, 255).astype(np.uint8)
        for _ in range(rng.integers(10, 60)):
            col = tuple(
                float(v) for v in np.clip(palette[rng.integers(5)] * rng.uniform(0.5, 1.5), 0, 255)
            )
            p = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
            kind = rng.integers(4)
            if kind == 0:
                q = (int(p[0] + rng.normal(0, w / 6)), int(p[1] + rng.normal(0, h / 6)))
                cv2.line(u8, p, q, col, int(rng.integers(1, 4)), cv2.LINE_AA)
            elif kind == 1:
                radius, fill = int(rng.uniform(2, 25)), -1 if rng.random() < 0.6 else 2
                cv2.circle(u8, p, radius, col, fill, cv2.LINE_AA)
            elif kind == 2:
                q = (int(p[0] + rng.uniform(4, 60)), int(p[1] + rng.uniform(4, 60)))
                cv2.rectangle(u8, p, q, col, -1 if rng.random() < 0.6 else 1, cv2.LINE_AA)
            else:
                text = "".join(chr(int(c)) for c in rng.integers(65, 91, rng.integers(2, 8)))
                font, scale = cv2.FONT_HERSHEY_SIMPLEX, rng.uniform(0.3, 1.5)
                cv2.putText(u8, text, p, font, scale, col, 1, cv2.LINE_AA)
        img = u8.astype(np.float32)
    if 3 in extras:  # grain: foliage, gravel, carpet
        grain = _noise(rng, h, w, (w // 4, w // 2)) - 0.5
        img += rng.uniform(10, 50) * grain[..., None]
    if rng.random() < 0.4:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.8, 3.0))
    img += rng.uniform(0.5, 3.0) * rng.standard_normal((h, w, 1), dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --- foreground layers -----------------------------------------------------------------------
class _Layers:
    """Premultiplied RGBA accumulator, bottom to top: P (h, w, 3) 0-255, A (h, w) 0-1."""

    def __init__(self, h: int, w: int):
        self.P = np.zeros((h, w, 3), np.float32)
        self.A = np.zeros((h, w), np.float32)

    def over(self, colour: np.ndarray, alpha: np.ndarray) -> None:
        """Paint ``colour`` ((h, w, 3) or (3,), 0-255) with ``alpha`` (h, w) over the stack."""
        a = alpha[..., None]
        self.P = colour * a + (1.0 - a) * self.P
        self.A = alpha + (1.0 - alpha) * self.A


def _texture(rng, h, w, colours: np.ndarray) -> np.ndarray:
    """Foreground colour texture: float32 (h, w, 3) 0-255 (blotches, stripes or spots)."""
    tex = _blend_field(rng, h, w, colours[: rng.integers(2, 4)], cells=(3, 6, 12))
    r = rng.random()
    if r < 0.3:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        ang, period = rng.uniform(0, np.pi), rng.uniform(4, 30)
        s = 0.5 + 0.5 * np.sin(2 * np.pi * (np.cos(ang) * xx + np.sin(ang) * yy) / period)
        tex += (0.6 * _smoothstep(s, 0.3, 0.7))[..., None] * (colours[-1] - tex)
    elif r < 0.5:
        spots = _smoothstep(_noise(rng, h, w, (12, 24)), 0.6, 0.7)
        tex += (0.7 * spots)[..., None] * (colours[-1] - tex)
    tex *= (0.7 + 0.6 * _noise(rng, h, w, (2, 4, 8)))[..., None]
    tex += rng.uniform(2, 10) * (_noise(rng, h, w, (w // 3,)) - 0.5)[..., None]
    return tex


def _strands(rng, n, roots, normals, length, w, h, curl, flow, s=SUPERSAMPLE):
    """Draw ``n`` curved strands: coverage float32 (h, w) in [0, 1].

    Strands start at ``roots`` (m, 2) going out along ``normals`` (m, 2), bend with random
    curvature plus a shared ``flow`` direction, and taper: the root part is drawn thicker
    than the tip. Widths range from 1/s px (sub-pixel) to ~3 px.
    """
    idx = rng.integers(0, len(roots), n)
    steps = 16
    theta0 = np.arctan2(normals[idx, 1], normals[idx, 0]) + rng.normal(0, 0.35, n)
    lengths = rng.uniform(length[0], length[1], n)
    kappa = rng.normal(0, curl, n)[:, None] + rng.normal(0, curl / 2, (n, steps))
    theta = theta0[:, None] + np.cumsum(kappa, 1) / steps
    # Pull every strand gently towards the flow direction (gravity, wind, combing).
    theta += flow[1] * np.sin(flow[0] - theta) * np.linspace(0, 1, steps)[None]
    step = (lengths / steps)[:, None]
    pts = np.zeros((n, steps + 1, 2))
    pts[:, 0] = roots[idx] + rng.normal(0, 1.5, (n, 2))
    pts[:, 1:, 0] = pts[:, :1, 0] + np.cumsum(step * np.cos(theta), 1)
    pts[:, 1:, 1] = pts[:, :1, 1] + np.cumsum(step * np.sin(theta), 1)
    # Widths at supersampled scale: mostly thin, a few thick locks.
    thick = np.minimum(1 + rng.exponential(rng.uniform(0.8, 3.0), n).astype(int), 3 * s)
    canvas = np.zeros((h * s, w * s), np.uint8)
    fixed = _fixed(pts, s)
    for t in np.unique(thick):
        sel = np.flatnonzero(thick == t)
        cv2.polylines(canvas, list(fixed[sel]), False, 255, int(t), cv2.LINE_AA, _SHIFT)
        root_part = list(fixed[sel, : steps // 2 + 1])
        cv2.polylines(canvas, root_part, False, 255, int(t) + s // 2, cv2.LINE_AA, _SHIFT)
    return _down(canvas, w, h)


def _contour_points(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boundary points (m, 2) of a binary mask and their outward unit normals (m, 2)."""
    cs, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    pts = np.concatenate([c[:, 0] for c in cs]).astype(np.float32) if cs else np.zeros((1, 2))
    dist = cv2.distanceTransform((mask == 0).astype(np.uint8), cv2.DIST_L2, 3)
    gy, gx = np.gradient(cv2.GaussianBlur(dist, (0, 0), 3))
    xi = np.clip(pts[:, 0].astype(int), 0, mask.shape[1] - 1)
    yi = np.clip(pts[:, 1].astype(int), 0, mask.shape[0] - 1)
    nrm = np.stack([gx[yi, xi], gy[yi, xi]], 1)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-6)
    return pts, nrm


def solid_shape(rng, h: int, w: int, s: int = SUPERSAMPLE) -> np.ndarray:
    """An opaque object with a complex outline: coverage float32 (h, w) in [0, 1], 1 inside
    and a 1-2 px anti-aliased edge. Foliage (leaves on stems around a crown), twigs and wicker
    (thick crossing curves with holes between them), or a blob with cut-out holes."""
    canvas = np.zeros((h * s, w * s), np.uint8)
    side = min(h, w)
    cx, cy = w * rng.uniform(0.35, 0.65), h * rng.uniform(0.35, 0.65)
    radius = side * rng.uniform(0.25, 0.42)
    kind = rng.integers(3)
    if kind == 0:  # foliage
        for _ in range(rng.integers(25, 90)):
            ang, dist = rng.uniform(0, 2 * np.pi), radius * np.sqrt(rng.uniform(0.05, 1.0))
            px, py = cx + dist * np.cos(ang), cy + dist * np.sin(ang)
            length = side * rng.uniform(0.04, 0.14)
            width = length * rng.uniform(0.15, 0.45)
            tilt = np.degrees(ang) + rng.normal(0, 35)
            centre, axes = (int(px * s), int(py * s)), (int(length * s), int(width * s))
            cv2.ellipse(canvas, centre, axes, tilt, 0, 360, 255, -1, cv2.LINE_AA)
            stem = (np.array([[cx, cy], [px, py]]) * s).astype(np.int32)
            thick = max(1, int(side * s * rng.uniform(0.004, 0.01)))
            cv2.polylines(canvas, [stem], False, 255, thick, cv2.LINE_AA)
    elif kind == 1:  # twigs and wicker: thick curves crossing inside a round region
        for _ in range(rng.integers(6, 22)):
            a0 = rng.uniform(0, 2 * np.pi)
            t = np.linspace(0, rng.uniform(1.5, 4.0), 24)
            r = radius * (0.55 + 0.45 * np.sin(t * rng.uniform(0.5, 2.0) + rng.uniform(0, 6)))
            pts = np.stack([cx + r * np.cos(a0 + t), cy + r * np.sin(a0 + t)], 1) * s
            thick = max(s, int(side * s * rng.uniform(0.012, 0.04)))
            cv2.polylines(canvas, [pts.astype(np.int32)], False, 255, thick, cv2.LINE_AA)
    else:  # a solid blob with holes of many sizes
        blob = _blob_polygon(rng, cx, cy, radius, rough=0.35) * s
        cv2.fillPoly(canvas, [blob.astype(np.int32)], 255, cv2.LINE_AA)
        for _ in range(rng.integers(4, 30)):
            hx, hy = cx + rng.normal(0, radius / 2), cy + rng.normal(0, radius / 2)
            hr = side * rng.uniform(0.01, 0.06)
            hole = _blob_polygon(rng, hx, hy, hr, n=32, rough=0.3) * s
            cv2.fillPoly(canvas, [hole.astype(np.int32)], 0, cv2.LINE_AA)
    return _down(canvas, w, h)


def gappy_shape(rng, h: int, w: int, s: int = SUPERSAMPLE) -> np.ndarray:
    """Opaque structure with background showing through small gaps: coverage float32 (h, w)
    in [0, 1]. Branches (a recursive tree thinning from a trunk to 1 px twigs, sometimes in
    leaf), flower heads (petals around a disc with wedges of background between them), yarn
    (thick opaque strands a few px apart) or a coarse net (cords around 3-30 px holes). The
    gaps are where a network without colour cues paints opaque alpha: only the background's
    colour, seen in the known region around, tells that they are background."""
    canvas = np.zeros((h * s, w * s), np.uint8)
    side = min(h, w)
    cx, cy = w * rng.uniform(0.35, 0.65), h * rng.uniform(0.35, 0.65)
    radius = side * rng.uniform(0.28, 0.42)
    kind = rng.integers(4)
    if kind == 0:  # branches
        leafy = rng.random() < 0.5
        stack = [(cx, cy + radius, -np.pi / 2 + rng.normal(0, 0.2), radius * 0.45,
                  side * rng.uniform(0.025, 0.05), 0)]  # fmt: skip
        while stack:
            x, y, ang, length, thick, depth = stack.pop()
            # A gently bending limb: 8 points along a slowly turning heading.
            angs = ang + rng.normal(0, 0.25) * np.linspace(0, 1, 8)
            steps = np.stack([np.cos(angs), np.sin(angs)], 1) * (length / 7)
            pts = np.array([x, y]) + np.concatenate([[[0.0, 0.0]], np.cumsum(steps[1:], 0)])
            cv2.polylines(canvas, [_fixed(pts, s)], False, 255, max(1, int(thick * s)),
                          cv2.LINE_AA, _SHIFT)  # fmt: skip
            ex, ey = pts[-1]
            if depth >= 6 or thick < 0.3:
                if leafy:
                    axes = (int(side * s * rng.uniform(0.01, 0.03)),) * 2
                    axes = (axes[0], int(axes[1] * rng.uniform(0.3, 0.6)))
                    cv2.ellipse(canvas, (int(ex * s), int(ey * s)), axes,
                                np.degrees(angs[-1]), 0, 360, 255, -1, cv2.LINE_AA)  # fmt: skip
                continue
            for _ in range(rng.integers(2, 4)):
                stack.append((ex, ey, angs[-1] + rng.uniform(-0.9, 0.9),
                              length * rng.uniform(0.6, 0.85), thick * rng.uniform(0.55, 0.75),
                              depth + 1))  # fmt: skip
    elif kind == 1:  # flower heads
        for _ in range(rng.integers(2, 9)):
            fx, fy = cx + rng.normal(0, radius / 2), cy + rng.normal(0, radius / 2)
            fr = side * rng.uniform(0.08, 0.2)
            n_petals = int(rng.integers(5, 14))
            width = rng.uniform(0.15, 0.45) * np.pi * fr / n_petals
            a0 = rng.uniform(0, 2 * np.pi)
            for k in range(n_petals):
                a = a0 + 2 * np.pi * k / n_petals + rng.normal(0, 0.08)
                px, py = fx + 0.55 * fr * np.cos(a), fy + 0.55 * fr * np.sin(a)
                axes = (int(0.5 * fr * s), max(1, int(width * s)))
                cv2.ellipse(canvas, (int(px * s), int(py * s)), axes, np.degrees(a), 0, 360,
                            255, -1, cv2.LINE_AA)  # fmt: skip
            cv2.circle(canvas, (int(fx * s), int(fy * s)), int(fr * rng.uniform(0.15, 0.3) * s),
                       255, -1, cv2.LINE_AA)  # fmt: skip
            stem = np.array([[fx, fy], [cx + rng.normal(0, 5), cy + radius]])
            thick = max(1, int(side * s * rng.uniform(0.004, 0.012)))
            cv2.polylines(canvas, [_fixed(stem, s)], False, 255, thick, cv2.LINE_AA, _SHIFT)
    elif kind == 2:  # yarn: thick strands with gaps of a few px between them
        n = int(rng.integers(8, 30))
        gap = rng.uniform(3, 14)
        ang = rng.uniform(0, np.pi)
        d, nrm = np.array([np.cos(ang), np.sin(ang)]), np.array([-np.sin(ang), np.cos(ang)])
        t = np.linspace(-1, 1, 40)[:, None]
        for k in range(n):
            off = (k - n / 2) * gap
            wob = rng.uniform(1, 6) * np.sin(t * rng.uniform(2, 8) + rng.uniform(0, 6))
            span = radius * np.sqrt(max(1e-3, 1 - (off / radius) ** 2)) if abs(off) < radius else 0
            if span <= 2:
                continue
            pts = np.array([cx, cy]) + off * nrm + t * span * d + wob * nrm
            thick = max(s, int(gap * s * rng.uniform(0.35, 0.75)))
            cv2.polylines(canvas, [_fixed(pts, s)], False, 255, thick, cv2.LINE_AA, _SHIFT)
        knot = _blob_polygon(rng, cx, cy, radius * rng.uniform(0.15, 0.3)) * s
        cv2.fillPoly(canvas, [knot.astype(np.int32)], 255, cv2.LINE_AA)
    else:  # coarse net: opaque cords around holes
        hole = rng.uniform(4, 30)
        cord = max(s, int(hole * s * rng.uniform(0.12, 0.35)))
        net = np.zeros_like(canvas)
        n_lines = int(2 * side / hole) + 4
        ang = rng.uniform(0, np.pi / 2)
        for a in (ang, ang + rng.uniform(np.pi / 3, np.pi / 2)):
            d, nrm = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
            t = np.linspace(-1, 1, 24)[:, None] * side
            for k in range(n_lines):
                pts = np.array([cx, cy]) + (k - n_lines / 2) * hole * nrm + t * d
                pts = pts + rng.normal(0, hole * 0.05, pts.shape)
                cv2.polylines(net, [_fixed(pts, s)], False, 255, cord, cv2.LINE_AA, _SHIFT)
        region = np.zeros_like(canvas)
        blob = _blob_polygon(rng, cx, cy, radius, rough=0.2) * s
        cv2.fillPoly(region, [blob.astype(np.int32)], 255, cv2.LINE_AA)
        canvas = (net.astype(np.uint16) * region // 255).astype(np.uint8)
        cv2.polylines(canvas, [blob.astype(np.int32)], True, 255, cord * 2, cv2.LINE_AA)
    return _down(canvas, w, h)


def _add_hair(rng, layers: _Layers, body: np.ndarray, base: np.ndarray, amount: float):
    """Hair or fur grown from the body outline, in 2-3 opacity layers, over the body."""
    h, w = body.shape
    pts, nrm = _contour_points(body > 0.5)
    if rng.random() < 0.5:  # hair only on part of the outline (a head, a tail)
        centre = pts[rng.integers(len(pts))]
        keep = np.linalg.norm(pts - centre, axis=1) < rng.uniform(0.2, 0.6) * max(h, w)
        if keep.sum() > 10:
            pts, nrm = pts[keep], nrm[keep]
    scale = max(h, w) / 480.0
    fur = rng.random() < 0.35
    length = (4 * scale, 18 * scale) if fur else (20 * scale, rng.uniform(70, 160) * scale)
    curl = rng.uniform(0.5, 4.0)
    flow = (rng.uniform(0, 2 * np.pi), rng.uniform(0, 1.2))
    n_total = int(amount * (1500 if fur else rng.uniform(300, 900)) * scale)
    hair_col = base * rng.uniform(0.6, 1.3)
    for k in range(rng.integers(2, 4)):
        cov = _strands(rng, max(n_total // 3, 8), pts, nrm, length, w, h, curl, flow)
        opacity = rng.uniform(0.35, 1.0) if k else 1.0
        shade = np.clip(hair_col * rng.uniform(0.7, 1.3) + rng.normal(0, 15, 3), 0, 255)
        colour = shade * (0.75 + 0.5 * _noise(rng, h, w, (4, 16)))[..., None]
        layers.over(colour, cov * opacity)


def _add_transparent(rng, layers: _Layers, h: int, w: int, colours: np.ndarray, body: np.ndarray):
    """Veil, glass or smoke: regions with alpha well inside (0, 1).

    Usually placed across the body's outline (a veil over a head, a glass in a hand, smoke
    from a chimney), so part of it lies over opaque foreground as in real photographs.
    """
    kind = rng.integers(3)
    r = min(h, w) * rng.uniform(0.2, 0.4)
    cx, cy = w * rng.uniform(0.3, 0.7), h * rng.uniform(0.3, 0.7)
    if body.max() > 0.5 and rng.random() < 0.8:
        pts, nrm = _contour_points(body > 0.5)
        j = rng.integers(len(pts))
        cx, cy = pts[j] + nrm[j] * r * rng.uniform(0.1, 0.8)
        cx, cy = np.clip(cx, 0.15 * w, 0.85 * w), np.clip(cy, 0.15 * h, 0.85 * h)
    region = _fill_poly([_blob_polygon(rng, cx, cy, r, rough=0.15)], w, h)
    tint = colours[rng.integers(len(colours))] * rng.uniform(0.7, 1.3)
    if kind == 0:  # veil: sheer fabric with folds and a fine weave
        folds = _noise(rng, h, w, (3, 6))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        weave = 0.5 + 0.5 * np.sin(xx * rng.uniform(1.5, 3)) * np.sin(yy * rng.uniform(1.5, 3))
        a = (rng.uniform(0.15, 0.45) + 0.35 * folds + 0.1 * weave) * region
        if rng.random() < 0.5:
            region = cv2.GaussianBlur(region, (0, 0), rng.uniform(1, 4))
            a = np.minimum(a, region)
        colour = tint * (0.8 + 0.4 * folds)[..., None]
    elif kind == 1:  # glass: faint body, strong rim, a specular streak
        dist = cv2.distanceTransform((region > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
        rim = np.exp(-dist / rng.uniform(1.5, 5))
        a = region * (rng.uniform(0.08, 0.3) + rng.uniform(0.4, 0.7) * rim)
        streak = np.zeros((h, w), np.uint8)
        p0 = (int(cx - r * 0.5), int(cy - r * 0.6))
        p1 = (int(cx - r * 0.2), int(cy + r * 0.5))
        cv2.line(streak, p0, p1, 255, int(rng.integers(3, 12)), cv2.LINE_AA)
        streak = cv2.GaussianBlur(streak.astype(np.float32) / 255, (0, 0), 3) * region
        a = np.maximum(a, 0.8 * streak)
        colour = tint + streak[..., None] * (255 - tint)
    else:  # smoke: a soft, cloudy density field with no hard edge at all
        dens = _noise(rng, h, w, (2, 4, 8, 16, 32), persistence=0.7)
        blob = cv2.GaussianBlur(region, (0, 0), r * 0.4)
        a = rng.uniform(0.4, 0.85) * _smoothstep(
            dens * blob / max(float(blob.max()), 1e-6), 0.15, 0.8
        )
        grey = rng.uniform(120, 240)
        colour = np.full(3, grey, np.float32) * 0.7 + 0.3 * tint
    layers.over(colour, np.clip(a, 0, 1).astype(np.float32))


def _add_lace(rng, layers: _Layers, h: int, w: int, colours: np.ndarray, body: np.ndarray):
    """A net or lace panel (warped grid of thin threads) or a perforated body."""
    s = SUPERSAMPLE
    if rng.random() < 0.4 and body.max() > 0.5:  # perforate part of the body: 1-8 px holes
        inside = np.argwhere(body > 0.5)
        cy, cx = inside[rng.integers(len(inside))]
        r = min(h, w) * rng.uniform(0.12, 0.25)
        patch = _fill_poly([_blob_polygon(rng, cx, cy, r, rough=0.2)], w, h)
        holes = np.zeros((h * s, w * s), np.uint8)
        n = int(rng.uniform(300, 1200) * h * w / 480**2)
        centres = _fixed(np.stack([rng.uniform(0, w, n), rng.uniform(0, h, n)], 1), s)
        radii = (rng.uniform(0.6, 8, n) * s * (1 << _SHIFT)).astype(int)
        for c, rad in zip(centres, radii, strict=True):
            cv2.circle(holes, tuple(int(v) for v in c), int(rad), 255, -1, cv2.LINE_AA, _SHIFT)
        keep = 1.0 - _down(holes, w, h) * patch
        layers.A *= keep
        layers.P *= keep[..., None]
        return
    cx, cy, r = (
        w * rng.uniform(0.3, 0.7),
        h * rng.uniform(0.3, 0.7),
        min(h, w) * rng.uniform(0.25, 0.45),
    )
    region = _fill_poly([_blob_polygon(rng, cx, cy, r, rough=0.2)], w, h)
    # Warped grid: thread spacing 3-14 px, thread width 1/s - 2 px, 1-2 directions.
    canvas = np.zeros((h * s, w * s), np.uint8)
    period = rng.uniform(3, 14)
    thick = int(rng.integers(1, 2 * s))
    n_lines = int(2 * max(h, w) / period) + 2
    t = np.linspace(-0.2, 1.2, 48)
    for ang in rng.uniform(0, np.pi) + np.array([0, rng.uniform(np.pi / 4, np.pi / 2)]):
        off = (np.arange(n_lines) - n_lines / 2) * period
        d, nrm = np.array([np.cos(ang), np.sin(ang)]), np.array([-np.sin(ang), np.cos(ang)])
        span = max(h, w) * 1.5
        base = (
            np.array([w / 2, h / 2])
            + off[:, None, None] * nrm
            + ((t - 0.5) * span)[None, :, None] * d
        )
        wob = rng.uniform(0, 3) * np.sin(
            t[None, :, None] * rng.uniform(5, 20) + rng.uniform(0, 6, (n_lines, 1, 1))
        )
        cv2.polylines(
            canvas, list(_fixed(base + wob * nrm, s)), False, 255, thick, cv2.LINE_AA, _SHIFT
        )
    if rng.random() < 0.5:  # knots / embroidered motifs
        k = int(rng.uniform(20, 120))
        cs = _fixed(np.stack([rng.uniform(0, w, k), rng.uniform(0, h, k)], 1), s)
        radii = (rng.uniform(1, 4, k) * s * (1 << _SHIFT)).astype(int)
        for c, rad in zip(cs, radii, strict=True):
            cv2.circle(canvas, tuple(int(v) for v in c), int(rad), 255, -1, cv2.LINE_AA, _SHIFT)
    net = _down(canvas, w, h)
    # Threads are pushed through a smooth displacement so the grid looks like cloth.
    disp = rng.uniform(0, 6)
    mx = np.arange(w, dtype=np.float32)[None] + disp * (_noise(rng, h, w, (3,)) - 0.5)
    my = np.arange(h, dtype=np.float32)[:, None] + disp * (_noise(rng, h, w, (3,)) - 0.5)
    net = cv2.remap(net, mx, my, cv2.INTER_LINEAR)
    colour = colours[rng.integers(len(colours))] * (0.8 + 0.4 * _noise(rng, h, w, (4,)))[..., None]
    layers.over(colour, net * region * rng.uniform(0.7, 1.0))


def _soften(rng, layers: _Layers, strength: float) -> None:
    """Blur parts of the outline: defocus or motion blur, mixed with the sharp original.

    Works on premultiplied colour and alpha together, so colours stay consistent; a smooth
    random weight map keeps some of the boundary sharp beside the blurred part.
    """
    h, w = layers.A.shape
    if rng.random() < 0.5:
        sigma = rng.uniform(1.0, 5.0) * strength
        blur = lambda x: cv2.GaussianBlur(x, (0, 0), sigma)  # noqa: E731
    else:
        length = max(3, int(rng.uniform(5, 25) * strength))
        kernel = np.zeros((length, length), np.float32)
        cv2.line(kernel, (0, length // 2), (length - 1, length // 2), 1.0, 1, cv2.LINE_AA)
        rot = cv2.getRotationMatrix2D(((length - 1) / 2, (length - 1) / 2), rng.uniform(0, 180), 1)
        kernel = cv2.warpAffine(kernel, rot, (length, length))
        kernel /= kernel.sum()
        blur = lambda x: cv2.filter2D(x, -1, kernel, borderType=cv2.BORDER_CONSTANT)  # noqa: E731
    weight = _smoothstep(_noise(rng, h, w, (2, 3)), 0.35, 0.65)
    layers.P += weight[..., None] * (blur(layers.P) - layers.P)
    layers.A += weight * (blur(layers.A) - layers.A)


def make_foreground(
    rng: np.random.Generator,
    h: int,
    w: int,
    palette: np.ndarray,
    primary: str,
    photo: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One foreground object: (fg uint8 (h, w, 3) RGB, alpha uint8 (h, w) 0-255).

    ``primary`` (one of PRIMARY) is always present; the other structures are added at random.
    ``palette`` (5, 3) is used for the colours, so they can match a background's. With a
    ``photo`` (uint8 RGB) the body is textured by a view of it half of the time. Without
    one, the random stream is consumed exactly as before photos existed, so the stored
    validation and test composites do not change.
    """
    layers = _Layers(h, w)
    colours = palette[rng.permutation(len(palette))]
    # The body: a solid blob, sometimes several, occupying the middle of the frame.
    side = min(h, w)
    cx, cy, r = (
        w * rng.uniform(0.35, 0.65),
        h * rng.uniform(0.4, 0.7),
        side * rng.uniform(0.18, 0.32),
    )
    polys = [_blob_polygon(rng, cx, cy, r)]
    if rng.random() < 0.4:
        cx, cy, r = (
            w * rng.uniform(0.2, 0.8),
            h * rng.uniform(0.2, 0.8),
            side * rng.uniform(0.08, 0.18),
        )
        polys.append(_blob_polygon(rng, cx, cy, r))
    body = _fill_poly(polys, w, h)
    if primary == "solid":
        body = solid_shape(rng, h, w)
    if primary == "gaps":
        body = gappy_shape(rng, h, w)
    if primary == "transparent" and rng.random() < 0.5:
        # Mostly the semi-transparent material (a glass, a puff of smoke) with a small
        # opaque part, so every trimap keeps a definite-foreground region.
        cx, cy, r = (
            w * rng.uniform(0.3, 0.7),
            h * rng.uniform(0.6, 0.8),
            side * rng.uniform(0.1, 0.18),
        )
        body = _fill_poly([_blob_polygon(rng, cx, cy, r)], w, h)
    if photo is not None and rng.random() < 0.5:
        texture = photo_crop(rng, photo, h, w, colours)
    else:
        texture = _texture(rng, h, w, colours)
    layers.over(texture, body)
    if primary == "lace" or rng.random() < 0.25:
        _add_lace(rng, layers, h, w, colours, body)
    if primary == "transparent" or rng.random() < 0.25:
        _add_transparent(rng, layers, h, w, colours, body)
    if body.max() > 0.5 and (primary == "hair" or rng.random() < 0.5):
        amount = 1.0 if primary == "hair" else rng.uniform(0.3, 0.7)
        _add_hair(rng, layers, body, colours[rng.integers(len(colours))], amount)
    if primary == "soft" or rng.random() < 0.3:
        _soften(rng, layers, 1.0 if primary == "soft" else 0.5)
    a = np.clip(layers.A, 0.0, 1.0)
    alpha = np.rint(a * 255).astype(np.uint8)
    # Un-premultiply; where alpha is ~0 fill with a smooth extension of the nearby colours
    # (normalised convolution) so resizing the foreground never bleeds black into edges.
    fill = (
        cv2.GaussianBlur(layers.P, (0, 0), 8)
        / np.maximum(cv2.GaussianBlur(a, (0, 0), 8), 1e-4)[..., None]
    )
    fg = np.where(a[..., None] > 1e-3, layers.P / np.maximum(a, 1e-3)[..., None], fill)
    return np.clip(np.rint(fg), 0, 255).astype(np.uint8), alpha


# --- composites and trimaps ------------------------------------------------------------------
def stored_composite(fg: np.ndarray, bg: np.ndarray, alpha_u8: np.ndarray) -> np.ndarray:
    """The composite written to val/ and test/: compose.composite rounded to uint8."""
    return np.rint(composite(fg, bg, alpha_u8 / np.float32(255.0))).astype(np.uint8)


def band_trimap(alpha_u8: np.ndarray, radius: int) -> np.ndarray:
    """The fixed-band trimap of the stored val/ and test/ splits: compose.morph_trimap with
    OpenCV's elliptical kernel of size 2*radius + 1 (``radius`` px on each side of the edge,
    like a hand-drawn test trimap) - a fixed rule, unlike the random discs of training."""
    k = band_kernel(radius)
    return morph_trimap(alpha_u8, k, k)


def trimap_radius(radius_at_360: float, shape: tuple[int, ...]) -> int:
    """Trimap band radius in px for an image of ``shape`` (h, w, ...): ``radius_at_360``
    scaled by min(h, w) / 360, at least 1."""
    return max(1, round(radius_at_360 * min(shape[:2]) / 360))


# --- generation jobs -------------------------------------------------------------------------
def _side(rng, lo_hi: tuple[int, int]) -> int:
    return int(rng.integers(lo_hi[0], lo_hi[1] + 1))


def _write(path: Path, img: np.ndarray, jpeg: bool = False) -> None:
    """Write an RGB or grey uint8 image (PNG lossless, JPEG quality 92)."""
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, 92] if jpeg else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    if not cv2.imwrite(str(path), img, params):
        raise OSError(f"could not write {path}: disk full or folder not writable?")


def _split_user_bgs(files: list[str]) -> tuple[list[str], list[str]]:
    """User photos -> (training, evaluation) lists: the last fifth is kept for val/test
    when there are at least 10 photos; with fewer both splits share them."""
    if len(files) < 10:
        return files, files
    n_eval = len(files) // 5
    return files[:-n_eval], files[-n_eval:]


def _load_user_bg(path: Path, max_side: int) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"--bg-dir: cannot read image {path} (corrupt or not an image?)")
    scale = max_side / max(img.shape[:2])
    if scale < 1:
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _fit_bg(bg: np.ndarray, w: int, h: int) -> np.ndarray:
    """Official compositing rule: compose.fit_background, then the top-left window."""
    return fit_background(bg, (h, w))[:h, :w]


def _job(args: tuple) -> str:
    """One unit of work, run in a worker process: writes its files under ``tmp``."""
    kind, i, seed, sizes_d, tmp, user_bgs, photos = args
    sizes, tmp = Sizes(**sizes_d), Path(tmp)
    if kind == "bg":
        rng = _rng(seed, _K_BG, i)
        prng = _rng(seed, _K_PHOTO_BG, i)
        if user_bgs:
            train_bgs, _ = _split_user_bgs(user_bgs)
            img = _load_user_bg(Path(train_bgs[i % len(train_bgs)]), sizes.bg_size[1])
        elif photos and prng.random() < PHOTO_BG_SHARE:
            photo = _read_photo(photos[int(prng.integers(len(photos)))])
            h, w = _side(prng, sizes.bg_size), _side(prng, sizes.bg_size)
            img = photo_crop(prng, photo, h, w, _palette(seed, 0, i))
            img += prng.uniform(0.5, 3.0) * prng.standard_normal((h, w, 1), dtype=np.float32)
            img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
        else:
            img = make_background(
                rng, _side(rng, sizes.bg_size), _side(rng, sizes.bg_size), _palette(seed, 0, i)
            )
        _write(tmp / "bg" / f"bg_{i:04d}.jpg", img, jpeg=True)
        return "bg"
    if kind == "fg":
        rng = _rng(seed, _K_TRAIN_FG, i)
        h, w = _side(rng, sizes.fg_size), _side(rng, sizes.fg_size)
        # About a third of the foregrounds take the colours of one of their own backgrounds.
        pal_j = (i * sizes.bg_per_fg + int(rng.integers(sizes.bg_per_fg))) % max(sizes.n_bg, 1)
        pal = _palette(seed, 0, pal_j) if rng.random() < 0.35 else _palette(seed, 1, i)
        photo = _read_photo(photos[i % len(photos)]) if photos else None
        fg, alpha = make_foreground(rng, h, w, pal, TRAIN_PRIMARY[i % len(TRAIN_PRIMARY)], photo)
        _write(tmp / "fg" / f"fg_{i:04d}.png", fg)
        _write(tmp / "alpha" / f"fg_{i:04d}.png", alpha)
        return "fg"
    # Evaluation split: its own foregrounds and backgrounds (never used for training).
    split, per, (w, h) = (
        ("val", sizes.val_per_fg, sizes.val_size)
        if kind == "val"
        else ("test", sizes.test_per_fg, sizes.test_size)
    )
    key, v = (_K_VAL_FG, VERSION) if split == "val" else (_K_TEST_FG, TEST_STREAMS)
    rng = _rng(seed, key, i, version=v)
    # About a third of the foregrounds take the colours of their first background.
    pal = (
        _palette(seed, 2, key, i, 0, version=v)
        if rng.random() < 0.35
        else _palette(seed, 3, key, i, version=v)
    )
    kinds = VAL_PRIMARY if split == "val" else PRIMARY
    fg, alpha = make_foreground(rng, h, w, pal, kinds[i % len(kinds)])
    out = tmp / split
    for k in range(per):
        name = f"{split}_fg_{i:03d}_{k}.png"
        brng = _rng(seed, _K_EVAL_BG, key, i, k, version=v)
        if user_bgs:
            _, eval_bgs = _split_user_bgs(user_bgs)
            first = 0 if split == "val" else sizes.n_val_fg * sizes.val_per_fg  # no overlap
            j = (first + i * per + k) % len(eval_bgs)
            photo = _load_user_bg(Path(eval_bgs[j]), 2 * max(w, h))
            bg = _fit_bg(photo, w, h)
        else:
            bg = make_background(brng, h, w, _palette(seed, 2, key, i, k, version=v))
        # Unknown band 5-15 px at 360 px, scaled with the image like a hand-drawn trimap.
        radius = trimap_radius(_rng(seed, _K_TRIMAP, key, i, k, version=v).uniform(5, 15), (h, w))
        trimap = band_trimap(alpha, radius)
        while radius > 1 and not (trimap == 255).any():  # keep a definite-fg region
            radius -= 1
            trimap = band_trimap(alpha, radius)
        _write(out / "fg" / name, fg)
        _write(out / "bg" / name, bg)
        _write(out / "alpha_copy" / name, alpha)
        _write(out / "merged" / name, stored_composite(fg, bg, alpha))
        _write(out / "trimaps" / name, trimap)
    return split


def _init_worker() -> None:
    cv2.setNumThreads(1)  # the processes are the parallelism; avoid oversubscribing 2 cores


def generate(
    out: str | os.PathLike,
    seed: int = 0,
    sizes: Sizes | None = None,
    bg_dir: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = True,
    photo_dir: str | os.PathLike | None = "auto",
) -> Path:
    """Generate the whole set into the (new or empty) folder ``out``; returns it.

    ``photo_dir``: photographs for training backgrounds and textures (:func:`list_photos`).

    Writes ``meta.json`` and then the ``COMPLETE`` marker last. Not atomic by itself:
    :func:`ensure_synthetic` generates into a temporary folder and renames it.
    ``workers`` defaults to min(2, cpu count); the output is the same for any value.
    """
    from tqdm import tqdm

    sizes = sizes or Sizes()
    out = Path(out)
    user_bgs = _list_user_bgs(bg_dir) if bg_dir else []
    photos = [str(p) for p in list_photos(photo_dir)]
    dirs = ["fg", "alpha", "bg"] + [
        f"{s}/{d}" for s in ("val", "test") for d in ("merged", "alpha_copy", "trimaps", "fg", "bg")
    ]
    for d in dirs:
        (out / d).mkdir(parents=True, exist_ok=True)
    n_bg = sizes.n_bg if sizes.n_train_fg else 0
    sd = asdict(sizes)
    user = [str(p) for p in user_bgs]
    # Longest jobs (one evaluation foreground with all its composites) first: shorter tail.
    common = (seed, sd, str(out), user, photos)
    jobs = [("test", i, *common) for i in range(sizes.n_test_fg)]
    jobs += [("val", i, *common) for i in range(sizes.n_val_fg)]
    jobs += [("fg", i, *common) for i in range(sizes.n_train_fg)]
    jobs += [("bg", j, *common) for j in range(n_bg)]
    workers = min(2, os.cpu_count() or 1) if workers is None else max(1, workers)
    bar = tqdm(total=len(jobs), desc="synthetic data", unit="item", disable=not progress)
    with bar:
        if workers == 1 or len(jobs) < 8:
            for j in jobs:
                _job(j)
                bar.update()
        else:
            with ProcessPoolExecutor(
                workers, initializer=_init_worker, mp_context=_mp_context()
            ) as ex:
                for _ in ex.map(_job, jobs, chunksize=1):
                    bar.update()
    fg_names = [f"fg_{i:04d}.png" for i in range(sizes.n_train_fg)]
    bg_names = [
        f"bg_{(i * sizes.bg_per_fg + k) % n_bg:04d}.jpg"
        for i in range(sizes.n_train_fg)
        for k in range(sizes.bg_per_fg)
    ]
    (out / "training_fg_names.txt").write_text("".join(n + "\n" for n in fg_names))
    (out / "training_bg_names.txt").write_text("".join(n + "\n" for n in bg_names))
    meta = {
        "name": META_NAME,
        "version": VERSION,
        "generator": GENERATOR,
        "seed": int(seed),
        "sizes": sd,
        "bg_dir": str(Path(bg_dir).resolve()) if bg_dir else None,
        "photos": [Path(p).name for p in photos],
        "counts": {
            "train_fg": sizes.n_train_fg,
            "bg": n_bg,
            "train_pairs": len(bg_names),
            "val": sizes.n_val_fg * sizes.val_per_fg,
            "test": sizes.n_test_fg * sizes.test_per_fg,
        },
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    _write_marker(out)
    return out


def _mp_context():
    import multiprocessing

    # spawn: a fork of a process that already runs torch/OpenMP threads can deadlock.
    return multiprocessing.get_context("spawn")


def _image_folder(folder: str | os.PathLike, flag: str) -> list[Path]:
    """The images in ``folder``, sorted; FileNotFoundError naming ``flag`` when there are none."""
    d = Path(folder)
    if not d.is_dir():
        raise FileNotFoundError(f"{flag} {d}: not a folder")
    files = sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_EXTS)
    if not files:
        raise FileNotFoundError(f"{flag} {d}: no images ({', '.join(IMAGE_EXTS)}) found")
    return files


def _list_user_bgs(bg_dir: str | os.PathLike) -> list[Path]:
    return _image_folder(bg_dir, "--bg-dir")


def skimage_photo_dir() -> Path | None:
    """scikit-image's bundled data folder when the package is installed (not imported)."""
    import importlib.util

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    return folder if folder.is_dir() else None


def list_photos(photo_dir: str | os.PathLike | None = "auto") -> list[Path]:
    """Photographs for training backgrounds and foreground textures, sorted.

    ``"auto"``: the photographs scikit-image ships (:data:`SKIMAGE_PHOTOS`) when it is
    installed, else none; ``None`` or ``"none"``: none (procedural textures only); a folder:
    every image in it (FileNotFoundError when it is missing or holds no image).
    """
    if photo_dir is None or str(photo_dir) == "none":
        return []
    if str(photo_dir) == "auto":
        folder = skimage_photo_dir()
        if folder is None:
            return []
        return [folder / n for n in SKIMAGE_PHOTOS if (folder / n).is_file()]
    return _image_folder(photo_dir, "--photo-dir")


# --- cache -----------------------------------------------------------------------------------
def _manifest(root: Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != MARKER
    }


def _write_marker(root: Path) -> None:
    tmp = root / f".{MARKER}.tmp"
    tmp.write_text(json.dumps(_manifest(root), indent=0, sort_keys=True))
    os.replace(tmp, root / MARKER)


def is_complete(
    root: str | os.PathLike, seed: int | None = None, sizes: Sizes | None = None
) -> bool:
    """True when ``root`` holds a finished set: marker present, every file of its manifest
    there with its recorded size, made by this VERSION and GENERATOR (this file's code) and,
    when given, with this seed and these sizes."""
    root = Path(root)
    try:
        manifest = json.loads((root / MARKER).read_text())
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    if meta.get("version") != VERSION or meta.get("generator") != GENERATOR:
        return False
    if seed is not None and meta.get("seed") != seed:
        return False
    if sizes is not None and meta.get("sizes") != json.loads(json.dumps(asdict(sizes))):
        return False
    for rel, size in manifest.items():
        try:
            if (root / rel).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def cache_base() -> Path:
    """Base of the cache: $DIM_CACHE_DIR, else <repo>/.cache (git-ignored)."""
    return Path(os.environ.get("DIM_CACHE_DIR") or REPO_ROOT / ".cache")


def _files_key(files: list[Path]) -> str:
    key = "\n".join(f"{p.resolve()}:{p.stat().st_size}" for p in files).encode()
    return hashlib.sha1(key).hexdigest()[:8]


def default_root(
    seed: int = 0,
    sizes: Sizes | None = None,
    bg_dir: str | os.PathLike | None = None,
    photo_dir: str | os.PathLike | None = "auto",
) -> Path:
    """<cache>/synthetic/v{VERSION}-s{seed}-{tag}; ``bg_dir`` and the photographs add a hash
    of their file lists, so another folder (or scikit-image version) is another set."""
    tag = (sizes or Sizes()).tag()
    if bg_dir:
        tag += "-u" + _files_key(_list_user_bgs(bg_dir))
    photos = list_photos(photo_dir)
    if photos:
        tag += "-p" + _files_key(photos)
    return cache_base() / "synthetic" / f"v{VERSION}-s{seed}-{tag}"


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[bool]:
    """Exclusive inter-process lock on ``path``; yields whether a real lock is held.

    Uses fcntl.flock (POSIX). Where that is missing it yields False and the atomic rename
    in :func:`ensure_synthetic` alone keeps the cache consistent (work may be duplicated).
    """
    try:
        import fcntl
    except ImportError:
        yield False
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _looks_like_ours(root: Path) -> bool:
    """Only empty folders or folders this module made are ever replaced."""
    if not root.exists() or not any(root.iterdir()):
        return True
    try:
        return json.loads((root / "meta.json").read_text()).get("name") == META_NAME
    except (OSError, ValueError, AttributeError):
        return False


def ensure_synthetic(
    root: str | os.PathLike | None = None,
    seed: int = 0,
    *,
    force: bool = False,
    bg_dir: str | os.PathLike | None = None,
    photo_dir: str | os.PathLike | None = "auto",
    workers: int | None = None,
    progress: bool = True,
    **sizes,
) -> Path:
    """Path to a finished synthetic set, generating it first when needed.

    root: the folder; default :func:`default_root` (under <repo>/.cache or $DIM_CACHE_DIR).
    sizes: fields of :class:`Sizes` (n_train_fg, n_bg, bg_per_fg, n_val_fg, val_per_fg,
        n_test_fg, test_per_fg, fg_size, bg_size, val_size, test_size); unknown names raise.
    bg_dir: a folder of the user's photos to use instead of the generated backgrounds.
    photo_dir: photographs mixed into the training backgrounds and foreground textures
        (:func:`list_photos`; default: the ones scikit-image ships).

    A folder that is complete for this VERSION, seed and sizes is reused untouched; a
    partial, corrupted or different one is regenerated (``force`` always regenerates).
    Safe when several processes call it at once: they serialise on a lock file beside the
    folder, and the set is built in a temporary sibling folder renamed into place only
    when finished, so a killed generation never leaves a folder that looks complete.
    """
    unknown = set(sizes) - {f.name for f in fields(Sizes)}
    if unknown:
        raise TypeError(f"ensure_synthetic: unknown size(s) {sorted(unknown)}; see Sizes")
    sz = Sizes(**sizes)
    root = Path(root) if root is not None else default_root(seed, sz, bg_dir, photo_dir)
    if not force and is_complete(root, seed, sz):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with _lock(root.parent / f".{root.name}.lock") as locked:
        if not force and is_complete(root, seed, sz):
            return root  # another process finished it while we waited
        if not _looks_like_ours(root):
            raise FileExistsError(
                f"{root} exists and is not a synthetic data folder (no meta.json of ours): "
                "refusing to overwrite it; pass a new or empty folder"
            )
        if locked:  # temporary folders of killed runs (a live run would hold the lock)
            for stale in root.parent.glob(f".{root.name}.tmp-*"):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            generate(
                tmp,
                seed,
                sz,
                bg_dir=bg_dir,
                workers=workers,
                progress=progress,
                photo_dir=photo_dir,
            )
            if root.exists():
                old = root.parent / f".{root.name}.tmp-old-{uuid.uuid4().hex[:8]}"
                os.replace(root, old)
                shutil.rmtree(old, ignore_errors=True)
            try:
                os.replace(tmp, root)
            except OSError:
                if not is_complete(root, seed, sz):  # lost a lock-free race to a finished set?
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


# --- CLI -------------------------------------------------------------------------------------
_SIZE_HELP = {
    "n_train_fg": "training foregrounds",
    "n_bg": "training backgrounds",
    "bg_per_fg": "backgrounds per training foreground",
    "n_val_fg": "validation foregrounds",
    "val_per_fg": "validation composites per foreground",
    "n_test_fg": "test foregrounds",
    "test_per_fg": "test composites per foreground",
    "fg_size": "training foreground side range, px",
    "bg_size": "training background side range, px",
    "val_size": "validation composite width,height",
    "test_size": "test composite width,height",
}


@declare("pair", "-5,-1", "0,10", "x")
def _pair(s: str) -> tuple[int, int]:
    try:
        a, b = (int(v) for v in s.lower().replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected two positive integers like 400,512 or 480x360, got {s!r}"
        ) from None
    if a < 1 or b < 1:
        raise argparse.ArgumentTypeError(f"expected two positive integers, got {s!r}")
    return a, b


@declare("photo-dir", "<missing>")
def _photo_dir(s: str) -> str:
    if s not in ("auto", "none") and not Path(s).is_dir():
        raise argparse.ArgumentTypeError(f"{s!r} is not a folder (nor 'auto' or 'none')")
    return s


def main(argv: list[str] | None = None) -> Path:
    """CLI: generate (or find) the set and print where it is."""
    p = OneLineParser(
        description="Generate the built-in synthetic matting set (Adobe-style folder).",
        epilog="Without --out the set goes to the cache folder that ensure_synthetic() uses.",
    )
    p.add_argument("--out", type=output("dir", Path), help="output folder (default: the cache)")
    p.add_argument("--seed", type=number(int, 0), default=0, help="random seed (default 0)")
    p.add_argument("--force", action="store_true", help="regenerate even if already complete")
    p.add_argument(
        "--bg-dir", type=existing("dir", convert=Path), help="use your own photos as backgrounds"
    )
    p.add_argument(
        "--photo-dir",
        type=_photo_dir,
        default="auto",
        help="photographs mixed into training backgrounds and textures: a folder, 'auto' "
        "(the ones scikit-image ships, when installed) or 'none'",
    )
    p.add_argument(
        "--workers", type=number(int, 1), default=None, help="processes (default min(2, cores))"
    )
    defaults = Sizes()
    for f in fields(Sizes):
        v = getattr(defaults, f.name)
        pair = isinstance(v, tuple)
        p.add_argument(
            "--" + f.name.replace("_", "-"),
            type=_pair if pair else number(int, 0),
            default=v,
            metavar="A,B" if pair else "N",
            help=f"{_SIZE_HELP[f.name]} (default {f'{v[0]},{v[1]}' if pair else v})",
        )
    a = p.parse_args(argv)
    t0 = time.time()
    try:
        root = ensure_synthetic(
            a.out,
            a.seed,
            force=a.force,
            bg_dir=a.bg_dir,
            photo_dir=a.photo_dir,
            workers=a.workers,
            **{f.name: getattr(a, f.name) for f in fields(Sizes)},
        )
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        p.error(str(e))
    counts = json.loads((root / "meta.json").read_text())["counts"]
    print(f"synthetic set v{VERSION} seed {a.seed} {counts} in {root} ({time.time() - t0:.1f} s)")
    return root


if __name__ == "__main__":
    main()
