"""THE sample layout: the one place that knows channel indices and value scales.

A training sample is a pair of float32 tensors:

``data``  (4, H, W)
    0:3  RGB composite, ImageNet-normalised: (rgb/255 - mean) / std
    3    trimap, scaled (t/255 - 0.5) / 0.5, so background -1, unknown ~0, foreground +1

``label`` (11, H, W)
    0:3  background RGB, 0-255
    3:6  foreground RGB, 0-255
    6:9  merged (composite) RGB, 0-255; equals alpha*fg + (1-alpha)*bg
    9    alpha, 0-1
    10   unknown-region mask (trimap == 128), {0, 1}

Every accessor accepts a single sample (C, H, W) or a batch (N, C, H, W), numpy or torch,
and returns a view with the channel axis kept (so alpha is (..., 1, H, W)).
"""

from __future__ import annotations

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

TRIMAP_BG, TRIMAP_UNKNOWN, TRIMAP_FG = 0, 128, 255

DATA_CHANNELS = 4
DATA_IMAGE = slice(0, 3)
DATA_TRIMAP = slice(3, 4)

LABEL_CHANNELS = 11
LABEL_BG = slice(0, 3)
LABEL_FG = slice(3, 6)
LABEL_MERGED = slice(6, 9)
LABEL_ALPHA = slice(9, 10)
LABEL_MASK = slice(10, 11)


def _channels(x, sl: slice):
    return x[..., sl, :, :]


# --- accessors -------------------------------------------------------------------------------
def image(data):
    """Normalised RGB of ``data``: (..., 3, H, W)."""
    return _channels(data, DATA_IMAGE)


def trimap(data):
    """Scaled trimap of ``data``: (..., 1, H, W) in [-1, 1]."""
    return _channels(data, DATA_TRIMAP)


def bg(label):
    """Background RGB of ``label``: (..., 3, H, W), 0-255."""
    return _channels(label, LABEL_BG)


def fg(label):
    """Foreground RGB of ``label``: (..., 3, H, W), 0-255."""
    return _channels(label, LABEL_FG)


def merged(label):
    """Composite RGB of ``label``: (..., 3, H, W), 0-255."""
    return _channels(label, LABEL_MERGED)


def alpha(label):
    """Ground-truth alpha of ``label``: (..., 1, H, W), 0-1."""
    return _channels(label, LABEL_ALPHA)


def mask(label):
    """Unknown-region mask of ``label``: (..., 1, H, W), {0, 1}."""
    return _channels(label, LABEL_MASK)


# --- scaling ---------------------------------------------------------------------------------
def scale_trimap(trimap_u8: np.ndarray) -> np.ndarray:
    """Trimap in 0/128/255 (any dtype) -> float32 in [-1, 1] as stored in ``data``."""
    return (np.asarray(trimap_u8, dtype=np.float32) / 255.0 - 0.5) / 0.5


def unscale_trimap(scaled):
    """Inverse of :func:`scale_trimap`: values in [-1, 1] -> 0..255 (same array type)."""
    return (scaled * 0.5 + 0.5) * 255.0


def unknown_from_scaled(scaled):
    """Unknown region of a scaled trimap: boolean, True where the trimap was 128."""
    return abs(scaled) < 0.5


def normalize_image(rgb: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) in 0-255 (uint8 or float) -> float32 (3, H, W), ImageNet-normalised."""
    # Channel-first first, then (3, 1, 1) constants: numpy broadcasts a trailing length-3 axis
    # about 5x slower, and this is the data loader's hottest line.
    x = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1).copy()
    scale = 1.0 / (255.0 * np.asarray(IMAGENET_STD, np.float32))
    shift = np.asarray(IMAGENET_MEAN, np.float32) / np.asarray(IMAGENET_STD, np.float32)
    x *= scale.reshape(3, 1, 1)
    x -= shift.reshape(3, 1, 1)
    return x


def denormalize_image(norm):
    """Normalised RGB (..., 3, H, W) -> RGB in [0, 1] (same array type, numpy or torch)."""
    shape = (3, 1, 1)
    if isinstance(norm, np.ndarray):
        mean = np.asarray(IMAGENET_MEAN, np.float32).reshape(shape)
        std = np.asarray(IMAGENET_STD, np.float32).reshape(shape)
    else:
        mean = norm.new_tensor(IMAGENET_MEAN).reshape(shape)
        std = norm.new_tensor(IMAGENET_STD).reshape(shape)
    return norm * std + mean


# --- builders --------------------------------------------------------------------------------
def make_data(rgb: np.ndarray, trimap_u8: np.ndarray) -> np.ndarray:
    """Build ``data`` (4, H, W) float32 from RGB (H, W, 3) 0-255 and trimap (H, W) 0/128/255."""
    h, w = trimap_u8.shape[:2]
    if rgb.shape[:2] != (h, w):
        raise ValueError(f"image is {rgb.shape[:2]} but trimap is {(h, w)}: sizes must match")
    out = np.empty((DATA_CHANNELS, h, w), np.float32)
    out[DATA_IMAGE] = normalize_image(rgb)
    out[DATA_TRIMAP] = scale_trimap(trimap_u8)[None]
    return out


def make_label(
    bg_rgb: np.ndarray,
    fg_rgb: np.ndarray,
    merged_rgb: np.ndarray,
    alpha01: np.ndarray,
    trimap_u8: np.ndarray,
) -> np.ndarray:
    """Build ``label`` (11, H, W) float32.

    Colours are (H, W, 3) in 0-255, ``alpha01`` is (H, W) in [0, 1], and the mask is
    derived from ``trimap_u8`` (H, W) as trimap == 128.
    """
    h, w = alpha01.shape[:2]
    out = np.empty((LABEL_CHANNELS, h, w), np.float32)
    out[LABEL_BG] = np.asarray(bg_rgb, np.float32).transpose(2, 0, 1)
    out[LABEL_FG] = np.asarray(fg_rgb, np.float32).transpose(2, 0, 1)
    out[LABEL_MERGED] = np.asarray(merged_rgb, np.float32).transpose(2, 0, 1)
    out[LABEL_ALPHA] = np.asarray(alpha01, np.float32)[None]
    out[LABEL_MASK] = (np.asarray(trimap_u8) == TRIMAP_UNKNOWN).astype(np.float32)[None]
    return out


# --- trimaps: the checks every entry point uses ------------------------------------------------
TRIMAP_VALUES = (TRIMAP_BG, TRIMAP_UNKNOWN, TRIMAP_FG)


class TrimapError(ValueError):
    """A trimap that cannot be used; the message says why and how to fix the file."""


def check_image_and_trimap(image_u8: np.ndarray, trimap_u8: np.ndarray) -> None:
    """Raise :class:`TrimapError` unless ``image_u8`` is (H, W, 3) and ``trimap_u8`` (H, W)."""
    if image_u8.ndim != 3 or image_u8.shape[2] != 3:
        raise TrimapError(f"image must be (H, W, 3) RGB, got shape {image_u8.shape}")
    if trimap_u8.ndim != 2:
        raise TrimapError(f"trimap must be (H, W), got shape {trimap_u8.shape}")


def check_trimap_values(trimap_u8: np.ndarray, source: str = "the trimap") -> None:
    """Raise :class:`TrimapError` for a trimap that is not purely 0/128/255, saying what it
    looks like instead (a 0/1 mask, a 0/1/2 label map, a JPEG, an interpolated resize)."""
    values, counts = np.unique(trimap_u8, return_counts=True)
    bad = ~np.isin(values, TRIMAP_VALUES)
    if not bad.any():
        return
    frac = counts[bad].sum() / trimap_u8.size
    shown = ", ".join(str(int(v)) for v in values[:12]) + (" ..." if len(values) > 12 else "")
    if set(values.tolist()) <= {0, 1}:
        why = "It looks like a 0/1 mask, not a trimap: mark the unknown band with 128."
    elif set(values.tolist()) <= {0, 1, 2}:
        why = "It looks like a 0/1/2 label map: map 0 -> 0, 1 -> 128, 2 -> 255."
    elif str(source).lower().endswith((".jpg", ".jpeg")):
        why = "It is a JPEG: compression changes values near edges; save trimaps as PNG."
    else:
        why = (
            "It looks anti-aliased, blurred or resized with interpolation (resize trimaps "
            "with nearest-neighbour) or saved lossily."
        )
    raise TrimapError(
        f"{source}: a trimap must hold only 0 (background), 128 (unknown) and 255 (foreground); "
        f"read as 8-bit grey it has {len(values)} distinct values ({shown}) and "
        f"{100 * frac:.1f}% of its pixels are none of the three. {why}"
    )


def missing_trimap_regions(trimap_u8: np.ndarray) -> list[str]:
    """Which of "foreground", "background" and "unknown" the trimap has no pixel of (matting
    needs some sure foreground and background, and an unknown band to solve)."""
    regions = {"foreground": TRIMAP_FG, "background": TRIMAP_BG, "unknown": TRIMAP_UNKNOWN}
    return [name for name, value in regions.items() if not (trimap_u8 == value).any()]
