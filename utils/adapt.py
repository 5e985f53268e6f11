"""Test-time adaptation: before matting one photograph, fine-tune a copy of the network on
composites made of that photograph's own colours.

Closed-form matting fits every photograph's colours by construction; a trained network has only
seen its training colours. :func:`adapt` closes part of that gap with a bounded number of
optimiser steps on training samples built from the photograph alone - its image and its trimap,
never a ground-truth alpha:

1. the image and trimap at the model's inference scale (:func:`at_inference_scale`), the scale
   the network will see them at;
2. a foreground colour field (every pixel: the colour of its nearest definite-foreground pixel)
   and a background one from the definite background (:func:`colour_fields`);
3. alpha mattes drawn from the built-in synthetic set's procedural objects
   (:func:`alpha_pool`), turned and mirrored at random;
4. samples (:func:`draw_sample`): a crop centred on an unknown pixel, the composite
   ``alpha * fg_field + (1 - alpha) * bg_field``, a trimap from the alpha with the training
   data's random morphology, in the training layout (``data/layout.py``);
5. the checkpoint's stage loss on them (``models/stages.py``), Adam, exactly ``steps`` steps.

Every pixel of a composite carries a colour the photograph really has on that side of the
edge, so the network learns which of this photograph's colours are foreground and which are
background. BatchNorm stays in eval mode: one photograph's batch statistics would overwrite
statistics gathered over the whole training set. The model passed in is never modified (the
copy is a ``deepcopy``); ``steps == 0`` returns it as it is. Deterministic for a given ``seed``.

Cost: ``steps`` forward + backward passes of ``batch_size`` crops of ``crop_size`` px (on a
2-core CPU 30 steps of 2 crops take about 8 s), plus a copy of the weights and Adam's two moments.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Mapping
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn

from data import compose, layout

log = logging.getLogger(__name__)

DEFAULT_CROP_SIZE = 128  # when the checkpoint does not say (the CPU preset's crop)
DEFAULT_BATCH_SIZE = 2
DEFAULT_LR = 3e-4  # chosen on the synthetic validation split (docs/cpu_recipes.md), with
# RECOMMENDED_STEPS; 1e-4 gained less in the same steps
RECOMMENDED_STEPS = 30  # about 10 s a photograph on a 2-core CPU (--adapt's help says it)
POOL_SIZE = 8  # distinct procedural alphas per call; turns and mirrors make 8x as many
K_RANGE = (1, 30)  # the training trimaps' erosion/dilation kernel sizes (data/py_adobe_data.py)


class AdaptError(ValueError):
    """Adaptation cannot run with these settings (or diverged): the message says what to do."""


# --- inputs at the network's scale -------------------------------------------------------------
def at_inference_scale(
    image_u8: np.ndarray, trimap_u8: np.ndarray, scale: float
) -> tuple[np.ndarray, np.ndarray]:
    """Image (H, W, 3) uint8 and trimap (H, W) {0, 128, 255} resized as
    :func:`utils.inference.at_scale` resizes them before the network sees them (``scale`` in
    (0, 1], raised for small images by :func:`utils.inference.resolve_scale`)."""
    from utils.inference import resolve_scale, scale_trimap

    h, w = trimap_u8.shape
    s = resolve_scale(scale, (h, w))
    if s == 1.0:
        return image_u8, trimap_u8
    size = (max(1, round(w * s)), max(1, round(h * s)))
    image = cv2.resize(np.ascontiguousarray(image_u8), size, interpolation=cv2.INTER_AREA)
    return image, scale_trimap(trimap_u8, size)


# --- colour fields -----------------------------------------------------------------------------
def colour_field(image_u8: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Every pixel coloured like its nearest pixel of ``region``: (H, W, 3) uint8.

    image_u8: (H, W, 3) uint8; region: bool (H, W) with at least one True pixel. Nearest by the
    5x5-mask approximation of the Euclidean distance (within a fraction of a pixel).
    """
    # DIST_LABEL_PIXEL numbers the region's pixels 1..n in raster order, the order of
    # image[region], so the label is an index into the region's colours.
    outside = np.ascontiguousarray(~region, dtype=np.uint8)
    _, labels = cv2.distanceTransformWithLabels(
        outside, cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL
    )
    return image_u8[region][labels - 1]


def colour_fields(image_u8: np.ndarray, trimap_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(foreground field, background field), each (H, W, 3) uint8: :func:`colour_field` of the
    definite foreground (trimap == 255) and of the definite background (trimap == 0).

    Raises :class:`AdaptError` when the trimap has no pixel of either.
    """
    missing = [
        r for r in layout.missing_trimap_regions(trimap_u8) if r in ("foreground", "background")
    ]
    if missing:
        raise AdaptError(f"the trimap has no definite {' and no '.join(missing)}")
    return (
        colour_field(image_u8, trimap_u8 == layout.TRIMAP_FG),
        colour_field(image_u8, trimap_u8 == layout.TRIMAP_BG),
    )


# --- training samples --------------------------------------------------------------------------
def alpha_pool(rng: np.random.Generator, n: int, side: int) -> list[np.ndarray]:
    """``n`` procedural alpha mattes, float32 (side, side) in [0, 1]: the built-in synthetic
    set's training objects (hair, solid outlines, transparency, lace, soft edges; a few ms each
    at 128 px). Their colours are discarded: the photograph's fields replace them."""
    from data import synthetic

    kinds = synthetic.TRAIN_PRIMARY
    out = []
    for i in range(n):
        palette = rng.uniform(0, 255, (5, 3)).astype(np.float32)
        _, alpha = synthetic.make_foreground(rng, side, side, palette, kinds[i % len(kinds)])
        out.append(alpha.astype(np.float32) * np.float32(1.0 / 255.0))
    return out


def crop_side(shape: tuple[int, int], crop_size: int, stride: int) -> int:
    """The side of the square crops cut from an (H, W) image: ``crop_size``, or the short side
    rounded down to the model's ``stride`` when the image is smaller (never below ``stride``)."""
    short = min(shape)
    return crop_size if short >= crop_size else max(stride, short // stride * stride)


def draw_sample(
    fg_field: np.ndarray,
    bg_field: np.ndarray,
    centres: np.ndarray,
    alphas: list[np.ndarray],
    rng: np.random.Generator,
    side: int,
    k_range: tuple[int, int] = K_RANGE,
) -> tuple[np.ndarray, np.ndarray]:
    """One training sample: ``(data (4, side, side), label (11, side, side))`` float32 in the
    layout of ``data/layout.py``.

    fg_field, bg_field: (H, W, 3) uint8 with H, W >= side; centres: flat indices of the pixels
    a crop is centred on (the unknown region); alphas: (side, side) float32 in [0, 1], one is
    drawn, turned by a random multiple of 90 degrees and maybe mirrored.
    """
    h, w = fg_field.shape[:2]
    y0, x0 = compose.crop_origin(compose.pick_centre(centres, (h, w), rng), side, (h, w))
    fg = fg_field[y0 : y0 + side, x0 : x0 + side]
    bg = bg_field[y0 : y0 + side, x0 : x0 + side]
    alpha = np.rot90(alphas[int(rng.integers(len(alphas)))], int(rng.integers(4)))
    if rng.random() < 0.5:
        alpha = alpha[:, ::-1]
    alpha = np.ascontiguousarray(alpha)
    trimap = compose.trimap_from_alpha(alpha, rng, k_range)
    merged = compose.composite(fg, bg, alpha)
    data = layout.make_data(merged, trimap)
    return data, layout.make_label(bg, fg, merged, alpha, trimap)


# --- settings ----------------------------------------------------------------------------------
def settings_from_checkpoint(state: Mapping[str, Any]) -> dict[str, int]:
    """The :func:`adapt` settings a checkpoint implies: its ``stage`` (the loss) and its
    trainer's ``crop_size`` (the side of the crops it was trained on)."""
    cfg = state.get("config") or {}
    settings = {"crop_size": int(cfg.get("crop_size") or DEFAULT_CROP_SIZE)}
    if state.get("stage") is not None:
        settings["stage"] = int(state["stage"])
    return settings


def _stage_of(model: nn.Module, stage: int | None, trains: tuple[str, ...] | None = None):
    import dataclasses

    from models.stages import STAGES

    has_head = getattr(model, "refine_head", None) is not None
    if stage is None:
        stage = 3 if has_head else 1
    if stage not in STAGES:
        raise AdaptError(f"stage {stage} is not one of {sorted(STAGES)}")
    record = STAGES[stage]
    if record.refine_head != has_head:
        raise AdaptError(
            f"stage {stage} ({record.name}) {'needs' if record.refine_head else 'has no'} a "
            f"refine head but the model {'has' if has_head else 'has none'}: pass its own stage"
        )
    if trains is not None:
        children = {name for name, _ in model.named_children()}
        if not trains or set(trains) - children:
            raise AdaptError(f"trains={trains!r}: choose among {sorted(children)}")
        record = dataclasses.replace(record, trains=tuple(trains))
    return record


def _freeze_batchnorm(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


# --- adaptation --------------------------------------------------------------------------------
def adapt(
    model: nn.Module,
    image_u8: np.ndarray,
    trimap_u8: np.ndarray,
    steps: int,
    *,
    stage: int | None = None,
    trains: tuple[str, ...] | None = None,
    crop_size: int = DEFAULT_CROP_SIZE,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    scale: float | None = None,
    seed: int = 0,
    amp: str | None = "auto",
) -> nn.Module:
    """A copy of ``model`` fine-tuned for exactly ``steps`` Adam steps on composites made from
    this photograph's own known regions (see the module docstring).

    Args:
        model: a DIM network, ``model(data (N, 4, H, W)) -> (raw, refined or None)``; never
            modified. ``steps == 0`` returns it as it is.
        image_u8: (H, W, 3) uint8 RGB; trimap_u8: (H, W) uint8 in {0, 128, 255}. Nothing else
            about the photograph is read.
        steps: optimiser steps, >= 0.
        stage: which stage's loss and trained parts (``models/stages.py``); None: 3 for a model
            with a refine head, else 1.
        trains: the model's children that learn (``encoder``, ``decoder``, ``refine_head``);
            None: the stage's own. Leaving the encoder out skips its backward pass and its
            Adam update: much cheaper steps.
        crop_size: side of the training crops, a multiple of the model's stride (its trainer's
            ``--crop-size``: :func:`settings_from_checkpoint`).
        batch_size, lr: crops per step, Adam's learning rate.
        scale: the inference scale; None: the model's ``infer_scale`` (1 when it has none).
        seed: the crops, alphas and trimaps drawn; same seed, same copy.
        amp: "auto" (default) adapts under bf16 autocast where the device has native bf16, as
            the trainer does (on a 2-core CPU about twice as fast as float32); "bf16" forces
            it; "off" adapts in float32 (fp16 would need a gradient scaler for a handful of
            steps, so it also means float32). Independent of the inference's ``--amp``.

    Returns:
        The adapted copy in eval mode on the model's device, or ``model`` itself when
        ``steps == 0``, when the trimap has no unknown pixel (nothing is inferred), or when it
        has no definite foreground or background (one warning; no colours to learn from).

    Raises:
        AdaptError: bad settings, a stage that does not fit the model, or a non-finite loss.
    """
    if not isinstance(steps, int | np.integer) or steps < 0:
        raise AdaptError(f"adaptation steps must be an integer >= 0, got {steps!r}")
    if steps == 0:
        return model
    if batch_size < 1 or not lr > 0:
        raise AdaptError(f"batch size must be >= 1 and lr > 0, got {batch_size} and {lr}")
    stride = int(getattr(model, "stride", 32))
    if crop_size < stride or crop_size % stride:
        raise AdaptError(f"crop size {crop_size} must be a positive multiple of {stride}")
    record = _stage_of(model, stage, trains)
    image_u8, trimap_u8 = np.asarray(image_u8), np.asarray(trimap_u8)
    layout.check_image_and_trimap(image_u8, trimap_u8)
    if not (trimap_u8 == layout.TRIMAP_UNKNOWN).any():
        return model  # inference never runs the network on such a trimap
    scale = getattr(model, "infer_scale", 1.0) if scale is None else scale
    image, trimap = at_inference_scale(image_u8, trimap_u8, scale)
    try:
        fg_field, bg_field = colour_fields(image, trimap)
    except AdaptError as e:
        log.warning("adaptation skipped (%s): the plain model mattes this image", e)
        return model
    side = crop_side(trimap.shape, crop_size, stride)
    if min(trimap.shape) < side:  # an image smaller than one stride: stretch the fields
        size = (max(side, trimap.shape[1]), max(side, trimap.shape[0]))
        fg_field = cv2.resize(fg_field, size, interpolation=cv2.INTER_LINEAR)
        bg_field = cv2.resize(bg_field, size, interpolation=cv2.INTER_LINEAR)
        trimap = cv2.resize(trimap, size, interpolation=cv2.INTER_NEAREST)
    centres = np.flatnonzero(trimap == layout.TRIMAP_UNKNOWN)

    rng = np.random.default_rng(seed)
    alphas = alpha_pool(rng, min(POOL_SIZE, steps * batch_size), side)
    net = copy.deepcopy(model)
    params = record.freeze(net)
    net.train()
    _freeze_batchnorm(net)
    criterion = record.build_loss()
    device = next(net.parameters()).device
    # The fused kernel updates every tensor in one pass; torch's default on the CPU loops over
    # the parameters in Python, a second per step for this network.
    fused = all(p.device.type in ("cpu", "cuda") for p in params) or None
    optimizer = torch.optim.Adam(params, lr=lr, fused=fused)
    autocast = _autocast(amp, device)
    for step in range(steps):
        samples = [
            draw_sample(fg_field, bg_field, centres, alphas, rng, side) for _ in range(batch_size)
        ]
        data = torch.from_numpy(np.stack([d for d, _ in samples])).to(device)
        label = torch.from_numpy(np.stack([lb for _, lb in samples])).to(device)
        with autocast():
            raw, refined = net(data)
        loss, _ = criterion(record.prediction(raw, refined).float(), label)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if not torch.isfinite(loss):
            raise AdaptError(
                f"adaptation loss became {loss.item()} at step {step + 1} of {steps}: "
                f"lower the learning rate (now {lr:g})"
            )
    optimizer.zero_grad(set_to_none=True)  # the copy only infers from here on
    return net.eval()


def _autocast(amp: str | None, device: torch.device) -> Callable:
    import contextlib

    from utils.device import check_amp

    try:
        dtype = check_amp(amp, device)
    except ValueError as e:
        raise AdaptError(str(e)) from e
    if dtype is torch.bfloat16:
        return lambda: torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext


def predictor(model: nn.Module, steps: int, settings: Mapping[str, Any], **inference_kwargs):
    """``utils.evaluation`` predictor (``example -> alpha``) that adapts a fresh copy of
    ``model`` to each example (:func:`adapt` with ``steps`` and ``settings``; only the
    example's ``image`` and ``trimap`` are read) and mattes it with
    :func:`utils.inference.predict_alpha` (``inference_kwargs``)."""
    from utils.inference import predict_alpha

    settings = dict(settings)
    settings.setdefault("scale", inference_kwargs.get("scale"))

    def predict(example) -> np.ndarray:
        image, trimap = example.image, example.trimap
        net = adapt(model, image, trimap, steps, **settings)
        return predict_alpha(net, image, trimap, **inference_kwargs)

    return predict
