"""The matting pipeline on arrays, shared by ``predict.py`` and the interactive page
(``demo.py``): alpha (DIM network or closed-form), foreground colours, RGBA cut-out and a
composite on a new background.

Memory is bounded by the photo's size times a few bytes per pixel: the two pymatting solvers
(closed-form alpha, about 1.1 kB per pixel, and multilevel foreground, about 100 B per pixel,
both measured) run on windows around the unknown region (:func:`unknown_windows`), never on the
whole photo, and the composite is built in strips. Everything at full resolution is uint8 except
the alpha a network returns.
"""

from __future__ import annotations

import numpy as np

from data import compose
from utils.inference import Tile, plan_tiles

# Window cores and context (px). Closed-form's sparse solve costs ~1.1 kB per pixel, so its
# windows are 640x640 at most (~0.45 GB); the foreground solver's ~100 B per pixel allow more.
CF_CORE, CF_CONTEXT = 512, 64
FG_CORE, FG_CONTEXT = 1024, 64
STRIP_ROWS = 256  # rows of the composite built at a time (float32 work arrays)


def unknown_windows(trimap: np.ndarray, core: int, context: int) -> list[Tile]:
    """The tiles of :func:`utils.inference.plan_tiles` (cores of ``core`` px, windows grown by
    ``context`` px, clipped to the image) whose core holds an unknown pixel of ``trimap``."""
    h, w = trimap.shape
    return [
        t
        for t in plan_tiles(h, w, core, context, stride=1)
        if (trimap[t.core] == compose.TRIMAP_UNKNOWN).any()
    ]


def closed_form_alpha(
    image_u8: np.ndarray, trimap: np.ndarray, core: int = CF_CORE, context: int = CF_CONTEXT
) -> np.ndarray:
    """Closed-form matting (Levin et al. 2008) of a photo of any size: float32 (H, W) in [0, 1].

    Solved window by window around the unknown region (:func:`unknown_windows`), each window as
    :func:`utils.baselines.closed_form` solves a whole image; the cores are pasted, so memory is
    that of one window. A window whose context holds no known pixel at all gets 0.5 (the
    trimap-only value): nothing there says which side it is on. With one window covering the
    image the result is exactly the whole-image solve.
    """
    from data.testsets import MattingExample
    from utils.baselines import closed_form, trimap_only

    alpha = trimap_only(MattingExample("input", image_u8, trimap, None))
    for tile in unknown_windows(trimap, core, context):
        t = trimap[tile.window]
        fg, bg = (t == compose.TRIMAP_FG).any(), (t == compose.TRIMAP_BG).any()
        if fg and bg:  # the solve keeps the known pixels exactly
            part = closed_form(MattingExample("window", image_u8[tile.window], t, None))
            alpha[tile.core] = part[tile.inner]
        elif fg or bg:  # one side only: the energy's minimum is that side's constant
            alpha[tile.core] = float(fg)
    return alpha


def estimate_foreground(
    image_u8: np.ndarray,
    alpha: np.ndarray,
    method: str = "ml",
    trimap: np.ndarray | None = None,
) -> np.ndarray:
    """Foreground colours F (H, W, 3) uint8 such that image ~ alpha*F + (1-alpha)*B.

    "ml": pymatting's multilevel foreground estimation (imported here: numba compiles it on
    first use), solved on windows around the pixels where 0 < alpha < 1 (or, given
    ``trimap``, its unknown region); elsewhere F is the image itself (where alpha is 1 that is
    exact, where it is 0 F is never seen). "none": the image's own colours everywhere
    (background colour bleeds into soft edges). alpha: (H, W) float in [0, 1].
    """
    if method not in ("ml", "none"):
        raise ValueError(f"fg method must be 'ml' or 'none', got {method!r}")
    fg = np.array(image_u8, np.uint8)
    if method == "none" or max(image_u8.shape[:2]) < 2:  # one pixel: F = the pixel
        return fg
    from pymatting import estimate_foreground_ml

    if trimap is None:
        soft = (alpha > 0) & (alpha < 1)
        trimap = np.where(soft, compose.TRIMAP_UNKNOWN, 0).astype(np.uint8)
    for tile in unknown_windows(trimap, FG_CORE, FG_CONTEXT):
        image = image_u8[tile.window]
        if min(image.shape[:2]) < 2:  # pymatting's levels need two pixels a side
            continue
        part = estimate_foreground_ml(image / 255.0, alpha[tile.window].astype(np.float64))
        fg[tile.core] = np.round(np.clip(part[tile.inner], 0.0, 1.0) * 255.0)
    return fg


def cutout(fg_u8: np.ndarray, alpha_u8: np.ndarray) -> np.ndarray:
    """RGBA uint8 (H, W, 4) from foreground colours (H, W, 3) uint8 and alpha (H, W) uint8."""
    return np.concatenate([fg_u8, alpha_u8[..., None]], axis=2)


def composite_on(fg_u8: np.ndarray, alpha01: np.ndarray, background_u8: np.ndarray) -> np.ndarray:
    """The cut-out over a new background, RGB uint8 (H, W, 3), rounded: compose.composite of
    foreground colours ``fg_u8`` (H, W, 3) and the background with alpha in [0, 1],
    ``STRIP_ROWS`` rows at a time so its float32 work arrays stay small whatever the size."""
    out = np.empty(background_u8.shape, np.uint8)
    for y in range(0, out.shape[0], STRIP_ROWS):
        rows = slice(y, y + STRIP_ROWS)
        strip = compose.composite(fg_u8[rows], background_u8[rows], alpha01[rows])
        out[rows] = np.round(np.clip(strip, 0.0, 255.0))
    return out


def matte(
    model,
    image: np.ndarray,
    trimap: np.ndarray,
    fg_method: str = "ml",
    background: np.ndarray | None = None,
    **inference_kwargs,
) -> dict[str, np.ndarray]:
    """Run the whole pipeline on arrays: {"alpha": uint8 (H, W), "rgba": (H, W, 4),
    "composite": (H, W, 3) when ``background`` is given}. ``model`` is a DIM network, an ONNX
    export loaded by :func:`utils.onnx_inference.load_onnx_model` (torch is then never
    imported), or None for closed-form matting (no checkpoint needed;
    :func:`closed_form_alpha`). ``inference_kwargs`` go to
    :func:`utils.inference.predict_alpha` (device, amp, tile, overlap, max_side), or to
    :meth:`utils.onnx_inference.OnnxMatting.predict_alpha` (tile, overlap, max_side)."""
    from utils.onnx_inference import OnnxMatting

    if model is None:
        alpha = closed_form_alpha(image, trimap)
    elif isinstance(model, OnnxMatting):
        alpha = model.predict_alpha(image, trimap, **inference_kwargs)
    else:
        from utils.inference import predict_alpha

        alpha = predict_alpha(model, image, trimap, **inference_kwargs)
    alpha_u8 = np.round(alpha * 255.0).astype(np.uint8)
    del alpha
    alpha01 = alpha_u8.astype(np.float32) / 255.0  # as saved
    fg = estimate_foreground(image, alpha01, fg_method, trimap)
    out = {"alpha": alpha_u8, "rgba": cutout(fg, alpha_u8)}
    if background is not None:
        out["composite"] = composite_on(
            fg, alpha01, compose.cover_background(background, alpha_u8.shape)
        )
    return out
