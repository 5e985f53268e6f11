"""The decoded cache: decode every training image once, then memory-map it.

Each image is decoded once into uint8 ``.npy`` files
that are opened with ``np.load(mmap_mode="r")``, so a sample reads only its crop window.
Per foreground: RGB+alpha (H, W, 4), two squared-distance maps (H, W, 2) for the trimaps,
and the flat indices of its unknown pixels; per background: RGB (h, w, 3). Disk cost: about
6 bytes per foreground pixel and 3 per background pixel (Adobe training set + 43,100 COCO
images: ~45 GB, of which ~40 GB are backgrounds; ``cache_backgrounds=False`` keeps only the
foregrounds and decodes background JPEGs per sample). Entries are keyed by path, size and
modification time, written atomically, and built in parallel.

:class:`DecodingStore` is the no-cache twin (decodes per sample) with the same interface.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root

import numpy as np

from data import compose
from data.sources import DataSourceError, Foreground, raise_problems
from utils.image_io import ImageReadError, read_gray, read_rgb

REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_VERSION = 1  # bump when the cached arrays change meaning
PathLike = str | os.PathLike


def default_cache_dir() -> Path:
    """``$DIM_CACHE_DIR/decoded``, or ``<repo>/.cache/decoded`` (git-ignored)."""
    base = os.environ.get("DIM_CACHE_DIR")
    return (Path(base) if base else REPO_ROOT / ".cache") / "decoded"


# --- reading arrays: decode every time, or the decoded cache ---------------------------------
@dataclass
class ForegroundArrays:
    """What a sample needs from a foreground: see :func:`data.compose.make_sample`.

    fga: uint8 (H, W, 4) RGB + alpha; candidates: int32 flat unknown indices;
    dist2: uint8 (H, W, 2) distance maps, or None (then computed per crop).
    """

    fga: np.ndarray
    candidates: np.ndarray
    dist2: np.ndarray | None = None


def decode_foreground(fg: Foreground) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``fg``: (uint8 (H, W, 4) RGB + alpha, uint8 (H, W) alpha); checks sizes."""
    rgb, alpha = read_rgb(fg.fg_path), read_gray(fg.alpha_path)
    if rgb.shape[:2] != alpha.shape:
        raise DataSourceError(
            f"foreground {fg.fg_path} is {rgb.shape[1]}x{rgb.shape[0]} but its alpha "
            f"{fg.alpha_path} is {alpha.shape[1]}x{alpha.shape[0]} (W x H)"
        )
    return np.dstack([rgb, alpha]), alpha


class DecodingStore:
    """Decodes the files on every call: no disk cache, slow for large foregrounds."""

    def foreground(self, fg: Foreground) -> ForegroundArrays:
        fga, alpha = decode_foreground(fg)
        return ForegroundArrays(fga, compose.unknown_candidates(alpha))

    def background(self, path: Path) -> np.ndarray:
        return read_rgb(path)


def _signature(*paths: Path) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION}".encode())
    for p in paths:
        st = p.stat()
        h.update(f"|{p.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:24]


def _save_atomic(path: Path, arr: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(arr))
    os.replace(tmp, path)


def _build_fg(job: tuple[Foreground, str]) -> str | None:
    """Worker: decode one foreground into the cache; returns an error message or None."""
    fg, prefix = job
    try:
        fga, alpha = decode_foreground(fg)
        _save_atomic(Path(prefix + ".fga.npy"), fga)
        _save_atomic(Path(prefix + ".dist.npy"), compose.distance_maps(alpha))
        _save_atomic(Path(prefix + ".unk.npy"), compose.unknown_candidates(alpha))
    except (ImageReadError, DataSourceError) as e:
        return str(e)
    return None


def _build_bg(job: tuple[Path, str]) -> str | None:
    path, prefix = job
    try:
        _save_atomic(Path(prefix + ".bg.npy"), read_rgb(path))
    except ImageReadError as e:
        return str(e)
    return None


class CachedStore:
    """Decoded cache: every image decoded once to ``.npy``, then memory-mapped.

    Build with :meth:`build` (done by :class:`data.py_adobe_data.AdobeDataset`); a decode
    failure there is reported as a :class:`DataSourceError` naming the file. Pickles
    without its open memory maps (DataLoader workers reopen them).
    """

    def __init__(
        self, cache_dir: PathLike | None = None, cache_backgrounds: bool = True, max_open: int = 128
    ):
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.cache_backgrounds = cache_backgrounds
        self.max_open = max_open
        self._keys: dict[Path, str] = {}
        self._open: OrderedDict[str, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_open"] = OrderedDict()
        return state

    def _prefix(self, *paths: Path) -> str:
        key = self._keys.get(paths[0])
        if key is None:
            key = _signature(*paths)
            self._keys[paths[0]] = key
        return str(self.cache_dir / key[:2] / key)

    def build(
        self,
        foregrounds: Sequence[Foreground],
        backgrounds: Sequence[Path],
        workers: int | None = None,
        progress: bool = True,
    ) -> None:
        """Decode whatever is not cached yet (``workers`` processes; 0 = in this process)."""
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DataSourceError(f"cannot create cache folder {self.cache_dir}: {e}") from e
        fg_jobs = []
        for fg in dict.fromkeys(foregrounds):
            prefix = self._prefix(fg.fg_path, fg.alpha_path)
            if not all(Path(prefix + s).is_file() for s in (".fga.npy", ".dist.npy", ".unk.npy")):
                fg_jobs.append((fg, prefix))
        bg_jobs = []
        if self.cache_backgrounds:
            for bg in dict.fromkeys(backgrounds):
                prefix = self._prefix(bg)
                if not Path(prefix + ".bg.npy").is_file():
                    bg_jobs.append((bg, prefix))
        if not fg_jobs and not bg_jobs:
            return
        for _, prefix in fg_jobs + bg_jobs:
            Path(prefix).parent.mkdir(parents=True, exist_ok=True)
        if workers is None:
            workers = min(os.cpu_count() or 1, 8)
        if progress:
            print(
                f"decoded cache {self.cache_dir}: decoding {len(fg_jobs)} foreground(s) and "
                f"{len(bg_jobs)} background(s) once",
                file=sys.stderr,
                flush=True,
            )
        errors: list[str] = []
        for fn, jobs in ((_build_fg, fg_jobs), (_build_bg, bg_jobs)):
            if not jobs:
                continue
            if workers <= 1 or len(jobs) < 4:
                results = map(fn, jobs)
                errors += [e for e in results if e]
            else:
                with ProcessPoolExecutor(max_workers=workers) as pool:
                    results = pool.map(fn, jobs, chunksize=max(1, len(jobs) // (workers * 8)))
                    errors += [e for e in _progress(results, len(jobs), progress) if e]
        raise_problems(errors, f"decoding images into the cache {self.cache_dir}")

    def _load(self, path: str) -> np.ndarray:
        arr = self._open.get(path)
        if arr is not None:
            self._open.move_to_end(path)
            return arr
        try:
            arr = np.load(path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise DataSourceError(
                f"decoded cache file {path} is missing or damaged ({e}); delete the cache "
                f"folder {self.cache_dir} and run again to rebuild it"
            ) from e
        self._open[path] = arr
        if len(self._open) > self.max_open:
            self._open.popitem(last=False)
        return arr

    def foreground(self, fg: Foreground) -> ForegroundArrays:
        prefix = self._prefix(fg.fg_path, fg.alpha_path)
        return ForegroundArrays(
            self._load(prefix + ".fga.npy"),
            self._load(prefix + ".unk.npy"),
            self._load(prefix + ".dist.npy"),
        )

    def background(self, path: Path) -> np.ndarray:
        if not self.cache_backgrounds:
            return read_rgb(path)
        # Backgrounds are many and each used rarely: map them without keeping them open.
        prefix = self._prefix(path)
        try:
            return np.load(prefix + ".bg.npy", mmap_mode="r")
        except (OSError, ValueError) as e:
            raise DataSourceError(
                f"decoded cache file {prefix}.bg.npy for {path} is missing or damaged ({e}); "
                f"delete the cache folder {self.cache_dir} and run again to rebuild it"
            ) from e


def _progress(it: Iterable, total: int, show: bool) -> Iterable:
    if not show or total < 50:
        return it
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is a dependency, but the cache must not need it
        return it
    return tqdm(it, total=total, desc="decoding", unit="img", file=sys.stderr)
