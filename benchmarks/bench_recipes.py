"""Training recipes, run for real and scored where it matters: synthetic and real photographs.

A recipe is a list of ``train_encoder_decoder.py`` command lines (one per stage). This script
runs them (wall-clock timed, each in its own process, exactly as a user types them), then
scores every stage's ``best.pt`` with the official metrics on

* the built-in synthetic test split (40 composites, never trained on, never used to choose),
* real photographs with ground truth (an alphamatting.com folder, ``--real``), once per trimap
  set (Trimap1: narrow unknown band, Trimap2: wide) — evaluation only: nothing trains on them
  and no setting is chosen by them (settings are chosen on the synthetic validation split),

beside the trimap-only and closed-form baselines on the same images, and writes one JSON and
one Markdown table (the README's recipe tables are pasted from it)::

    python -m benchmarks.bench_recipes --recipe main --real DIR --json results/recipe-main.json
    python -m benchmarks.bench_recipes --recipe long --real DIR --json results/recipe-long.json
    python -m benchmarks.bench_recipes --recipe long --real DIR --score-only   # re-score

Baselines do not depend on the recipe: they are computed once per test set and kept in
``--baselines`` (closed-form matting costs minutes on the real photographs).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks import common
from utils.baselines import closed_form, trimap_only
from utils.checkpoint import load_model_for_inference
from utils.cli import OneLineParser, declare, existing, name_list, number, output
from utils.evaluation import evaluate_model, load_examples, score
from utils.train_args import build_parser

ROOT = common.ROOT
PHOTOS = tuple(f"GT{i:02d}" for i in range(1, 28))  # alphamatting.com's training photographs
TRAIN = [sys.executable, str(ROOT / "train_encoder_decoder.py")]

# What each recipe runs. "main" is the README's main job (the CPU preset, nothing else);
# "long" is the documented all-stage CPU recipe. Flags beyond the preset are spelled out here
# so the README can quote them.
# The long recipe's stages 2 and 3 run the refine head on the full-resolution photograph and the
# encoder-decoder at the scale stage 1 is used at (coarse 0.5 inside the model, so the model
# itself is run at scale 1); their 256 px crops give the encoder-decoder the 128 px it trained on.
FULL_RES_REFINE = ["--coarse-scale", "0.5", "--infer-scale", "1", "--crop-size", "256"]
RECIPES: dict[str, list[list[str]]] = {
    "main": [["--stage", "1"]],
    "long": [
        ["--stage", "1", "--epochs", "100", "--save-every", "300"],
        ["--stage", "2", "--epochs", "10", *FULL_RES_REFINE],
        ["--stage", "3", "--epochs", "10", "--lr", "3e-5", *FULL_RES_REFINE],
    ],
}
# Real-photo curves during training (the long recipe's figure); the main job keeps its
# minutes for training and is scored at the end only.
REAL_VAL_EVERY = {"main": 0, "long": 10}
TRIMAP_SETS = ("Trimap1", "Trimap2")
METRICS = ("sad", "mse", "grad", "conn")


@declare("folder-name", "../x", "a/b", "")
def folder_name(text: str) -> str:
    """argparse type of ``--run-name``: one folder name (the trainer's rule)."""
    if not text or text in (".", "..") or any(c in text for c in "/\\"):
        raise argparse.ArgumentTypeError(f"{text!r} is not one folder name (no '/', no '..')")
    return text


def testsets(real: Path | None) -> list[tuple[str, Any]]:
    """[(label, examples)]: the synthetic test split, then the real photographs per trimap set."""
    sets = [("synthetic test", load_examples("synthetic")[0])]
    if real is not None:
        for t in TRIMAP_SETS:
            sets.append((f"real {t}", load_examples(str(real), trimap_set=t)[0]))
    return sets


def run_recipe(
    recipe: str,
    run_name: str,
    runs_dir: Path,
    extra: list[str],
    real: Path | None,
    from_stage: int = 1,
) -> list[dict]:
    """Train the stages of ``recipe`` from ``from_stage`` on (the earlier ones exist already);
    return [{"stage", "argv", "seconds"}]."""
    done = []
    every = REAL_VAL_EVERY[recipe]
    if real is not None and every:
        extra = [*extra, "--real-val", str(real), "--real-val-every", str(every)]
    for argv in RECIPES[recipe]:
        if int(argv[1]) < from_stage:
            continue
        cmd = [*TRAIN, *argv, "--run-name", run_name, "--runs-dir", str(runs_dir), *extra]
        print("$", " ".join(cmd[1:]), flush=True)
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True)
        done.append({"stage": int(argv[1]), "argv": argv, "seconds": time.perf_counter() - t0})
    return done


def score_checkpoint(path: Path, sets: list[tuple[str, Any]]) -> dict[str, dict]:
    model, state, _ = load_model_for_inference(path, "cpu")
    out = {}
    for label, examples in sets:
        _, summary = evaluate_model(model, examples, device="cpu")
        out[label] = {k: summary[k] for k in ("n", *METRICS)}
    out["iteration"] = state.get("iteration")
    return out


def fingerprint(examples) -> str:
    """Digest of a test set's names, trimaps and alphas: the baseline cache's key, so a set
    that changed (a new built-in set version, another trimap folder) is scored again."""
    h = hashlib.sha1()
    for ex in examples:
        h.update(ex.name.encode())
        h.update(np.ascontiguousarray(ex.trimap).tobytes())
        h.update(np.ascontiguousarray(ex.alpha).tobytes())
    return h.hexdigest()[:16]


def baselines(sets: list[tuple[str, Any]], cache: Path) -> dict[str, dict[str, dict]]:
    """{method: {set label: means}} for trimap-only and closed-form, cached in ``cache`` under
    each set's :func:`fingerprint`."""
    known = json.loads(cache.read_text()) if cache.is_file() else {}
    out: dict[str, dict[str, dict]] = {}
    for label, examples in sets:
        key = f"{label} {fingerprint(examples)}"
        for method, predict in (("trimap-only", trimap_only), ("closed-form", closed_form)):
            if key not in known.get(method, {}):
                _, summary = score(examples, predict, progress=True, desc=method)
                known.setdefault(method, {})[key] = {k: summary[k] for k in ("n", *METRICS)}
                common.write_json(cache, known)
            out.setdefault(method, {})[label] = known[method][key]
    return out


def table(rows: list[tuple[str, str, dict]], set_labels: list[str]) -> str:
    """Markdown: one line per model, SAD/MSE/Grad/Conn per test set."""
    head = ["model", "iterations, wall time"]
    for s in set_labels:
        head += [f"{s} SAD", "MSE", "Grad", "Conn"]
    body = []
    for name, its, res in rows:
        line = [name, its]
        for s in set_labels:
            m = res.get(s)
            line += (
                [f"{m[k]:.4f}" if k == "mse" else f"{m[k]:.2f}" for k in METRICS]
                if m
                else ["–"] * 4
            )
        body.append(line)
    return common.markdown_table(head, body)


def recipe_curves(run_dir: Path, stages: list[int]) -> dict[str, dict[str, list]]:
    """Curves of all stages on one iteration axis, from each stage's metrics.jsonl: total
    loss, learning rate, validation SAD (synthetic) and real-photo SAD, one trace per stage
    (a stage's iterations continue where the previous stage's best checkpoint stopped)."""
    from utils.checkpoint import load_checkpoint

    picks = {"loss": "total", "lr": "lr", "val": "sad", "real": "sad"}
    names = {"loss": "training loss", "lr": "learning rate", "val": "synthetic val SAD",
             "real": "real-photo SAD"}  # fmt: skip
    history: dict[str, dict[str, list]] = {names[g]: {} for g in picks}
    offset = 0
    for stage in stages:
        folder = run_dir / f"stage{stage}"
        for line in (folder / "metrics.jsonl").read_text().splitlines():
            rec = json.loads(line)
            key = picks.get(rec.get("group"))
            value = rec.get("values", {}).get(key) if key else None
            if value is not None:
                trace = history[names[rec["group"]]].setdefault(f"stage {stage}", [])
                trace.append((offset + int(rec["step"]), float(value)))
        best = folder / "best.pt"
        if best.is_file():  # the next stage starts from this stage's best checkpoint
            offset += int(load_checkpoint(best).get("iteration") or 0)
    return {g: t for g, t in history.items() if t}


def tile_row(tiles: list[np.ndarray], size: tuple[int, int], labels=None) -> np.ndarray:
    """Images (grey or RGB uint8) resized to ``size`` (W, H) side by side, each optionally
    with a label on a white strip at its top. RGB uint8 (H, len * W, 3)."""
    import cv2

    row = []
    for i, img in enumerate(tiles):
        img = np.dstack([img] * 3) if img.ndim == 2 else img
        img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
        if labels:
            cv2.rectangle(img, (0, 0), (size[0], 18), (255, 255, 255), -1)
            cv2.putText(img, labels[i], (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1)
        row.append(img)
    return np.concatenate(row, axis=1)


def teaser(checkpoint: Path, example, background: np.ndarray, width: int = 360) -> np.ndarray:
    """One row for the README: image | trimap | predicted alpha | cut-out on ``background``,
    each ``width`` px wide. RGB uint8."""
    from utils.matting import matte

    model, _, _ = load_model_for_inference(checkpoint, "cpu")
    out = matte(model, example.image, example.trimap, "ml", background, device="cpu")
    h, w = example.trimap.shape
    tiles = [example.image, example.trimap, out["alpha"], out["composite"]]
    return tile_row(tiles, (width, round(width * h / w)))


def panels(checkpoints: dict[str, Path], examples, names: list[str], height: int = 200):
    """Rows of image | trimap | ground truth | one alpha per checkpoint (labelled with its SAD
    on that photo), one row per example in ``names``, each tile ``height`` px high. RGB uint8."""
    from utils import metrics
    from utils.evaluation import to_u8
    from utils.inference import predict_alpha

    models = {k: load_model_for_inference(p, "cpu")[0] for k, p in checkpoints.items()}
    rows = []
    for name in names:
        ex = examples[examples.names.index(name)]
        tiles, labels = [ex.image, ex.trimap, to_u8(ex.alpha)], [name, "trimap", "ground truth"]
        for label, model in models.items():
            alpha = to_u8(predict_alpha(model, ex.image, ex.trimap, device="cpu"))
            sad = metrics.compute_all(alpha, ex.alpha, ex.trimap)["sad"]
            tiles.append(alpha)
            labels.append(f"{label}: SAD {sad:.1f}")
        h, w = ex.trimap.shape
        rows.append(tile_row(tiles, (round(height * w / h), height), labels))
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows])


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", choices=sorted(RECIPES), required=True)
    p.add_argument("--run-name", type=folder_name, default=None, help="default: recipe-<recipe>")
    p.add_argument("--runs-dir", type=output("dir", Path), default=ROOT / "runs")
    p.add_argument(
        "--real", type=existing("dir", convert=Path), help="alphamatting.com folder (evaluation)"
    )
    p.add_argument("--score-only", action="store_true", help="score existing checkpoints")
    p.add_argument(
        "--from-stage",
        type=number(int, 1, high=max(len(r) for r in RECIPES.values())),
        default=1,
        help="train from this stage on (earlier stages' checkpoints exist; their times are "
        "kept from --json)",
    )
    p.add_argument("--json", type=output("file", Path), help="write the results here")
    p.add_argument(
        "--baselines",
        type=output("file", Path),
        default=ROOT / "benchmarks" / "results" / "baselines.json",
        help="cache of the baseline scores",
    )
    p.add_argument("--curves", type=output("file", Path), help="write the curves here (PNG)")
    p.add_argument(
        "--teaser",
        type=output("file", Path),
        help="write image | trimap | alpha | composite of the last stage on a real photo (PNG)",
    )
    p.add_argument("--teaser-image", choices=PHOTOS, default="GT04", help="which real photograph")
    p.add_argument(
        "--panels",
        type=output("file", Path),
        help="write image | trimap | ground truth | each stage's alpha for --panel-images of the "
        "real photographs (Trimap2) (PNG)",
    )
    p.add_argument(
        "--panel-images",
        type=name_list(PHOTOS),
        default="GT02,GT04,GT13,GT16",
        help="comma-separated names",
    )
    p.add_argument(
        "extra",
        nargs="*",
        help="more trainer flags for every stage (after --)",
    )
    a = p.parse_args(argv)
    if a.extra:  # the trainer's own parser checks them now, not after a stage has run
        problem = io.StringIO()
        try:
            with contextlib.redirect_stderr(problem):
                build_parser().parse_args(["--stage", "1", *a.extra])
        except SystemExit:
            why = problem.getvalue().strip().split("error: ", 1)[-1].removesuffix(" (see --help)")
            p.error(f"trainer flags {' '.join(a.extra)!r}: {why}")
    run_name = a.run_name or f"recipe-{a.recipe}"
    if a.score_only:  # keep the training times measured when the recipe ran
        old = json.loads(a.json.read_text()) if a.json and a.json.is_file() else {}
        stages = old.get("stages", [])
    else:
        old = json.loads(a.json.read_text()) if a.json and a.json.is_file() else {}
        before = [st for st in old.get("stages", []) if st["stage"] < a.from_stage]
        stages = before + run_recipe(a.recipe, run_name, a.runs_dir, a.extra, a.real, a.from_stage)
    minutes = {st["stage"]: st["seconds"] / 60 for st in stages}
    # After training: on a fresh machine the first stage's timing includes generating the
    # built-in set, as it does for a user.
    sets = testsets(a.real)
    labels = [label for label, _ in sets]
    rows: list[tuple[str, str, dict]] = []
    result: dict[str, Any] = {
        "machine": common.machine_info(),
        "recipe": a.recipe,
        "commands": RECIPES[a.recipe],
        "stages": stages,
        "models": {},
    }
    for method, res in baselines(sets, a.baselines).items():
        rows.append((method, "–", res))
        result[method] = res
    for argv_ in RECIPES[a.recipe]:
        stage = int(argv_[1])
        path = a.runs_dir / run_name / f"stage{stage}" / "best.pt"
        res = score_checkpoint(path, sets)
        result["models"][f"stage{stage}"] = res
        took = f", {minutes[stage]:.1f} min" if stage in minutes else ""
        rows.append((f"stage {stage}", f"{res['iteration']}{took}", res))
    md = table(rows, labels)
    print(md)
    if a.curves:
        from utils.image_io import write_png
        from utils.visualization import render_curves

        stage_ids = [int(x[1]) for x in RECIPES[a.recipe]]
        curves = recipe_curves(a.runs_dir / run_name, stage_ids)
        title = f"recipe {a.recipe}: {' -> '.join(f'stage {i}' for i in stage_ids)}"
        marks = ("synthetic val SAD", "real-photo SAD")
        write_png(a.curves, render_curves(curves, title, marker_groups=marks))
    if a.teaser and a.real is not None:
        from data.synthetic import list_photos
        from utils.image_io import read_rgb, write_png

        real = dict(sets)["real Trimap1"]
        example = real[real.names.index(a.teaser_image)]
        photos = {p.name: p for p in list_photos("auto")}
        background = read_rgb(photos["coffee.png"]) if "coffee.png" in photos else None
        last = int(RECIPES[a.recipe][-1][1])
        ckpt = a.runs_dir / run_name / f"stage{last}" / "best.pt"
        write_png(a.teaser, teaser(ckpt, example, background))
    if a.panels and a.real is not None:
        from utils.image_io import write_png

        ckpts = {
            f"stage {int(x[1])}": a.runs_dir / run_name / f"stage{int(x[1])}" / "best.pt"
            for x in RECIPES[a.recipe]
        }
        real = dict(sets)["real Trimap2"]
        write_png(a.panels, panels(ckpts, real, a.panel_images))
    if a.json:
        common.write_json(a.json, result)
        a.json.with_suffix(".md").write_text(md + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
