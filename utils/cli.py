"""Command-line building blocks every entry point shares: one-line usage errors and numeric
argument types that refuse a bad value where it is parsed, naming the allowed range."""

from __future__ import annotations

import argparse
import math


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
