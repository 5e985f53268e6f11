"""Evaluate alpha mattes with the official metrics: a checkpoint, a classical method, or a folder
of predictions made by any other program, on one test set, with one scoring code path.

Examples (from the repository root)::

    # a checkpoint (any stage) on the built-in synthetic test split
    python evaluate.py --checkpoint runs/demo/stage1/best.pt
    # Composition-1k (official composites and trimaps: merged/, alpha_copy/, trimaps/)
    python evaluate.py --checkpoint runs/demo --testset /data/Composition-1k-testset
    # alphamatting.com training images (input_*/, gt_*/, trimap_*/Trimap1|Trimap2/)
    python evaluate.py --checkpoint runs/demo --testset ../shared/data/alphamatting_lowres_dev
    # plain folders, matched by file stem
    python evaluate.py --checkpoint runs/demo --images I/ --trimaps T/ --alphas A/
    # another method's predictions (PNG alphas named like the test images)
    python evaluate.py --pred-dir other_method/ --testset /data/Composition-1k-testset
    # test-time adaptation: 25 fine-tuning steps per image on its own colours first
    python evaluate.py --checkpoint runs/demo --testset synthetic-val --adapt 25
    # classical baselines
    python evaluate.py --method closed-form --limit 10
    python evaluate.py --method trimap-only

Outputs in ``--out`` (default ``runs/eval/<method>-<test set>``): ``alpha/NAME.png`` (the
predicted alphas), ``per_image.csv`` (name, sad, mse, grad, conn), ``summary.json`` and
``summary.md`` (means, with units); the table is printed too.

Protocol: predictions are scored as 8-bit PNGs exactly as saved (so ``--pred-dir`` on this
program's own output reproduces its numbers); only trimap == 128 pixels count; SAD, Grad and
Conn are divided by 1000 (see ``utils.metrics.UNITS``).

The scoring itself (test sets, baselines, the official metrics, reports) is the library
``utils/evaluation.py``; this file is its command line.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # repo root

import numpy as np

from data.sources import DataSourceError
from utils import adapt
from utils.adapt import AdaptError
from utils.baselines import closed_form, trimap_only
from utils.checkpoint import CheckpointError, load_model_for_inference
from utils.cli import (
    OneLineParser,
    add_inference_args,
    existing,
    number,
    output,
    port_arg,
    writable_target,
)
from utils.device import check_amp, pick_device
from utils.evaluation import (
    EvaluationError,
    folder_predictor,
    load_examples,
    model_predictor,
    score,
    write_report,
)
from utils.image_io import ImageReadError

log = logging.getLogger("evaluate")

METHODS = ("dim", "closed-form", "trimap-only")
SYNTHETIC_SETS = ("synthetic", "synthetic-test", "synthetic-val")  # data.testsets._SYNTHETIC


class VisdomPanels:
    """Post the first ``count`` results as matting panels (visdom when reachable, else files)."""

    def __init__(self, out_dir: Path, env: str, server: str, port: int, count: int = 4):
        from utils.visualization import Visualizer

        self.vis = Visualizer(out_dir / "visdom", env=env, server=server, port=port)
        self.count = count

    def __call__(self, i: int, example, alpha_u8: np.ndarray, row: dict) -> None:
        if i < self.count:
            self.vis.example_panel(i, f"eval {example.name}", example, alpha_u8)

    def close(self, table: str) -> None:
        self.vis.text("evaluation", table)
        self.vis.close()


# --- CLI -------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="evaluate.py",
        description="Score alpha mattes with the official SAD/MSE/Grad/Conn (Composition-1k "
        "convention) for a checkpoint, a classical method or a folder of predictions.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    what = p.add_argument_group("what to evaluate (one of)")
    what.add_argument(
        "--checkpoint",
        type=existing("any"),
        help="a .pt file, or a run folder (runs/<name>: its highest stage's best.pt)",
    )
    what.add_argument("--method", choices=METHODS, default="dim", help="dim = the checkpoint")
    what.add_argument(
        "--pred-dir",
        type=existing("dir"),
        help="score another method's alphas: DIR/NAME.png per image",
    )
    data = p.add_argument_group("test set")
    data.add_argument(
        "--testset",
        type=existing("dir", special=SYNTHETIC_SETS),
        default="synthetic",
        help="synthetic | synthetic-val | a Composition-1k or alphamatting.com folder",
    )
    data.add_argument("--trimap-set", default="Trimap1", help="alphamatting.com trimap folder")
    folder = existing("dir")
    data.add_argument(
        "--images", type=folder, help="plain folder of images (with --trimaps and --alphas)"
    )
    data.add_argument(
        "--trimaps", type=folder, help="plain folder of trimaps, 0/128/255, same stems"
    )
    data.add_argument(
        "--alphas", type=folder, help="plain folder of ground-truth alphas, same stems"
    )
    data.add_argument("--limit", type=number(int, 1), help="only the first N images")
    data.add_argument(
        "--scale",
        type=number(float, 0, strict=True),
        default=1.0,
        help="resize test images by this factor first (quick CPU looks; NOT the official "
        "protocol, numbers are not comparable)",
    )
    run = p.add_argument_group("inference")
    add_inference_args(run)
    outp = p.add_argument_group("output")
    outp.add_argument(
        "--out", type=output("dir"), help="output folder (default runs/eval/<method>-<test set>)"
    )
    outp.add_argument("--no-save", action="store_true", help="do not write the alpha PNGs")
    outp.add_argument("--quiet", action="store_true", help="no progress bar")
    outp.add_argument("--visdom", action="store_true", help="post panels of the first results")
    outp.add_argument("--visdom-server", default="http://localhost")
    outp.add_argument("--visdom-port", type=port_arg, default=8097)
    outp.add_argument(
        "--visdom-images", type=number(int, 0), default=4, help="results posted as panels"
    )
    return p


def _method_label(args, state: dict | None, ckpt: Path | None) -> tuple[str, str]:
    """(human label for tables, short tag for folder names)."""
    if args.pred_dir:
        name = Path(args.pred_dir).resolve().name
        return f"predictions {name}", f"pred-{name}"
    if args.method != "dim":
        return args.method, args.method
    run = ckpt.parent.parent.name if ckpt.parent.name.startswith("stage") else ckpt.parent.name
    stage = state.get("stage") if state else None
    label = f"DIM {run} stage {stage} ({ckpt.name})" if stage else f"DIM {ckpt}"
    tag = f"{run}-stage{stage}-{ckpt.stem}"
    if args.adapt:
        label, tag = f"{label}, adapted {args.adapt} steps", f"{tag}-adapt{args.adapt}"
    return label, tag


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return _run(args)
    except (CheckpointError, EvaluationError, ImageReadError, DataSourceError, AdaptError) as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the results folder filled up or went read-only mid-run
        where = e.filename or args.out or "the results"
        print(f"evaluate.py: error: cannot write {where}: {e.strerror or e}", file=sys.stderr)
        return 1


def _run(args) -> int:
    if args.pred_dir and (args.checkpoint or args.method != "dim"):
        raise EvaluationError("--pred-dir scores existing predictions: drop --checkpoint/--method")
    if args.method != "dim" and args.checkpoint:
        raise EvaluationError(f"--method {args.method} needs no --checkpoint: drop one of them")
    if args.adapt and (args.pred_dir or args.method != "dim"):
        what = "--pred-dir" if args.pred_dir else f"--method {args.method}"
        raise EvaluationError(f"--adapt fine-tunes a DIM checkpoint: drop it with {what}")
    if args.limit is not None and args.limit <= 0:
        raise EvaluationError(f"--limit must be positive, got {args.limit}")

    examples, testset = load_examples(
        args.testset,
        args.images,
        args.trimaps,
        args.alphas,
        args.trimap_set,
        args.limit,
        args.scale,
        max_pixels=args.max_pixels,
    )

    state, ckpt = None, None
    meta: dict[str, Any] = {"method": "predictions" if args.pred_dir else args.method}
    if args.pred_dir:
        predict = folder_predictor(args.pred_dir)
        meta["pred_dir"] = str(args.pred_dir)
    elif args.method == "closed-form":
        predict = closed_form
    elif args.method == "trimap-only":
        predict = trimap_only
    else:
        try:
            device = pick_device(args.device)
            check_amp(args.amp, device)
        except (ValueError, RuntimeError) as e:
            raise EvaluationError(str(e)) from e
        model, state, ckpt = load_model_for_inference(args.checkpoint, device)
        max_side = args.max_side or None
        inference = dict(
            device=device,
            amp=args.amp,
            tile=args.tile,
            overlap=args.overlap,
            max_side=max_side,
            scale=args.infer_scale,
            tta=args.tta,
        )
        if args.adapt:  # a fresh copy per image, from its image and trimap only
            settings = adapt.settings_from_checkpoint(state)
            predict = adapt.predictor(model, args.adapt, settings, **inference)
        else:
            predict = model_predictor(model, **inference)
        meta.update(
            checkpoint=str(ckpt),
            stage=state.get("stage"),
            model_config=state.get("model_config"),
            device=str(device),
            amp=args.amp,
            tile=args.tile,
            overlap=args.overlap,
            max_side=max_side,
            infer_scale=model.infer_scale if args.infer_scale is None else args.infer_scale,
            tta=args.tta,
            adapt=args.adapt,
        )
        log.info("checkpoint %s (stage %s) on %s", ckpt, state.get("stage"), device)

    meta["scale"] = args.scale
    label, tag = _method_label(args, state, ckpt)
    out = Path(args.out) if args.out else Path("runs") / "eval" / f"{tag}-{testset}"
    why = writable_target(out, "dir")  # the report is written in any case
    if why:
        raise EvaluationError(f"--out {why}")
    meta.update(method_label=label, testset=testset, out=str(out))
    log.info("%s on %s: %d images -> %s", label, testset, len(examples), out)

    panels = None
    if args.visdom:
        panels = VisdomPanels(
            out, f"eval-{tag}-{testset}", args.visdom_server, args.visdom_port, args.visdom_images
        )
    save = None if (args.no_save or args.pred_dir) else out
    rows, summary = score(
        examples, predict, out_dir=save, progress=not args.quiet, desc=label, on_result=panels
    )
    table = write_report(out, rows, summary, meta)
    if panels is not None:
        panels.close(table)
    print(table)
    print(f"per-image results: {out / 'per_image.csv'}; summary: {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
