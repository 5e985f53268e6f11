"""Where training images come from: foreground/alpha pairs, backgrounds, name lists and the
train/validation split.

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

The decoded cache that makes reading them cheap is ``data/cache.py``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root

import numpy as np

from utils.image_io import IMAGE_EXTS, ImageReadError, image_size

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
