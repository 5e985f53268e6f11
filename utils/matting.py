"""The matting pipeline on arrays, shared by ``predict.py`` and the interactive page
(``demo.py``): alpha (DIM network or closed-form), foreground colours, RGBA cut-out and a
composite on a new background."""

from __future__ import annotations

import numpy as np

from data import compose


def estimate_foreground(image_u8: np.ndarray, alpha: np.ndarray, method: str = "ml") -> np.ndarray:
    """Foreground colours F (H, W, 3) float32 in [0, 1] such that image ~ alpha*F + (1-alpha)*B.

    "ml": pymatting's multilevel foreground estimation (imported here: numba compiles it on
    first use); "none": the image's own colours (background colour bleeds into soft edges).
    """
    image = image_u8.astype(np.float64) / 255.0
    if method == "none":
        return image.astype(np.float32)
    if method != "ml":
        raise ValueError(f"fg method must be 'ml' or 'none', got {method!r}")
    if max(image.shape[:2]) < 2:  # one pixel: F = the pixel (pymatting's levels need two)
        return image.astype(np.float32)
    from pymatting import estimate_foreground_ml

    fg = estimate_foreground_ml(image, alpha.astype(np.float64))
    return np.clip(fg, 0.0, 1.0).astype(np.float32)


def cutout(fg01: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """RGBA uint8 (H, W, 4): colours ``fg01`` (H, W, 3) in [0, 1], alpha (H, W) in [0, 1]."""
    rgba = np.concatenate([fg01, alpha[..., None]], axis=2)
    return np.round(np.clip(rgba, 0.0, 1.0) * 255.0).astype(np.uint8)


def composite_on(fg01: np.ndarray, alpha: np.ndarray, background_u8: np.ndarray) -> np.ndarray:
    """The cut-out over a new background, RGB uint8: compose.composite of F (in [0, 1], scaled
    to 0-255) and the background, rounded."""
    out = compose.composite(fg01 * np.float32(255.0), background_u8, alpha)
    return np.round(np.clip(out, 0.0, 255.0)).astype(np.uint8)


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
    imported), or None for closed-form matting (no checkpoint needed). ``inference_kwargs`` go
    to :func:`utils.inference.predict_alpha` (device, amp, tile, overlap, max_side), or to
    :meth:`utils.onnx_inference.OnnxMatting.predict_alpha` (tile, overlap, max_side)."""
    from utils.onnx_inference import OnnxMatting

    if model is None:
        from data.testsets import MattingExample
        from utils.baselines import closed_form

        alpha = closed_form(MattingExample("input", image, trimap, None))
    elif isinstance(model, OnnxMatting):
        alpha = model.predict_alpha(image, trimap, **inference_kwargs)
    else:
        from utils.inference import predict_alpha

        alpha = predict_alpha(model, image, trimap, **inference_kwargs)
    alpha = np.round(alpha * 255.0).astype(np.uint8).astype(np.float32) / 255.0  # as saved
    fg = estimate_foreground(image, alpha, fg_method)
    out = {"alpha": np.round(alpha * 255.0).astype(np.uint8), "rgba": cutout(fg, alpha)}
    if background is not None:
        out["composite"] = composite_on(
            fg, alpha, compose.cover_background(background, alpha.shape)
        )
    return out
