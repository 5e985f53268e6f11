"""A full disk or a folder that cannot be written, simulated: every checkpoint save is checked
against the free space first, a failed write leaves nothing partial, and the one-line error
names the folder, the space needed and free, and the checkpoint that is still whole; a
good ``last.pt`` beside it stays loadable and ``--resume`` continues from it."""

from __future__ import annotations

import errno
import logging
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch

import train_encoder_decoder as tr
from utils import checkpoint as ck
from utils.checkpoint import CheckpointWriteError, save_checkpoint

Usage = namedtuple("Usage", "total used free")


def little_space(free: int = 1000):
    """A ``shutil.disk_usage`` stand-in reporting ``free`` bytes."""
    return lambda path: Usage(10**12, 10**12 - free, free)


def enospc_after(monkeypatch, calls_ok: int, exc: BaseException | None = None):
    """Make ``torch.save`` work ``calls_ok`` times, then write a few bytes and fail as a full
    disk does (OSError ENOSPC, or ``exc``)."""
    real, calls = torch.save, {"n": 0}

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] <= calls_ok:
            return real(obj, f, *args, **kwargs)
        f.write(b"PK\x03\x04 partial")
        raise exc or OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", save)
    return calls


def state() -> dict:
    return {"model": {"w": torch.zeros(1000, 250)}, "model_config": {}, "stage": 1}


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# --- save_checkpoint -------------------------------------------------------------------------
def test_first_save_refused_before_writing_when_the_free_space_is_too_small(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", little_space(1000))
    with pytest.raises(CheckpointWriteError) as e:
        save_checkpoint(tmp_path / "run" / "last.pt", state())
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path / "run") in msg, msg
    assert "needs about 2.0 MB" in msg and "0.0 MB free" in msg, msg  # 1 MB of tensors + 1 MB
    assert "no earlier checkpoint there" in msg, msg
    assert e.value.errno == errno.ENOSPC and e.value.needed > 10**6 and e.value.free == 1000
    assert list((tmp_path / "run").iterdir()) == []


@pytest.mark.parametrize("kind", ["oserror", "torch-zip-writer"])
def test_enospc_mid_write_keeps_the_previous_file_whole(tmp_path, monkeypatch, kind):
    """The write fails part-way (OSError ENOSPC, or torch's zip writer's RuntimeError with the
    disk then full): the temporary file is removed and last.pt is the earlier one, loadable."""
    path = tmp_path / "last.pt"
    good = state()
    save_checkpoint(path, good)
    before = path.read_bytes()
    exc = None
    if kind == "torch-zip-writer":  # no errno: the free space after the failure tells
        exc = RuntimeError("[enforce fail at inline_container.cc] PytorchStreamWriter failed")
        answers = iter([10**12])  # room at the pre-check, none once the write has failed
        monkeypatch.setattr(ck, "free_bytes", lambda folder: next(answers, 0))
    enospc_after(monkeypatch, 0, exc)
    with pytest.raises(CheckpointWriteError) as e:
        save_checkpoint(path, {**good, "model": {"w": torch.ones(1000, 250)}})
    msg = str(e.value)
    assert "\n" not in msg and "disk is full" in msg and f"is {path}" in msg, msg
    assert leftovers(tmp_path) == []
    assert path.read_bytes() == before
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], good["model"]["w"])


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS])
def test_read_only_folder_is_one_line(tmp_path, monkeypatch, code):
    (tmp_path / "best.pt").write_bytes(b"whole")

    def refuse(*args, **kwargs):
        raise OSError(code, "Read-only file system" if code == errno.EROFS else "Permission denied")

    monkeypatch.setattr(ck.tempfile, "mkstemp", refuse)
    with pytest.raises(CheckpointWriteError) as e:
        save_checkpoint(tmp_path / "last.pt", state())
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg and " free)" in msg, msg
    assert ("read-only" if code == errno.EROFS else "permission denied") in msg, msg
    assert f"is {tmp_path / 'best.pt'}" in msg, msg  # the only whole checkpoint beside it


def test_export_on_a_full_disk_is_one_line(tmp_path, monkeypatch, capsys):
    """export.py writes through the same checked, atomic writer."""
    import export

    monkeypatch.setattr(shutil, "disk_usage", little_space(1000))
    with pytest.raises(CheckpointWriteError) as e:
        ck.write_atomically(tmp_path / "model.onnx", lambda f: f.write(b"x" * 5000), 5000)
    assert "model.onnx" in str(e.value) and "0.0 MB free" in str(e.value)
    assert list(tmp_path.iterdir()) == []
    assert export.CheckpointWriteError is CheckpointWriteError


# --- the trainer -----------------------------------------------------------------------------
def argv(root: Path, runs: Path, *extra: str) -> list[str]:
    return [
        "--stage", "1", "--data-root", str(root), "--runs-dir", str(runs),
        "--cache-dir", str(runs.parent / "cache"), "--crop-size", "64", "--batch-size", "2",
        "--epochs", "1", "--iters-per-epoch", "4", "--workers", "0", "--no-visdom",
        "--threads", "2", "--val-limit", "1", "--lr", "1e-4", "--save-every", "1", *extra,
    ]  # fmt: skip


def errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def test_trainer_first_save_on_a_full_disk(tiny_root, tmp_path, monkeypatch, caplog):
    runs = tmp_path / "runs"
    monkeypatch.setattr(shutil, "disk_usage", little_space(10**6))
    caplog.set_level(logging.ERROR)
    assert tr.main(argv(tiny_root, runs, "--max-iters", "1")) == 1
    (msg,) = errors(caplog)
    stage = runs / "dim" / "stage1"
    assert "\n" not in msg and f"cannot write last.pt in {stage}" in msg, msg
    assert "MB free" in msg and "no earlier checkpoint there" in msg and "--resume" in msg, msg
    assert not list(stage.glob("*.pt")) and leftovers(stage) == []


def test_trainer_later_save_on_a_full_disk_keeps_last_pt_resumable(
    tiny_root, tmp_path, monkeypatch, caplog
):
    """last.pt of iteration 1 is written; the save of iteration 2 hits a full disk: exit 1,
    one line naming the folder, the space and last.pt; last.pt loads with weights_only=True
    and --resume continues from iteration 1 to the end."""
    runs = tmp_path / "runs"
    stage = runs / "dim" / "stage1"
    calls = enospc_after(monkeypatch, 1)
    caplog.set_level(logging.ERROR)
    assert tr.main(argv(tiny_root, runs, "--max-iters", "3")) == 1
    assert calls["n"] == 2
    (msg,) = errors(caplog)
    assert "\n" not in msg and str(stage) in msg and "disk is full" in msg, msg
    assert f"the last whole checkpoint there is {stage / 'last.pt'}" in msg and "free" in msg
    assert leftovers(stage) == []
    last = torch.load(stage / "last.pt", map_location="cpu", weights_only=True)
    assert last["iteration"] == 1

    monkeypatch.undo()  # the disk has room again
    caplog.clear()
    caplog.set_level(logging.INFO)
    assert tr.main(argv(tiny_root, runs, "--max-iters", "3", "--resume")) == 0
    assert any("resumed from" in r.getMessage() and "iteration 1" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    assert torch.load(stage / "last.pt", weights_only=True)["iteration"] == 3
