"""Whole-image inference: the one place that pads images to a multiple of 32 and tiles them.

:func:`predict_alpha` runs a DIM model on a full-resolution image and trimap and returns the
alpha matte at the image's own size:

1. ``data`` (4, H, W) is built with :func:`data.layout.make_data` (ImageNet-normalised RGB +
   scaled trimap);
2. it is reflect-padded to a multiple of 32 (the encoder pools five times) with the model
   file's ``pad_to_multiple`` (padding split between opposite sides);
3. the model runs under ``torch.inference_mode`` (optionally bf16/fp16 autocast on CUDA), in
   eval mode (BatchNorm uses its running statistics, so a pixel's output does not depend on
   the rest of the batch);
4. the result is cropped back to (H, W); the refined alpha is used when the model has a refine
   head, else the raw one; pixels the trimap marks known are set to exactly 0 / 1.

Tiling (bounded memory)
-----------------------
With ``tile=T`` the padded image is cut into T x T *cores*; each core is run inside a
*window* that adds ``overlap`` pixels of real image context on every side (clipped at the
image border, where whole-image inference sees the same zero padding), and only the core is
written back. Windows start on multiples of 32, so every max-pool sees exactly the pooling
grid of the whole image. A pixel's output therefore equals whole-image inference whenever its
window holds its whole receptive field; differences come only from the zero padding at a
window's inner edges and shrink with the distance to that edge.

How much overlap makes tiling exact: an interval analysis of the network (every conv,
pool, unpool index and decoder level, at each of the 32 pixel phases) gives a receptive field
of at most 218 px on each side for the default architecture (fc6 "transmap", "unpool"
upsampling), 186 px with fc6 "conv1x1", and at most 32 px more with "bilinear" upsampling.
:func:`exact_overlap` rounds these up to multiples of 32 (224 / 192 / +32). With that
overlap - the default - tiled inference equals whole-image inference everywhere, up to float
rounding (``tests/test_inference.py`` checks it); a smaller ``overlap`` is faster and differs
only within (required - overlap) px of a seam, by an amount that depends on the weights.

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
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data import layout
from utils.device import check_amp
from utils.image_io import MAX_PIXELS

STRIDE = 32  # total down-sampling of the encoder (five 2x2 max-pools)
DEFAULT_MAX_SIDE = 1600  # the CLIs' default: windows of <= 1600 x 1600 px (~4 GB on CPU)


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


def exact_overlap(config: dict | None = None) -> int:
    """Context (px, a multiple of 32) a tile needs for tiled == whole-image inference.

    ``config`` is ``model.config`` (fc6, upsample, ...); see the module docstring for where
    the numbers come from: 218 px of receptive field for fc6 "transmap", 186 for "conv1x1",
    up to 32 px more with bilinear upsampling, each rounded up to a multiple of 32.
    """
    config = config or {}
    overlap = 192 if config.get("fc6") == "conv1x1" else 224
    return overlap + (32 if config.get("upsample") == "bilinear" else 0)


def plan_tiles(height: int, width: int, tile: int, overlap: int) -> list[Tile]:
    """Cut a padded (height, width) image into cores of ``tile`` px with ``overlap`` context.

    ``height``, ``width``, ``tile`` and ``overlap`` must be multiples of 32, so every window
    starts on the encoder's pooling grid. Cores partition the image exactly (the last row and
    column of cores may be smaller); windows are cores grown by ``overlap`` on each side and
    clipped to the image.
    """
    for name, v in (("height", height), ("width", width), ("tile", tile), ("overlap", overlap)):
        if v % STRIDE or v < 0 or (name != "overlap" and v == 0):
            raise ValueError(f"{name}={v} must be a positive multiple of {STRIDE}")
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
    shape: tuple[int, int], tile: int | None, overlap: int, max_side: int | None
) -> int | None:
    """The core size to use for an (H, W) image, or None for whole-image inference.

    An explicit ``tile`` wins (rounded up to a multiple of 32). Otherwise, when ``max_side`` is
    set and the long side exceeds it, the core is chosen so that a window (core + 2*overlap)
    is at most ``max_side`` (and at least 32).
    """
    if tile is not None:
        if tile <= 0:
            raise ValueError(f"tile={tile} must be positive")
        return round_up(tile)
    if max_side is None or max(shape) <= max_side:
        return None
    if max_side <= 0:
        raise ValueError(f"max_side={max_side} must be positive")
    return max(STRIDE, (max_side - 2 * overlap) // STRIDE * STRIDE)


def add_inference_args(parser) -> None:
    """Add the inference flags every CLI shares (evaluate.py, predict.py): device, AMP, tiles."""
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:1 | mps")
    parser.add_argument(
        "--amp",
        choices=("off", "auto", "bf16", "fp16"),
        default="off",
        help="autocast for inference: bf16 (CUDA or CPU) or fp16 (CUDA); off keeps float32",
    )
    parser.add_argument(
        "--tile", type=int, help="tile size in px; unset: whole image unless --max-side applies"
    )
    parser.add_argument(
        "--overlap", type=int, help="tile context in px; unset: the exact overlap (224 px)"
    )
    parser.add_argument(
        "--max-side",
        type=int,
        default=DEFAULT_MAX_SIDE,
        help="tile images whose long side exceeds this (bounded memory); 0 = never",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        help="refuse inputs whose header declares more pixels than this, before decoding "
        "(a tiny PNG can declare a 30000x30000 image); raise it if the machine has the memory",
    )


def force_known(alpha: np.ndarray, trimap_u8: np.ndarray) -> np.ndarray:
    """Set pixels the trimap marks known to exactly 0 (background) / 1 (foreground), in place."""
    alpha[trimap_u8 == layout.TRIMAP_BG] = 0.0
    alpha[trimap_u8 == layout.TRIMAP_FG] = 1.0
    return alpha


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

    Returns:
        float32 (H, W) in [0, 1]; exactly 0 where trimap == 0 and 1 where trimap == 255.
    """
    from models.py_encoder_decoder import crop_back, pad_to_multiple

    image_u8 = np.asarray(image_u8)
    trimap_u8 = np.asarray(trimap_u8)
    if image_u8.ndim != 3 or image_u8.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3) RGB, got shape {image_u8.shape}")
    if trimap_u8.ndim != 2:
        raise ValueError(f"trimap must be (H, W), got shape {trimap_u8.shape}")
    h, w = trimap_u8.shape
    device = _model_device(model) if device is None else torch.device(device)
    amp_dtype = check_amp(amp, device)
    if not (trimap_u8 == layout.TRIMAP_UNKNOWN).any():  # nothing to infer: no network input
        return force_known(np.zeros((h, w), np.float32), trimap_u8)
    if overlap is None:
        overlap = exact_overlap(getattr(model, "config", None))
    overlap = round_up(max(0, overlap))
    core = resolve_tile((h, w), tile, overlap, max_side)

    data = torch.from_numpy(layout.make_data(image_u8, trimap_u8))[None]  # (1, 4, H, W)
    if _model_device(model) != device:
        model.to(device)
    with eval_mode(model), torch.inference_mode():
        padded, pads = pad_to_multiple(data, STRIDE)
        del data
        hp, wp = padded.shape[-2:]
        if core is None or (core >= hp and core >= wp):
            out = _forward(model, padded.to(device), amp_dtype)
        else:
            out = torch.empty((hp, wp), dtype=torch.float32)
            for t in plan_tiles(hp, wp, core, overlap):
                window = padded[(..., *t.window)].to(device)
                out[t.core] = _forward(model, window, amp_dtype)[t.inner]
        alpha = crop_back(out, pads).numpy()
    alpha = np.ascontiguousarray(alpha, dtype=np.float32)
    return force_known(alpha, trimap_u8)


# --- checkpoints for inference ---------------------------------------------------------------
def resolve_checkpoint(
    path: str | os.PathLike | None, runs_dir: str | os.PathLike = "runs"
) -> Path:
    """Turn what a user passes as ``--checkpoint`` into a checkpoint file.

    * a file: itself;
    * a stage folder (``runs/<name>/stage2``): its ``best.pt``, else ``last.pt``;
    * a run folder (``runs/<name>``): the highest stage that has a checkpoint, as above;
    * None: the run folder under ``runs_dir`` when there is exactly one.

    Raises :class:`utils.checkpoint.CheckpointError` naming what was looked for.
    """
    from utils.checkpoint import CheckpointError

    if path is None:
        runs = Path(runs_dir)
        found = sorted({p.parents[1] for p in runs.glob("*/stage*/*.pt")}) if runs.is_dir() else []
        if len(found) != 1:
            what = (
                "no run folders"
                if not found
                else f"{len(found)} runs ({', '.join(map(str, found))})"
            )
            raise CheckpointError(
                f"no --checkpoint given and {runs}/ has {what}: pass --checkpoint with a .pt "
                "file or a run folder (e.g. runs/<name> or runs/<name>/stage3)"
            )
        path = found[0]
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    stages = (
        [path]
        if path.name.startswith("stage")
        else sorted(path.glob("stage*"), key=lambda p: (len(p.name), p.name), reverse=True)
    )
    for stage_dir in stages:
        for name in ("best.pt", "last.pt"):
            if (stage_dir / name).is_file():
                return stage_dir / name
    raise CheckpointError(
        f"{path} is a folder without a checkpoint (looked for stage*/best.pt and last.pt); "
        "train one with `python train_encoder_decoder.py --stage 1` or pass a .pt file"
    )


def load_model_for_inference(
    checkpoint: str | os.PathLike | None,
    device: str | torch.device = "cpu",
    stage: int | None = None,
) -> tuple[torch.nn.Module, dict, Path]:
    """Load a project checkpoint (any stage) for inference: ``(model in eval mode, state, path)``.

    ``checkpoint`` goes through :func:`resolve_checkpoint`. ``stage``, when given, must match
    the checkpoint's ``state["stage"]``. Every failure - missing file, a file that is not a
    checkpoint of this project, weights that do not fit the architecture it declares, a stage
    mismatch - raises :class:`utils.checkpoint.CheckpointError` naming the file.
    """
    from utils.checkpoint import CheckpointError, load_model

    path = resolve_checkpoint(checkpoint)
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
