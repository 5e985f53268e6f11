"""Helpers shared by the benchmarks: machine description, timing, peak memory, JSON, tables.

Nothing here imports project code, so any ``benchmarks/bench_*.py`` can use it.

    machine_info()            CPU model, cores, memory, load, library versions, CUDA devices
    sync(device)              wait for queued CUDA work (no-op on CPU) before reading a clock
    PeakMemory(device)        peak memory of a block: CUDA allocator peak and/or process RSS peak
    median(xs)                the median of a non-empty list of floats
    write_json(path, obj)     atomic JSON write; NaN/inf become null (strict JSON)
    markdown_table(head, rows) a GitHub-flavoured Markdown table as one string
    verdict(ok)               "met" / "NOT met" / "-" for a target
    parse_size(text)          "WxH" -> (W, H), for --size flags
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import resource
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


# --- machine ---------------------------------------------------------------------------------
def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo (Linux), else platform.processor(), else "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _meminfo_gb(key: str) -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return round(int(line.split()[1]) / 2**20, 2)  # kB -> GB
    except (OSError, ValueError):
        pass
    return None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def machine_info() -> dict[str, Any]:
    """What the figures were measured on. Imports torch (and CUDA, when present)."""
    import numpy as np
    import torch

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count() or 1
    info: dict[str, Any] = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count() or 1,
        "cpus_usable": usable,
        "torch_threads": torch.get_num_threads(),
        "memory_total_gb": _meminfo_gb("MemTotal"),
        "memory_available_gb": _meminfo_gb("MemAvailable"),
        "load_average_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "git_commit": _git_commit(),
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": [],
    }
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    try:
        import cv2

        info["opencv"] = cv2.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["cuda_version"] = torch.version.cuda
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            info["cuda_devices"].append(
                {"name": p.name, "memory_gb": round(p.total_memory / 2**30, 1)}
            )
        info["cuda_device_name"] = info["cuda_devices"][0]["name"]
    return info


# --- timing and memory -----------------------------------------------------------------------
def sync(device: Any) -> None:
    """Block until queued work on ``device`` (a torch.device or string) has finished."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median(xs: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    s = sorted(xs)
    if not s:
        raise ValueError("median of an empty sequence")
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else 0.5 * (s[mid - 1] + s[mid])


def status_kb(key: str, pid: int | str = "self") -> int | None:
    """A field of /proc/PID/status in kB (VmRSS, VmHWM), None where there is none."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def rss_mb() -> float | None:
    """Resident memory of this process now, MB (Linux)."""
    kb = status_kb("VmRSS")
    return None if kb is None else kb / 1024.0


def peak_rss_mb() -> float:
    """High-water mark of this process's resident memory, MB (since start or the last reset)."""
    kb = status_kb("VmHWM")
    if kb is None:  # not Linux: ru_maxrss (KB on Linux/BSD, bytes on macOS), never reset
        div = 2**20 if platform.system() == "Darwin" else 2**10
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / div
    return kb / 1024.0


def reset_peak_rss(pid: int | str = "self") -> bool:
    """Reset a process's RSS high-water mark (Linux >= 4.0: write 5 to /proc/PID/clear_refs).

    Returns False where that is impossible; peaks are then since process start.
    """
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """Peak memory of the enclosed block.

    CUDA (``device`` is cuda): ``cuda_peak_mb`` = ``torch.cuda.max_memory_allocated`` over the
    block (everything allocated on the device at the time, not just by the block), and
    ``cuda_reserved_mb`` the caching allocator's peak reservation.
    CPU (always): ``rss_peak_mb`` = the process's resident high-water mark during the block,
    ``rss_before_mb`` its RSS on entry and ``rss_added_mb`` the difference: what the block
    needed on top of what was already resident -- a lower bound, since malloc may serve the
    block from freed memory that is still resident. ``rss_exact`` is False where the
    high-water mark cannot be reset (then the peak may be an earlier one).
    """

    def __init__(self, device: Any = "cpu"):
        import torch

        self.device = torch.device(device)
        self.cuda_peak_mb: float | None = None
        self.cuda_reserved_mb: float | None = None
        self.rss_before_mb: float | None = None
        self.rss_peak_mb: float | None = None
        self.rss_added_mb: float | None = None
        self.rss_exact = False

    def __enter__(self) -> PeakMemory:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.rss_exact = reset_peak_rss()
        self.rss_before_mb = rss_mb()
        return self

    def __exit__(self, *exc) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.cuda_peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
            self.cuda_reserved_mb = torch.cuda.max_memory_reserved(self.device) / 2**20
        self.rss_peak_mb = peak_rss_mb()
        if self.rss_before_mb is not None:
            self.rss_added_mb = max(0.0, self.rss_peak_mb - self.rss_before_mb)


# --- output ----------------------------------------------------------------------------------
def _strict(obj: Any) -> Any:
    """A copy of ``obj`` that json.dumps(allow_nan=False) accepts (NaN/inf -> None)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _strict(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_strict(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        return _strict(obj.item())
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented strict JSON to ``path`` atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_strict(obj), indent=2, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it owner-only; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def verdict(ok: bool | None) -> str:
    """How every benchmark table states a target: "met", "NOT met", or "-" (no target)."""
    return "-" if ok is None else ("met" if ok else "NOT met")


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; cells are str()-ed, columns padded to their widest cell."""
    cells = [[str(c) for c in head]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(head))]

    def line(r: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(cells[0]), sep, *(line(r) for r in cells[1:])])


def parse_size(text: str) -> tuple[int, int]:
    """``"800x600"`` -> (800, 600): (width, height) for ``--size`` flags, both >= 1."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 800x600, got {text!r}") from None
    if min(w, h) < 1:
        raise argparse.ArgumentTypeError(f"width and height must be >= 1, got {text!r}")
    return w, h


def parse_stages(text: str) -> tuple[int, ...]:
    """``--stages``: "1", "3" or "1,3" (the training stages the benchmarks time)."""
    try:
        stages = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        stages = ()
    if not stages or set(stages) - {1, 3}:
        raise argparse.ArgumentTypeError(f"takes 1 and/or 3 (e.g. 1,3), got {text!r}")
    return stages


# What utils.cli.declare marks (set by hand: this module imports no project code): the flag
# kind and values each type refuses, tried by tests/test_cli_flags.py.
parse_size.flag_kind, parse_size.bad_values = "size", ("800", "0x600", "axb")
parse_stages.flag_kind, parse_stages.bad_values = "stages", ("2", "1,x", "")
