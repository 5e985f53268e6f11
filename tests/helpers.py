"""Small builders shared by several test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from models.py_encoder_decoder import DIM
from utils.checkpoint import save_checkpoint

# A built-in synthetic set small enough to generate in a second or two: every kind of job
# runs, and one foreground of each primary structure.
TINY_SYNTHETIC = dict(
    n_train_fg=4,
    n_bg=5,
    bg_per_fg=2,
    n_val_fg=1,
    val_per_fg=2,
    n_test_fg=2,
    test_per_fg=2,
    fg_size=(96, 128),
    bg_size=(112, 144),
    val_size=(96, 80),
    test_size=(128, 96),
)


def random_checkpoint(path: Path, stage: int, seed: int = 0, **model_kwargs) -> Path:
    """A random-init checkpoint of ``stage`` written the way the trainer writes them."""
    torch.manual_seed(seed)
    model = DIM(refine=stage > 1, **model_kwargs)
    state = {"model": model.state_dict(), "model_config": model.config.to_dict(), "stage": stage}
    return save_checkpoint(path, {**state, "config": {"lr": 1e-5}, "epoch": 0})


def unavailable(reason: str):
    """Skip locally, fail in CI (CI=true), so CI proves what a laptop may lack."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason} (CI=true: this must work in CI)")
    pytest.skip(reason)
