"""Official matting metrics: SAD, MSE, gradient error and connectivity error (Composition-1k).

These are the definitions of the official MATLAB evaluation code of Deep Image Matting
(compute_sad_loss.m, compute_mse_loss.m, compute_gradient_loss.m + gaussgradient.m,
compute_connectivity_error.m with step 0.1), computed fast: separable filters, OpenCV
connected components, work restricted to the unknown region's bounding box where that is exact.
``tests/reference_metrics.py`` is the literal line-by-line port they are tested against.

Inputs of every public function:
    pred, gt  (H, W) alpha mattes: uint8 in 0..255 (read as value / 255) or float in [0, 1]
              (float16/32/64). The two may have different dtypes.
    trimap    (H, W) 0 background / 128 unknown / 255 foreground. Only pixels equal to 128
              count (the official ``trimap == 128``); any other value is simply not unknown.

Outputs (Python floats, Composition-1k convention, see ``UNITS``), with p, g on the [0, 1] scale
and U the unknown pixels:
    sad  = sum_U |p - g| / 1000
    mse  = sum_U (p - g)^2 / |U|
    grad = sum_U (|grad mat2gray(p)| - |grad mat2gray(g)|)^2 / 1000
    conn = sum_U |phi(p) - phi(g)| / 1000
An empty unknown region gives 0.0 for all four (the official MSE would be 0/0 = NaN).

Details that move the numbers, all as in the MATLAB code:
- gradient: each matte is min-max normalised over the WHOLE image (mat2gray; a constant matte
  has zero gradient), filtered with 9x9 Gaussian-derivative kernels (sigma 1.4, half-size 4,
  unit L2 norm), ``imfilter(..., 'replicate', 'conv')``; magnitudes are cast to float32 before
  the difference, as the MATLAB ``single(...)`` casts do.
- connectivity: mattes in float32, thresholds 0:0.1:1 compared in float32 (so 153/255 >= 0.6);
  Omega(t) is the largest 4-connected component of (p >= t) & (g >= t), a foreground component
  (never the background), ties going to the component met first in column-major order as
  MATLAB's ``max`` over ``bwconncomp`` does; where (p >= t) & (g >= t) is empty Omega(t) is
  empty (an edge case the MATLAB code does not define); l = the threshold before the first t
  at which a pixel is outside Omega(t), 1 if never; d = alpha - l; phi = 1 - d * (d >= 0.15).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

UNITS = (
    "SAD, Grad, Conn: sums over the unknown region (trimap == 128) / 1000; "
    "MSE: mean over the unknown region; alpha on the [0, 1] scale"
)

UNKNOWN_VALUE = 128
GRAD_SIGMA = 1.4
CONN_THETA = 0.15
# 0:0.1:1 as MATLAB compares it with single-precision mattes: in float32.
CONN_THRESHOLDS = (np.arange(11) / 10).astype(np.float32)
_THETA32 = np.float32(CONN_THETA)
_FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def gaussian_derivative_kernels(sigma: float = GRAD_SIGMA) -> tuple[np.ndarray, np.ndarray]:
    """1-D factors of gaussgradient.m's 2-D kernel hx(i, j) = G(i) * dG(j), unit L2 norm.

    Returns (g, dg), float64 of length 2*half+1 with half = ceil(sigma*sqrt(-2 ln(sqrt(2 pi)
    sigma 0.01))) (4 for sigma 1.4), each normalised to unit L2 norm, so that
    ``np.outer(g, dg)`` is hx / ||hx||_F (rows: y offset, columns: x offset); hy = hx.T.
    """
    half = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * 0.01)))
    u = np.arange(-half, half + 1, dtype=np.float64)
    g = np.exp(-(u**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))
    dg = -u * g / sigma**2
    return g / np.linalg.norm(g), dg / np.linalg.norm(dg)


_G, _DG = gaussian_derivative_kernels()
_HALF = len(_G) // 2
# imfilter(..., 'conv') flips the kernel; cv2.sepFilter2D correlates, so hand it flipped factors.
_GX_KERNELS = (_DG[::-1].copy(), _G[::-1].copy())  # (kernelX, kernelY) for hx
_GY_KERNELS = (_G[::-1].copy(), _DG[::-1].copy())  # hy = hx'


@dataclass(frozen=True)
class _Prepared:
    """Validated inputs and the work the four metrics share."""

    pred: np.ndarray  # (H, W) uint8 or float, as given
    gt: np.ndarray
    box: tuple[int, int, int, int] | None  # unknown region's bbox (y0, y1, x0, x1); None: empty
    unknown: np.ndarray | None  # (y1-y0, x1-x0) uint8 0/1, trimap == 128 inside box
    count: int  # |U|
    pred_range: tuple[float, float]  # (min, max) over the whole image, native scale
    gt_range: tuple[float, float]


def _check_alpha(name: str, x: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Validate one matte; return it (float16 promoted to float32) and its (min, max)."""
    x = np.ascontiguousarray(x)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(
            f"{name}: expected a non-empty 2-D (H, W) alpha matte, got shape {x.shape}; "
            "read a single channel (utils.image_io.read_gray / read_alpha)"
        )
    if x.dtype == np.uint8:
        lo, hi = cv2.minMaxLoc(x)[:2]
        return x, (float(lo), float(hi))
    if x.dtype.type not in _FLOAT_DTYPES:
        raise ValueError(
            f"{name}: alpha must be uint8 (0-255) or float in [0, 1], got dtype {x.dtype}"
        )
    if x.dtype == np.float16:
        x = x.astype(np.float32)
    lo, hi = float(x.min()), float(x.max())  # numpy's min/max propagate NaN
    if not (lo >= 0.0 and hi <= 1.0):
        raise ValueError(
            f"{name}: float alpha must lie in [0, 1] without NaN, got range [{lo}, {hi}]; "
            "pass uint8 for 0-255 mattes, or np.clip(alpha, 0, 1) first"
        )
    return x, (lo, hi)


def _prepare(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> _Prepared:
    shapes = [tuple(np.shape(a)) for a in (pred, gt, trimap)]
    if len(set(shapes)) != 1:
        raise ValueError(
            f"shape mismatch: pred {shapes[0]}, gt {shapes[1]}, trimap {shapes[2]}; "
            "all three must be the same (H, W)"
        )
    pred, pred_range = _check_alpha("pred", pred)
    gt, gt_range = _check_alpha("gt", gt)
    trimap = np.ascontiguousarray(trimap)
    if trimap.dtype.kind == "f" and bool(np.any((trimap > 0) & (trimap < 1))):
        raise ValueError(
            "trimap: looks scaled to [0, 1] (values strictly between 0 and 1); "
            "pass it in 0/128/255, e.g. np.round(trimap * 255).astype(np.uint8)"
        )
    # numpy, not cv2.compare: OpenCV takes arrays of <= 4 elements for scalars.
    unknown = np.equal(trimap, UNKNOWN_VALUE).view(np.uint8)
    x, y, w, h = cv2.boundingRect(unknown)
    if w == 0:
        return _Prepared(pred, gt, None, None, 0, pred_range, gt_range)
    box = (y, y + h, x, x + w)
    unknown = unknown[y : y + h, x : x + w]
    return _Prepared(pred, gt, box, unknown, cv2.countNonZero(unknown), pred_range, gt_range)


def _crop(x: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    y0, y1, x0, x1 = box
    return x[y0:y1, x0:x1]


def _unit_pair(prep: _Prepared) -> tuple[np.ndarray, np.ndarray, float]:
    """pred and gt inside the box, same dtype, plus the factor that maps them to [0, 1]."""
    p, g = _crop(prep.pred, prep.box), _crop(prep.gt, prep.box)
    if p.dtype == np.uint8 and g.dtype == np.uint8:
        return p, g, 1.0 / 255.0  # integer sums are exact; scale afterwards
    dtype = np.float64 if np.float64 in (p.dtype, g.dtype) else np.float32
    p = p.astype(dtype) / dtype(255) if p.dtype == np.uint8 else p.astype(dtype, copy=False)
    g = g.astype(dtype) / dtype(255) if g.dtype == np.uint8 else g.astype(dtype, copy=False)
    return p, g, 1.0


def _sad(prep: _Prepared) -> float:
    if prep.box is None:
        return 0.0
    p, g, scale = _unit_pair(prep)
    # cv2.norm accumulates in double (exact integers for uint8).
    return cv2.norm(p, g, cv2.NORM_L1, mask=prep.unknown) * scale / 1000.0


def _mse(prep: _Prepared) -> float:
    if prep.box is None:
        return 0.0
    p, g, scale = _unit_pair(prep)
    return cv2.norm(p, g, cv2.NORM_L2SQR, mask=prep.unknown) * scale * scale / prep.count


def _gradient_magnitude(
    alpha: np.ndarray, value_range: tuple[float, float], box: tuple[int, int, int, int]
) -> np.ndarray:
    """|gaussgradient(mat2gray(alpha), 1.4)| inside ``box``, float32 (box-shaped).

    mat2gray is (A - min) / (max - min) with min, max over the whole image; the derivative
    factor of each kernel sums to zero, so the offset drops out and the scale is folded into
    the kernels. Only the box padded by the kernel half-size is filtered; replicate borders
    apply at the image edge only, so the values inside the box are exact.
    """
    y0, y1, x0, x1 = box
    lo, hi = value_range
    if hi == lo:  # mat2gray of a constant matte is constant: zero gradient
        return np.zeros((y1 - y0, x1 - x0), np.float32)
    H, W = alpha.shape
    py0, py1 = max(y0 - _HALF, 0), min(y1 + _HALF, H)
    px0, px1 = max(x0 - _HALF, 0), min(x1 + _HALF, W)
    a = alpha[py0:py1, px0:px1]
    a = a.astype(np.float32) if a.dtype != np.float32 else a
    scale = 1.0 / (hi - lo)  # folded into the y factors: one pass less
    (gxx, gxy), (gyx, gyy) = _GX_KERNELS, _GY_KERNELS
    border = cv2.BORDER_REPLICATE
    gx = cv2.sepFilter2D(a, cv2.CV_32F, gxx, gxy * scale, borderType=border)
    gy = cv2.sepFilter2D(a, cv2.CV_32F, gyx, gyy * scale, borderType=border)
    # numpy rather than cv2.magnitude, whose last bit depends on the buffers' alignment:
    # identical mattes must give exactly 0.
    np.multiply(gx, gx, out=gx)
    np.multiply(gy, gy, out=gy)
    np.add(gx, gy, out=gx)
    return np.sqrt(gx, out=gx)[y0 - py0 : y1 - py0, x0 - px0 : x1 - px0]


def _grad(prep: _Prepared) -> float:
    if prep.box is None:
        return 0.0
    ap = _gradient_magnitude(prep.pred, prep.pred_range, prep.box)
    ag = _gradient_magnitude(prep.gt, prep.gt_range, prep.box)
    return cv2.norm(ap, ag, cv2.NORM_L2SQR, mask=prep.unknown) / 1000.0


def _as_float32(x: np.ndarray) -> np.ndarray:
    """single(x)/255 for uint8 (as MATLAB), single(x) for float [0, 1]."""
    if x.dtype == np.uint8:
        return np.divide(x, np.float32(255), dtype=np.float32)
    return x.astype(np.float32, copy=False)


_U8_TO_32 = _as_float32(np.arange(256, dtype=np.uint8))  # single(v)/255 for v = 0..255


def _threshold_image(prep: _Prepared) -> tuple[np.ndarray, list[np.generic | None]]:
    """min(p, g) and per-threshold cuts c_k with (p >= t_k) & (g >= t_k) == (min(p, g) >= c_k).

    For two uint8 mattes the cut is the smallest integer v with single(v)/255 >= t_k (None when
    no value reaches t_k), so the whole-image work stays in uint8. Float cuts are the float32
    thresholds themselves.
    """
    p, g = prep.pred, prep.gt
    if p.dtype == np.uint8 and g.dtype == np.uint8:
        cuts: list[np.generic | None] = []
        for t in CONN_THRESHOLDS:
            v = int(np.searchsorted(_U8_TO_32, t, side="left"))
            cuts.append(np.uint8(v) if v < 256 else None)
        return np.minimum(p, g), cuts
    return np.minimum(_as_float32(p), _as_float32(g)), list(CONN_THRESHOLDS)


def _omega(mask: np.ndarray, mask_count: int) -> np.ndarray:
    """Largest 4-connected component of a 0/1 uint8 mask, as a 0/1 uint8 image.

    Ties go to the component met first in column-major order (MATLAB's bwconncomp numbering
    and max()). A component holding more than half the mask is the largest; it is found from a
    sparse sample of the labels and checked exactly, so the common case needs no histogram.
    """
    n, labels = cv2.connectedComponents(mask, connectivity=4, ltype=cv2.CV_32S)
    if n == 2:
        return mask
    sample = np.bincount(labels[::8, ::8].ravel(), minlength=n)
    sample[0] = 0
    candidate = int(np.argmax(sample))
    if candidate > 0:
        inside = np.equal(labels, candidate).view(np.uint8)
        if 2 * np.count_nonzero(inside) > mask_count:
            return inside
    areas = np.bincount(labels.ravel(), minlength=n)
    areas[0] = -1  # the background is never a candidate
    tied = np.flatnonzero(areas == areas.max())
    winner = int(tied[0])
    if len(tied) > 1:
        h = labels.shape[0]
        keys = []
        for lab in tied:
            ys, xs = np.nonzero(labels == lab)
            keys.append(int((xs.astype(np.int64) * h + ys).min()))  # column-major index
        winner = int(tied[int(np.argmin(keys))])
    return np.equal(labels, winner).view(np.uint8)


def _first_outside(prep: _Prepared) -> np.ndarray:
    """Per pixel of the unknown box: index k (1..10) of the first threshold t_k at which the
    pixel lies outside Omega(t_k), 11 if it never does (uint8, box-shaped)."""
    m, cuts = _threshold_image(prep)
    H, W = m.shape
    y0, y1, x0, x1 = prep.box
    first = np.full((y1 - y0, x1 - x0), 11, np.uint8)
    wy0, wy1, wx0, wx1 = 0, H, 0, W  # window holding every pixel of the current mask
    for k in range(1, len(CONN_THRESHOLDS)):
        kk = np.uint8(k)
        cut = cuts[k]
        bw = 0
        if cut is not None:
            mask = np.greater_equal(m[wy0:wy1, wx0:wx1], cut).view(np.uint8)
            bx, by, bw, bh = cv2.boundingRect(mask)
        if bw == 0:  # empty mask: every pixel is outside from here on
            np.minimum(first, kk, out=first)
            break
        # The masks are nested, so each window can shrink to the current mask's bbox.
        mask = np.ascontiguousarray(mask[by : by + bh, bx : bx + bw])
        wy0, wx0 = wy0 + by, wx0 + bx
        wy1, wx1 = wy0 + bh, wx0 + bw
        iy0, iy1, ix0, ix1 = max(y0, wy0), min(y1, wy1), max(x0, wx0), min(x1, wx1)
        if iy0 >= iy1 or ix0 >= ix1:  # no unknown pixel can be in Omega now or later
            np.minimum(first, kk, out=first)
            break
        omega = _omega(mask, cv2.countNonZero(mask))
        # Unknown-box pixels outside the window are outside Omega: the strips around the
        # intersection get k, and so do the pixels of the intersection outside Omega.
        ry0, ry1, rx0, rx1 = iy0 - y0, iy1 - y0, ix0 - x0, ix1 - x0
        for strip in (first[:ry0], first[ry1:], first[ry0:ry1, :rx0], first[ry0:ry1, rx1:]):
            if strip.size:
                np.minimum(strip, kk, out=strip)
        sub = first[ry0:ry1, rx0:rx1]
        # 255 inside Omega, k outside (plain arithmetic: ufunc ``where=`` is ~10x slower).
        value = np.multiply(omega[iy0 - wy0 : iy1 - wy0, ix0 - wx0 : ix1 - wx0], 255 - kk)
        value += kk
        np.minimum(sub, value, out=sub)
    return first


def _conn(prep: _Prepared) -> float:
    if prep.box is None:
        return 0.0
    first = _first_outside(prep)
    # l for first == k is t_{k-1}; never outside (11) gives l = 1 (index 0 is never used).
    levels = np.concatenate([[0], CONN_THRESHOLDS[:10], [1]]).astype(np.float32)
    sel = prep.unknown.view(bool)
    lvl = levels[first[sel]]
    phi = []
    for alpha in (prep.pred, prep.gt):
        d = _as_float32(_crop(alpha, prep.box)[sel]) - lvl  # float32, as MATLAB's single
        phi.append(np.float32(1) - d * (d >= _THETA32))
    total = np.abs(phi[0] - phi[1]).sum(dtype=np.float64)
    return float(total) / 1000.0


def sad(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> float:
    """Sum of absolute differences over trimap == 128, alpha on [0, 1], / 1000."""
    return _sad(_prepare(pred, gt, trimap))


def mse(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> float:
    """Mean squared error over trimap == 128, alpha on [0, 1] (0.0 for an empty region)."""
    return _mse(_prepare(pred, gt, trimap))


def gradient_error(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> float:
    """Official gradient error (mat2gray, sigma-1.4 Gaussian derivatives), / 1000."""
    return _grad(_prepare(pred, gt, trimap))


def connectivity_error(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> float:
    """Official connectivity error (step 0.1, theta 0.15, 4-connectivity), / 1000."""
    return _conn(_prepare(pred, gt, trimap))


def compute_all(pred: np.ndarray, gt: np.ndarray, trimap: np.ndarray) -> dict[str, float]:
    """All four metrics with the validation and bounding box done once.

    Returns {"sad": ..., "mse": ..., "grad": ..., "conn": ...} in the units of ``UNITS``.
    """
    prep = _prepare(pred, gt, trimap)
    return {"sad": _sad(prep), "mse": _mse(prep), "grad": _grad(prep), "conn": _conn(prep)}
