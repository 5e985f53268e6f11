"""torchrun entry point for tests/test_cluster.py: ``train_encoder_decoder.main`` with

- the fault of ``$DIM_FAULT_INJECT`` injected (tests/faults.py), and
- each rank's final parameters written to ``$DIM_TEST_OUT/rank<R>.pt`` after a completed
  ``fit`` (the trainer saves rank 0's only), so the tests can check that all ranks end equal.
  Parameters only: without --sync-bn each rank keeps its own BatchNorm statistics (DDP
  broadcasts rank 0's before every forward, and checkpoints hold rank 0's).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import train_encoder_decoder as tr
from tests.faults import FAULT_ENV, fault_callbacks

_fit = tr.Trainer.fit


def _fit_and_dump(self, *args, **kwargs):
    _fit(self, *args, **kwargs)
    out = Path(os.environ["DIM_TEST_OUT"]) / f"rank{tr.dist_utils.rank()}.pt"
    torch.save({k: v.detach().clone() for k, v in self.model.named_parameters()}, out)


tr.Trainer.fit = _fit_and_dump

if __name__ == "__main__":
    sys.exit(tr.main(sys.argv[1:], callbacks=fault_callbacks(os.environ.get(FAULT_ENV))))
