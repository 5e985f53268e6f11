"""Scoring alpha mattes with the official metrics: the one evaluation code path.

Everything that reports a number on a test set goes through here: the trainer's validation,
``evaluate.py`` (the command line over this module), the benchmarks and the tests.

    load_examples(testset, ...)     a test set (built-in synthetic, Composition-1k,
                                    alphamatting.com, plain folders): lazy MattingExamples
    trimap_only, zeros, closed_form classical baselines: MattingExample -> alpha (H, W) in [0, 1]
    model_predictor(model, ...)     full-resolution network inference (utils.inference)
    folder_predictor(folder)        another program's saved predictions
    score(examples, predict)        predict, round to 8 bits, official metrics -> (rows, summary)
    evaluate_model(model, examples) score() with model_predictor()
    format_table, write_report      Markdown table, per_image.csv, summary.json / .md

Protocol: predictions are scored as the 8-bit PNGs they are saved as (re-scoring saved files
reproduces the numbers); only trimap == 128 pixels count; SAD, Grad and Conn are divided by
1000 (``utils.metrics.UNITS``). Known trimap pixels are forced by the predictors themselves
(``utils.inference`` for the network; the baselines write 0/1 there).
"""

from __future__ import annotations

import csv
import json
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from utils import metrics
from utils.image_io import IMAGE_EXTS, read_alpha, write_png
from utils.inference import DEFAULT_MAX_SIDE

METRICS = ("sad", "mse", "grad", "conn")
HEADERS = {"sad": "SAD", "mse": "MSE", "grad": "Grad", "conn": "Conn"}

Predictor = Callable[[Any], np.ndarray]  # MattingExample -> alpha float32 (H, W) in [0, 1]


class EvaluationError(ValueError):
    """A test set, prediction folder or option cannot be used: the message says what to do."""


# --- predictors ------------------------------------------------------------------------------
def model_predictor(model, **inference_kwargs) -> Predictor:
    """Full-resolution inference of ``model`` (see :func:`utils.inference.predict_alpha`)."""
    from utils.inference import predict_alpha

    def predict(example) -> np.ndarray:
        return predict_alpha(model, example.image, example.trimap, **inference_kwargs)

    return predict


def index_folder(folder: str | Path) -> dict[str, Path]:
    """Image files of ``folder`` by stem (``GT01.png`` -> ``"GT01"``); a clear error if empty."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvaluationError(f"prediction folder not found: {folder}")
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_EXTS and p.is_file():
            if p.stem in files:
                raise EvaluationError(
                    f"{folder}: two predictions for {p.stem}: {files[p.stem]}, {p}"
                )
            files[p.stem] = p
    if not files:
        raise EvaluationError(f"{folder} holds no images ({', '.join(IMAGE_EXTS)})")
    return files


def folder_predictor(folder: str | Path) -> Predictor:
    """Read another method's prediction ``folder/NAME.<ext>`` for each test image NAME."""
    files = index_folder(folder)

    def predict(example) -> np.ndarray:
        path = files.get(example.name)
        if path is None:
            raise EvaluationError(
                f"no prediction for test image {example.name!r} in {folder} (expected "
                f"{example.name}.png; the folder has {len(files)} images, e.g. "
                f"{', '.join(list(files)[:3])}): name predictions like the test images"
            )
        return read_alpha(path)

    return predict


# --- scoring ---------------------------------------------------------------------------------
def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means of the metrics over ``rows``: {"n": int, "sad", "mse", "grad", "conn": float}."""
    summary: dict[str, Any] = {"n": len(rows)}
    for k in METRICS:
        summary[k] = float(np.mean([r[k] for r in rows])) if rows else float("nan")
    return summary


def score(
    examples: Iterable,
    predict: Predictor,
    out_dir: str | Path | None = None,
    progress: bool = False,
    desc: str = "evaluate",
    on_result: Callable[[int, Any, np.ndarray, dict], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Predict and score every example; the one code path of every method.

    ``examples``: MattingExample(name, image uint8 (H, W, 3), trimap uint8 (H, W), alpha float32
    (H, W) in [0, 1]). ``predict(example)`` -> alpha (H, W) in [0, 1]. The prediction is
    rounded to 8 bits (as it is saved) before it is scored. With ``out_dir`` the 8-bit
    alphas are written to ``out_dir/alpha/NAME.png``. ``on_result(i, example, alpha_u8, row)``
    is called after each image (e.g. to post a visdom panel).

    Returns ``(rows, summary)``: rows are {"name", "sad", "mse", "grad", "conn", "seconds"}
    (seconds = prediction time), summary as :func:`summarize` plus "seconds_per_image".
    """
    from tqdm import tqdm

    total = len(examples) if hasattr(examples, "__len__") else None
    rows: list[dict[str, Any]] = []
    seconds = 0.0
    bar = tqdm(examples, total=total, desc=desc, unit="img", disable=not progress, leave=False)
    for i, ex in enumerate(bar):
        if ex.alpha is None:
            raise EvaluationError(
                f"test image {ex.name!r} has no ground-truth alpha: evaluation needs one "
                "(pass --alphas; for images without ground truth use predict.py)"
            )
        t0 = time.perf_counter()
        pred = np.asarray(predict(ex))
        dt = time.perf_counter() - t0
        if pred.shape != ex.alpha.shape:
            raise EvaluationError(
                f"prediction for {ex.name!r} is {pred.shape[1]}x{pred.shape[0]} (WxH) but the "
                f"test image is {ex.alpha.shape[1]}x{ex.alpha.shape[0]}: predict at full size"
            )
        pred_u8 = to_u8(pred)
        row = {"name": ex.name, **metrics.compute_all(pred_u8, ex.alpha, ex.trimap), "seconds": dt}
        rows.append(row)
        seconds += dt
        if out_dir is not None:
            write_png(Path(out_dir) / "alpha" / f"{ex.name}.png", pred_u8)
        if on_result is not None:
            on_result(i, ex, pred_u8, row)
        bar.set_postfix(sad=f"{np.mean([r['sad'] for r in rows]):.2f}")
    summary = summarize(rows)
    summary["seconds_per_image"] = seconds / len(rows) if rows else float("nan")
    return rows, summary


def to_u8(alpha: np.ndarray) -> np.ndarray:
    """Alpha (float in [0, 1], or uint8) -> uint8 0-255 with rounding, as written to PNG."""
    a = np.asarray(alpha)
    if a.dtype == np.uint8:
        return a
    return np.round(np.clip(a.astype(np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def evaluate_model(
    model,
    examples: Iterable,
    device=None,
    amp=None,
    tile: int | None = None,
    overlap: int | None = None,
    max_side: int | None = DEFAULT_MAX_SIDE,
    scale: float | None = None,
    tta: str = "none",
    out_dir: str | Path | None = None,
    progress: bool = False,
    on_result: Callable[[int, Any, np.ndarray, dict], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Evaluate ``model`` on ``examples`` (MattingExample iterable) with the official metrics.

    Inference through :func:`utils.inference.predict_alpha` (``device``, ``amp``, ``tile``,
    ``overlap``, ``max_side``, ``scale`` - None: the model's own ``infer_scale`` - and ``tta``
    are passed on; the model's train/eval flags are restored afterwards). Returns ``(rows,
    summary)`` as :func:`score`: summary["sad"] etc. are means over the images, in the units
    of ``utils.metrics.UNITS``.
    """
    predict = model_predictor(
        model,
        device=device,
        amp=amp,
        tile=tile,
        overlap=overlap,
        max_side=max_side,
        scale=scale,
        tta=tta,
    )
    return score(examples, predict, out_dir=out_dir, progress=progress, on_result=on_result)


# --- test sets -------------------------------------------------------------------------------
def load_examples(
    testset: str = "synthetic",
    images: str | None = None,
    trimaps: str | None = None,
    alphas: str | None = None,
    trimap_set: str = "Trimap1",
    limit: int | None = None,
    scale: float = 1.0,
    max_pixels: int | None = None,
):
    """The examples to evaluate (a lazy ``data.testsets.ExampleSet``) and a short set name.

    ``images``/``trimaps``/``alphas`` (plain folders matched by stem) win over ``testset``,
    which is "synthetic" (the built-in test split), "synthetic-val", or a folder in the
    Composition-1k, alphamatting.com or images/trimaps/alphas layout (recognised by
    ``data.testsets.open_testset``; ``trimap_set`` picks alphamatting.com's Trimap1/2).
    ``limit`` keeps the first N images; ``scale`` != 1 resizes them (see :class:`Rescaled`).
    ``max_pixels``: every image's header is read first and one that declares more pixels is
    refused (``ImageReadError`` naming the file and ``--max-pixels``) before anything is decoded.
    """
    from data import testsets

    if images or trimaps or alphas:
        if not (images and trimaps and alphas):
            raise EvaluationError("--images, --trimaps and --alphas go together: pass all three")
        examples = testsets.load_folders(images, trimaps, alphas)
        name = Path(images).resolve().name or "folders"
    else:
        examples = testsets.open_testset(testset, trimap=trimap_set)
        if str(testset).startswith("synthetic"):
            name = "synthetic-val" if testset == "synthetic-val" else "synthetic-test"
        else:
            name = Path(testset).resolve().name
            if examples.kind == "alphamatting":
                name += f"-{trimap_set}"
    if limit:
        examples = examples[:limit]  # lazy: nothing is read until iterated
    if max_pixels:
        from utils.image_io import check_pixels

        for files in examples.files:
            check_pixels(files.image, max_pixels)
    if scale != 1.0:
        examples = Rescaled(examples, scale)
        name += f"-x{scale:g}"
    if len(examples) == 0:
        raise EvaluationError(f"test set {name} is empty")
    if not examples.has_alpha:
        raise EvaluationError(
            f"test set {name} has no ground-truth alphas: evaluation needs them "
            "(for images without ground truth use predict.py)"
        )
    return examples, name


class Rescaled(Sequence):
    """A lazy view of a test set with every example resized by ``scale`` (quick CPU looks).

    Image and alpha are resized with area averaging (cubic when enlarging), the trimap with
    nearest neighbour so it stays 0/128/255. Not the official protocol: numbers on rescaled
    images are not comparable with published ones.
    """

    def __init__(self, examples: Sequence, scale: float):
        if not 0 < scale <= 4:
            raise EvaluationError(f"--scale must be in (0, 4], got {scale}")
        self.examples, self.scale = examples, scale

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return Rescaled(self.examples[i], self.scale)
        return self.rescale(self.examples[i])

    def rescale(self, ex):
        import cv2

        h, w = ex.trimap.shape
        size = (max(1, round(w * self.scale)), max(1, round(h * self.scale)))
        smooth = cv2.INTER_AREA if self.scale < 1 else cv2.INTER_CUBIC
        alpha = None
        if ex.alpha is not None:
            alpha = np.clip(cv2.resize(ex.alpha, size, interpolation=smooth), 0.0, 1.0)
        return type(ex)(
            ex.name,
            cv2.resize(ex.image, size, interpolation=smooth),
            cv2.resize(ex.trimap, size, interpolation=cv2.INTER_NEAREST),
            alpha,
        )

    @property
    def has_alpha(self) -> bool:
        return self.examples.has_alpha


# --- reports ---------------------------------------------------------------------------------
def format_table(results: list[tuple[str, dict[str, Any]]], testset: str) -> str:
    """Markdown table of summaries [(label, summary)] with the units under it."""
    lines = [
        f"| method | test set | images | {' | '.join(HEADERS[k] for k in METRICS)} |",
        "|---|---|---:|" + "---:|" * len(METRICS),
    ]
    for label, s in results:
        vals = " | ".join(f"{s[k]:.4f}" if k == "mse" else f"{s[k]:.2f}" for k in METRICS)
        lines.append(f"| {label} | {testset} | {s['n']} | {vals} |")
    lines.append("")
    lines.append(f"Means over the images. {metrics.UNITS}.")
    return "\n".join(lines)


def write_report(
    out_dir: str | Path, rows: list[dict[str, Any]], summary: dict[str, Any], meta: dict[str, Any]
) -> str:
    """Write per_image.csv, summary.json and summary.md in ``out_dir``; return the table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "per_image.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["name", *METRICS])
        for r in rows:
            w.writerow([r["name"], *(f"{r[k]:.6g}" for k in METRICS)])
    record = {**meta, **summary, "units": metrics.UNITS}
    (out / "summary.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    table = format_table([(meta["method_label"], summary)], meta["testset"])
    (out / "summary.md").write_text(table + "\n", encoding="utf-8")
    return table
