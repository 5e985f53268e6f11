"""Where training images come from: foreground/alpha pairs, backgrounds, name lists, the
train/validation split, and the decoded cache.

Everything is checked when the sources are built (not on the 10,000th sample): missing
folders, empty folders, a foreground without alpha or an alpha without foreground, a name
list pointing at a missing file, an unreadable image header, foreground/alpha of different
sizes. Each problem is reported with the file (and list line) it concerns, all at once.

Layouts understood by :func:`find_layout` (``root`` may be any of these folders)::

    Combined_Dataset/Training_set/            the Adobe release
        Adobe-licensed images/{fg,alpha}/     \\ two folder pairs, matched by file name
        Other/{fg,alpha}/                     /
        training_fg_names.txt                 431 foreground file names
        training_bg_names.txt                 43,100 COCO names: fg i uses lines 100*i..100*i+99
    trainval/{fg,alpha}/                      the same, merged into one pair
    fg/, alpha/, bg/ [+ the two name lists]   plain folders (the built-in synthetic set)

Backgrounds: ``bg_dir`` (COCO train2014), else ``root/bg`` or ``root/train2014``.

Decoded cache (:class:`CachedStore`): each image is decoded once into uint8 ``.npy`` files
that are opened with ``np.load(mmap_mode="r")``, so a sample reads only its crop window.
Per foreground: RGB+alpha (H, W, 4), two squared-distance maps (H, W, 2) for the trimaps,
and the flat indices of its unknown pixels; per background: RGB (h, w, 3). Disk cost: about
6 bytes per foreground pixel and 3 per background pixel (Adobe training set + 43,100 COCO
images: ~45 GB, of which ~40 GB are backgrounds; ``cache_backgrounds=False`` keeps only the
foregrounds and decodes background JPEGs per sample). Entries are keyed by path, size and
modification time, written atomically, and built in parallel.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root

import numpy as np

from data import compose
from utils.image_io import ImageReadError, image_size, read_gray, read_rgb

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
REPO_ROOT = Path(__file__).resolve().parents[1]
CACHE_VERSION = 1  # bump when the cached arrays change meaning
PathLike = str | os.PathLike


class DataSourceError(ValueError):
    """The training data cannot be used as given; the message lists every problem found."""


def raise_problems(problems: list[str], what: str) -> None:
    """Raise one DataSourceError listing every problem found (at most 25 shown), if any."""
    if not problems:
        return
    shown = problems[:25]
    more = f"\n  ... and {len(problems) - len(shown)} more" if len(problems) > len(shown) else ""
    lines = "\n  ".join(shown)
    raise DataSourceError(f"{what}: {len(problems)} problem(s):\n  {lines}{more}")


def default_cache_dir() -> Path:
    """``$DIM_CACHE_DIR/decoded``, or ``<repo>/.cache/decoded`` (git-ignored)."""
    base = os.environ.get("DIM_CACHE_DIR")
    return (Path(base) if base else REPO_ROOT / ".cache") / "decoded"


# --- folders and name lists ------------------------------------------------------------------
def list_images(folder: PathLike, what: str) -> list[Path]:
    """Image files in ``folder`` (extensions ``IMAGE_EXTS``, hidden files skipped), sorted.

    Raises :class:`DataSourceError` when the folder is missing, not a folder, or empty.
    """
    p = Path(folder)
    if not p.exists():
        raise DataSourceError(f"{what} folder {p} does not exist; check the path")
    if not p.is_dir():
        raise DataSourceError(f"{what} folder {p} is not a folder")
    files = sorted(
        f
        for f in p.iterdir()
        if f.suffix.lower() in IMAGE_EXTS and not f.name.startswith(".") and f.is_file()
    )
    if not files:
        raise DataSourceError(
            f"{what} folder {p} holds no images (looked for {', '.join(IMAGE_EXTS)})"
        )
    return files


def read_name_list(path: PathLike, what: str) -> list[str]:
    """Non-empty, stripped lines of a name list file. Raises when missing or empty."""
    p = Path(path)
    if not p.is_file():
        raise DataSourceError(f"{what} list {p} does not exist; check the path")
    names = [ln.strip() for ln in p.read_text(encoding="utf-8", errors="replace").splitlines()]
    names = [n for n in names if n]
    if not names:
        raise DataSourceError(f"{what} list {p} is empty")
    return names


@dataclass(frozen=True)
class Foreground:
    """A foreground image and its alpha matte; size (H, W) read from the file headers."""

    name: str
    fg_path: Path
    alpha_path: Path
    size: tuple[int, int]

    @property
    def stem(self) -> str:
        return Path(self.name).stem


def _index_by_name(files: Iterable[Path]) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    by_name = {f.name: f for f in files}
    by_stem: dict[str, list[Path]] = {}
    for f in by_name.values():
        by_stem.setdefault(f.stem, []).append(f)
    return by_name, by_stem


def _find_alpha(name: str, by_name: dict, by_stem: dict) -> Path | None:
    """Alpha for foreground file ``name``: the same file name, else the only one with the
    same stem (fg ``x.jpg`` with alpha ``x.png``)."""
    if name in by_name:
        return by_name[name]
    same_stem = by_stem.get(Path(name).stem, [])
    return same_stem[0] if len(same_stem) == 1 else None


def _as_list(x: PathLike | Sequence[PathLike] | None) -> list[Path]:
    if x is None:
        return []
    if isinstance(x, str | os.PathLike):
        return [Path(x)]
    return [Path(p) for p in x]


def match_foregrounds(
    fg_dirs: PathLike | Sequence[PathLike],
    alpha_dirs: PathLike | Sequence[PathLike],
    fg_names: PathLike | None = None,
    check_sizes: bool = True,
) -> list[Foreground]:
    """Pair foregrounds with alphas by file name, in folder pairs (fg_dirs[i], alpha_dirs[i]).

    Without ``fg_names`` every image of the fg folders is used, and every fg must have an
    alpha and every alpha a fg. With ``fg_names`` (a file, one fg file name a line) exactly
    the listed foregrounds are used, in list order. Header sizes of fg and alpha must agree.
    """
    fgd, ald = _as_list(fg_dirs), _as_list(alpha_dirs)
    if not fgd or len(fgd) != len(ald):
        raise DataSourceError(
            f"need as many alpha folders as foreground folders, got {len(fgd)} fg folder(s) "
            f"{[str(p) for p in fgd]} and {len(ald)} alpha folder(s) {[str(p) for p in ald]}"
        )
    problems: list[str] = []
    pairs: list[tuple[list[Path], dict, dict, Path]] = []
    for fdir, adir in zip(fgd, ald, strict=True):
        fgs = list_images(fdir, "foreground")
        by_name, by_stem = _index_by_name(list_images(adir, "alpha"))
        pairs.append((fgs, by_name, by_stem, adir))

    chosen: list[tuple[str, Path, Path]] = []
    if fg_names is None:
        seen: dict[str, Path] = {}
        for fgs, by_name, by_stem, adir in pairs:
            used: set[Path] = set()
            for f in fgs:
                a = _find_alpha(f.name, by_name, by_stem)
                if a is None:
                    problems.append(f"foreground {f} has no alpha of the same name in {adir}")
                    continue
                if f.name in seen:
                    problems.append(f"foreground name {f.name} appears twice: {seen[f.name]}, {f}")
                    continue
                seen[f.name] = f
                used.add(a)
                chosen.append((f.name, f, a))
            fdir = fgs[0].parent
            for a in sorted(set(by_name.values()) - used):
                problems.append(f"alpha {a} has no foreground of the same name in {fdir}")
    else:
        names = read_name_list(fg_names, "foreground name")
        fg_index = [
            (_index_by_name(fgs)[0], by_name, by_stem, adir)
            for fgs, by_name, by_stem, adir in pairs
        ]
        for line, name in enumerate(names, 1):
            hit = next(((fi[name], bn, bs, ad) for fi, bn, bs, ad in fg_index if name in fi), None)
            if hit is None:
                where = ", ".join(str(p) for p in fgd)
                problems.append(f"{fg_names}:{line}: foreground {name} not found in {where}")
                continue
            f, by_name, by_stem, adir = hit
            a = _find_alpha(name, by_name, by_stem)
            if a is None:
                problems.append(f"{fg_names}:{line}: foreground {f} has no alpha in {adir}")
                continue
            chosen.append((name, f, a))
    raise_problems(problems, "foreground/alpha folders")

    out: list[Foreground] = []
    for name, f, a in chosen:
        try:
            hw = image_size(f)
            ahw = image_size(a) if check_sizes else hw
        except ImageReadError as e:
            problems.append(str(e))
            continue
        if hw != ahw:
            problems.append(
                f"foreground {f} is {hw[1]}x{hw[0]} but its alpha {a} is {ahw[1]}x{ahw[0]} "
                "(W x H); they must match pixel for pixel"
            )
            continue
        out.append(Foreground(name, f, a, hw))
    raise_problems(problems, "foreground/alpha images")
    return out


def find_backgrounds(
    bg_dir: PathLike, bg_names: PathLike | None = None, check: bool = True
) -> list[Path]:
    """Background files: those named by ``bg_names`` (in list order), else every image in
    ``bg_dir``. ``check`` reads each header (cheap) to catch empty or non-image files."""
    bdir = Path(bg_dir)
    files = list_images(bdir, "background")
    problems: list[str] = []
    if bg_names is None:
        out = files
    else:
        present = {f.name: f for f in files}
        out = []
        for line, name in enumerate(read_name_list(bg_names, "background name"), 1):
            if name in present:
                out.append(present[name])
            else:
                problems.append(f"{bg_names}:{line}: background {name} not found in {bdir}")
    raise_problems(problems, "background name list")
    if check:
        for f in dict.fromkeys(out):
            try:
                image_size(f)
            except ImageReadError as e:
                problems.append(str(e))
        raise_problems(problems, "background images")
    return out


# --- sources and the train/validation split --------------------------------------------------
@dataclass
class MattingSources:
    """Foregrounds, backgrounds and the (foreground, background) pairs of one data split.

    backgrounds: distinct files (a name list may repeat one). pairs: int64 (N, 2) of
    (index into foregrounds, index into backgrounds), in name-list order when there are
    lists; a dataset built on these sources has N samples per epoch.
    """

    foregrounds: list[Foreground]
    backgrounds: list[Path]
    pairs: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.pairs)

    def select(self, fg_indices: Sequence[int]) -> MattingSources:
        """Only the given foregrounds (renumbered in the given order) and their pairs."""
        keep = [int(i) for i in fg_indices]
        remap = np.full(len(self.foregrounds), -1, np.int64)
        remap[keep] = np.arange(len(keep))
        rows = [self.pairs[self.pairs[:, 0] == i] for i in keep]
        pairs = np.concatenate(rows) if rows else np.zeros((0, 2), np.int64)
        pairs = np.stack([remap[pairs[:, 0]], pairs[:, 1]], axis=1) if len(pairs) else pairs
        return replace(self, foregrounds=[self.foregrounds[i] for i in keep], pairs=pairs)

    def split(self, val_fraction: float, seed: int = 0) -> tuple[MattingSources, MattingSources]:
        """Split by foreground: no foreground is in both parts.

        Deterministic in (foreground names, val_fraction, seed). With val_fraction > 0 and at
        least two foregrounds, validation gets at least one and training keeps at least one.
        """
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        n = len(self.foregrounds)
        n_val = round(n * val_fraction)
        if val_fraction > 0 and n >= 2:
            n_val = min(max(n_val, 1), n - 1)
        order = sorted(range(n), key=lambda i: self.foregrounds[i].name)
        perm = np.random.default_rng(np.random.SeedSequence([seed, 0x5B17])).permutation(n)
        shuffled = [order[p] for p in perm]
        val = sorted(shuffled[:n_val])
        train = sorted(shuffled[n_val:])
        return self.select(train), self.select(val)


def make_pairs(
    n_fg: int, n_bg: int, bg_per_fg: int, seed: int = 0, listed: bool = False
) -> np.ndarray:
    """(fg, bg) pairs, int64 (n_fg * bg_per_fg, 2).

    listed=True: the Adobe name-list rule, foreground i with backgrounds
    bg_per_fg*i .. bg_per_fg*i + bg_per_fg-1. Otherwise each foreground draws bg_per_fg
    backgrounds at random (without repeats while there are enough), fixed by ``seed``.
    """
    fg = np.repeat(np.arange(n_fg, dtype=np.int64), bg_per_fg)
    if listed:
        return np.stack([fg, np.arange(n_fg * bg_per_fg, dtype=np.int64)], axis=1)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xB6]))
    bg = np.concatenate(
        [rng.choice(n_bg, size=bg_per_fg, replace=bg_per_fg > n_bg) for _ in range(n_fg)]
    ).astype(np.int64)
    return np.stack([fg, bg], axis=1)


def find_sources(
    fg_dirs: PathLike | Sequence[PathLike],
    alpha_dirs: PathLike | Sequence[PathLike],
    bg_dir: PathLike,
    *,
    fg_names: PathLike | None = None,
    bg_names: PathLike | None = None,
    bg_per_fg: int = 100,
    seed: int = 0,
    check_images: bool = True,
) -> MattingSources:
    """Find and check every training file; see the module docstring for the layouts.

    With both name lists the pairing is the Adobe rule (fg i with backgrounds k*i..k*i+k-1,
    k = lines in bg list / lines in fg list, 100 for the release); otherwise each
    foreground draws ``bg_per_fg`` random backgrounds (fixed by ``seed``).
    """
    if bg_names is not None and fg_names is None:
        raise DataSourceError(
            f"background list {bg_names} given without a foreground list: its order only "
            "means something next to training_fg_names.txt; pass both or neither"
        )
    fgs = match_foregrounds(fg_dirs, alpha_dirs, fg_names)
    bgs = find_backgrounds(bg_dir, bg_names, check=check_images)
    if bg_names is not None:
        k, rest = divmod(len(bgs), len(fgs))
        if k == 0 or rest:
            raise DataSourceError(
                f"{bg_names} has {len(bgs)} lines for {len(fgs)} foregrounds in {fg_names}: "
                "it needs the same number of backgrounds for every foreground "
                "(100 per foreground for the Adobe training lists)"
            )
        pairs = make_pairs(len(fgs), len(bgs), k, listed=True)
        # A list may name a background more than once: keep each file once.
        unique = list(dict.fromkeys(bgs))
        where = {b: i for i, b in enumerate(unique)}
        pairs[:, 1] = [where[bgs[j]] for j in pairs[:, 1]]
        bgs = unique
    else:
        if bg_per_fg < 1:
            raise ValueError(f"bg_per_fg must be >= 1, got {bg_per_fg}")
        pairs = make_pairs(len(fgs), len(bgs), bg_per_fg, seed=seed)
    return MattingSources(fgs, bgs, pairs)


@dataclass
class AdobeLayout:
    """Folders found by :func:`find_layout`; pass to :func:`find_sources`."""

    fg_dirs: list[Path]
    alpha_dirs: list[Path]
    bg_dir: Path
    fg_names: Path | None = None
    bg_names: Path | None = None
    val_dir: Path | None = None  # a Composition-1k-layout validation set next to the data
    test_dir: Path | None = None  # a Composition-1k-layout test set next to the data


def find_layout(root: PathLike, bg_dir: PathLike | None = None) -> AdobeLayout:
    """Recognise an Adobe-style folder (module docstring) and return its parts."""
    r = Path(root)
    if not r.is_dir():
        raise DataSourceError(f"data root {r} does not exist or is not a folder")
    top = r
    if (r / "Combined_Dataset").is_dir():
        r = r / "Combined_Dataset"
    if (r / "Training_set").is_dir():
        r = r / "Training_set"
    fg_dirs: list[Path] = []
    alpha_dirs: list[Path] = []
    for sub in ("Adobe-licensed images", "Other"):
        if (r / sub).is_dir():
            fg_dirs.append(r / sub / "fg")
            alpha_dirs.append(r / sub / "alpha")
    if not fg_dirs:
        for base in (r / "trainval", r):
            if (base / "fg").is_dir():
                alpha = next((base / n for n in ("alpha", "mask") if (base / n).is_dir()), None)
                fg_dirs, alpha_dirs = [base / "fg"], [alpha or base / "alpha"]
                break
    if not fg_dirs:
        raise DataSourceError(
            f"{top}: no foreground folders found; expected 'Adobe-licensed images/fg' and/or "
            "'Other/fg' (Adobe release, inside Combined_Dataset/Training_set), 'trainval/fg' "
            "or 'fg' (each with an 'alpha' folder beside it)"
        )
    if bg_dir is None:
        cands = [p / n for p in dict.fromkeys((top, r)) for n in ("bg", "train2014")]
        bg = next((c for c in cands if c.is_dir()), None)
        if bg is None:
            raise DataSourceError(
                f"{top}: no backgrounds folder ({', '.join(str(c) for c in cands)}); "
                "pass the COCO train2014 folder as the backgrounds folder"
            )
    else:
        bg = Path(bg_dir)
    fg_list, bg_list = r / "training_fg_names.txt", r / "training_bg_names.txt"

    def c1k(p: Path) -> Path | None:
        return p if (p / "merged").is_dir() else None

    return AdobeLayout(
        fg_dirs,
        alpha_dirs,
        bg,
        fg_list if fg_list.is_file() else None,
        bg_list if bg_list.is_file() else None,
        c1k(top / "val"),
        c1k(top / "test"),
    )


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
