"""What one user may cost the matting page (demo.py), kept apart from its matting: the memory
budget and the pixel limit it implies, and each browser session's files on disk.

Memory: the page runs one Matte (or photo upload) at a time, so its peak is what is resident
plus one Matte's cost, a fixed work area plus so many bytes per photo pixel, measured per
method by ``python -m benchmarks.bench_page --scenarios sizes``. :func:`pixel_limit` turns a
budget into the largest photo the page accepts.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
from pathlib import Path


class DemoError(ValueError):
    """Something a person did on the page that cannot be served or matted; shown on the page."""


# --- memory -----------------------------------------------------------------------------------
# Measured on a 2-core Xeon (docs/reliability.md): one Matte raises the server's peak by a work
# area plus so many bytes per photo pixel (photo, trimap, alpha, cut-out, composite and PNG
# encoding at full resolution). Closed-form (`python -m benchmarks.bench_page --scenarios
# sizes`): 0.42 GiB + 17 B/px, its work area one 640 px solver window. The network's work
# area is its windows' activations, which grows with the photo until the (scaled) photo fills
# whole PAGE_MAX_SIDE windows and then stays: predict_alpha added 0.78 / 1.26 / 1.85 / 1.91 GiB
# at 2 / 6 / 12 / 20 MP (scale 0.5); its own per-pixel arrays are numpy's, 0.14 GiB at 12 MP.
# Test-time adaptation runs before the network (30 steps at 12 MP added 0.71 GiB), inside that
# work area. The constants keep a margin above the measurements.
BYTES_PER_PIXEL = {"closed-form": 24, "network": 32}
WORK_BYTES = {"closed-form": 0.5 * 2**30, "network": 2.0 * 2**30}  # network at PAGE_MAX_SIDE
PAGE_MAX_SIDE = 1024  # network windows on the page; the CLIs' 1600 px windows need ~4 GB on CPU
SERVER_BYTES = 0.3 * 2**30  # Gradio's own growth while serving (threads, queues, caches)
MODEL_BYTES = 0.25 * 2**30  # one uploaded checkpoint's model in memory (default architecture)
MAX_UPLOADED_MODELS = 2  # sessions that may hold a model of their own at once


def resident_bytes() -> int:
    """This process's resident memory now (Linux /proc; 0 where it cannot be read)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def pixel_limit(budget: float, resident: float, cost: str) -> int:
    """The most photo pixels one Matte may have so that the server's peak stays under
    ``budget`` bytes, given what is ``resident`` already and the ``cost`` of its method
    ("closed-form" or "network", keys of :data:`BYTES_PER_PIXEL`)."""
    room = budget - resident - SERVER_BYTES - WORK_BYTES[cost]
    return int(max(0.0, room) // BYTES_PER_PIXEL[cost])


# --- sessions -------------------------------------------------------------------------------------
class Sessions:
    """Each browser session's files in a folder of its own under ``root``: the photo as it was
    uploaded and the latest Matte's downloads, so nothing full-resolution stays in memory
    between requests. A session idle for ``ttl`` seconds is removed at the next request of any
    session; at most ``limit`` exist at once (a new one beyond that is told to retry), and at
    most :data:`MAX_UPLOADED_MODELS` hold a checkpoint of their own."""

    def __init__(self, root: Path, limit: int = 64, ttl: float = 1800.0):
        self.root, self.limit, self.ttl = Path(root), limit, ttl
        self.lock = threading.Lock()
        self.last_used: dict[str, float] = {}
        self.methods: dict[str, object] = {}

    @staticmethod
    def key(session_hash: str | None) -> str:
        """A folder name for the client-chosen session id (never a path)."""
        return hashlib.sha256(str(session_hash).encode()).hexdigest()[:32]

    def folder(self, session_hash: str | None, create: bool = False) -> Path:
        """The session's folder; ``create``: make it if new (:class:`DemoError` at the limit)."""
        key = self.key(session_hash)
        with self.lock:
            self._expire()
            if key not in self.last_used:
                if not create:
                    raise DemoError("no photo: upload one first (sessions expire when idle)")
                if len(self.last_used) >= self.limit:
                    raise DemoError(
                        f"the page is serving {self.limit} sessions, its limit "
                        "(--max-sessions); try again in a few minutes"
                    )
                (self.root / key).mkdir(parents=True, exist_ok=True)
            self.last_used[key] = time.monotonic()
            return self.root / key

    def photo(self, session_hash: str | None) -> Path:
        """The session's uploaded photo; :class:`DemoError` if it has none."""
        found = sorted(self.folder(session_hash).glob("photo.*"))
        if not found:
            raise DemoError("no photo: upload one first")
        return found[0]

    def keep_photo(self, session_hash: str | None, path: str) -> Path:
        """Copy an accepted upload into the session's folder (replacing its previous photo)."""
        folder = self.folder(session_hash, create=True)
        for old in folder.glob("photo.*"):
            old.unlink()
        suffix = "".join(c for c in Path(path).suffix.lower() if c.isalnum() or c == ".")[:8]
        return Path(shutil.copyfile(path, folder / f"photo{suffix or '.img'}"))

    def method(self, session_hash: str | None):
        """The method (demo.Method) the session uploaded, or None: the page's own."""
        with self.lock:
            return self.methods.get(self.key(session_hash))

    def set_method(self, session_hash: str | None, method) -> None:
        key = self.key(session_hash)
        with self.lock:
            if key not in self.methods and len(self.methods) >= MAX_UPLOADED_MODELS:
                raise DemoError(
                    f"{MAX_UPLOADED_MODELS} other sessions hold uploaded checkpoints, the most "
                    "this page keeps in memory; try again later, or start the page with "
                    "--checkpoint"
                )
            self.methods[key] = method

    def close(self, session_hash: str | None) -> None:
        with self.lock:
            self._remove(self.key(session_hash))

    def _expire(self) -> None:
        now = time.monotonic()
        for key, used in list(self.last_used.items()):
            if now - used > self.ttl:
                self._remove(key)

    def _remove(self, key: str) -> None:
        self.last_used.pop(key, None)
        self.methods.pop(key, None)
        shutil.rmtree(self.root / key, ignore_errors=True)
