"""Shared test setup: repository root on sys.path, small thread counts, fixed seeds."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Tests run on 2 shared cores: keep every library to few threads.
os.environ.setdefault("OMP_NUM_THREADS", "2")

ALPHAMATTING_DEV = ROOT.parent / "shared" / "data" / "alphamatting_lowres_dev"


# Set by the GPU check (python -m benchmarks --gpu-check): there a CUDA test that cannot run is
# a failure, not a skip, so a machine without a working GPU cannot pass the check.
REQUIRE_CUDA_ENV = "DIM_REQUIRE_CUDA"


def pytest_runtest_setup(item):
    """Tests marked ``cuda`` skip without a CUDA device, or fail when DIM_REQUIRE_CUDA=1."""
    if item.get_closest_marker("cuda") is None:
        return
    import torch

    if torch.cuda.is_available():
        return
    if os.environ.get(REQUIRE_CUDA_ENV) == "1":
        pytest.fail(f"no CUDA device visible, and {REQUIRE_CUDA_ENV}=1 requires one")
    pytest.skip(f"no CUDA device (with {REQUIRE_CUDA_ENV}=1 this is a failure)")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)  # noqa: NPY002 (tests that use the legacy global generator)
    torch.set_num_threads(2)
    yield


@pytest.fixture
def alphamatting_dev() -> Path:
    """The real alphamatting.com development set; the test skips when it is absent, and
    fails instead under CI=true (CI has it: a missing set must not pass silently there)."""
    if not (ALPHAMATTING_DEV / "input_training_lowres").is_dir():
        from tests.helpers import unavailable

        unavailable(f"alphamatting.com data not found at {ALPHAMATTING_DEV}")
    return ALPHAMATTING_DEV


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory) -> Path:
    """A tiny built-in set (tests/helpers.TINY_SYNTHETIC) per test module, for trainer runs."""
    from data.synthetic import ensure_synthetic
    from tests.helpers import TINY_SYNTHETIC

    return ensure_synthetic(
        tmp_path_factory.mktemp("syn") / "set", seed=0, progress=False, **TINY_SYNTHETIC
    )
