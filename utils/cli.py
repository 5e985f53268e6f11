"""Command-line building blocks every entry point shares: one-line usage errors, and the
argparse types that declare what a flag accepts and refuse anything else where it is parsed
(one line naming the flag, the value and what is allowed; exit status 2), before any work.

Every flag of every command line either has one of these types (or ``choices``), or is a free
text listed with its reason in ``tests/test_cli_flags.py``, which tries a bad value of each
declared kind on every flag it finds in the parsers:

    number(int, 1)            integers (or floats) in a range; floats must be finite
    int_list, scale_arg       comma-separated positive integers; a scale in (0, 1]
    name_list(choices)        a comma-separated subset of names
    device_arg                auto | cpu | cuda | cuda:N | mps (availability is checked later)
    host_arg                  an IP address or a host name, by syntax
    existing("file"|"dir"|"any")   a path that exists (a file, a folder, either)
    output("file"|"dir")      a path to write: not the other kind, not under a file, in a
                              writable folder
    declare(kind, *bad)       marks a project-specific type (its own checks) and a few values
                              it refuses, for the test

Also the checkpoint and inference flags of evaluate.py, predict.py, export.py and demo.py.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

from utils.image_io import MAX_PIXELS
from utils.inference import DEFAULT_MAX_SIDE, TTA


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line naming the flag (exit status 2), not the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see --help)\n")


def declare(kind: str, *bad: str) -> Callable:
    """Decorator: mark an argparse type as a checked flag kind. ``bad``: values it refuses (the
    flag test tries them; the shared kinds get theirs from the test's table)."""

    def mark(fn: Callable) -> Callable:
        fn.flag_kind, fn.bad_values = kind, bad
        return fn

    return mark


def number(kind: type, low: float, *, strict: bool = False, high: float | None = None):
    """argparse type: an int/float ``>= low`` (``> low`` when ``strict``) and ``<= high`` when
    given, finite; a bad value is refused where it is parsed, with the allowed range."""
    if high is None:
        allowed = f"{'>' if strict else '>='} {low}"
    else:
        allowed = f"in {low}..{high}" if not strict else f"in ({low}, {high}]"
    if kind is float:
        allowed = f"finite and {allowed}"

    @declare(kind.__name__)
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'} {allowed}, got {text!r}"
            ) from None
        too_low = value <= low if strict else value < low
        if not math.isfinite(value) or too_low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type by it ("invalid int value")
    parse.low, parse.high, parse.strict = low, high, strict
    return parse


port_arg = number(int, 1, high=65535)  # argparse type: a TCP port


def number_list(
    kind: type,
    low: float,
    *,
    strict: bool = False,
    name: str | None = None,
    bad: tuple[str, ...] = (),
) -> Callable:
    """argparse type: comma-separated numbers of ``kind``, each finite and ``>= low``
    (``> low`` when ``strict``); a tuple. ``name``/``bad``: the declared kind and the values
    it refuses, for the flag test (default: "<kind>-list")."""
    word = "integers" if kind is int else "numbers"
    allowed = f"{'>' if strict else '>='} {low}"

    @declare(name or f"{kind.__name__}-list", *bad)
    def parse(text: str) -> tuple:
        try:
            values = tuple(kind(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {word}, got {text!r}"
            ) from None
        if not values or not all(
            math.isfinite(v) and (v > low if strict else v >= low) for v in values
        ):
            raise argparse.ArgumentTypeError(
                f"every value must be finite and {allowed}, got {text!r}"
            )
        return values

    return parse


int_list = number_list(int, 1)  # e.g. --cut-sizes 64,96,128


@declare("scale")
def scale_arg(text: str) -> float:
    """argparse type of ``--infer-scale``: a number in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1], got {text!r}") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def name_list(choices) -> Callable:
    """argparse type: a comma-separated subset of ``choices`` (e.g. ``data,train``), in the
    order given; a list."""
    choices = tuple(choices)

    @declare("name-list")
    def parse(text: str) -> list[str]:
        names = [s.strip() for s in text.split(",") if s.strip()]
        unknown = [n for n in names if n not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated subset of {','.join(choices)}, got {text!r}"
            )
        return names

    parse.choices = choices
    return parse


_DEVICE = re.compile(r"(auto|cpu|mps|cuda(:\d+)?)")


@declare("device")
def device_arg(text: str) -> str:
    """argparse type of ``--device``: auto, cpu, cuda, cuda:N or mps, by name (whether this
    machine has it is checked when the device is opened, ``utils.device.pick_device``)."""
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda, cuda:N or mps, got {text!r}")
    return text


_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


@declare("host")
def host_arg(text: str) -> str:
    """argparse type of a server's ``--host``: an IPv4/IPv6 address, or a host name by RFC 1123
    syntax (whether this machine can listen there is checked before the server starts)."""
    try:
        ipaddress.ip_address(text)
        return text
    except ValueError:
        pass
    labels = text.rstrip(".").split(".")
    numeric = all(label.isdigit() for label in labels)
    if numeric or len(text) > 253 or not all(_HOST_LABEL.fullmatch(x) for x in labels):
        what = "not an IPv4 address" if numeric else "not an IP address or a host name"
        raise argparse.ArgumentTypeError(
            f"{text!r} is {what} (e.g. 127.0.0.1, 0.0.0.0, ::1 or localhost)"
        )
    return text


# --- paths -----------------------------------------------------------------------------------
_KIND_NAME = {"file": "a file", "dir": "a folder", "any": "a file or a folder"}


def existing(kind: str = "any", special: tuple[str, ...] = (), convert: Callable = str):
    """argparse type: a path that exists, of ``kind`` "file", "dir" or "any"; the words in
    ``special`` (e.g. "synthetic") pass as they are. Returns ``convert(text)``."""
    expected = _KIND_NAME[kind] + (f" or one of {', '.join(special)}" if special else "")

    @declare(f"input-{kind}")
    def parse(text: str):
        if text in special:
            return text
        p = Path(text)
        if not text or not p.exists():
            raise argparse.ArgumentTypeError(f"{text!r} does not exist (expected {expected})")
        if kind == "file" and not p.is_file():
            raise argparse.ArgumentTypeError(f"{text} is a folder, expected {expected}")
        if kind == "dir" and not p.is_dir():
            raise argparse.ArgumentTypeError(f"{text} is a file, expected {expected}")
        return convert(text)

    parse.special = special
    return parse


def writable_target(path: Path, kind: str) -> str | None:
    """Why ``path`` cannot be written as ``kind`` ("file" or "dir"), or None: it exists as the
    other kind, it lies under a file, or its nearest existing folder is not writable."""
    if kind == "dir" and path.exists() and not path.is_dir():
        return f"{path} is a file, expected a folder (where the outputs go)"
    if kind == "file" and path.is_dir():
        return f"{path} is a folder, expected a file name such as {path / 'model.onnx'}"
    for parent in (path, *path.parents) if kind == "dir" else path.parents:
        if parent.is_dir():
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"{path}: the folder {parent} is not writable"
            return None
        if parent.exists() or parent.is_symlink():
            return f"{path} lies under {parent}, which is a file, not a folder"
    return None


def output(kind: str = "dir", convert: Callable = str):
    """argparse type: a path to write, ``kind`` "file" or "dir" (created when missing): refused
    when it exists as the other kind, lies under a file, or its folder is not writable."""

    @declare(f"output-{kind}")
    def parse(text: str):
        if not text:
            raise argparse.ArgumentTypeError("expected a path, got ''")
        why = writable_target(Path(text), kind)
        if why:
            raise argparse.ArgumentTypeError(why)
        return convert(text)

    return parse


# --- the flags the inference command lines share ---------------------------------------------
def add_checkpoint_args(parser) -> None:
    """``--checkpoint`` and ``--stage`` as predict.py and export.py take them (resolved by
    ``utils.inference.load_model_for_inference``)."""
    parser.add_argument(
        "--checkpoint",
        type=existing("any"),
        help="a .pt file or a run folder (runs/<name>: highest stage's best.pt); "
        "default: the only run under runs/",
    )
    parser.add_argument(
        "--stage", type=int, choices=(1, 2, 3), help="refuse a checkpoint of another stage"
    )


def add_inference_args(parser) -> None:
    """Add the inference flags every CLI shares (evaluate.py, predict.py, demo.py): device,
    AMP, tiles, scale, test-time augmentation and adaptation, the pixel limit."""
    parser.add_argument(
        "--device", type=device_arg, default="auto", help="auto | cpu | cuda | cuda:1 | mps"
    )
    parser.add_argument(
        "--amp",
        choices=("off", "auto", "bf16", "fp16"),
        default="off",
        help="autocast for inference: bf16 (CUDA or CPU) or fp16 (CUDA); off keeps float32",
    )
    parser.add_argument(
        "--tile",
        type=number(int, 1),
        help="tile size in px; unset: whole image unless --max-side applies",
    )
    parser.add_argument(
        "--overlap",
        type=number(int, 0),
        help="tile context in px; unset: the model's receptive field rounded up to its stride "
        "(exact tiling; 224 px for the default architecture)",
    )
    parser.add_argument(
        "--max-side",
        type=number(int, 0),
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
        "--adapt",
        type=number(int, 0),
        default=0,
        metavar="STEPS",
        help="test-time adaptation: before matting each image, fine-tune a copy of the model "
        "for STEPS optimiser steps on composites of that image's own known colours "
        "(utils/adapt.py). 30 is the measured choice: about 10 s a photograph on a 2-core CPU "
        "and 40-50 %% less SAD on real photographs; 0 = off. Not with --onnx",
    )
    parser.add_argument(
        "--max-pixels",
        type=number(int, 1),
        default=MAX_PIXELS,
        help="refuse inputs whose header declares more pixels than this, before decoding "
        "(a tiny PNG can declare a 30000x30000 image); raise it if the machine has the memory",
    )
