"""Test-only fault injection: a signal sent to this very process at a named point of a
training run, through the trainer's callbacks, so the interrupt, requeue and elastic-restart
tests are reproducible instead of timing-dependent.

A fault is written ``phase:iteration[:signal[:rank]]``: send ``signal`` (INT, the default;
TERM, as a scheduler's preemption; KILL, a crash) at ``phase`` - forward, backward, step
(inside the step of that 1-based iteration), validation or save (after that iteration) - on
every rank or only on ``rank``, and only in torchrun's first attempt, once.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from utils import distributed as dist_utils

# How tests hand a fault to a training run in another process (tests/torchrun_entry.py).
FAULT_ENV = "DIM_FAULT_INJECT"
IN_STEP = ("forward", "backward", "step")


def fault_callbacks(spec: str | None) -> dict[str, Callable]:
    """Trainer callbacks that inject the fault ``spec`` (None or "": none)."""
    if not spec:
        return {}
    phase, _, rest = spec.partition(":")
    iteration, _, rest = rest.partition(":")
    name, _, rank = rest.partition(":")
    fired = []

    def inject(trainer, **_) -> None:
        if fired or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
            return
        n = trainer.iteration + (1 if phase in IN_STEP else 0)
        if n != int(iteration) or (rank and rank != str(dist_utils.rank())):
            return
        fired.append(True)  # once: a real user presses Ctrl-C once
        os.kill(os.getpid(), getattr(signal, f"SIG{name or 'INT'}"))

    return {phase: inject}
