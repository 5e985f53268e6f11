"""One training per run folder: a lock file that names its owner (pid, host, job).

Two trainings writing the same ``last.pt`` would each resume from the other's state and
overwrite it; neither would notice. The owner writes ``<stage folder>/.lock`` (created with
O_EXCL, so of two starts exactly one wins) holding its pid, host, process start time and
scheduler job id, and removes it when it stops. A lock is *stale*, and is taken over with a
message, when

- its process is gone: same host, and no process with that pid and start time runs (a
  crashed or SIGKILLed run, an elastic restart replacing a dead worker), or
- it belongs to this same scheduler job (``SLURM_JOB_ID``, or torchrun's
  ``TORCHELASTIC_RUN_ID``): a requeued job restarting, possibly on another node.

A lock held by a live process, or by another host's process of another job, refuses the start;
the message names the owner and says when deleting the file is safe. Plain files, no
``flock``: they behave the same on the network file systems clusters keep runs on.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_NAME = ".lock"


class RunLockedError(RuntimeError):
    """Another live training owns this run folder."""


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux, clock ticks since boot), which tells a
    recycled pid from the original process; None where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the name in () may hold spaces


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    if start is None:
        return True
    now = _start_time(pid)
    return now is None or now == start


def _job_id() -> str | None:
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID")


def owner_record() -> dict:
    """What the lock file says about this process."""
    return {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "start": _start_time(os.getpid()),
        "job": _job_id(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
    }


def read_owner(folder: str | os.PathLike) -> dict | None:
    """The lock's owner record, None when unlocked; an unreadable lock (a writer killed while
    writing it) reads as an owner with no pid."""
    path = Path(folder) / LOCK_NAME
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        owner = json.loads(text)
        return owner if isinstance(owner, dict) else {}
    except json.JSONDecodeError:
        return {}


def stale_reason(owner: dict) -> str | None:
    """Why ``owner``'s lock may be taken over, or None while it must be respected."""
    me = owner_record()
    if owner.get("pid") == me["pid"] and owner.get("host") == me["host"]:
        return "this process's own lock"
    if owner.get("job") and owner.get("job") == me["job"]:
        return f"left by this job ({owner['job']}) before a restart"
    if owner.get("host") == me["host"]:
        pid = owner.get("pid")
        if not isinstance(pid, int):
            return "unreadable, written by a process that died while writing it"
        if not _alive(pid, owner.get("start")):
            return f"left by pid {pid}, which no longer runs"
    return None


def describe(owner: dict) -> str:
    return (
        f"pid {owner.get('pid', '?')} on {owner.get('host', '?')} since "
        f"{owner.get('since', '?')} ({owner.get('command', '?')})"
    )


def check_unlocked(folder: str | os.PathLike) -> None:
    """Raise :class:`RunLockedError` when a live training owns ``folder`` (a cheap early
    check, before a long set-up; :func:`acquire` is the one that counts)."""
    owner = read_owner(folder)
    if owner is not None and stale_reason(owner) is None:
        raise _locked(folder, owner)


def _locked(folder, owner: dict) -> RunLockedError:
    path = Path(folder) / LOCK_NAME
    return RunLockedError(
        f"{Path(folder)} is in use by another training: {describe(owner)}. Two trainings "
        f"would overwrite each other's checkpoints: pick another --run-name, or wait. If that "
        f"training no longer runs (e.g. its machine went down), delete {path}."
    )


def acquire(folder: str | os.PathLike) -> str | None:
    """Take the lock of ``folder`` (which must exist). Returns a line to log when a stale
    lock was taken over, else None; raises :class:`RunLockedError` when it is held."""
    path = Path(folder) / LOCK_NAME
    note = None
    for _ in range(3):  # a stale lock is removed, then the O_EXCL create decides
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = read_owner(folder)
            if owner is None:
                continue  # released meanwhile
            reason = stale_reason(owner)
            if reason is None:
                raise _locked(folder, owner) from None
            if reason != "this process's own lock":
                note = f"took over {path}: {reason} ({describe(owner)})"
            path.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(owner_record(), f)
        return note
    raise _locked(folder, read_owner(folder) or {})


def release(folder: str | os.PathLike) -> None:
    """Remove the lock if this process owns it (never someone else's)."""
    owner = read_owner(folder)
    me = owner_record()
    if owner and owner.get("pid") == me["pid"] and owner.get("host") == me["host"]:
        (Path(folder) / LOCK_NAME).unlink(missing_ok=True)
