"""evaluate.py: end to end on the built-in synthetic split and alphamatting.com, other methods'
predictions, baselines and clear errors (the library under it: tests/test_evaluation.py)."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import evaluate
from benchmarks.bench_page import png_header
from data.testsets import open_testset
from tests.helpers import random_checkpoint
from utils.image_io import read_alpha

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("run") / "demo" / "stage1" / "best.pt"
    return random_checkpoint(path, stage=1, fc6="conv1x1")


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def check_outputs(out: Path, n: int) -> tuple[list[dict], dict]:
    rows = read_csv(out / "per_image.csv")
    assert len(rows) == n and list(rows[0]) == ["name", "sad", "mse", "grad", "conn"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == n and "/ 1000" in summary["units"]
    for k in ("sad", "mse", "grad", "conn"):
        assert summary[k] == pytest.approx(np.mean([float(r[k]) for r in rows]), rel=1e-5)
    table = (out / "summary.md").read_text()
    assert "| SAD | MSE | Grad | Conn |" in table and "/ 1000" in table
    return rows, summary


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- end to end ------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_checkpoint_on_synthetic_split(checkpoint, tmp_path):
    out = tmp_path / "eval"
    cmd = [sys.executable, "evaluate.py", "--checkpoint", str(checkpoint), "--limit", "3"]
    cmd += ["--out", str(out), "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| DIM demo stage 1 (best.pt) | synthetic-test | 3 |" in proc.stdout
    rows, summary = check_outputs(out, 3)
    assert summary["stage"] == 1 and summary["checkpoint"] == str(checkpoint)
    examples = open_testset("synthetic")
    for row, ex in zip(rows, examples, strict=False):
        assert row["name"] == ex.name
        pred = read_alpha(out / "alpha" / f"{ex.name}.png")
        assert pred.shape == ex.trimap.shape
        assert (pred[ex.trimap == 0] == 0).all() and (pred[ex.trimap == 255] == 1).all()
        assert float(row["sad"]) > 0


@pytest.mark.slow
def test_alphamatting_trimap_only_and_checkpoint(alphamatting_dev, checkpoint, tmp_path):
    out = tmp_path / "am"
    argv = ["--testset", str(alphamatting_dev), "--method", "trimap-only", "--limit", "3"]
    assert evaluate.main([*argv, "--out", str(out), "--quiet"]) == 0
    rows, _ = check_outputs(out, 3)
    # independent check of the first row: SAD of 128/255 (0.5 as saved) in the unknown region
    ex = open_testset(alphamatting_dev)[0]
    unknown = ex.trimap == 128
    expected = np.abs(128 / 255 - ex.alpha[unknown].astype(np.float64)).sum() / 1000
    assert rows[0]["name"] == ex.name == "GT01"
    assert float(rows[0]["sad"]) == pytest.approx(expected, rel=1e-5)

    out2 = tmp_path / "am_dim"
    argv = ["--testset", str(alphamatting_dev), "--trimap-set", "Trimap2", "--limit", "2"]
    argv += ["--checkpoint", str(checkpoint), "--scale", "0.25", "--device", "cpu"]
    assert evaluate.main([*argv, "--out", str(out2), "--quiet"]) == 0
    rows, summary = check_outputs(out2, 2)
    assert summary["testset"].endswith("-Trimap2-x0.25") and summary["scale"] == 0.25
    h, w = open_testset(alphamatting_dev)[1].trimap.shape
    assert read_alpha(out2 / "alpha" / "GT02.png").shape == (round(h / 4), round(w / 4))


def test_pred_dir_reproduces_the_numbers_of_saved_predictions(tmp_path, capsys):
    first = tmp_path / "trimap_only"
    base = ["--testset", "synthetic", "--limit", "3", "--quiet"]
    assert evaluate.main([*base, "--method", "trimap-only", "--out", str(first)]) == 0
    rows, summary = check_outputs(first, 3)

    second = tmp_path / "scored"
    pred_dir = first / "alpha"
    assert evaluate.main([*base, "--pred-dir", str(pred_dir), "--out", str(second)]) == 0
    rows2, summary2 = check_outputs(second, 3)
    assert rows2 == rows
    assert summary2["method"] == "predictions" and summary2["sad"] == summary["sad"]
    assert not (second / "alpha").exists()  # other methods' alphas are not copied

    (pred_dir / f"{rows[1]['name']}.png").unlink()
    assert evaluate.main([*base, "--pred-dir", str(pred_dir), "--out", str(second)]) == 2
    err = capsys.readouterr().err
    assert f"no prediction for test image '{rows[1]['name']}'" in err


def test_visdom_flag_writes_panels_without_a_server(tmp_path):
    out = tmp_path / "vis"
    argv = ["--method", "trimap-only", "--limit", "2", "--out", str(out), "--quiet"]
    argv += ["--visdom", "--visdom-port", str(free_port())]
    assert evaluate.main(argv) == 0
    assert len(list((out / "visdom" / "panels").glob("*.png"))) == 2
    assert "| SAD | MSE | Grad | Conn |" in (out / "visdom" / "text.log").read_text()


# --- errors ----------------------------------------------------------------------------------
def test_clear_errors(checkpoint, tmp_path, capsys):
    def err(argv: list[str]) -> str:
        try:  # refused in main, or where the flags are parsed (a path that does not exist)
            code = evaluate.main([*argv, "--out", str(tmp_path / "o"), "--quiet"])
        except SystemExit as e:
            code = e.code
        assert code == 2
        msg = capsys.readouterr().err
        assert msg.count("\n") == 1, msg
        return msg

    msg = err(["--checkpoint", str(tmp_path / "missing.pt")])
    assert "--checkpoint" in msg and "missing.pt" in msg and "does not exist" in msg
    foreign = tmp_path / "foreign.pt"
    torch.save({"net": {"w": torch.zeros(1)}}, foreign)
    assert "not a Deep Image Matting checkpoint" in err(["--checkpoint", str(foreign)])
    msg = err(["--checkpoint", str(checkpoint), "--testset", str(tmp_path / "nowhere")])
    assert "does not exist" in msg and "nowhere" in msg
    msg = err(["--checkpoint", str(checkpoint), "--device", "cpu", "--amp", "fp16"])
    assert "needs a CUDA device" in msg
    assert "go together" in err(["--method", "trimap-only", "--images", str(tmp_path)])
    assert "drop --checkpoint" in err(["--pred-dir", str(tmp_path), "--checkpoint", str(foreign)])
    assert "no images" in err(["--pred-dir", str(tmp_path)])


def test_huge_declared_test_image_is_refused_from_its_header(tmp_path, capsys):
    """--max-pixels applies to every test image, read from the headers before any decoding."""
    for sub in ("images", "trimaps", "alphas"):
        (tmp_path / sub).mkdir()
    for sub in ("images", "trimaps", "alphas"):
        png_header(tmp_path / sub / "huge.png", 30000, 30000)
    args = ["--method", "trimap-only", "--images", str(tmp_path / "images"), "--trimaps",
            str(tmp_path / "trimaps"), "--alphas", str(tmp_path / "alphas")]  # fmt: skip
    assert evaluate.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "huge.png" in err[0] and "--max-pixels" in err[0], err
    assert evaluate.main([*args, "--max-pixels", str(30000 * 30000)]) == 2  # raised: it decodes
    assert "--max-pixels" not in capsys.readouterr().err
