"""The baselines every model is scored beside, on the same images: trimap-only (0.5 in the
unknown region), zeros (0 there) and closed-form matting (Levin et al. 2008, pymatting).

Each maps a ``MattingExample`` (``image`` (H, W, 3) uint8 RGB, ``trimap`` (H, W) uint8 in
{0, 128, 255}) to alpha (H, W) float32 in [0, 1], exactly the trimap where it is sure.
"""

from __future__ import annotations

import numpy as np


def _known_plus(example, unknown_value: float) -> np.ndarray:
    t = np.asarray(example.trimap)
    alpha = np.where(t == 255, 1.0, 0.0).astype(np.float32)
    alpha[t == 128] = unknown_value
    return alpha


def trimap_only(example) -> np.ndarray:
    """Cheapest baseline: 0 / 1 where the trimap is known, 0.5 in the unknown region."""
    return _known_plus(example, 0.5)


def zeros(example) -> np.ndarray:
    """0 in the unknown region: a constant that beats 0.5 when the band is mostly background,
    so both constants are quoted beside a method."""
    return _known_plus(example, 0.0)


MIN_CF_SIDE = 3  # closed-form matting's window (3x3) must fit in the image


def closed_form(example) -> np.ndarray:
    """Closed-form matting (Levin et al. 2008) via pymatting's ``estimate_alpha_cf``.

    pymatting compiles its kernels with numba on first use (~45 s on a 2-core CPU, cached
    afterwards), so it is imported here, only when this baseline runs.
    """
    from pymatting import estimate_alpha_cf

    t = np.asarray(example.trimap)
    if not ((t == 0).any() and (t == 255).any()):
        raise ValueError(
            f"{example.name}: closed-form matting needs known foreground and background pixels"
        )
    # Its Laplacian has 3x3 windows: a side under 3 px is edge-padded to 3 and cropped back
    # (otherwise the solver does not converge).
    (h, w), pads = t.shape, [(0, 0), (0, 0)]
    for axis, side in enumerate((h, w)):
        extra = max(0, MIN_CF_SIDE - side)
        pads[axis] = (extra // 2, extra - extra // 2)
    image = np.pad(np.asarray(example.image, np.float64) / 255.0, [*pads, (0, 0)], mode="edge")
    alpha = estimate_alpha_cf(image, np.pad(t / 255.0, pads, mode="edge"))
    alpha = alpha[pads[0][0] : pads[0][0] + h, pads[1][0] : pads[1][0] + w]
    alpha = np.clip(alpha, 0.0, 1.0).astype(np.float32)
    known = t != 128
    alpha[known] = (t[known] == 255).astype(np.float32)  # exactly the trimap where it is sure
    return alpha
