"""Test and validation sets: loaders for three folder layouts, the Composition-1k builder,
and the fixed validation set the trainer uses on real data.

Every loader returns an :class:`ExampleSet`: a lazy ``Sequence[MattingExample]`` that holds
file paths (checked when it is built) and reads the images only when indexed, so a
1000-image test set costs no memory until used. An example is::

    MattingExample(name: str,                 # file stem, e.g. "GT01" or "boy_3"
                   image: uint8 (H, W, 3) RGB,
                   trimap: uint8 (H, W) in {0, 128, 255},
                   alpha: float32 (H, W) in [0, 1], or None when the set has no ground truth)

Layouts (:func:`open_testset` recognises each):

* Composition-1k (:func:`load_composition1k`): ``root/merged/NAME.png``,
  ``root/alpha_copy/NAME.png`` (or ``root/alpha``, also one alpha per foreground
  ``alpha/FG.png`` for ``NAME = FG_k``), ``root/trimaps/NAME.png``; NAME = ``{fg_stem}_{k}``.
* alphamatting.com (:func:`load_alphamatting`): ``input_training_lowres/``,
  ``gt_training_lowres/`` (RGB alpha: one channel is read),
  ``trimap_training_lowres/Trimap1|Trimap2/`` (highres and test variants too).
* plain folders (:func:`load_folders`): images, trimaps, optional alphas matched by stem.

Builders: :func:`build_composition1k` (the official test-set rule) and
:func:`build_validation_set` (composites from held-out training foregrounds, fixed seed).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root

import numpy as np

from data import compose
from data.cache import DecodingStore
from data.sources import (
    DataSourceError,
    MattingSources,
    list_images,
    raise_problems,
    read_name_list,
)
from utils.image_io import ImageReadError, image_size, read_alpha, read_gray, read_rgb, write_png

PathLike = str | os.PathLike


@dataclass(frozen=True)
class MattingExample:
    """One test image; see the module docstring for shapes and ranges."""

    name: str
    image: np.ndarray
    trimap: np.ndarray
    alpha: np.ndarray | None


@dataclass(frozen=True)
class ExampleFiles:
    """Where one example's files are."""

    name: str
    image: Path
    trimap: Path
    alpha: Path | None = None


def read_example(files: ExampleFiles) -> MattingExample:
    """Read one example; raises :class:`ImageReadError` when the sizes disagree."""
    image = read_rgb(files.image)
    trimap = compose.quantize_trimap(read_gray(files.trimap))
    alpha = read_alpha(files.alpha) if files.alpha is not None else None
    for other, path in ((trimap, files.trimap), (alpha, files.alpha)):
        if other is not None and other.shape[:2] != image.shape[:2]:
            raise ImageReadError(
                f"{path} is {other.shape[1]}x{other.shape[0]} but image {files.image} is "
                f"{image.shape[1]}x{image.shape[0]} (W x H); they must match"
            )
    return MattingExample(files.name, image, trimap, alpha)


class ExampleSet(Sequence[MattingExample]):
    """Lazy sequence of :class:`MattingExample`: indexing reads the files.

    ``kind`` names the layout ("composition1k", "alphamatting", "folders"); ``root`` is the
    folder it was loaded from; ``files`` the paths; ``names`` the example names.
    """

    def __init__(self, files: Sequence[ExampleFiles], root: Path | None = None, kind: str = ""):
        self.files = list(files)
        self.root = root
        self.kind = kind

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return ExampleSet(self.files[i], self.root, self.kind)
        return read_example(self.files[i])

    def __iter__(self) -> Iterator[MattingExample]:
        for f in self.files:
            yield read_example(f)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.files]

    @property
    def has_alpha(self) -> bool:
        return all(f.alpha is not None for f in self.files)

    def __repr__(self) -> str:
        return f"ExampleSet({self.kind or 'examples'}, {len(self)} images, root={self.root})"


# --- matching files --------------------------------------------------------------------------
def _by_stem(files: list[Path], what: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    problems = []
    for f in files:
        if f.stem in out:
            problems.append(f"{what}: two files for {f.stem}: {out[f.stem].name} and {f.name}")
        out[f.stem] = f
    raise_problems(problems, f"{what} folder {files[0].parent}")
    return out


def _check_sizes(files: list[ExampleFiles]) -> None:
    problems = []
    for ex in files:
        try:
            hw = image_size(ex.image)
            for p in (ex.trimap, ex.alpha):
                if p is not None and image_size(p) != hw:
                    problems.append(
                        f"{p} is {image_size(p)[::-1]} but image {ex.image} is {hw[::-1]} (W, H)"
                    )
        except ImageReadError as e:
            problems.append(str(e))
    raise_problems(problems, "test images")


def load_folders(
    image_dir: PathLike,
    trimap_dir: PathLike,
    alpha_dir: PathLike | None = None,
    *,
    kind: str = "folders",
    check: bool = True,
) -> ExampleSet:
    """Images, trimaps and (optionally) alphas matched by file stem.

    Every image needs a trimap (and an alpha when ``alpha_dir`` is given) and vice versa;
    ``check`` compares header sizes. Errors list every problem with its file.
    """
    images = _by_stem(list_images(image_dir, "image"), "image")
    trimaps = _by_stem(list_images(trimap_dir, "trimap"), "trimap")
    alphas = _by_stem(list_images(alpha_dir, "alpha"), "alpha") if alpha_dir else None
    problems = [
        f"image {p} has no trimap in {trimap_dir}" for s, p in images.items() if s not in trimaps
    ]
    problems += [
        f"trimap {p} has no image in {image_dir}" for s, p in trimaps.items() if s not in images
    ]
    if alphas is not None:
        problems += [
            f"image {p} has no alpha in {alpha_dir}" for s, p in images.items() if s not in alphas
        ]
        problems += [
            f"alpha {p} has no image in {image_dir}" for s, p in alphas.items() if s not in images
        ]
    raise_problems(problems, f"test set {image_dir}")
    files = [
        ExampleFiles(s, images[s], trimaps[s], alphas[s] if alphas is not None else None)
        for s in sorted(images)
    ]
    if check:
        _check_sizes(files)
    return ExampleSet(files, Path(image_dir).parent, kind)


def load_composition1k(root: PathLike, check: bool = True) -> ExampleSet:
    """Composition-1k layout: ``merged/``, ``alpha_copy/`` (or ``alpha/``), ``trimaps/``.

    An ``alpha`` folder may hold one matte per foreground (``FG.png`` for ``FG_k.png``
    composites), as in the Adobe Test_set; without any alpha folder, alphas are None.
    """
    r = Path(root)
    if not (r / "merged").is_dir():
        raise DataSourceError(f"{r}: no 'merged' folder; not a Composition-1k layout folder")
    adir = next((r / n for n in ("alpha_copy", "alpha") if (r / n).is_dir()), None)
    tdir = next((r / n for n in ("trimaps", "trimap") if (r / n).is_dir()), None)
    if tdir is None:
        raise DataSourceError(
            f"{r}: no 'trimaps' folder; copy the official Composition-1k trimaps "
            "(Test_set/Adobe-licensed images/trimaps) into it"
        )
    merged = _by_stem(list_images(r / "merged", "merged"), "merged")
    trimaps = _by_stem(list_images(tdir, "trimap"), "trimap")
    alphas = _by_stem(list_images(adir, "alpha"), "alpha") if adir else None
    problems, files = [], []
    for s in sorted(merged):
        t = trimaps.get(s)
        if t is None:
            problems.append(f"merged {merged[s]} has no trimap {s}.png in {tdir}")
        a = None
        if alphas is not None:
            fg_stem = re.sub(r"_\d+$", "", s)
            a = alphas.get(s) or alphas.get(fg_stem)
            if a is None:
                problems.append(f"merged {merged[s]} has no alpha {s} (or {fg_stem}) in {adir}")
        files.append(ExampleFiles(s, merged[s], t, a))
    raise_problems(problems, f"Composition-1k folder {r}")
    if check:
        _check_sizes(files)
    return ExampleSet(files, r, "composition1k")


def load_alphamatting(root: PathLike, trimap: str = "Trimap1", check: bool = True) -> ExampleSet:
    """alphamatting.com layout; ``trimap`` is "Trimap1", "Trimap2" (or "Trimap3" on the
    test set). Training folders give alphas; the test folders (no ground truth) do not."""
    r = Path(root)
    found = next(
        (
            (split, res)
            for res in ("lowres", "highres")
            for split in ("training_", "")
            if (r / f"input_{split}{res}").is_dir()
        ),
        None,
    )
    if found is None:
        raise DataSourceError(
            f"{r}: not an alphamatting.com folder (no input_training_lowres, "
            "input_training_highres, input_lowres or input_highres)"
        )
    split, res = found
    inp = r / f"input_{split}{res}"
    tri_base = r / f"trimap_{split}{res}"
    tdir = tri_base / trimap
    if not tdir.is_dir():
        have = sorted(p.name for p in tri_base.iterdir() if p.is_dir()) if tri_base.is_dir() else []
        raise DataSourceError(f"{tdir} does not exist; trimap sets found: {have or 'none'}")
    gt = r / f"gt_{split}{res}"
    return load_folders(inp, tdir, gt if gt.is_dir() else None, kind="alphamatting", check=check)


_SYNTHETIC = {"synthetic": "test", "synthetic-test": "test", "synthetic-val": "val"}


def open_testset(path_or_name: PathLike, *, trimap: str = "Trimap1") -> ExampleSet:
    """Open a test set, recognising its layout.

    ``path_or_name``: a folder in one of the module's layouts, or "synthetic" /
    "synthetic-test" / "synthetic-val" for the built-in set (generated on first use).
    Plain folders are recognised by sub-folder names: images|image|input|merged,
    trimaps|trimap, and optional alphas|alpha|gt.
    """
    key = str(path_or_name)
    if key in _SYNTHETIC:
        try:
            from data.synthetic import ensure_synthetic
        except ImportError as e:
            raise DataSourceError(f"{key}: the built-in synthetic set is unavailable ({e})") from e
        return load_composition1k(ensure_synthetic() / _SYNTHETIC[key])
    p = Path(path_or_name)
    if not p.is_dir():
        raise DataSourceError(
            f"test set {p} does not exist (expected a folder, or one of {sorted(_SYNTHETIC)})"
        )
    if (p / "merged").is_dir() and any((p / n).is_dir() for n in ("trimaps", "trimap")):
        return load_composition1k(p)
    if any(
        (p / f"input_{s}{r}").is_dir() for s in ("training_", "") for r in ("lowres", "highres")
    ):
        return load_alphamatting(p, trimap)

    def first(*names: str) -> Path | None:
        return next((p / n for n in names if (p / n).is_dir()), None)

    img, tri = first("images", "image", "input", "merged"), first("trimaps", "trimap")
    if img is not None and tri is not None:
        return load_folders(img, tri, first("alphas", "alpha", "gt", "alpha_copy"))
    raise DataSourceError(
        f"{p}: layout not recognised; expected Composition-1k (merged/, alpha_copy/, trimaps/), "
        "alphamatting.com (input_training_lowres/, gt_training_lowres/, "
        "trimap_training_lowres/Trimap1/) or plain folders (images/, trimaps/[, alphas/])"
    )


# --- builders --------------------------------------------------------------------------------
def _fresh_dir(out_dir: Path) -> Path:
    """A temporary sibling of ``out_dir`` to build into (renamed into place when done)."""
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def build_composition1k(
    fg_dir: PathLike,
    alpha_dir: PathLike,
    bg_dir: PathLike,
    fg_names_file: PathLike,
    bg_names_file: PathLike,
    out_dir: PathLike,
    *,
    trimap_dir: PathLike | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Composite the Composition-1k test set by the official rule; returns ``out_dir``.

    Foreground i of ``fg_names_file`` (50 lines) goes on the backgrounds on lines
    k*i .. k*i+k-1 of ``bg_names_file`` (k = 20 for the 1000 VOC names). Each background is
    upscaled (bicubic, ceil of the larger ratio) only when smaller than the foreground, its
    top-left fg-sized window is used, and alpha*fg + (1-alpha)*bg is truncated to uint8 as
    ``Composition_code.py`` does. Writes ``merged/{fg_stem}_{k}.png`` and
    ``alpha_copy/{fg_stem}_{k}.png`` (k = 0..19 per foreground). The official trimaps
    (``Test_set/Adobe-licensed images/trimaps``) are copied into ``trimaps/`` when
    ``trimap_dir`` is given; otherwise copy them there yourself: they are part of the
    benchmark, not something to regenerate. Existing outputs are kept unless ``overwrite``.
    """
    out = Path(out_dir)
    fgd, ald, bgd = Path(fg_dir), Path(alpha_dir), Path(bg_dir)
    fg_names = read_name_list(fg_names_file, "test foreground name")
    bg_names = read_name_list(bg_names_file, "test background name")
    k, rest = divmod(len(bg_names), len(fg_names))
    if k == 0 or rest:
        raise DataSourceError(
            f"{bg_names_file} has {len(bg_names)} lines for {len(fg_names)} foregrounds: "
            "need the same number per foreground (20 for Composition-1k)"
        )
    fgs = {f.name: f for f in list_images(fgd, "test foreground")}
    alphas = {f.name: f for f in list_images(ald, "test alpha")}
    alpha_stems = {f.stem: f for f in alphas.values()}
    bgs = {f.name: f for f in list_images(bgd, "test background")}
    problems = []
    jobs = []  # (fg path, alpha path, [(out name, bg path)])
    for i, name in enumerate(fg_names):
        f = fgs.get(name)
        a = alphas.get(name) or alpha_stems.get(Path(name).stem)
        if f is None:
            problems.append(f"{fg_names_file}:{i + 1}: foreground {name} not in {fgd}")
        if a is None:
            problems.append(f"{fg_names_file}:{i + 1}: alpha for {name} not in {ald}")
        comps = []
        for j in range(k):
            line = k * i + j
            b = bgs.get(bg_names[line])
            if b is None:
                problems.append(
                    f"{bg_names_file}:{line + 1}: background {bg_names[line]} not in {bgd}"
                )
            comps.append((f"{Path(name).stem}_{j}", b))
        jobs.append((f, a, comps))
    if trimap_dir is not None:
        tdir = Path(trimap_dir)
        for _, _, comps in jobs:
            problems += [
                f"official trimap {tdir / (n + '.png')} is missing"
                for n, _ in comps
                if not (tdir / f"{n}.png").is_file()
            ]
    raise_problems(problems, "Composition-1k inputs")

    it = jobs
    if progress:
        try:
            from tqdm import tqdm

            it = tqdm(jobs, desc="Composition-1k", unit="fg", file=sys.stderr)
        except ImportError:
            pass
    for f, a, comps in it:
        todo = [
            (n, b)
            for n, b in comps
            if overwrite
            or not (
                (out / "merged" / f"{n}.png").is_file()
                and (out / "alpha_copy" / f"{n}.png").is_file()
            )
        ]
        if todo:
            fg, alpha = read_rgb(f), read_gray(a)
            if fg.shape[:2] != alpha.shape:
                raise DataSourceError(f"foreground {f} and alpha {a} differ in size")
            for n, b in todo:
                merged = compose.official_composite(fg, alpha, read_rgb(b))
                write_png(out / "merged" / f"{n}.png", merged)
                write_png(out / "alpha_copy" / f"{n}.png", alpha)
        if trimap_dir is not None:
            for n, _ in comps:
                dst = out / "trimaps" / f"{n}.png"
                if overwrite or not dst.is_file():
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(Path(trimap_dir) / f"{n}.png", dst)
    if trimap_dir is None and not (out / "trimaps").is_dir():
        print(
            f"Composition-1k written to {out}; now copy the official trimaps "
            f"(Test_set/Adobe-licensed images/trimaps/*.png) into {out / 'trimaps'}",
            file=sys.stderr,
        )
    return out


VALSET_VERSION = 1


def validation_manifest(
    sources: MattingSources,
    n: int,
    seed: int,
    size: int | None,
    k_range: tuple[int, int] = (1, 30),
    cut_sizes: Sequence[int] | None = None,
) -> dict:
    """What a validation set is made of (written beside it as ``valset.json``)."""
    if n < 1 or len(sources) == 0:
        raise DataSourceError(
            f"a validation set needs n >= 1 and at least one (fg, bg) pair "
            f"(n={n}, pairs={len(sources)}); use more foregrounds or a larger val_fraction"
        )
    picks = [(i * len(sources)) // n for i in range(n)]
    # Names and byte sizes: a moved data folder keeps its set, changed files do not.
    pairs = [
        [
            sources.foregrounds[int(f)].name,
            sources.foregrounds[int(f)].fg_path.stat().st_size,
            sources.foregrounds[int(f)].alpha_path.stat().st_size,
            sources.backgrounds[int(b)].name,
            sources.backgrounds[int(b)].stat().st_size,
        ]
        for f, b in sources.pairs[picks]
    ]
    return {
        "version": VALSET_VERSION,
        "n": n,
        "seed": seed,
        "size": size,
        "k_range": list(k_range),
        "cut_sizes": list(cut_sizes) if cut_sizes else None,
        "picks": picks,
        "pairs": pairs,
    }


def manifest_digest(manifest: dict) -> str:
    return hashlib.sha1(json.dumps(manifest, sort_keys=True).encode()).hexdigest()[:12]


def build_validation_set(
    sources: MattingSources,
    out_dir: PathLike,
    n: int = 64,
    seed: int = 0,
    size: int | None = 320,
    *,
    k_range: tuple[int, int] = (1, 30),
    cut_sizes: Sequence[int] | None = None,
    store=None,
) -> Path:
    """Write a fixed validation set in the Composition-1k layout (once); returns ``out_dir``.

    ``n`` composites spread evenly over the (fg, bg) pairs of ``sources`` (use the held-out
    split: :meth:`MattingSources.split`). Example i draws from its own random stream
    (seed, i), so the set depends only on the sources, n, seed and size.
    size=int: a training-style sample (crop around an unknown pixel, size x size, trimap
    from the alpha, merged rounded to uint8); size=None: the whole foreground on a random
    window of its background (official rule, truncated) with a trimap of the whole alpha.
    A folder already holding the same set (``valset.json``) is reused; one holding a
    different set is an error.
    """
    out = Path(out_dir)
    manifest = validation_manifest(sources, n, seed, size, k_range, cut_sizes)
    mpath = out / "valset.json"
    if mpath.is_file():
        try:
            old = json.loads(mpath.read_text())
        except ValueError:
            old = None
        if old == manifest and len(list_images(out / "merged", "merged")) == n:
            return out
        raise DataSourceError(
            f"{out} already holds a different validation set (see {mpath}); delete the "
            "folder or choose another one"
        )
    if out.exists() and any(out.iterdir()):
        raise DataSourceError(f"{out} is not empty and holds no valset.json; choose another folder")
    store = store or DecodingStore()
    tmp = _fresh_dir(out)
    counts: dict[str, int] = {}
    last: tuple[int, object] | None = None
    for i, pick in enumerate(manifest["picks"]):
        fi, bi = (int(x) for x in sources.pairs[pick])
        fg = sources.foregrounds[fi]
        if last is None or last[0] != fi:  # consecutive picks share a foreground
            last = (fi, store.foreground(fg))
        arrays = last[1]
        bg = np.asarray(store.background(sources.backgrounds[bi]))
        rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7A1, i]))
        if size is None:
            fga = np.asarray(arrays.fga)
            alpha = np.ascontiguousarray(fga[..., 3])
            hw = alpha.shape
            window = compose.random_window(compose.fitted_size(bg.shape[:2], hw), hw, rng)
            trimap = compose.trimap_from_alpha(alpha, rng, k_range)
            merged = compose.official_composite(fga[..., :3], alpha, bg, window)
        else:
            s = compose.make_sample(
                arrays.fga,
                bg,
                rng,
                crop_size=size,
                cut_sizes=cut_sizes,
                k_range=k_range,
                candidates=arrays.candidates,
                dist2=arrays.dist2,
            )
            merged = np.clip(np.rint(s.merged), 0, 255).astype(np.uint8)
            alpha = np.rint(s.alpha * 255.0).astype(np.uint8)
            trimap = s.trimap
        k = counts.get(fg.stem, 0)
        counts[fg.stem] = k + 1
        name = f"{fg.stem}_{k}.png"
        write_png(tmp / "merged" / name, merged)
        write_png(tmp / "alpha_copy" / name, alpha)
        write_png(tmp / "trimaps" / name, trimap)
    (tmp / "valset.json").write_text(json.dumps(manifest, indent=1))
    try:
        if out.exists():
            out.rmdir()  # empty (checked above)
        os.replace(tmp, out)
    except OSError:
        # Another process (e.g. another DDP rank) finished the same set first.
        shutil.rmtree(tmp, ignore_errors=True)
        if not (mpath.is_file() and json.loads(mpath.read_text()) == manifest):
            raise
    return out


# --- command line ----------------------------------------------------------------------------
OFFICIAL_FOREGROUNDS, OFFICIAL_PER_FG = 50, 20  # Composition-1k: 50 x 20 VOC backgrounds


def build_parser():
    """``python data/testsets.py composition1k ...``'s flags."""
    from utils.cli import OneLineParser, existing, number, output

    folder, listing = existing("dir", convert=Path), existing("file", convert=Path)
    p = OneLineParser(prog="python data/testsets.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser(
        "composition1k",
        help="composite the Composition-1k test set by the official rule",
        description="Composite the Composition-1k test set as the dataset's own compositing "
        "code does: foreground i of --fg-names on lines 20i..20i+19 of --bg-names, each "
        "background upscaled (bicubic) only when smaller than the foreground, its top-left "
        "window, the composite truncated to 8 bits; the official trimaps copied beside. "
        "Every count and file is checked before anything is written. Then: "
        "python evaluate.py --checkpoint runs/NAME --testset OUT",
    )
    T = "Combined_Dataset/Test_set"
    c.add_argument("--fg-dir", type=folder, required=True, help=f"{T}/Adobe-licensed images/fg")
    c.add_argument(
        "--alpha-dir", type=folder, required=True, help=f"{T}/Adobe-licensed images/alpha"
    )
    c.add_argument("--bg-dir", type=folder, required=True, help="PASCAL VOC 2012 JPEGImages")
    c.add_argument("--fg-names", type=listing, required=True, help=f"{T}/test_fg_names.txt")
    c.add_argument("--bg-names", type=listing, required=True, help=f"{T}/test_bg_names.txt")
    c.add_argument(
        "--trimap-dir",
        type=folder,
        required=True,
        help=f"the official trimaps, {T}/Adobe-licensed images/trimaps (never regenerate them)",
    )
    c.add_argument("--out", type=output("dir", Path), required=True, help="the test set's folder")
    c.add_argument(
        "--per-fg",
        type=number(int, 1),
        default=OFFICIAL_PER_FG,
        help=f"backgrounds per foreground (official: {OFFICIAL_PER_FG})",
    )
    c.add_argument("--overwrite", action="store_true", help="rewrite files that exist")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python data/testsets.py composition1k ...``: build the test set by the official rule."""
    args = build_parser().parse_args(argv)
    try:
        fg_names = read_name_list(args.fg_names, "test foreground name")
        bg_names = read_name_list(args.bg_names, "test background name")
        want = len(fg_names) * args.per_fg
        if len(bg_names) != want:
            raise DataSourceError(
                f"{args.bg_names} has {len(bg_names)} lines; {len(fg_names)} foregrounds x "
                f"{args.per_fg} backgrounds need {want} (the official lists: "
                f"{OFFICIAL_FOREGROUNDS} x {OFFICIAL_PER_FG} = "
                f"{OFFICIAL_FOREGROUNDS * OFFICIAL_PER_FG}); check the two name lists"
            )
        if (len(fg_names), args.per_fg) != (OFFICIAL_FOREGROUNDS, OFFICIAL_PER_FG):
            print(
                f"note: {len(fg_names)} foregrounds x {args.per_fg} backgrounds is not the "
                f"official {OFFICIAL_FOREGROUNDS} x {OFFICIAL_PER_FG}: numbers on this set are "
                "not Composition-1k numbers",
                file=sys.stderr,
            )
        out = build_composition1k(
            args.fg_dir, args.alpha_dir, args.bg_dir, args.fg_names, args.bg_names, args.out,
            trimap_dir=args.trimap_dir, overwrite=args.overwrite,
        )  # fmt: skip
    except (DataSourceError, ImageReadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n = len(list((out / "merged").glob("*.png")))
    print(f"{out}: {n} composites, alphas and trimaps; score with: "
          f"python evaluate.py --checkpoint runs/NAME --testset {out}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
