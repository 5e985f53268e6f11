"""utils/evaluation.py: the scoring library used by validation, evaluate.py and the benchmarks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from data.testsets import open_testset
from tests.helpers import random_checkpoint
from utils import baselines, evaluation


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("run") / "demo" / "stage1" / "best.pt"
    return random_checkpoint(path, stage=1, fc6="conv1x1")


def test_evaluate_model_library_entry_point(checkpoint):
    """What the trainer's validation calls: model + examples in, rows + means out."""
    from utils.checkpoint import load_model

    model, _ = load_model(checkpoint)
    model.train()
    examples = evaluation.Rescaled(open_testset("synthetic-val")[:2], 0.25)
    rows, summary = evaluation.evaluate_model(model, examples, device="cpu")
    assert model.training  # flags restored
    assert [r["name"] for r in rows] == examples.examples.names
    assert summary["n"] == 2
    for k in evaluation.METRICS:
        assert summary[k] == pytest.approx(np.mean([r[k] for r in rows]))
        assert np.isfinite(summary[k]) and summary[k] >= 0


@pytest.mark.slow
def test_closed_form_beats_trimap_only():
    """pymatting's closed-form matting (compiled by numba on first use) on two tiny images."""
    examples = evaluation.Rescaled(open_testset("synthetic")[:2], 0.25)
    _, cf = evaluation.score(examples, baselines.closed_form)
    _, base = evaluation.score(examples, baselines.trimap_only)
    assert cf["sad"] < 0.8 * base["sad"]


def test_constant_baselines_score_as_hand_computed():
    """trimap-only (0.5, saved as 128/255) and zeros: SAD computed by hand on the unknown band."""
    examples = open_testset("synthetic")[:3]
    _, half = evaluation.score(examples, baselines.trimap_only)
    _, zero = evaluation.score(examples, baselines.zeros)
    sad_half = np.mean(
        [np.abs(128 / 255 - e.alpha)[e.trimap == 128].sum() / 1000 for e in examples]
    )
    sad_zero = np.mean([e.alpha[e.trimap == 128].sum() / 1000 for e in examples])
    assert half["sad"] == pytest.approx(sad_half, rel=1e-3)
    assert zero["sad"] == pytest.approx(sad_zero, rel=1e-3)
    assert min(half["sad"], zero["sad"]) > 1.0, "the unknown band holds real matting work"
