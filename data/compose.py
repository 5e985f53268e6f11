"""Online compositing: pure numpy/OpenCV functions, no file I/O, no randomness of their own.

Every random choice takes an ``np.random.Generator`` argument, so a sample is a function of
(inputs, rng state) and nothing else. Conventions:

* images are (H, W, 3) uint8 RGB; alpha mattes (H, W) uint8 0-255 unless a name says ``01``
  (float32 in [0, 1]); trimaps (H, W) uint8 in {0, 128, 255};
* coordinates are (row, col) = (y, x) in pixels; a crop "box" is its top-left corner
  (y0, x0). Training crops always lie inside the image (:func:`crop_origin`); the generic
  :func:`crop_padded` also accepts windows that run past it and zero-pads the outside.

One training sample (:func:`make_sample`), as the paper draws them (Xu et al. 2017):

1. the side of the window to cut drawn from ``cut_sizes``, capped at the image's short side
   (:func:`fit_cut`); it is resized to ``crop_size``, the side the network sees;
2. crop placed around a random unknown pixel (0 < alpha < 255; the hard edge of a binary matte
   when there is none; anywhere when the matte is constant): centred on it, or shifted just
   enough to stay inside the image near a border (:func:`crop_origin`). No training sample
   contains padding: zeros would teach the network a black "background" no photo has;
3. trimap of the crop from the alpha: foreground (alpha == 255) eroded and non-zero region
   dilated by discs of random size k in ``k_range``; unknown = 128;
4. background: upscaled (only when smaller than the foreground) as the official
   ``Composition_code.py`` does, a random foreground-sized window of it, resampled straight
   into the crop's output grid (one interpolation instead of upscale + crop + resize);
5. foreground/alpha resized to ``crop_size`` with INTER_AREA (INTER_LINEAR when
   enlarging), trimap with INTER_NEAREST;
6. horizontal flip with probability ``flip_p``;
7. composite ``alpha*fg + (1-alpha)*bg`` on the resized crop, so the identity the
   compositional loss relies on holds exactly for the returned arrays.

Only the crop window of the foreground is ever read or converted, so a memory-mapped
foreground costs a window copy, not a full decode.

Trimap kernels: a "kernel of size k" is the digital disc {dx^2 + dy^2 <= ((k-1)/2)^2}
(:func:`disc_kernel`, elliptical with equal axes). Erosion/dilation by it is computed as a
threshold on exact Euclidean distance maps (:func:`distance_maps`), which gives the same
result as ``cv2.erode``/``cv2.dilate`` with that kernel (tested) but costs a comparison per
pixel once the maps are cached.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

TRIMAP_BG, TRIMAP_UNKNOWN, TRIMAP_FG = 0, 128, 255
# Squared distances are stored as uint8 with 255 meaning "255 or more", so cached distance
# maps are exact for disc radii below sqrt(255): kernel sizes up to 32.
K_MAX_CACHED = 32


# --- trimaps ---------------------------------------------------------------------------------
def disc_radius_sq(k: int) -> float:
    """Squared radius of the disc kernel of size ``k`` (k >= 1): ((k-1)/2)^2."""
    return ((int(k) - 1) / 2.0) ** 2


def disc_kernel(k: int) -> np.ndarray:
    """The disc structuring element of size ``k``: uint8 (2h+1, 2h+1), h = floor((k-1)/2).

    k = 1 and 2 are the single pixel (no-op); odd k gives a k x k round kernel.
    """
    if k < 1:
        raise ValueError(f"kernel size must be >= 1, got {k}")
    h = (int(k) - 1) // 2
    yy, xx = np.mgrid[-h : h + 1, -h : h + 1]
    return (yy * yy + xx * xx <= disc_radius_sq(k)).astype(np.uint8)


def draw_kernel_sizes(rng: np.random.Generator, k_range: tuple[int, int]) -> tuple[int, int]:
    """Erosion and dilation kernel sizes, each uniform in [k_range[0], k_range[1]]."""
    lo, hi = int(k_range[0]), int(k_range[1])
    if not 1 <= lo <= hi:
        raise ValueError(f"k_range must satisfy 1 <= lo <= hi, got {k_range}")
    ke, kd = rng.integers(lo, hi + 1, size=2)
    return int(ke), int(kd)


def _as_alpha_u8(alpha: np.ndarray) -> np.ndarray:
    a = np.asarray(alpha)
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind == "f":
        return np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ValueError(f"alpha must be uint8 0-255 or float in [0, 1], got {a.dtype}")


def morph_trimap(alpha: np.ndarray, erode: np.ndarray, dilate: np.ndarray) -> np.ndarray:
    """THE trimap rule: foreground = (alpha == 255) eroded by the structuring element
    ``erode``; unknown = (alpha > 0) dilated by ``dilate``, minus that foreground; background
    elsewhere. Every pixel with 0 < alpha < 255 is unknown.

    alpha: (H, W) uint8 0-255 or float in [0, 1]; erode, dilate: uint8 structuring elements
    (:func:`disc_kernel` for training trimaps, :func:`band_kernel` for fixed-band test
    trimaps). Returns uint8 (H, W) in {0, 128, 255}.
    """
    a = _as_alpha_u8(alpha)
    fg = cv2.erode((a == 255).view(np.uint8), erode)
    region = cv2.dilate((a > 0).view(np.uint8), dilate)
    out = np.where(region > 0, TRIMAP_UNKNOWN, TRIMAP_BG).astype(np.uint8)
    out[fg > 0] = TRIMAP_FG
    return out


def band_kernel(radius: int) -> np.ndarray:
    """OpenCV's elliptical structuring element of size 2*radius + 1: the fixed band of the
    built-in set's stored test and validation trimaps (a hand-drawn-like band of ``radius``
    pixels on each side of the edge)."""
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


def trimap_from_mask(mask: np.ndarray, band: int, soft: tuple[int, int] = (16, 240)) -> np.ndarray:
    """Trimap from a rough object mask (a segmentation output, an editor's selection): the
    training morphology (:func:`morph_trimap` with disc kernels) with an unknown band of
    ``band`` pixels on each side of the mask's edge.

    mask: (H, W) uint8 0-255 (or float in [0, 1]); values below ``soft[0]`` count as
    background, above ``soft[1]`` as object, anything between (a soft mask's uncertain zone)
    is unknown as well. Returns uint8 (H, W) in {0, 128, 255}.
    """
    if band < 1:
        raise ValueError(f"band must be at least 1 pixel, got {band}")
    m = _as_alpha_u8(mask)
    lo, hi = soft
    cleaned = np.where(m < lo, 0, np.where(m > hi, 255, 128)).astype(np.uint8)
    k = disc_kernel(2 * int(band) + 1)
    return morph_trimap(cleaned, k, k)


def trimap_from_strokes(
    painted: np.ndarray,
    band: int,
    foreground: np.ndarray | None = None,
    background: np.ndarray | None = None,
    unknown: np.ndarray | None = None,
) -> np.ndarray:
    """Trimap from a person's brush strokes (the interactive page): the roughly ``painted``
    object, holes filled (an outline counts as its inside), gets the :func:`trimap_from_mask`
    band of ``band`` pixels; then the fixing strokes win, in this order: ``foreground`` (sure
    object), ``background`` (sure background), ``unknown`` (hair, fur, glass: let the
    matting decide).

    All masks are bool (H, W); ``foreground`` strokes count as painted object too. Returns
    uint8 (H, W) in {0, 128, 255}; all 0 when nothing is painted.
    """
    from scipy.ndimage import binary_fill_holes

    shape = painted.shape
    none = np.zeros(shape, bool)
    fg = none if foreground is None else foreground.astype(bool)
    bg = none if background is None else background.astype(bool)
    unk = none if unknown is None else unknown.astype(bool)
    obj = binary_fill_holes(painted.astype(bool) | fg)
    trimap = (
        trimap_from_mask(obj.astype(np.uint8) * 255, band)
        if obj.any()
        else np.zeros(shape, np.uint8)
    )
    trimap[fg] = 255
    trimap[bg] = 0
    trimap[unk] = 128
    return trimap


def band_pixels(spec: str | float, hw: tuple[int, int]) -> int:
    """``--band``: "12" pixels, or "1.5%" of the image diagonal (at least 1 pixel)."""
    text = str(spec).strip()
    try:
        if text.endswith("%"):
            value = float(text[:-1]) / 100.0 * math.hypot(*hw)
        else:
            value = float(text)
    except ValueError:
        raise ValueError(f"--band {spec!r}: expected pixels (e.g. 12) or a percentage of the "
                         "image diagonal (e.g. 1.5%)") from None  # fmt: skip
    if not value > 0:
        raise ValueError(f"--band {spec!r} must be positive")
    return max(1, round(value))


def trimap_from_alpha(
    alpha: np.ndarray, rng: np.random.Generator, k_range: tuple[int, int] = (1, 30)
) -> np.ndarray:
    """Random training trimap of a whole matte: :func:`morph_trimap` with disc kernels of
    sizes ke, kd drawn by :func:`draw_kernel_sizes` (the paper's random dilation)."""
    ke, kd = draw_kernel_sizes(rng, k_range)
    return morph_trimap(alpha, disc_kernel(ke), disc_kernel(kd))


def distance_maps(alpha: np.ndarray) -> np.ndarray:
    """Exact squared Euclidean distances that define every trimap of ``alpha``.

    Returns uint8 (H, W, 2), values clipped to 255:
    [..., 0] distance^2 from each pixel to the nearest pixel with alpha < 255 (0 there);
    [..., 1] distance^2 from each pixel to the nearest pixel with alpha > 0 (0 there).
    As with cv2.erode/dilate's default border, nothing outside the array counts.
    """
    a = _as_alpha_u8(alpha)
    out = np.empty((*a.shape, 2), np.uint8)
    for ch, src in enumerate((a == 255, a == 0)):
        d = cv2.distanceTransform(src.view(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        np.minimum(np.rint(np.square(np.minimum(d, 16.0))), 255.0, out=d)
        out[..., ch] = d
    return out


def trimap_from_distances(dist2: np.ndarray, ke: int, kd: int) -> np.ndarray:
    """Trimap from :func:`distance_maps` and kernel sizes: uint8 (H, W) in {0, 128, 255}.

    Same result as :func:`trimap_from_alpha` with those kernel sizes (ke, kd <= 32).
    """
    if max(ke, kd) > K_MAX_CACHED:
        raise ValueError(f"distance maps are exact for kernel sizes <= {K_MAX_CACHED}")
    d_fg, d_region = cv2.split(np.ascontiguousarray(dist2))
    # Distances are integers: d > r^2 <=> d > floor(r^2). cv2.compare gives 0/255 masks.
    fg = cv2.compare(d_fg, math.floor(disc_radius_sq(ke)), cv2.CMP_GT)
    region = cv2.compare(d_region, math.floor(disc_radius_sq(kd)), cv2.CMP_LE)
    # The eroded foreground lies inside the dilated region, so max() layers 255 over 128.
    return cv2.max(cv2.bitwise_and(region, TRIMAP_UNKNOWN), fg)


def quantize_trimap(trimap: np.ndarray) -> np.ndarray:
    """Snap a trimap read from disk to {0, 128, 255}: < 64 -> 0, >= 192 -> 255, else 128.

    Exact trimaps pass unchanged; JPEG noise or 127-for-unknown conventions are fixed.
    """
    t = np.asarray(trimap)
    out = np.full(t.shape, TRIMAP_UNKNOWN, np.uint8)
    out[t < 64] = TRIMAP_BG
    out[t >= 192] = TRIMAP_FG
    return out


# --- crop placement --------------------------------------------------------------------------
def unknown_candidates(alpha: np.ndarray) -> np.ndarray:
    """Flat indices (int32, row-major) of pixels a crop may be centred on.

    The fractional pixels 0 < alpha < 255 (unknown in every trimap drawn from this matte);
    for a binary matte the pixels along its edge (3x3 morphological gradient); empty for a
    constant matte.
    """
    a = _as_alpha_u8(alpha)
    idx = np.flatnonzero((a > 0) & (a < 255))
    if idx.size == 0:
        edge = cv2.morphologyEx(
            (a > 0).view(np.uint8), cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)
        )
        idx = np.flatnonzero(edge)
    return idx.astype(np.int32)


def pick_centre(
    candidates: np.ndarray, shape: tuple[int, int], rng: np.random.Generator
) -> tuple[int, int]:
    """A random (y, x) among ``candidates`` (flat indices into ``shape``); any pixel if empty."""
    h, w = shape
    if len(candidates) == 0:
        return int(rng.integers(h)), int(rng.integers(w))
    y, x = divmod(int(candidates[rng.integers(len(candidates))]), w)
    return y, x


def fit_cut(size: int, shape: tuple[int, ...]) -> int:
    """The side of the window cut from an image of ``shape`` (H, W[, C]): ``size``, or the
    short side when the image is smaller. The cut is resized to ``crop_size`` anyway, so a smaller
    crop is just a different scale, where a padded one would hold rows of zeros."""
    return max(1, min(size, shape[0], shape[1]))


def crop_origin(centre: tuple[int, int], size: int, shape: tuple[int, ...]) -> tuple[int, int]:
    """Top-left (y0, x0) of the ``size`` x ``size`` window around ``centre`` in an image of
    ``shape`` (H, W[, C]): centred on it (pixel (size//2, size//2) is ``centre``) where that
    fits, else shifted just enough to lie inside the image, so ``centre`` is still inside the
    window. Along a side shorter than ``size`` the window is centred on the image (the only
    case that needs :func:`crop_padded`'s padding; :func:`fit_cut` avoids it)."""
    origin = []
    for c, n in zip(centre, shape[:2], strict=True):
        if size <= n:
            origin.append(min(max(c - size // 2, 0), n - size))
        else:
            origin.append((n - size) // 2)
    return origin[0], origin[1]


def crop_padded(
    arr: np.ndarray, y0: int, x0: int, h: int, w: int, fill: float | Sequence[float] = 0
) -> np.ndarray:
    """Window [y0, y0+h) x [x0, x0+w) of ``arr`` (H, W[, C]); outside the array = ``fill``.

    Reads only the overlapping part (cheap on memory-mapped arrays). Returns a new
    C-contiguous array of ``arr``'s dtype; ``fill`` may be per channel.
    """
    H, W = arr.shape[:2]
    ya, yb = max(y0, 0), min(y0 + h, H)
    xa, xb = max(x0, 0), min(x0 + w, W)
    chans = arr.shape[2] if arr.ndim == 3 else 1
    if ya < yb and xa < xb and chans <= 4 and arr.dtype in (np.uint8, np.float32):
        # One pass (copy + border) instead of fill-then-copy.
        value = np.broadcast_to(np.asarray(fill, np.float64), (chans,)).tolist()
        out = cv2.copyMakeBorder(
            arr[ya:yb, xa:xb],
            ya - y0,
            y0 + h - yb,
            xa - x0,
            x0 + w - xb,
            cv2.BORDER_CONSTANT,
            value=value + [0.0] * (4 - chans),
        )
        return out.reshape((h, w, *arr.shape[2:]))
    out = np.empty((h, w, *arr.shape[2:]), arr.dtype)
    out[...] = fill
    if ya < yb and xa < xb:
        out[ya - y0 : yb - y0, xa - x0 : xb - x0] = arr[ya:yb, xa:xb]
    return out


def crop_view(
    arr: np.ndarray, y0: int, x0: int, h: int, w: int, fill: float | Sequence[float] = 0
) -> np.ndarray:
    """As :func:`crop_padded`, but a view into ``arr`` (no copy) when the window lies
    inside it. Treat the result as read-only."""
    if y0 >= 0 and x0 >= 0 and y0 + h <= arr.shape[0] and x0 + w <= arr.shape[1]:
        return arr[y0 : y0 + h, x0 : x0 + w]
    return crop_padded(arr, y0, x0, h, w, fill)


# --- backgrounds -----------------------------------------------------------------------------
def fitted_size(bg_hw: tuple[int, int], fg_hw: tuple[int, int]) -> tuple[int, int]:
    """(H, W) of the background after the official fit: when it is smaller than the
    foreground on either side, scaled by the larger of the two ratios, rounded up."""
    (bh, bw), (h, w) = bg_hw, fg_hw
    ratio = max(w / bw, h / bh)
    if ratio > 1:
        return math.ceil(bh * ratio), math.ceil(bw * ratio)
    return bh, bw


def fit_background(bg: np.ndarray, fg_hw: tuple[int, int]) -> np.ndarray:
    """Official background fit (``Composition_code.py``): bicubic upscale to
    :func:`fitted_size` when smaller than the foreground, else unchanged."""
    vh, vw = fitted_size(bg.shape[:2], fg_hw)
    if (vh, vw) == bg.shape[:2]:
        return bg
    return cv2.resize(np.asarray(bg), (vw, vh), interpolation=cv2.INTER_CUBIC)


def random_window(
    fitted_hw: tuple[int, int], fg_hw: tuple[int, int], rng: np.random.Generator
) -> tuple[int, int]:
    """Random top-left (y, x) of a foreground-sized window inside the fitted background."""
    return (
        int(rng.integers(fitted_hw[0] - fg_hw[0] + 1)),
        int(rng.integers(fitted_hw[1] - fg_hw[1] + 1)),
    )


def resample_background(
    bg: np.ndarray,
    fg_hw: tuple[int, int],
    window: tuple[int, int],
    box: tuple[int, int, int],
    crop_size: int,
) -> np.ndarray:
    """The background seen through a crop, resampled once: uint8 (out, out, 3).

    Equivalent (to sub-pixel alignment and the filter) to: ``fit_background``, take the
    fg-sized window at ``window``, take the crop ``box`` = (y0, x0, size) of it with zero
    padding outside the window, resize to ``crop_size``. Enlarging (the usual case: COCO
    backgrounds are smaller than Adobe foregrounds) uses one bilinear warp; shrinking uses
    INTER_AREA on the covered source rectangle.
    """
    (bh, bw), (H, W) = bg.shape[:2], fg_hw
    vh, vw = fitted_size((bh, bw), fg_hw)
    sy, sx = vh / bh, vw / bw
    y0, x0, c = box
    f = crop_size / c
    out = np.zeros((crop_size, crop_size, 3), np.uint8)
    # Valid part of the crop (inside the fg-sized window), in crop and output pixels.
    ry0, ry1 = max(0, -y0), min(c, H - y0)
    rx0, rx1 = max(0, -x0), min(c, W - x0)
    if ry0 >= ry1 or rx0 >= rx1:
        return out
    oy0, oy1 = round(ry0 * f), round(ry1 * f)
    ox0, ox1 = round(rx0 * f), round(rx1 * f)
    if oy0 >= oy1 or ox0 >= ox1:
        return out
    vy, vx = window[0] + y0, window[1] + x0  # crop origin in fitted-background pixels
    if c / (crop_size * sy) <= 1.0 + 1e-9 and c / (crop_size * sx) <= 1.0 + 1e-9:
        # Output pixel u (centre u + 0.5) -> fitted coordinate vy + (u + 0.5)/f - 0.5
        # -> source coordinate (vy + (u + 0.5)/f)/sy - 0.5 (cv2.resize's centre convention).
        ay, ax = 1.0 / (f * sy), 1.0 / (f * sx)
        by, bx = (vy + 0.5 / f) / sy - 0.5, (vx + 0.5 / f) / sx - 0.5
        # Read only the source rectangle the valid output region touches (+2 px margin).
        sy0 = max(math.floor(ay * oy0 + by) - 2, 0)
        sy1 = min(math.ceil(ay * (oy1 - 1) + by) + 3, bh)
        sx0 = max(math.floor(ax * ox0 + bx) - 2, 0)
        sx1 = min(math.ceil(ax * (ox1 - 1) + bx) + 3, bw)
        src = np.ascontiguousarray(bg[sy0:sy1, sx0:sx1])
        m = np.array([[ax, 0.0, ax * ox0 + bx - sx0], [0.0, ay, ay * oy0 + by - sy0]])
        out[oy0:oy1, ox0:ox1] = cv2.warpAffine(
            src,
            m,
            (ox1 - ox0, oy1 - oy0),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
    else:
        ty0 = min(max(round((vy + ry0) / sy), 0), bh - 1)
        ty1 = min(max(round((vy + ry1) / sy), ty0 + 1), bh)
        tx0 = min(max(round((vx + rx0) / sx), 0), bw - 1)
        tx1 = min(max(round((vx + rx1) / sx), tx0 + 1), bw)
        src = np.ascontiguousarray(bg[ty0:ty1, tx0:tx1])
        out[oy0:oy1, ox0:ox1] = cv2.resize(
            src, (ox1 - ox0, oy1 - oy0), interpolation=cv2.INTER_AREA
        ).reshape(oy1 - oy0, ox1 - ox0, 3)
    return out


def cover_background(bg: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """A new background for a user's cut-out: ``bg`` scaled (up or down, keeping its aspect)
    to cover (H, W), then centre-cropped. uint8 (H, W, 3). Not the dataset rule
    (:func:`fit_background`), which only upscales and takes a window.

    The centre window of (H, W)'s aspect is cut from ``bg`` first and only it is resized, so
    the work is (H, W)-sized whatever the background's shape (a 1x10000 strip scaled to cover a
    square photo would otherwise be 10000 times the photo)."""
    (bh, bw), (h, w) = bg.shape[:2], hw
    scale = max(h / bh, w / bw)
    ch, cw = min(bh, max(1, round(h / scale))), min(bw, max(1, round(w / scale)))
    y0, x0 = (bh - ch) // 2, (bw - cw) // 2
    window = np.ascontiguousarray(bg[y0 : y0 + ch, x0 : x0 + cw])
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(window, (w, h), interpolation=interp).reshape(h, w, *bg.shape[2:])


# --- resize, flip, composite -----------------------------------------------------------------
def resize_to(img: np.ndarray, size: int, *, nearest: bool = False) -> np.ndarray:
    """Resize (h, w[, C]) to (size, size[, C]): INTER_NEAREST for label maps (trimaps),
    INTER_AREA when shrinking, INTER_LINEAR when enlarging. Same dtype."""
    h, w = img.shape[:2]
    if (h, w) == (size, size):
        return img
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if h > size or w > size else cv2.INTER_LINEAR
    out = cv2.resize(img, (size, size), interpolation=interp)
    return out.reshape((size, size, *img.shape[2:]))


def hflip(img: np.ndarray) -> np.ndarray:
    """Mirror left-right: (H, W[, C]) -> same shape, C-contiguous."""
    return cv2.flip(img, 1).reshape(img.shape)


def composite(fg: np.ndarray, bg: np.ndarray, alpha01: np.ndarray) -> np.ndarray:
    """THE compositing equation alpha*fg + (1-alpha)*bg: float32 (H, W, 3), in the units of
    fg and bg (0-255 for images).

    fg, bg: (H, W, 3) (any dtype); alpha01: (H, W) float in [0, 1]. For 8-bit mattes on
    8-bit images the exact value is never within 1/510 of a rounding boundary, so rounding
    this float32 result gives the exact rounded composite.
    """
    a = np.asarray(alpha01, np.float32)
    a3 = cv2.merge([a, a, a])  # contiguous (H, W, 3): numpy broadcasting of (H, W, 1) is slow
    bgf = np.asarray(bg, np.float32)
    out = np.array(fg, np.float32)  # a*fg + (1-a)*bg, as (fg - bg)*a + bg in place
    out -= bgf
    out *= a3
    out += bgf
    return out


def official_composite(
    fg: np.ndarray, alpha: np.ndarray, bg: np.ndarray, window: tuple[int, int] = (0, 0)
) -> np.ndarray:
    """The Composition-1k rule on whole images: uint8 (H, W, 3).

    ``fit_background``, the fg-sized window at ``window`` (the official code uses the
    top-left, (0, 0)), composite in float32, truncated to uint8 as the official code does.
    fg: uint8 (H, W, 3); alpha: (H, W) uint8; bg: uint8 (h, w, 3).
    """
    h, w = alpha.shape[:2]
    fitted = fit_background(bg, (h, w))
    y, x = window
    win = fitted[y : y + h, x : x + w]
    if win.shape[:2] != (h, w):
        raise ValueError(f"window {window} of {fitted.shape[:2]} background is not {h}x{w}")
    # Literally the official arithmetic (float32, a/255 in float64 first), then truncation:
    # a different but equivalent formula flips a few values by one level.
    a = (_as_alpha_u8(alpha) / 255.0).astype(np.float32)[..., None]
    comp = a * np.asarray(fg, np.float32) + (1 - a) * np.asarray(win, np.float32)
    return comp.astype(np.uint8)


# --- one training sample ---------------------------------------------------------------------
@dataclass
class Sample:
    """One training sample as arrays (HWC, before the tensor layout of data/layout.py).

    fg, bg: uint8 (S, S, 3) RGB; alpha: float32 (S, S) in [0, 1]; merged: float32 (S, S, 3)
    0-255, equal to alpha*fg + (1-alpha)*bg; trimap: uint8 (S, S) in {0, 128, 255}.
    centre (y, x), cut (the side of the window cut before resizing to S), trimap kernel
    sizes (erode, dilate) and flip describe how it was drawn.
    """

    fg: np.ndarray
    bg: np.ndarray
    alpha: np.ndarray
    merged: np.ndarray
    trimap: np.ndarray
    centre: tuple[int, int]
    cut: int
    kernels: tuple[int, int]
    flipped: bool


def default_cut_sizes(crop_size: int) -> tuple[int, ...]:
    """Cut sizes (S, 1.5 S, 2 S) for crop size S: the paper's 320/480/640 at S = 320."""
    return (crop_size, round(1.5 * crop_size), 2 * crop_size)


def window_distances(alpha: np.ndarray, y0: int, x0: int, size: int, margin: int) -> np.ndarray:
    """:func:`distance_maps` of the crop window (zero-padded as the crop), computed on the
    window plus ``margin`` pixels (clipped to the image): exact for disc radii <= margin."""
    H, W = alpha.shape[:2]
    ya, yb = max(y0 - margin, 0), min(y0 + size + margin, H)
    xa, xb = max(x0 - margin, 0), min(x0 + size + margin, W)
    if ya >= yb or xa >= xb:
        return crop_padded(np.zeros((1, 1, 2), np.uint8), 0, 0, size, size, fill=(0, 255))
    d = distance_maps(np.ascontiguousarray(alpha[ya:yb, xa:xb]))
    return crop_padded(d, y0 - ya, x0 - xa, size, size, fill=(0, 255))


def make_sample(
    fga: np.ndarray,
    bg: np.ndarray,
    rng: np.random.Generator,
    *,
    crop_size: int = 320,
    cut_sizes: Sequence[int] | None = None,
    k_range: tuple[int, int] = (1, 30),
    flip_p: float = 0.5,
    candidates: np.ndarray | None = None,
    dist2: np.ndarray | None = None,
) -> Sample:
    """Draw one training sample (steps 1-7 of the module docstring).

    fga: uint8 (H, W, 4), foreground RGB + alpha (may be a read-only memmap: only the crop
    window is read). bg: uint8 (h, w, 3) (may be a memmap). candidates: cached
    :func:`unknown_candidates` of the alpha (computed here when None). dist2: cached
    :func:`distance_maps` (H, W, 2) (computed on the crop window when None; the result is
    identical). The rng is consumed in a fixed order, so equal rng states give equal samples.
    """
    H, W = fga.shape[:2]
    sizes = tuple(cut_sizes) if cut_sizes else default_cut_sizes(crop_size)
    c = fit_cut(int(sizes[int(rng.integers(len(sizes)))]), (H, W))
    if candidates is None:
        candidates = unknown_candidates(fga[..., 3])
    centre = pick_centre(candidates, (H, W), rng)
    y0, x0 = crop_origin(centre, c, (H, W))
    ke, kd = draw_kernel_sizes(rng, k_range)
    window = random_window(fitted_size(bg.shape[:2], (H, W)), (H, W), rng)
    flipped = bool(rng.random() < flip_p)

    # Trimap at output resolution: thresholding commutes with nearest-neighbour resizing, so
    # resizing the (cropped) distance maps and thresholding equals thresholding at crop
    # resolution and resizing the trimap with INTER_NEAREST, at a fraction of the cost.
    if max(ke, kd) <= K_MAX_CACHED:
        if dist2 is not None:
            d_c = crop_view(dist2, y0, x0, c, c, fill=(0, 255))
        else:
            d_c = window_distances(fga[..., 3], y0, x0, c, (max(ke, kd) - 1) // 2 + 1)
        trimap = trimap_from_distances(resize_to(d_c, crop_size, nearest=True), ke, kd)
    else:  # kernels too large for uint8 distances: plain morphology on window + margin
        m = (max(ke, kd) - 1) // 2 + 1
        ya, yb, xa, xb = max(y0 - m, 0), min(y0 + c + m, H), max(x0 - m, 0), min(x0 + c + m, W)
        a = np.ascontiguousarray(fga[ya:yb, xa:xb, 3])
        t = morph_trimap(a, disc_kernel(ke), disc_kernel(kd))
        trimap = resize_to(crop_padded(t, y0 - ya, x0 - xa, c, c), crop_size, nearest=True)

    bg_o = resample_background(bg, (H, W), window, (y0, x0, c), crop_size)
    # cv2 reads the window straight from the (memory-mapped) foreground when it lies inside.
    fga_o = resize_to(crop_view(fga, y0, x0, c, c), crop_size)
    if flipped:
        fga_o, trimap, bg_o = hflip(fga_o), hflip(trimap), hflip(bg_o)
    fg_o = cv2.cvtColor(fga_o, cv2.COLOR_RGBA2RGB)  # contiguous RGB: cheaper downstream
    alpha01 = fga_o[..., 3].astype(np.float32) * np.float32(1.0 / 255.0)
    merged = composite(fg_o, bg_o, alpha01)
    return Sample(fg_o, bg_o, alpha01, merged, trimap, centre, c, (ke, kd), flipped)
