"""Test-time adaptation (``--adapt STEPS``, utils/adapt.py): SAD and seconds per image against the
number of fine-tuning steps and the learning rate, for one checkpoint.

Settings are chosen on the built-in synthetic validation split (``--split val``); the real
photographs (``--split real``: an alphamatting.com folder, ``--real``, once per trimap set)
only report what the chosen settings do there::

    python -m benchmarks.bench_adapt --ckpt runs/NAME --split val --steps 0,10,25,50 \\
        --lrs 1e-4,3e-4 --json benchmarks/results/adapt-val.json
    python -m benchmarks.bench_adapt --ckpt runs/NAME --split real --steps 0,30 --lrs 3e-4 \\
        --json benchmarks/results/adapt-real.json

Every setting mattes every image with a fresh copy adapted to that image alone (its image and
trimap; the ground truth is read only by the scoring). Steps 0 is the plain model (the same
matte for every learning rate: run once). The JSON is rewritten after each setting, so an
interrupted run keeps what it measured. SAD is the official one (``utils.evaluation.score``:
the 8-bit prediction, unknown pixels, / 1000); seconds per image include the adaptation.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks import common
from utils import adapt
from utils.checkpoint import load_model_for_inference
from utils.cli import OneLineParser, device_arg, existing, name_list, number, number_list, output
from utils.evaluation import load_examples, model_predictor, score

REAL_DEFAULT = common.ROOT.parent / "shared" / "data" / "alphamatting_lowres_dev"
TRIMAP_SETS = ("Trimap1", "Trimap2")


float_list = number_list(float, 0, strict=True, name="float-list", bad=("x", "0", "1e-4,-1", "nan"))
step_list = number_list(int, 0, name="step-list", bad=("x", "0,-1", "1.5"))


def test_sets(split: str, real: Path, limit: int | None) -> list[tuple[str, Any]]:
    """[(name, examples)] of ``split``: the synthetic validation split, or the real photographs
    once per trimap set."""
    if split == "val":
        return [("synthetic-val", load_examples("synthetic-val", limit=limit)[0])]
    return [
        (f"real-{t}", load_examples(str(real), trimap_set=t, limit=limit)[0]) for t in TRIMAP_SETS
    ]


def settings_grid(steps: tuple[int, ...], lrs: tuple[float, ...]) -> list[tuple[int, float]]:
    """(steps, lr) pairs to run: the plain model once, then every lr for every steps > 0."""
    grid = [(0, 0.0)] if 0 in steps else []
    return grid + [(s, lr) for s in steps if s > 0 for lr in lrs]


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(
        prog="python -m benchmarks.bench_adapt",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--ckpt", type=existing("any"), required=True, help="a .pt file or a run folder (runs/NAME)"
    )
    p.add_argument("--split", choices=("val", "real"), default="val")
    p.add_argument(
        "--real", type=existing("dir", convert=Path), default=REAL_DEFAULT,
        help="alphamatting.com folder",
    )  # fmt: skip
    p.add_argument("--steps", type=step_list, default=(0, 10, 25, 50), help="e.g. 0,10,25,50")
    p.add_argument("--lrs", type=float_list, default=(adapt.DEFAULT_LR,), help="e.g. 1e-5,3e-5")
    p.add_argument("--batch", type=number(int, 1), default=adapt.DEFAULT_BATCH_SIZE)
    p.add_argument(
        "--trains",
        type=name_list(("encoder", "decoder", "refine_head")),
        default=None,
        help="comma-separated parts that learn (encoder,decoder,refine_head); default: the "
        "checkpoint stage's own",
    )
    p.add_argument("--seed", type=number(int, 0), default=0)
    p.add_argument("--limit", type=number(int, 1), default=None, help="first N images per set")
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu | cuda | auto")
    p.add_argument("--threads", type=number(int, 1), default=None, help="torch CPU threads")
    p.add_argument("--json", type=output("file", Path), help="write the results here")
    args = p.parse_args(argv)

    import torch

    from utils.device import pick_device

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    model, state, ckpt = load_model_for_inference(args.ckpt, device)
    settings: dict[str, Any] = adapt.settings_from_checkpoint(state)
    settings.update(batch_size=args.batch, seed=args.seed)
    if args.trains:
        settings["trains"] = tuple(args.trains)
    sets = test_sets(args.split, args.real, args.limit)
    record: dict[str, Any] = {
        "benchmark": "adapt",
        "checkpoint": str(ckpt),
        "stage": state.get("stage"),
        "infer_scale": model.infer_scale,
        "split": args.split,
        "settings": {**settings, "device": str(device)},
        "machine": common.machine_info(),
        "results": [],
    }
    plain: dict[str, dict[str, float]] = {}  # set -> image -> SAD of the plain model
    rows = []
    for steps, lr in settings_grid(args.steps, args.lrs):
        for name, examples in sets:
            if steps:
                predict = adapt.predictor(model, steps, {**settings, "lr": lr}, device=device)
            else:
                predict = model_predictor(model, device=device)
            t0 = time.perf_counter()
            per_image, summary = score(examples, predict, progress=True, desc=f"{name} {steps}")
            sads = {r["name"]: r["sad"] for r in per_image}
            result = {
                "set": name,
                "steps": steps,
                "lr": lr if steps else None,
                **{k: summary[k] for k in ("n", "sad", "mse", "grad", "conn")},
                "seconds_per_image": summary["seconds_per_image"],
                "wall_seconds": time.perf_counter() - t0,
                "per_image_sad": sads,
            }
            if steps == 0:
                plain[name] = sads
            elif name in plain:
                result["improved"] = sum(sads[k] < plain[name][k] for k in sads)
                result["sad_change"] = summary["sad"] - float(np.mean(list(plain[name].values())))
            record["results"].append(result)
            rows.append(
                [
                    name,
                    steps,
                    f"{lr:g}" if steps else "-",
                    result["n"],
                    f"{result['sad']:.2f}",
                    f"{result['sad_change']:+.2f}" if "sad_change" in result else "-",
                    f"{result['improved']}/{result['n']}" if "improved" in result else "-",
                    f"{result['seconds_per_image']:.1f}",
                ]
            )
            print(f"{name}: steps {steps} lr {lr:g}: SAD {result['sad']:.2f}", flush=True)
            if args.json:
                common.write_json(args.json, record)
    head = ["set", "steps", "lr", "images", "SAD", "vs 0 steps", "improved", "s/image"]
    print(common.markdown_table(head, rows))
    cpu = record["machine"]["cpu_model"]
    print(f"SAD: sum over the unknown pixels / 1000, mean over the images; {cpu}")
    if args.json:
        print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
