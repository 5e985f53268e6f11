"""When a training run may start and when it must stop: everything about a run that is not
learning, behind one small object.

    control = RunControl(stage_dir, main=True, max_iters=None, max_minutes=None, device=dev)
    control.check_free()              # before the data set-up: another job owns this folder?
    control.claim()                   # own the folder (run lock), remove dead writers' temps
    with control.running():           # SIGINT/SIGTERM set a flag; the budget clock starts
        for batch in loader:
            ...                       # one training step
            reason = control.should_stop(iteration)   # None, or why the loop stops now
    control.release()

Signals: the first SIGINT or SIGTERM only sets a flag, so the loop stops at the next point
where the state is whole (after a step, or after a validation) and saves it; a second one
raises KeyboardInterrupt at once (saves are atomic, so the last saved state stays good).

Budgets: ``--max-iters`` (iterations in total) and ``--max-minutes`` (time since
:meth:`RunControl.running` began, so the data set-up before the first step does not count).

DDP: every rank must stop after the same iteration, or the others hang in the next
all-reduce. :meth:`RunControl.should_stop` therefore combines this rank's signal flag and
clock with every other rank's in one ``all_reduce`` - the only synchronisation it makes, and
only under DDP; a single process makes none.

Run lock and temp files: :mod:`utils.runlock` (one training per stage folder) and
:func:`utils.checkpoint.remove_stale_temps` (files a killed writer left).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from utils import distributed as dist_utils
from utils import runlock
from utils.checkpoint import remove_stale_temps

log = logging.getLogger("train")

SIGNAL = "signal"  # the reason should_stop gives for SIGINT/SIGTERM


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM at a consistent point, after ``last.pt`` was saved
    (the state after a whole iteration, or after a whole validation)."""

    def __init__(self, signum: int, iteration: int, path: Path | None):
        self.signum, self.iteration, self.path = signum, iteration, path
        name = signal.Signals(signum).name
        super().__init__(f"{name}: stopped after iteration {iteration}, saved {path}")


class RunControl:
    """The run lock, signals, budgets and the ranks' agreement on stopping for one stage
    folder. ``main`` is rank 0, the process that owns the folder."""

    def __init__(
        self,
        folder: Path,
        *,
        main: bool = True,
        max_iters: int | None = None,
        max_minutes: float | None = None,
        device: torch.device | None = None,
    ):
        self.folder = Path(folder)
        self.main = main
        self.max_iters = max_iters
        self.max_minutes = max_minutes
        self.device = device or torch.device("cpu")
        self.signum: int | None = None  # the first SIGINT/SIGTERM this process received
        self.stop_signum: int | None = None  # the one the ranks stopped for
        self._deadline: float | None = None
        self._locked = False

    # --- the run folder -------------------------------------------------------------------
    def check_free(self) -> None:
        """Raise :class:`utils.runlock.RunLockedError` if a live training owns the folder."""
        if self.main and self.folder.is_dir():
            runlock.check_unlocked(self.folder)

    def claim(self) -> None:
        """Create and own the folder (rank 0; idempotent), removing temp files that writers
        which no longer run left behind."""
        if not self.main or self._locked:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        note = runlock.acquire(self.folder)
        if note:
            log.warning("%s", note)
        self._locked = True
        for stale in remove_stale_temps(self.folder):
            log.info("removed %s, left by a writer that no longer runs", stale.name)

    def release(self) -> None:
        """Give the folder back (a later :meth:`claim` takes it again)."""
        if self._locked:
            runlock.release(self.folder)
            self._locked = False

    # --- signals and budgets --------------------------------------------------------------
    @contextlib.contextmanager
    def running(self) -> Iterator[RunControl]:
        """Install the stop handlers (main thread only, as Python's signal rules require)
        and start the ``max_minutes`` clock; restore the previous handlers on exit."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, self._on_signal)
        if self.max_minutes:
            self._deadline = time.perf_counter() + 60.0 * self.max_minutes
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        if self.main:
            log.warning(
                "%s: stopping after the current step (or validation) and saving last.pt; "
                "send it again to stop at once",
                signal.Signals(signum).name,
            )

    def should_stop(self, iteration: int) -> str | None:
        """Why the loop must stop after ``iteration`` (same answer on every rank), or None:
        :data:`SIGNAL`, ``"--max-iters N"`` or ``"--max-minutes M"``."""
        signum, late = self.signum or 0, self._out_of_time()
        if dist_utils.is_distributed():
            t = torch.tensor([float(signum), float(late)], device=self.device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            agreed = t.tolist()  # the one host-device sync of this check
            signum, late = int(agreed[0]), bool(agreed[1])
        if signum:
            self.stop_signum = signum  # the signal some rank got: every rank reports it
            return SIGNAL
        if self.max_iters is not None and iteration >= self.max_iters:
            return f"--max-iters {self.max_iters}"
        if late:
            return f"--max-minutes {self.max_minutes:g}"
        return None

    def _out_of_time(self) -> bool:
        return self._deadline is not None and time.perf_counter() >= self._deadline

    def interrupted(self, iteration: int) -> Interrupted:
        """The exception that ends a run stopped by a signal (after its state was saved)."""
        dist_utils.barrier()
        signum = self.stop_signum or self.signum or signal.SIGINT
        return Interrupted(signum, iteration, self.folder / "last.pt")


class Throughput:
    """Samples per second over one ``fit``: in the training loop, overall (validation and
    checkpoints included), and the share of the loop spent waiting for data."""

    def __init__(self):
        self.samples, self.loop_s, self.wait_s = 0, 0.0, 0.0
        self.started = time.perf_counter()

    def add(self, epoch: dict) -> None:
        """One epoch's ``samples``, ``seconds`` and ``data_wait_s``."""
        self.samples += epoch["samples"]
        self.loop_s += epoch["seconds"]
        self.wait_s += epoch["data_wait_s"]

    def report(self) -> dict | None:
        """Log one line; return the figures (None when nothing was trained)."""
        if self.samples == 0:
            return None
        wall_s, loop_s = time.perf_counter() - self.started, max(self.loop_s, 1e-9)
        figures = {
            "samples_per_s": self.samples / loop_s,
            "samples_per_s_overall": self.samples / max(wall_s, 1e-9),
            "data_wait_fraction": min(1.0, self.wait_s / loop_s),
        }
        log.info(
            "trained %d samples in %.0f s: %.1f samples/s in the training loop, %.1f overall "
            "(validation and checkpoints included), %.1f%% of the loop waiting for data",
            self.samples,
            wall_s,
            figures["samples_per_s"],
            figures["samples_per_s_overall"],
            100 * figures["data_wait_fraction"],
        )
        return figures
