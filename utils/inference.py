"""Inference in one pass: an image and a trimap in, the alpha out, for both back-ends.

:func:`predict_with` takes every step, in this order, for PyTorch (:func:`predict_alpha`, whose
:class:`TorchForward` runs the model) and onnxruntime (:mod:`utils.onnx_inference`); the two
differ only in the ``forward`` they hand it, which maps one padded window (1, 4, h, w) float32
to its alpha (h, w):

1. checks (``data.layout.check_image_and_trimap``); a trimap without unknown pixels needs no
   network at all;
2. the inference scale (:func:`at_scale`): image and trimap shrunk, the alpha brought back;
3. ``data`` (4, H, W) (``data.layout.make_data``), padded to the model's stride
   (:func:`pad_to_multiple`), whole or in exact tiles (:func:`infer_padded`);
4. each window through ``forward`` (averaged over flips and turns: :func:`with_tta`);
5. cropped back; the pixels the trimap marks known set to exactly 0 / 1.

Nothing here imports torch at import time: the onnxruntime path runs without it.

Padding
-------
The network needs H and W that are multiples of its stride (32: five 2x2 max-pools).
:func:`pad_amounts` is the rule: the padding is split evenly between opposite sides (the extra
pixel goes right/bottom), reflected, or replicated where a side is too small to mirror.
:func:`pad_to_multiple` applies it (every caller pads through it); :func:`crop_back` undoes
it, on numpy arrays and torch tensors alike.

Tiling (bounded memory)
-----------------------
With ``tile=T`` the padded image is cut into T x T *cores*; each core is run inside a
*window* that adds ``overlap`` pixels of real image context on every side (clipped at the
image border, where whole-image inference sees the same zero padding), and only the core is
written back. Windows start on multiples of 32, so every max-pool sees exactly the pooling
grid of the whole image. A pixel's output therefore equals whole-image inference whenever its
window holds its whole receptive field; differences come only from the zero padding at a
window's inner edges and shrink with the distance to that edge.

How much overlap makes tiling exact: the model states it. ``DIM.receptive_field`` follows
one output pixel back through every conv, pool, pooling index, skip and upsampling of the
network (at each of the ``stride`` pixel phases of the pooling grid) to the input pixels it
depends on: 221 px on either side for the default architecture (fc6 "transmap", "unpool"
upsampling, refine head), 189 px with fc6 "conv1x1", 252 px with "bilinear" upsampling.
:func:`exact_overlap` rounds it up to a multiple of the stride (224 / 192 / 256). With that
overlap - the default - tiled inference equals whole-image inference everywhere, up to float
rounding (``tests/test_inference.py`` checks it, also for a toy encoder); a smaller
``overlap`` is faster and differs only within (required - overlap) px of a seam, by an
amount that depends on the weights.

``max_side=N`` tiles automatically when the image's long side exceeds N, with windows no
larger than N x N (memory figures: :mod:`utils.inference`).

Inference scale
---------------
A model trained on windows that were shrunk before it saw them (windows of 1-2x the crop side
resized to the crop) has learnt objects at about two thirds of their size in the source image;
run on a full-resolution photo it sees everything larger than in training. :func:`at_scale`
runs it on the image resized by ``scale`` (<= 1) and brings the alpha back to full size, where
the known pixels are set from the full-resolution trimap. The scale a model should use is
stored with it (``infer_scale`` in its checkpoint, chosen on the validation split); 1 is the
paper's full-resolution inference.

Memory (CPU, float32, measured on this project's machine): whole-image inference needs about
1.5 GB of activations per megapixel (a 4000x3000 image: ~18 GB). Tiled, a forward pass never
sees more than (tile + 2*overlap)^2 pixels, and the whole image costs only its input (4
float32 planes) and output (1 plane): with ``max_side=1600`` a 4000x3000 image needs ~0.25 GB
of arrays plus one 1600x1600 window (~4 GB of activations) - within 8 GB of RAM or GPU memory.
``max_side=N`` tiles automatically when the image's long side exceeds N, with windows no
larger than N x N.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from data import layout

STRIDE = 32  # the pooling grid of VGG16-BN (five 2x2 max-pools); models state their own
DEFAULT_MAX_SIDE = 1600  # the CLIs' default: windows of <= 1600 x 1600 px (~4 GB on CPU)


# --- padding ---------------------------------------------------------------------------------
def pad_amounts(
    height: int, width: int, multiple: int = STRIDE, mode: str = "reflect"
) -> tuple[tuple[int, int, int, int], str]:
    """THE padding rule: ``((left, right, top, bottom), mode)`` bringing (height, width) up to
    multiples of ``multiple``.

    The padding is split evenly between opposite sides (the extra pixel goes right/bottom), so
    the network sees image content around the whole border. "reflect" needs every pad smaller
    than the side it mirrors, so tiny inputs fall back to "replicate".
    """
    ph, pw = (-height) % multiple, (-width) % multiple
    pads = (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2)
    if mode == "reflect" and (max(pads[:2]) >= width or max(pads[2:]) >= height):
        mode = "replicate"
    return pads, mode


_NUMPY_MODES = {"reflect": "reflect", "replicate": "edge", "constant": "constant"}


def pad_to_multiple(
    x: np.ndarray, multiple: int = STRIDE, mode: str = "reflect"
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Pad the last two dims of a numpy array (..., H, W) up to multiples of ``multiple``.

    ``mode`` is "reflect", "replicate" (numpy's "edge") or "constant" (zeros); see
    :func:`pad_amounts` for when "reflect" falls back. Returns ``(padded, pads)`` with ``pads =
    (left, right, top, bottom)``, what :func:`crop_back` needs; aligned inputs are returned as is.
    """
    if x.ndim < 2:
        raise ValueError(f"pad_to_multiple needs an array (..., H, W), got shape {x.shape}")
    if mode not in _NUMPY_MODES:
        raise ValueError(f"mode must be one of {sorted(_NUMPY_MODES)}, got {mode!r}")
    pads, mode = pad_amounts(*x.shape[-2:], multiple, mode)
    if not any(pads):
        return x, pads
    left, right, top, bottom = pads
    widths = [(0, 0)] * (x.ndim - 2) + [(top, bottom), (left, right)]
    return np.pad(x, widths, mode=_NUMPY_MODES[mode]), pads


def crop_back(x, pads: tuple[int, int, int, int]):
    """Undo a padding: crop ``pads = (left, right, top, bottom)`` off (..., H, W) (numpy array
    or torch tensor: plain slicing)."""
    left, right, top, bottom = pads
    h, w = x.shape[-2:]
    return x[..., top : h - bottom, left : w - right]


# --- tiles -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Tile:
    """One tile of a padded image: ``core`` is written back, ``window`` is what the net sees.

    Both are ``(slice_y, slice_x)`` into the padded (Hp, Wp) image; ``inner`` is the core's
    position inside the window's output.
    """

    core: tuple[slice, slice]
    window: tuple[slice, slice]

    @property
    def inner(self) -> tuple[slice, slice]:
        (cy, cx), (wy, wx) = self.core, self.window
        return (
            slice(cy.start - wy.start, cy.stop - wy.start),
            slice(cx.start - wx.start, cx.stop - wx.start),
        )


def round_up(x: int, m: int = STRIDE) -> int:
    """Smallest multiple of ``m`` that is >= ``x``."""
    return int(math.ceil(x / m) * m)


def exact_overlap(receptive_field: int, stride: int = STRIDE) -> int:
    """Context (px, a multiple of ``stride``) a tile needs for tiled == whole-image inference:
    the model's ``receptive_field`` rounded up."""
    return round_up(receptive_field, stride)


def plan_tiles(
    height: int, width: int, tile: int, overlap: int, stride: int = STRIDE
) -> list[Tile]:
    """Cut a padded (height, width) image into cores of ``tile`` px with ``overlap`` context.

    ``height``, ``width``, ``tile`` and ``overlap`` must be multiples of ``stride``, so every
    window starts on the encoder's pooling grid. Cores partition the image exactly (the last row and
    column of cores may be smaller); windows are cores grown by ``overlap`` on each side and
    clipped to the image.
    """
    for name, v in (("height", height), ("width", width), ("tile", tile), ("overlap", overlap)):
        if v % stride or v < 0 or (name != "overlap" and v == 0):
            raise ValueError(f"{name}={v} must be a positive multiple of {stride}")
    tiles = []
    for y0 in range(0, height, tile):
        y1 = min(y0 + tile, height)
        wy = slice(max(0, y0 - overlap), min(height, y1 + overlap))
        for x0 in range(0, width, tile):
            x1 = min(x0 + tile, width)
            wx = slice(max(0, x0 - overlap), min(width, x1 + overlap))
            tiles.append(Tile(core=(slice(y0, y1), slice(x0, x1)), window=(wy, wx)))
    return tiles


def resolve_tile(
    shape: tuple[int, int],
    tile: int | None,
    overlap: int,
    max_side: int | None,
    stride: int = STRIDE,
) -> int | None:
    """The core size to use for an (H, W) image, or None for whole-image inference.

    An explicit ``tile`` wins (rounded up to a multiple of 32). Otherwise, when ``max_side`` is
    set and the long side exceeds it, the core is chosen so that a window (core + 2*overlap)
    is at most ``max_side`` (and at least 32).
    """
    if tile is not None:
        if tile <= 0:
            raise ValueError(f"tile={tile} must be positive")
        return round_up(tile, stride)
    if max_side is None or max(shape) <= max_side:
        return None
    if max_side <= 0:
        raise ValueError(f"max_side={max_side} must be positive")
    return max(stride, (max_side - 2 * overlap) // stride * stride)


def force_known(alpha: np.ndarray, trimap_u8: np.ndarray) -> np.ndarray:
    """Set pixels the trimap marks known to exactly 0 (background) / 1 (foreground), in place."""
    alpha[trimap_u8 == layout.TRIMAP_BG] = 0.0
    alpha[trimap_u8 == layout.TRIMAP_FG] = 1.0
    return alpha


MIN_SCALED_SIDE = 64  # never shrink an image's short side below this


def resolve_scale(scale: float, hw: tuple[int, int]) -> float:
    """The scale :func:`at_scale` uses for an (H, W) image: ``scale`` in (0, 1], raised so the
    short side keeps at least :data:`MIN_SCALED_SIDE` px (never above 1)."""
    if not 0 < scale <= 1:
        raise ValueError(f"inference scale must be in (0, 1], got {scale}")
    return min(1.0, max(scale, MIN_SCALED_SIDE / max(1, min(hw))))


def scale_trimap(trimap_u8: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a trimap to ``size`` (W, H) without losing its unknown band: a pixel is unknown
    when any source pixel under it is, else foreground when most of them are."""
    import cv2

    def share(value: int) -> np.ndarray:
        mask = (trimap_u8 == value).astype(np.float32)
        return cv2.resize(mask, size, interpolation=cv2.INTER_AREA)

    out = np.where(share(layout.TRIMAP_FG) >= 0.5, layout.TRIMAP_FG, layout.TRIMAP_BG)
    out = out.astype(np.uint8)
    out[share(layout.TRIMAP_UNKNOWN) > 0] = layout.TRIMAP_UNKNOWN
    return out


def at_scale(predict, image_u8: np.ndarray, trimap_u8: np.ndarray, scale: float) -> np.ndarray:
    """``predict(image, trimap) -> alpha`` run on the image resized by ``scale`` (see the module
    docstring), the alpha resized back to (H, W) with bilinear interpolation.

    image_u8: (H, W, 3) uint8; trimap_u8: (H, W) in {0, 128, 255}; ``scale`` in (0, 1].
    Returns float32 (H, W) in [0, 1], exactly 0/1 where the full-size trimap is known.
    """
    import cv2

    h, w = trimap_u8.shape
    s = resolve_scale(scale, (h, w))
    if s == 1.0:
        return predict(image_u8, trimap_u8)
    size = (max(1, round(w * s)), max(1, round(h * s)))
    small = predict(
        cv2.resize(np.ascontiguousarray(image_u8), size, interpolation=cv2.INTER_AREA),
        scale_trimap(trimap_u8, size),
    )
    alpha = cv2.resize(small.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    return force_known(np.clip(alpha, 0.0, 1.0), trimap_u8)


def infer_padded(
    forward: Callable[[np.ndarray], np.ndarray],
    data: np.ndarray,
    core: int | None,
    overlap: int,
    stride: int = STRIDE,
) -> np.ndarray:
    """Pad ``data`` (4, H, W) float32 to multiples of 32, run ``forward`` on the whole image or
    on the windows of :func:`plan_tiles` (cores of ``core`` px, ``overlap`` px of context; None:
    whole image), and return the alpha cropped back to (H, W) float32.

    ``forward`` maps a padded window (1, 4, h, w) float32 (C-contiguous) to alpha (h, w)
    float32. The caller should hold no other reference to ``data``: it is dropped once padded.
    """
    padded, pads = pad_to_multiple(data, stride)
    del data  # the unpadded copy is not needed any more (a 4000x3000 image: ~190 MB)
    hp, wp = padded.shape[-2:]
    if core is None or (core >= hp and core >= wp):
        out = forward(padded[None])
    else:
        out = np.empty((hp, wp), dtype=np.float32)
        for t in plan_tiles(hp, wp, core, overlap, stride):
            window = np.ascontiguousarray(padded[(slice(None), *t.window)])[None]
            out[t.core] = forward(window)[t.inner]
    return np.ascontiguousarray(crop_back(out, pads), dtype=np.float32)


# --- test-time augmentation ------------------------------------------------------------------
# (quarter turns, mirrored): "flip" averages the window and its left-right mirror, "d4" the 8
# symmetries of the square. Windows are multiples of the stride on both sides, so a turned or
# mirrored window still lies on the pooling grid and tiling stays exact.
TTA = {
    "none": ((0, False),),
    "flip": ((0, False), (0, True)),
    "d4": tuple((k, m) for k in range(4) for m in (False, True)),
}


def with_tta(forward: Callable[[np.ndarray], np.ndarray], tta: str = "none"):
    """``forward`` averaged over the transforms of ``tta`` (a key of :data:`TTA`): each turns
    and/or mirrors the window (1, 4, h, w), runs ``forward`` and maps the alpha back."""
    if tta not in TTA:
        raise ValueError(f"tta must be one of {', '.join(TTA)}, got {tta!r}")
    if tta == "none":
        return forward

    def averaged(window: np.ndarray) -> np.ndarray:
        total = None
        for turns, mirror in TTA[tta]:
            w = window[..., ::-1] if mirror else window
            alpha = forward(np.ascontiguousarray(np.rot90(w, turns, axes=(-2, -1))))
            alpha = np.rot90(alpha, -turns, axes=(-2, -1))
            alpha = alpha[..., ::-1] if mirror else alpha
            total = alpha.astype(np.float32) if total is None else total + alpha
        return np.ascontiguousarray(total / len(TTA[tta]), dtype=np.float32)

    return averaged


def predict_with(
    forward: Callable[[np.ndarray], np.ndarray],
    image_u8: np.ndarray,
    trimap_u8: np.ndarray,
    *,
    receptive_field: int,
    stride: int = STRIDE,
    tile: int | None = None,
    overlap: int | None = None,
    max_side: int | None = None,
    scale: float = 1.0,
    tta: str = "none",
) -> np.ndarray:
    """Everything around one network call, for both back-ends: check the inputs, skip the
    network when nothing is unknown, shrink by ``scale`` (:func:`at_scale`), build ``data``,
    pad to multiples of the model's ``stride`` and tile (:func:`infer_padded`; ``overlap``
    None = :func:`exact_overlap` of the model's ``receptive_field``), run each window under
    ``tta`` (:func:`with_tta`), and set the known pixels.

    ``forward``: padded window (1, 4, h, w) float32 -> alpha (h, w) float32.
    image_u8 (H, W, 3) RGB uint8, trimap_u8 (H, W) in {0, 128, 255} -> float32 (H, W) in
    [0, 1], exactly 0 / 1 where the trimap says background / foreground.
    """
    image_u8 = np.asarray(image_u8)
    trimap_u8 = np.asarray(trimap_u8)
    layout.check_image_and_trimap(image_u8, trimap_u8)
    if not (trimap_u8 == layout.TRIMAP_UNKNOWN).any():  # nothing to infer: no network input
        return force_known(np.zeros(trimap_u8.shape, np.float32), trimap_u8)
    forward = with_tta(forward, tta)
    if overlap is None:
        overlap = exact_overlap(receptive_field, stride)
    overlap = round_up(max(0, overlap), stride)

    def run(image: np.ndarray, trimap: np.ndarray) -> np.ndarray:
        core = resolve_tile(trimap.shape, tile, overlap, max_side, stride)
        data = layout.make_data(image, trimap)
        return force_known(infer_padded(forward, data, core, overlap, stride), trimap)

    return at_scale(run, image_u8, trimap_u8, scale)


# --- the PyTorch back-end --------------------------------------------------------------------
@contextlib.contextmanager
def eval_mode(model) -> Iterator:
    """Put every submodule in eval mode and restore each one's own flag afterwards.

    Restoring per module (not ``model.train(flag)``) keeps a trainer's mixed state intact, e.g.
    a frozen encoder whose BatchNorm stays in eval mode while the refine head trains.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag


class TorchForward:
    """A DIM model as ``forward`` for :func:`predict_with`: window (1, 4, h, w) float32 ->
    alpha (h, w) float32, the refined alpha when the model has a refine head, else the raw one.

    ``device`` None = where the model's parameters are (it is moved there otherwise); ``amp``
    None/"off", "bf16" (CUDA or CPU) or "fp16" (CUDA) autocast, ValueError elsewhere.
    """

    def __init__(self, model, device=None, amp=None):
        import torch

        from utils.device import check_amp

        first = next(model.parameters(), None)
        current = first.device if first is not None else torch.device("cpu")
        self.device = current if device is None else torch.device(device)
        self.amp_dtype = check_amp(amp, self.device)
        if current != self.device:
            model.to(self.device)
        self.model = model

    def __call__(self, window: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(window).to(self.device)
        autocast = (
            torch.autocast(device_type=x.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            raw, refined = self.model(x)
        alpha = refined if refined is not None else raw
        return alpha[0, 0].float().clamp_(0.0, 1.0).cpu().numpy()


def predict_alpha(
    model,
    image_u8: np.ndarray,
    trimap_u8: np.ndarray,
    device=None,
    amp=None,
    tile: int | None = None,
    overlap: int | None = None,
    max_side: int | None = None,
    scale: float | None = None,
    tta: str = "none",
) -> np.ndarray:
    """Alpha matte of a full-resolution image by a DIM model (PyTorch).

    Args:
        model: a DIM model, ``model(data) -> (raw, refined_or_None)``; it is run in eval mode
            (each submodule's mode is restored afterwards) and moved to ``device`` if needed.
        image_u8: RGB (H, W, 3) uint8 (or float 0-255).
        trimap_u8: (H, W) uint8 with 0 = background, 128 = unknown, 255 = foreground.
        device, amp: see :class:`TorchForward`.
        tile: core size in px for tiled inference (rounded up to the stride); None = whole
            image (unless ``max_side`` asks for tiling).
        overlap: context added around each tile, px (rounded up to the stride); None =
            :func:`exact_overlap` of the model (tiles then match whole-image inference).
        max_side: tile automatically when max(H, W) > max_side, windows <= max_side px.
        scale: run the network on the image resized by this factor in (0, 1]
            (:func:`at_scale`); None = the model's ``infer_scale`` (from its checkpoint), else 1.
        tta: test-time augmentation, "none", "flip" or "d4" (:func:`with_tta`).

    Returns:
        float32 (H, W) in [0, 1]; exactly 0 where trimap == 0 and 1 where trimap == 255.
    """
    import torch

    forward = TorchForward(model, device, amp)
    with eval_mode(model), torch.inference_mode():
        return predict_with(
            forward,
            image_u8,
            trimap_u8,
            receptive_field=model.receptive_field,
            stride=model.stride,
            tile=tile,
            overlap=overlap,
            max_side=max_side,
            scale=getattr(model, "infer_scale", 1.0) if scale is None else scale,
            tta=tta,
        )
