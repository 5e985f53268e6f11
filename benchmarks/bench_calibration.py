"""Calibration of the built-in synthetic set against real photographs.

Three classical "methods" on the synthetic test split and on the alphamatting.com
development set (real photos, Trimap1), scored with the official metrics:

    trimap_only   0.5 in the unknown region (known pixels from the trimap)
    zeros         0 in the unknown region (a constant that beats 0.5 when the band is mostly bg)
    closed_form   Levin et al.'s closed-form matting (pymatting.estimate_alpha_cf)

The synthetic set is useful when closed-form is clearly better than trimap-only on it and
both are of the same order as on the real photos: neither trivially easy nor hopeless.

    python benchmarks/bench_calibration.py [--quick] [--max-images N] [--max-side PX]
        [--synthetic DIR] [--real DIR] [--methods trimap_only,zeros,closed_form] [--json out.json]

Units: SAD, Grad and Conn are sums over the unknown pixels / 1000 (Composition-1k
convention), MSE is the mean over the unknown pixels; all are means over the images.
SAD/MP is SAD per megapixel of image (sets with different image sizes compare on it);
err/px is the mean |alpha error| over all unknown pixels of the set (0-1).
pymatting is imported lazily: its first import compiles with numba (~45 s, cached after).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root

import numpy as np

from data.synthetic import ensure_synthetic
from data.testsets import MattingExample, load_alphamatting, load_composition1k
from utils import baselines, evaluation
from utils.cli import OneLineParser, existing, name_list, number, output

REPO_ROOT = Path(__file__).resolve().parents[1]
REAL_DEFAULT = REPO_ROOT.parent / "shared" / "data" / "alphamatting_lowres_dev"
METHODS = ("trimap_only", "zeros", "closed_form")
QUICK_IMAGES, QUICK_SIDE = 4, 400
# The predictors are the evaluation library's: the same baselines as every other table.
_FUNCS: dict[str, Callable[[MattingExample], np.ndarray]] = {
    "trimap_only": baselines.trimap_only,
    "zeros": baselines.zeros,
    "closed_form": baselines.closed_form,
}


def downscale(ex: MattingExample, max_side: int | None) -> MattingExample:
    """``ex`` with its long side at most ``max_side`` (evaluation.Rescaled's resampling)."""
    long_side = max(ex.trimap.shape)
    if not max_side or long_side <= max_side:
        return ex
    return evaluation.Rescaled([ex], max_side / long_side)[0]


def evaluate_set(
    examples: Sequence[MattingExample],
    methods: Sequence[str] = METHODS,
    max_images: int | None = None,
    max_side: int | None = None,
) -> dict:
    """Score ``methods`` on ``examples`` through ``utils.evaluation.score``; per-method means
    plus SAD per megapixel, mean error per unknown pixel and seconds per image.

    ``max_images`` picks that many images evenly spread over the set. An image on which
    a method fails (closed-form without known fg/bg) is scored with the trimap-only
    prediction and counted in ``failures``.
    """
    if "closed_form" in methods:
        import pymatting  # noqa: F401  (compile/load before the timings start)

    n = len(examples) if max_images is None else min(max_images, len(examples))
    # A subset is spread over the whole set (composites of one foreground are adjacent).
    picks = np.unique(np.linspace(0, len(examples) - 1, n).round().astype(int)) if n else []
    chosen = [downscale(examples[int(i)], max_side) for i in picks]
    mps = [ex.trimap.size / 1e6 for ex in chosen]
    unknown_px = float(sum((ex.trimap == 128).sum() for ex in chosen))
    out = {
        "images": len(chosen),
        "mean_megapixels": float(np.mean(mps)) if mps else 0.0,
        "unknown_fraction": unknown_px / max(sum(mps) * 1e6, 1),
        "methods": {},
    }
    for m in methods:
        failures = 0

        def predict(ex, f=_FUNCS[m]):
            nonlocal failures
            try:
                return f(ex)
            except ValueError:
                failures += 1
                return evaluation.trimap_only(ex)

        with contextlib.redirect_stdout(io.StringIO()):  # pymatting's solver warnings
            rows, summary = evaluation.score(chosen, predict)
        res = {k: summary[k] for k in evaluation.METRICS}
        res["sad_per_mp"] = float(np.mean([r["sad"] / mp for r, mp in zip(rows, mps, strict=True)]))
        res["seconds"] = summary["seconds_per_image"]
        res["err_per_unknown_px"] = sum(r["sad"] for r in rows) * 1000 / max(unknown_px, 1)
        res["failures"] = failures
        out["methods"][m] = res
    return out


def run(
    quick: bool = False,
    max_images: int | None = None,
    max_side: int | None = None,
    methods: Sequence[str] = METHODS,
    synthetic_dir: str | Path | None = None,
    real_dir: str | Path | None = REAL_DEFAULT,
) -> dict:
    """Calibrate; returns {"synthetic": {...}, "alphamatting": {...} or {"skipped": why}}.

    quick: at most QUICK_IMAGES images per set, long side <= QUICK_SIDE px (unless given).
    synthetic_dir: a Composition-1k folder; default the built-in set's test split.
    """
    if quick:
        max_images = QUICK_IMAGES if max_images is None else max_images
        max_side = QUICK_SIDE if max_side is None else max_side
    syn_root = Path(synthetic_dir) if synthetic_dir else ensure_synthetic() / "test"
    results: dict = {
        "settings": {"max_images": max_images, "max_side": max_side, "methods": list(methods)},
        "synthetic": {
            "root": str(syn_root),
            **evaluate_set(load_composition1k(syn_root), methods, max_images, max_side),
        },
    }
    real = Path(real_dir) if real_dir else None
    if real is None or not (real / "input_training_lowres").is_dir():
        results["alphamatting"] = {"skipped": f"alphamatting.com dev set not found at {real}"}
    else:
        examples = load_alphamatting(real, "Trimap1")
        results["alphamatting"] = {
            "root": str(real),
            **evaluate_set(examples, methods, max_images, max_side),
        }
    return results


def format_table(results: dict) -> str:
    """Markdown table of :func:`run`'s results."""
    lines = [
        "| set | method | images | SAD | MSE | Grad | Conn | SAD/MP | err/px | s/img |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for key, label in (("synthetic", "synthetic test"), ("alphamatting", "alphamatting Trimap1")):
        r = results.get(key, {})
        if "skipped" in r:
            notes.append(f"{label}: skipped ({r['skipped']})")
            continue
        mp = r["mean_megapixels"]
        for m, s in r["methods"].items():
            fail = f" ({s['failures']} failed)" if s["failures"] else ""
            lines.append(
                f"| {label} ({mp:.2f} MP) | {m}{fail} | {r['images']} | {s['sad']:.2f} | "
                f"{s['mse']:.4f} | {s['grad']:.2f} | {s['conn']:.2f} | {s['sad_per_mp']:.1f} | "
                f"{s['err_per_unknown_px']:.3f} | {s['seconds']:.2f} |"
            )
    lines.append(
        "\nSAD, Grad, Conn: sum over unknown pixels / 1000, mean per image; MSE: mean over "
        "unknown pixels; SAD/MP: SAD per megapixel; err/px: mean |error| per unknown pixel."
    )
    return "\n".join(lines + notes)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m benchmarks.bench_calibration", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--quick", action="store_true", help=f"{QUICK_IMAGES} images, side {QUICK_SIDE}")
    p.add_argument(
        "--max-images", type=number(int, 1), default=None, help="images per set (default all)"
    )
    p.add_argument(
        "--max-side", type=number(int, 1), default=None, help="downscale long side to PX"
    )
    p.add_argument(
        "--methods",
        type=name_list(METHODS),
        default=",".join(METHODS),
        help="comma-separated subset",
    )
    p.add_argument(
        "--synthetic",
        type=existing("dir", convert=Path),
        default=None,
        help="Composition-1k folder to use",
    )
    p.add_argument(
        "--real",
        type=existing("dir", convert=Path),
        default=REAL_DEFAULT,
        help="alphamatting.com folder",
    )
    p.add_argument(
        "--json", type=output("file", Path), default=None, help="also write the results here"
    )
    return p


def main(argv: list[str] | None = None) -> dict:
    a = build_parser().parse_args(argv)
    results = run(a.quick, a.max_images, a.max_side, a.methods, a.synthetic, a.real)
    print(format_table(results))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
