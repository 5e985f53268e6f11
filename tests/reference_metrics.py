"""Slow, literal Python mirror of the official MATLAB matting evaluation code (tests only).

One function per MATLAB file, statement by statement, with MATLAB's types kept where they
matter (``single(...)`` casts, double thresholds compared with single mattes, column-major
component numbering). No shortcuts: the 2-D kernel is built with loops, filtered with
scipy.ndimage.convolve (imfilter 'conv', 'replicate' == mode 'nearest'), components come from
scipy.ndimage.label. ``utils.metrics`` is tested against this file.

Inputs as in utils.metrics: (H, W) uint8 0..255 or float [0, 1] mattes, a 0/128/255 trimap.
The MATLAB code receives uint8 images, so a float matte is handed over as alpha * 255 (double,
unquantised) where MATLAB uses the 0..255 values, and as single(alpha) where MATLAB divides the
single image by 255. Sums are taken in float64 (MATLAB's single accumulation order is not
reproducible); the results are the evaluation script's numbers (SAD, Grad, Conn / 1000).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.ndimage


def _matlab_image(x: np.ndarray) -> np.ndarray:
    """The 0..255 image MATLAB's imread would have given (float inputs are not quantised)."""
    x = np.asarray(x)
    return x if x.dtype == np.uint8 else np.asarray(x, dtype=np.float64) * 255.0


def _single_over_255(x: np.ndarray) -> np.ndarray:
    """single(x) / 255 on the 0..255 image; for a float [0, 1] matte, single(alpha)."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255)
    return x.astype(np.float32)


def _single(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _colon(a: float, step: float, b: float) -> np.ndarray:
    """MATLAB's a:step:b in double, computed as MATLAB does (from both ends towards the middle)."""
    n = math.floor((b - a) / step + 1e-10)
    out = np.empty(n + 1, dtype=np.float64)
    for k in range(n + 1):
        out[k] = a + k * step if k <= n / 2 else b - (n - k) * step
    return out


# ---- compute_sad_loss.m -------------------------------------------------------------------
def compute_sad_loss(pred, target, trimap) -> float:
    pred, target = _matlab_image(pred), _matlab_image(target)
    error_map = np.abs(_single(pred) - _single(target)) / np.float32(255)
    loss = np.sum(error_map * _single(np.asarray(trimap) == 128), dtype=np.float64)
    # the loss is scaled by 1000 due to the large images used in the experiments
    return float(loss / 1000)


# ---- compute_mse_loss.m -------------------------------------------------------------------
def compute_mse_loss(pred, target, trimap) -> float:
    pred, target = _matlab_image(pred), _matlab_image(target)
    error_map = (_single(pred) - _single(target)) / np.float32(255)
    unknown = _single(np.asarray(trimap) == 128)
    count = np.sum(unknown, dtype=np.float64)
    if count == 0:  # MATLAB: 0/0 = NaN; the project reports 0 for an empty region
        return 0.0
    return float(np.sum(error_map**2 * unknown, dtype=np.float64) / count)


# ---- mat2gray.m (Image Processing Toolbox, R2013+) ------------------------------------------
def mat2gray(A) -> np.ndarray:
    A = np.asarray(A, dtype=np.float64)
    limits = [A.min(), A.max()]
    if limits[1] == limits[0]:  # constant image
        img = A.copy()
    else:
        delta = 1 / (limits[1] - limits[0])
        img = delta * A + (-limits[0] * delta)  # imlincomb(delta, A, -limits(1)*delta)
    return np.maximum(0, np.minimum(img, 1))


# ---- gaussgradient.m ----------------------------------------------------------------------
def _gauss(x, sigma):
    return math.exp(-(x**2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))


def _dgauss(x, sigma):
    return -x * _gauss(x, sigma) / sigma**2


def gaussgradient_kernel(sigma: float) -> np.ndarray:
    epsilon = 1e-2
    halfsize = math.ceil(sigma * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * sigma * epsilon)))
    size = 2 * halfsize + 1
    hx = np.zeros((size, size))
    for i in range(1, size + 1):
        for j in range(1, size + 1):
            u = (i - halfsize - 1, j - halfsize - 1)
            hx[i - 1, j - 1] = _gauss(u[0], sigma) * _dgauss(u[1], sigma)
    hx = hx / math.sqrt(np.sum(np.abs(hx) * np.abs(hx)))
    return hx


def gaussgradient(IM, sigma):
    hx = gaussgradient_kernel(sigma)
    hy = hx.T
    # imfilter(IM, h, 'replicate', 'conv')
    gx = scipy.ndimage.convolve(IM, hx, mode="nearest")
    gy = scipy.ndimage.convolve(IM, hy, mode="nearest")
    return gx, gy


# ---- compute_gradient_loss.m --------------------------------------------------------------
def compute_gradient_loss(pred, target, trimap) -> float:
    pred = mat2gray(_matlab_image(pred))
    target = mat2gray(_matlab_image(target))
    pred_x, pred_y = gaussgradient(pred, 1.4)
    target_x, target_y = gaussgradient(target, 1.4)
    pred_amp = np.sqrt(pred_x**2 + pred_y**2)
    target_amp = np.sqrt(target_x**2 + target_y**2)

    error_map = (_single(pred_amp) - _single(target_amp)) ** 2
    loss = np.sum(error_map * _single(np.asarray(trimap) == 128), dtype=np.float64)
    return float(loss / 1000)  # the evaluation script divides by 1000


# ---- bwconncomp(BW, 4) + [~, max_id] = max(cellfun(@numel, cc.PixelIdxList)) --------------
def largest_component_matlab(bw: np.ndarray) -> np.ndarray:
    """Boolean omega; components numbered in column-major order, first maximum wins."""
    four = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    labels_t, n = scipy.ndimage.label(bw.T, structure=four)  # scanning the transpose row-major
    labels = labels_t.T  # == MATLAB's column-major scan of bw
    omega = np.zeros(bw.shape, dtype=np.float64)
    if n == 0:  # max([]) is empty in MATLAB; the project takes an empty omega
        return omega
    size_vec = np.bincount(labels.ravel())[1:]
    max_id = int(np.argmax(size_vec)) + 1  # first maximum, like MATLAB's max
    omega[labels == max_id] = 1
    return omega


# ---- compute_connectivity_error.m ---------------------------------------------------------
def compute_connectivity_error(pred, target, trimap, step: float = 0.1) -> float:
    pred = _single_over_255(pred)
    target = _single_over_255(target)

    thresh_steps = _colon(0, step, 1)
    l_map = np.ones(pred.shape) * (-1)
    for ii in range(2, len(thresh_steps) + 1):
        # single >= double: MATLAB compares in single precision
        t = np.float32(thresh_steps[ii - 1])
        pred_alpha_thresh = pred >= t
        target_alpha_thresh = target >= t

        omega = largest_component_matlab(pred_alpha_thresh & target_alpha_thresh)

        flag = (l_map == -1) & (omega == 0)
        l_map[flag] = thresh_steps[ii - 2]
        # (dist_maps = bwdist(omega) in the MATLAB file is never used: omitted)
    l_map[l_map == -1] = 1

    pred_d = pred - _single(l_map)
    target_d = target - _single(l_map)

    pred_phi = np.float32(1) - pred_d * _single(pred_d >= np.float32(0.15))
    target_phi = np.float32(1) - target_d * _single(target_d >= np.float32(0.15))

    loss = np.sum(
        np.abs(pred_phi - target_phi) * _single(np.asarray(trimap) == 128), dtype=np.float64
    )
    return float(loss / 1000)  # the evaluation script divides by 1000


def compute_all(pred, gt, trimap) -> dict[str, float]:
    return {
        "sad": compute_sad_loss(pred, gt, trimap),
        "mse": compute_mse_loss(pred, gt, trimap),
        "grad": compute_gradient_loss(pred, gt, trimap),
        "conn": compute_connectivity_error(pred, gt, trimap),
    }
