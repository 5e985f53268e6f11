"""Command-line building blocks every entry point shares: one-line usage errors, numeric
argument types that refuse a bad value where it is parsed (naming the allowed range), and the
checkpoint and inference flags of evaluate.py, predict.py, export.py and demo.py."""

from __future__ import annotations

import argparse
import math

from utils.image_io import MAX_PIXELS
from utils.inference import DEFAULT_MAX_SIDE, TTA


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line naming the flag (exit status 2), not the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def number(kind: type, low: float, *, strict: bool = False):
    """argparse type: an int/float ``>= low`` (``> low`` when ``strict``), finite; a bad value
    is refused where it is parsed, with the allowed range."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not math.isfinite(value) or (value <= low if strict else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {text}")
        return value

    return parse


def int_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated positive integers, e.g. ``64,96,128``."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"every value must be >= 1, got {text!r}")
    return values


def add_checkpoint_args(parser) -> None:
    """``--checkpoint`` and ``--stage`` as predict.py and export.py take them (resolved by
    ``utils.inference.load_model_for_inference``)."""
    parser.add_argument(
        "--checkpoint",
        help="a .pt file or a run folder (runs/<name>: highest stage's best.pt); "
        "default: the only run under runs/",
    )
    parser.add_argument(
        "--stage", type=int, choices=(1, 2, 3), help="refuse a checkpoint of another stage"
    )


def scale_arg(text: str) -> float:
    """argparse type of ``--infer-scale``: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


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
        "--overlap",
        type=int,
        help="tile context in px; unset: the model's receptive field rounded up to its stride "
        "(exact tiling; 224 px for the default architecture)",
    )
    parser.add_argument(
        "--max-side",
        type=int,
        default=DEFAULT_MAX_SIDE,
        help="tile images whose long side exceeds this (bounded memory); 0 = never",
    )
    parser.add_argument(
        "--infer-scale",
        type=scale_arg,
        default=None,
        help="run the network on the image resized by this factor in (0, 1] and bring the "
        "alpha back to full size; unset: the scale stored with the model (chosen on its "
        "validation split when it was trained), 1 = full resolution as in the paper",
    )
    parser.add_argument(
        "--tta",
        choices=tuple(TTA),
        default="none",
        help="test-time augmentation: average the network over the image and its mirror "
        "(flip, 2x the compute) or its 8 quarter turns and mirrors (d4, 8x)",
    )
    parser.add_argument(
        "--max-pixels",
        type=int,
        default=MAX_PIXELS,
        help="refuse inputs whose header declares more pixels than this, before decoding "
        "(a tiny PNG can declare a 30000x30000 image); raise it if the machine has the memory",
    )
