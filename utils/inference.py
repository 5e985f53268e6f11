"""Whole-image inference with PyTorch: a DIM model on a full-resolution image and trimap.

:func:`predict_alpha` runs a DIM model on a full-resolution image and trimap and returns the
alpha matte at the image's own size:

1. ``data`` (4, H, W) is built with :func:`data.layout.make_data` (ImageNet-normalised RGB +
   scaled trimap);
2. it is reflect-padded to a multiple of 32 (the encoder pools five times) with
   :func:`utils.tiling.pad_to_multiple` (padding split between opposite sides);
3. the model runs under ``torch.inference_mode`` (optionally bf16/fp16 autocast on CUDA), in
   eval mode (BatchNorm uses its running statistics, so a pixel's output does not depend on
   the rest of the batch);
4. the result is cropped back to (H, W); the refined alpha is used when the model has a refine
   head, else the raw one; pixels the trimap marks known are set to exactly 0 / 1.

Tiling (bounded memory): ``tile``, ``overlap`` and ``max_side`` as described in
:mod:`utils.tiling`, which holds the padding, the tile plans and the exact overlap (numpy only,
shared with the onnxruntime path :mod:`utils.onnx_inference`); with the default overlap, tiled
inference equals whole-image inference up to float rounding.

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
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from utils.checkpoint import CheckpointError, find_checkpoint, load_model
from utils.device import check_amp
from utils.tiling import predict_with


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
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


def _model_device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _forward(
    model: torch.nn.Module, x: torch.Tensor, amp_dtype: torch.dtype | None
) -> torch.Tensor:
    """Run the model on a padded (1, 4, h, w) batch; return alpha (h, w) float32 on the CPU."""
    ctx = (
        torch.autocast(device_type=x.device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    with ctx:
        raw, refined = model(x)
    alpha = refined if refined is not None else raw
    return alpha[0, 0].float().clamp_(0.0, 1.0).cpu()


def predict_alpha(
    model: torch.nn.Module,
    image_u8: np.ndarray,
    trimap_u8: np.ndarray,
    device: str | torch.device | None = None,
    amp: str | torch.dtype | None = None,
    tile: int | None = None,
    overlap: int | None = None,
    max_side: int | None = None,
    scale: float | None = None,
) -> np.ndarray:
    """Alpha matte of a full-resolution image.

    Args:
        model: a DIM model, ``model(data) -> (raw, refined_or_None)``; it is run in eval mode
            (each submodule's mode is restored afterwards) and moved to ``device`` if needed.
        image_u8: RGB (H, W, 3) uint8 (or float 0-255).
        trimap_u8: (H, W) uint8 with 0 = background, 128 = unknown, 255 = foreground.
        device: where to run; None = where the model's parameters are.
        amp: None/"off", or "bf16" (CUDA or CPU) / "fp16" (CUDA) autocast; ValueError elsewhere.
        tile: core size in px for tiled inference (rounded up to a multiple of 32); None =
            whole image (unless ``max_side`` asks for tiling).
        overlap: context added around each tile, px (rounded up to a multiple of 32);
            None = :func:`exact_overlap` of the model (tiles then match whole-image inference).
        max_side: tile automatically when max(H, W) > max_side, windows <= max_side px.
        scale: run the network on the image resized by this factor in (0, 1]
            (:func:`utils.tiling.at_scale`); None = the model's ``infer_scale`` (set from its
            checkpoint), else 1.

    Returns:
        float32 (H, W) in [0, 1]; exactly 0 where trimap == 0 and 1 where trimap == 255.
    """
    device = _model_device(model) if device is None else torch.device(device)
    amp_dtype = check_amp(amp, device)
    if _model_device(model) != device:
        model.to(device)

    def forward(window: np.ndarray) -> np.ndarray:
        return _forward(model, torch.from_numpy(window).to(device), amp_dtype).numpy()

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
        )


# --- checkpoints for inference ---------------------------------------------------------------
def load_model_for_inference(
    checkpoint: str | os.PathLike | None,
    device: str | torch.device = "cpu",
    stage: int | None = None,
) -> tuple[torch.nn.Module, dict, Path]:
    """Load a project checkpoint (any stage) for inference: ``(model in eval mode, state, path)``.

    ``checkpoint`` goes through :func:`utils.checkpoint.find_checkpoint`. ``stage``, when
    given, must match the checkpoint's ``state["stage"]``. Every failure - missing file, a file
    that is not a checkpoint of this project, weights that do not fit the architecture it
    declares, a stage mismatch - raises :class:`utils.checkpoint.CheckpointError` naming the file.
    """
    path = find_checkpoint(checkpoint)
    try:
        model, state = load_model(path, map_location=device)
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError) as e:  # e.g. a model_config of another project
        raise CheckpointError(
            f"{path} is not a Deep Image Matting checkpoint of this project: "
            f"{type(e).__name__}: {e}"
        ) from e
    got = state.get("stage")
    if stage is not None and got != stage:
        raise CheckpointError(
            f"{path} is a stage-{got} checkpoint but stage {stage} was asked for; pass the "
            f"stage-{stage} checkpoint (runs/<name>/stage{stage}/best.pt) or drop --stage"
        )
    return model, state, path
