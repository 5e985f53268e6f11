"""Training on a cluster, tested for real on CPU (gloo): preemption and requeue with the same
command line, elastic restarts under ``torchrun --max-restarts``, two "machines" on loopback,
one training per run folder, and resumes that refuse a different model."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train_encoder_decoder as tr
from tests.faults import FAULT_ENV, fault_callbacks
from utils import runlock
from utils.checkpoint import load_checkpoint
from utils.visdom_frontend import free_port

ROOT = Path(__file__).resolve().parents[1]
ENTRY = ROOT / "tests" / "torchrun_entry.py"
# 2 epochs of 3 iterations: interrupts mid-epoch and across an epoch end (validation) alike.
SHORT = ["--epochs", "2", "--iters-per-epoch", "3", "--val-limit", "1"]


def argv(root: Path, runs: Path, *extra: str) -> list[str]:
    """One command line, repeated unchanged after every stop (what a requeue does)."""
    return [
        "--stage", "1", "--data-root", str(root), "--runs-dir", str(runs),
        "--cache-dir", str(runs.parent / "cache"), "--crop-size", "64", "--batch-size", "2",
        "--workers", "0", "--no-visdom", "--threads", "1", "--lr", "1e-4", *SHORT,
        "--resume", "auto", *extra,
    ]  # fmt: skip


def assert_same_training(a: dict, b: dict, what: str) -> None:
    """Weights, BatchNorm statistics and Adam state bit-identical."""
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), f"{what}: {k} differs"
    for pid, st in a["optimizer"]["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(st[key], b["optimizer"]["state"][pid][key]), f"{what}: Adam {key}"
    assert a["iteration"] == b["iteration"]


def last(runs: Path, name: str = "dim") -> dict:
    return load_checkpoint(runs / name / "stage1" / "last.pt")


# --- one process: SIGTERM, then the same command again -----------------------------------------
@pytest.mark.slow
def test_sigterm_then_same_command_resumes_bit_exact(tiny_root, tmp_path):
    runs = tmp_path / "runs"
    assert tr.main(argv(tiny_root, runs, "--run-name", "ref")) == 0  # auto: nothing to resume
    args = argv(tiny_root, runs)
    # Preempted twice (mid-epoch 1; in epoch 2, where the step under way completes first),
    # requeued with the same command line each time.
    for fault, after in (("step:2:TERM", 2), ("forward:5:TERM", 5)):
        code = tr.main(args, callbacks=fault_callbacks(fault))
        assert code == 143, fault  # 128 + SIGTERM: "terminated", requeue me
        assert last(runs)["iteration"] == after
        assert not (runs / "dim" / "stage1" / runlock.LOCK_NAME).exists(), "lock released"
    assert tr.main(args) == 0
    got, ref = last(runs), last(runs, "ref")
    assert_same_training(ref, got, "requeued run")
    assert [h["epoch"] for h in got["history"]] == [1, 2]


# --- torchrun: 2 processes over gloo --------------------------------------------------------------
def torchrun(launch: list[str], args: list[str], out: Path, env: dict | None = None, **kw):
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, str(ENTRY), *args]
    full_env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    full_env.update(DIM_TEST_OUT=str(out), OMP_NUM_THREADS="1", **(env or {}))
    return subprocess.Popen(
        cmd, cwd=ROOT, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        **kw,
    )  # fmt: skip


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def ranks_equal(out: Path) -> dict[str, torch.Tensor]:
    r0 = torch.load(out / "rank0.pt", weights_only=True)
    r1 = torch.load(out / "rank1.pt", weights_only=True)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks diverged in {k}"
    return r0


STANDALONE = ["--standalone", "--nnodes", "1", "--nproc-per-node", "2"]


@pytest.fixture(scope="module")
def ddp_reference(tiny_root, tmp_path_factory):
    """An uninterrupted 2-process run (one launcher): the result the others must equal."""
    base = tmp_path_factory.mktemp("ddpref")
    runs = base / "runs"
    assert tr.main(argv(tiny_root, runs, "--run-name", "cache", "--max-iters", "1")) == 0
    code, log = finish(torchrun(STANDALONE, argv(tiny_root, runs), base / "out"))
    assert code == 0, log[-3000:]
    ranks_equal(base / "out")
    return runs.parent, last(runs)


@pytest.mark.slow
def test_ddp_sigterm_then_same_command_resumes_bit_exact(tiny_root, ddp_reference):
    base, ref = ddp_reference
    runs = base / "runs_term"
    args = argv(tiny_root, runs)
    fault = {FAULT_ENV: "step:2:TERM:1"}  # the scheduler's signal reaches rank 1 only
    code, log = finish(torchrun(STANDALONE, args, base / "out_term", fault))
    assert code != 0, log[-3000:]
    assert "SIGTERM: stopped after iteration 2" in log, log[-3000:]
    assert last(runs)["iteration"] == 2, "every rank stopped after the same iteration"
    code, log = finish(torchrun(STANDALONE, args, base / "out_term"))  # requeued
    assert code == 0, log[-3000:]
    ranks_equal(base / "out_term")
    assert_same_training(ref, last(runs), "DDP run requeued after SIGTERM")


@pytest.mark.slow
def test_elastic_restart_after_a_worker_dies(tiny_root, ddp_reference):
    """torchrun --max-restarts 1: rank 1 is killed (SIGKILL) in iteration 3 (of 4: 8 pairs,
    2 per rank per step); torchrun restarts the group, which resumes from last.pt (saved every
    iteration) and completes with the uninterrupted run's weights."""
    base, ref = ddp_reference
    runs = base / "runs_elastic"
    launch = [*STANDALONE, "--max-restarts", "1"]
    fault = {FAULT_ENV: "step:3:KILL:1"}
    code, log = finish(torchrun(launch, argv(tiny_root, runs, "--save-every", "1"),
                                base / "out_elastic", fault))  # fmt: skip
    assert code == 0, log[-4000:]
    assert "exitcode: -9" in log and "resumed from" in log, log[-4000:]
    ranks_equal(base / "out_elastic")
    assert_same_training(ref, last(runs), "elastic restart")


@pytest.mark.slow
def test_two_launchers_on_loopback_train_as_one(tiny_root, ddp_reference):
    """Two torchrun launchers (--nnodes 2, one process each, c10d rendezvous on 127.0.0.1),
    as two machines would: same weights on both ranks, equal to one launcher with 2 processes
    (the same global batch)."""
    base, ref = ddp_reference
    runs = base / "runs_nodes"
    port = free_port()
    launch = ["--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
              "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "dim-loopback"]  # fmt: skip
    nodes = [torchrun(launch, argv(tiny_root, runs), base / "out_nodes") for _ in range(2)]
    results = [finish(p) for p in nodes]
    for code, log in results:
        assert code == 0, log[-3000:]
    ranks_equal(base / "out_nodes")
    assert_same_training(ref, last(runs), "two launchers")


# --- one training per run folder ------------------------------------------------------------------
@pytest.fixture
def other_process():
    """A live process that is not this one (the owner of someone else's lock)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def write_lock(folder: Path, **fields) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    record = {**runlock.owner_record(), "job": None, "command": "train (the other one)", **fields}
    (folder / runlock.LOCK_NAME).write_text(json.dumps(record))


def test_second_training_with_the_same_run_name_is_refused(tmp_path, other_process, caplog):
    """Refused at once (here the data root does not even exist: the lock is checked before the
    data set-up), naming the owner; the owner's files are untouched."""
    stage = tmp_path / "dim" / "stage1"
    write_lock(stage, pid=other_process.pid, start=runlock._start_time(other_process.pid))
    t0 = time.perf_counter()
    code = tr.main(["--stage", "1", "--data-root", str(tmp_path / "nowhere"),
                    "--runs-dir", str(tmp_path)])  # fmt: skip
    assert code == 2 and time.perf_counter() - t0 < 10
    assert f"pid {other_process.pid}" in caplog.text and "--run-name" in caplog.text
    assert "nowhere" not in caplog.text
    assert runlock.read_owner(stage)["pid"] == other_process.pid


def test_locks_stale_live_and_requeued(tmp_path, other_process, monkeypatch):
    folder = tmp_path / "stage1"
    # a live owner on this host: refused
    write_lock(folder, pid=other_process.pid, start=runlock._start_time(other_process.pid))
    with pytest.raises(runlock.RunLockedError, match=f"pid {other_process.pid}"):
        runlock.acquire(folder)
    # the same pid, but a recycled one (another start time): stale
    write_lock(folder, pid=other_process.pid, start="1")
    assert "no longer runs" in runlock.acquire(folder)
    runlock.release(folder)
    assert runlock.read_owner(folder) is None
    # a dead owner: stale, taken over with a note
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    write_lock(folder, pid=dead.pid, start=None)
    assert f"pid {dead.pid}, which no longer runs" in runlock.acquire(folder)
    assert runlock.read_owner(folder)["pid"] == os.getpid()
    # another host: cannot be checked, refused; unless it is this very job, requeued
    write_lock(folder, pid=12345, host="node-b", job="777")
    with pytest.raises(runlock.RunLockedError, match="node-b"):
        runlock.acquire(folder)
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    assert "this job (777)" in runlock.acquire(folder)
    # release never removes someone else's lock
    write_lock(folder, pid=other_process.pid)
    runlock.release(folder)
    assert runlock.read_owner(folder)["pid"] == other_process.pid


# --- --resume auto and configuration changes ------------------------------------------------------
def test_resume_auto_refuses_another_model_and_names_changed_settings(tiny_root, tmp_path,
                                                                      caplog):  # fmt: skip
    caplog.set_level(logging.INFO)
    runs = tmp_path / "runs"
    args = argv(tiny_root, runs, "--max-iters", "1")
    assert tr.main(args) == 0
    assert "no " in caplog.text and "starting a new run" in caplog.text
    caplog.clear()
    assert tr.main([*args, "--skip", "add", "--fc6", "transmap"]) == 2
    assert "fc6 'conv1x1' -> 'transmap'" in caplog.text and "skip" in caplog.text, caplog.text
    assert "--fc6 conv1x1" in caplog.text and "--run-name" in caplog.text
    caplog.clear()
    assert tr.main([*argv(tiny_root, runs, "--max-iters", "2"), "--lr", "5e-5"]) == 0
    assert "changed settings (lr 0.0001 -> 5e-05)" in caplog.text, caplog.text
    assert last(runs)["iteration"] == 2
