"""A tiny Adobe-style demo folder (smooth blobs with soft edges and strands on noisy
backgrounds): for tests and the data benchmark, where the built-in set's realism is not needed
and a few foregrounds of a chosen size are.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from utils.image_io import write_png

PathLike = str | os.PathLike


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int) -> np.ndarray:
    """float32 (h, w) in [0, 1]: random grid of ``cells`` per long side, bicubic-upscaled."""
    gh, gw = max(2, cells * h // max(h, w) + 2), max(2, cells * w // max(h, w) + 2)
    out = cv2.resize(rng.random((gh, gw), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
    lo, hi = float(out.min()), float(out.max())
    return (out - lo) / max(hi - lo, 1e-6)


def demo_foreground(
    rng: np.random.Generator, h: int, w: int, band: float = 0.04
) -> tuple[np.ndarray, np.ndarray]:
    """A random smooth blob with a soft edge (unknown band) and a few thin strands.

    Returns (uint8 (h, w, 3) RGB with photo-like noise, uint8 (h, w) alpha).
    """
    field = _smooth_noise(rng, h, w, 4)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    centre = 1.0 - np.hypot((yy - h / 2) / (h / 2), (xx - w / 2) / (w / 2))
    f = 0.6 * field + 0.6 * centre
    a = np.clip((f - 0.55) / band + 0.5, 0.0, 1.0)
    strands = np.zeros((h, w), np.uint8)
    for _ in range(12):
        p = (int(rng.integers(w)), int(rng.integers(h)))
        q = (int(p[0] + rng.normal(0, w / 6)), int(p[1] + rng.normal(0, h / 6)))
        cv2.line(strands, p, q, int(rng.integers(80, 256)), 1, cv2.LINE_AA)
    a = np.maximum(a, strands.astype(np.float32) / 255.0)
    alpha = np.rint(a * 255).astype(np.uint8)
    colour = np.stack([_smooth_noise(rng, h, w, 6) for _ in range(3)], -1) * 200 + 30
    colour += rng.normal(0, 4, colour.shape).astype(np.float32)
    return np.clip(np.rint(colour), 0, 255).astype(np.uint8), alpha


def demo_background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A random textured background: uint8 (h, w, 3) RGB."""
    base = np.stack([_smooth_noise(rng, h, w, 8) for _ in range(3)], -1) * 220 + 15
    base += rng.normal(0, 6, base.shape).astype(np.float32)
    return np.clip(np.rint(base), 0, 255).astype(np.uint8)


def make_demo_folder(
    root: PathLike,
    n_fg: int = 6,
    n_bg: int = 12,
    fg_hw: tuple[int, int] = (360, 480),
    bg_hw: tuple[int, int] = (240, 320),
    bg_per_fg: int = 4,
    seed: int = 0,
) -> Path:
    """Write a small Adobe-like folder: fg/*.png, alpha/*.png, bg/*.jpg and both name lists
    (fg i uses list lines bg_per_fg*i ..). Sizes are (H, W). Returns ``root``."""
    r = Path(root)
    for d in ("fg", "alpha", "bg"):
        (r / d).mkdir(parents=True, exist_ok=True)
    fg_names = [f"fg_{i:03d}.png" for i in range(n_fg)]
    bg_names = [f"bg_{j:03d}.jpg" for j in range(n_bg)]
    for i, name in enumerate(fg_names):
        fg, alpha = demo_foreground(np.random.default_rng([seed, 1, i]), *fg_hw)
        write_png(r / "fg" / name, fg)
        write_png(r / "alpha" / name, alpha)
    for j, name in enumerate(bg_names):
        bg = demo_background(np.random.default_rng([seed, 2, j]), *bg_hw)
        _, buf = cv2.imencode(".jpg", cv2.cvtColor(bg, cv2.COLOR_RGB2BGR))
        buf.tofile(r / "bg" / name)
    listed = [bg_names[(i * bg_per_fg + k) % n_bg] for i in range(n_fg) for k in range(bg_per_fg)]
    (r / "training_fg_names.txt").write_text("".join(n + "\n" for n in fg_names))
    (r / "training_bg_names.txt").write_text("".join(n + "\n" for n in listed))
    return r
