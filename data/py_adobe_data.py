"""AdobeDataset: Adobe foregrounds composited online on COCO backgrounds, every epoch afresh.

``dataset[i]`` -> ``(data, label)``, float32 tensors in the layout of ``data/layout.py``:
``data`` (4, S, S) = ImageNet-normalised composite + scaled trimap; ``label`` (11, S, S) =
bg, fg, merged (0-255), alpha (0-1), unknown mask. ``merged == alpha*fg + (1-alpha)*bg``
holds on the returned tensors (float32 rounding only). How one sample is drawn:
``data/compose.py``; where the files come from: ``data/sources.py``; the decoded cache:
``data/cache.py``; the training set + validation set the trainer uses: ``data/trainval.py``.

Names: ``crop_size`` (``--crop-size``) is the side S of the samples the network sees;
``cut_sizes`` are the sides of the windows cut from the image before they are resized to S:
the paper's {320, 480, 640} for S = 320, by default (S, 1.5 S, 2 S) (e.g. 64, 96, 128 for
S = 64) so a small CPU run sees the same mix of context; pass ``cut_sizes`` to fix them.

Randomness: sample i of epoch e is drawn from ``SeedSequence([seed, e, i])``. The samples
therefore differ between epochs (:meth:`AdobeDataset.set_epoch`), are identical for the
same seed, and do not depend on the number of DataLoader workers or on which worker draws
them. The epoch lives in shared memory, so ``set_epoch`` also reaches persistent workers;
call it before iterating the loader. :func:`worker_init_fn` seeds Python/NumPy/torch per
worker for any other code that uses the global generators.

Self-test: ``python data/py_adobe_data.py [--root DIR] [--n 32] [--out grid.png]``; on the
built-in synthetic set when no data is given.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root

import numpy as np
import torch
from torch.utils.data import Dataset

from data import compose, layout
from data.cache import CachedStore, DecodingStore
from data.sources import DataSourceError, MattingSources, find_layout, find_sources

PathLike = str | os.PathLike


class AdobeDataset(Dataset):
    """Online compositing dataset over the (fg, bg) pairs of ``sources``.

    Args:
        sources: from :func:`data.sources.find_sources` (or a split of it).
        crop_size: side S of the returned samples (a multiple of 32 for the model).
        cut_sizes: sides of the windows cut before resizing to S, drawn uniformly;
            default (S, 1.5 S, 2 S).
        flip_p: probability of a horizontal flip.
        k_range: trimap erosion/dilation kernel sizes, inclusive (paper: 1-30).
        seed: base of every sample's random stream.
        cache: decode every image once into ``cache_dir`` (memory-mapped ``.npy``; built
            here, ``workers`` processes); False decodes the files for every sample.
        cache_backgrounds: also cache the backgrounds (~0.9 MB per COCO image).
        store: an object with ``foreground(fg)``/``background(path)`` (overrides cache).
    """

    def __init__(
        self,
        sources: MattingSources,
        *,
        crop_size: int = 320,
        cut_sizes: Sequence[int] | None = None,
        flip_p: float = 0.5,
        k_range: tuple[int, int] = (1, 30),
        seed: int = 0,
        cache: bool = True,
        cache_dir: PathLike | None = None,
        cache_backgrounds: bool = True,
        workers: int | None = None,
        progress: bool = True,
        store=None,
    ):
        if len(sources) == 0:
            raise DataSourceError("no (foreground, background) pairs: nothing to train on")
        if crop_size < 1:
            raise ValueError(f"crop_size must be positive, got {crop_size}")
        self.cut_sizes = tuple(int(c) for c in (cut_sizes or compose.default_cut_sizes(crop_size)))
        if min(self.cut_sizes) < 1:
            raise ValueError(f"cut sizes must be positive, got {self.cut_sizes}")
        compose.draw_kernel_sizes(np.random.default_rng(0), k_range)  # validates k_range
        self.sources = sources
        self.crop_size = int(crop_size)
        self.flip_p = float(flip_p)
        self.k_range = (int(k_range[0]), int(k_range[1]))
        self.seed = int(seed)
        if store is None:
            if cache:
                store = CachedStore(cache_dir, cache_backgrounds=cache_backgrounds)
                store.build(sources.foregrounds, sources.backgrounds, workers, progress)
            else:
                store = DecodingStore()
        self.store = store
        # Shared memory: set_epoch in the main process is seen by persistent workers too.
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    # --- randomness --------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Draw the samples of ``epoch`` from now on (call before iterating a DataLoader)."""
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch.item())

    def rng(self, index: int, epoch: int | None = None) -> np.random.Generator:
        """The random stream of sample ``index`` in ``epoch`` (default: the current one)."""
        e = self.epoch if epoch is None else int(epoch)
        return np.random.default_rng(np.random.SeedSequence([self.seed, e, int(index)]))

    # --- samples -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.sources)

    def _check_index(self, index: int) -> int:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"sample {index} out of range for {n} (fg, bg) pairs")
        return index % n

    def sample(self, index: int, epoch: int | None = None) -> compose.Sample:
        """Sample ``index`` as arrays (HWC, see :class:`data.compose.Sample`)."""
        index = self._check_index(index)
        fi, bi = (int(x) for x in self.sources.pairs[index])
        fg = self.store.foreground(self.sources.foregrounds[fi])
        bg = self.store.background(self.sources.backgrounds[bi])
        return compose.make_sample(
            fg.fga,
            bg,
            self.rng(index, epoch),
            crop_size=self.crop_size,
            cut_sizes=self.cut_sizes,
            k_range=self.k_range,
            flip_p=self.flip_p,
            candidates=fg.candidates,
            dist2=fg.dist2,
        )

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.sample(index)
        data = layout.make_data(s.merged, s.trimap)
        label = layout.make_label(s.bg, s.fg, s.merged, s.alpha, s.trimap)
        return torch.from_numpy(data), torch.from_numpy(label)

    def __repr__(self) -> str:
        return (
            f"AdobeDataset({len(self.sources.foregrounds)} fg, {len(self.sources.backgrounds)} "
            f"bg, {len(self)} pairs, crop {self.crop_size}, cut {self.cut_sizes}, "
            f"store {type(self.store).__name__})"
        )


def worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed Python/NumPy from torch's per-worker seed (which
    differs per worker and per epoch).

    AdobeDataset itself does not need it (its streams are per sample); other code using the
    global generators inside a worker does. It deliberately leaves OpenCV alone: calling
    ``cv2.setNumThreads`` in a worker forked from a process whose OpenCV thread pool is running
    deadlocks the worker. To keep workers single-threaded, call ``cv2.setNumThreads(1)`` in the
    main process before the loader starts (the trainer does).
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (seeding the legacy global generator is the point)


# --- self-test -------------------------------------------------------------------------------
def check_sample(data: torch.Tensor, label: torch.Tensor, size: int) -> list[str]:
    """Problems with one (data, label) pair: shapes, dtypes, ranges, the composite identity."""
    problems = []
    if tuple(data.shape) != (layout.DATA_CHANNELS, size, size):
        problems.append(f"data shape {tuple(data.shape)}")
    if tuple(label.shape) != (layout.LABEL_CHANNELS, size, size):
        problems.append(f"label shape {tuple(label.shape)}")
    if data.dtype != torch.float32 or label.dtype != torch.float32:
        problems.append(f"dtypes {data.dtype}, {label.dtype}")
    if problems:
        return problems
    if not (torch.isfinite(data).all() and torch.isfinite(label).all()):
        problems.append("non-finite values")
    a, fg, bg, merged = (
        layout.alpha(label),
        layout.fg(label),
        layout.bg(label),
        layout.merged(label),
    )
    err = (merged - (a * fg + (1 - a) * bg)).abs().max().item()
    if err > 1e-3:
        problems.append(f"composite identity off by {err:.2e}")
    for name, x, lo, hi in (("alpha", a, 0, 1), ("fg", fg, 0, 255), ("bg", bg, 0, 255)):
        if x.min() < lo or x.max() > hi:
            problems.append(f"{name} outside [{lo}, {hi}]")
    tri = layout.unscale_trimap(layout.trimap(data))
    if not torch.isin(tri.round(), torch.tensor([0.0, 128.0, 255.0])).all():
        problems.append("trimap values outside {0, 128, 255}")
    if not torch.equal(layout.mask(label) > 0.5, layout.unknown_from_scaled(layout.trimap(data))):
        problems.append("mask != (trimap == 128)")
    img = layout.denormalize_image(layout.image(data)) * 255.0
    if (img - merged).abs().max().item() > 1e-2:
        problems.append("data image != merged")
    return problems


def sample_grid(samples: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> np.ndarray:
    """uint8 RGB grid: one row per sample, columns image | trimap | alpha | fg | bg."""
    rows = []
    for data, label in samples:
        img = (layout.denormalize_image(layout.image(data)).clamp(0, 1) * 255).numpy()
        tri = layout.unscale_trimap(layout.trimap(data)).numpy()
        alpha = layout.alpha(label).numpy() * 255
        cols = [
            img,
            np.repeat(tri, 3, 0),
            np.repeat(alpha, 3, 0),
            layout.fg(label).numpy(),
            layout.bg(label).numpy(),
        ]
        row = np.concatenate([c.transpose(1, 2, 0) for c in cols], axis=1)
        rows.append(np.clip(np.rint(row), 0, 255).astype(np.uint8))
    return np.concatenate(rows, axis=0)


def build_parser() -> argparse.ArgumentParser:
    """The self-test's flags (``python data/py_adobe_data.py``)."""
    from utils.cli import OneLineParser, existing, number, output, port_arg

    folder = existing("dir")
    p = OneLineParser(prog="python data/py_adobe_data.py", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--root",
        type=folder,
        help="Adobe-style data folder (default: the built-in synthetic set)",
    )
    p.add_argument("--fg-dir", type=folder, action="append", help="foreground folder (repeatable)")
    p.add_argument(
        "--alpha-dir", type=folder, action="append", help="alpha folder (one per --fg-dir)"
    )
    p.add_argument("--bg-dir", type=folder, help="backgrounds folder (COCO train2014)")
    p.add_argument("--fg-names", type=existing("file"), help="training_fg_names.txt")
    p.add_argument("--bg-names", type=existing("file"), help="training_bg_names.txt")
    p.add_argument("--n", type=number(int, 1), default=32, help="samples to draw and check")
    p.add_argument("--size", type=number(int, 32), default=320, help="output size S (>= 32)")
    p.add_argument("--seed", type=number(int, 0), default=0)
    p.add_argument("--no-cache", action="store_true", help="decode files for every sample")
    p.add_argument(
        "--cache-dir", type=output("dir"), help="decoded cache folder (default .cache/decoded)"
    )
    p.add_argument(
        "--out",
        type=output("dir"),
        default="runs/data_selftest",
        help="folder for the grid and logs",
    )
    p.add_argument("--visdom-server", default="http://localhost")
    p.add_argument("--visdom-port", type=port_arg, default=8097)
    p.add_argument("--no-visdom", action="store_true", help="write the grid to --out only")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Self-test only: the dataset itself needs none of these (nor the visualisation layer).
    from data.synthetic import ensure_synthetic
    from utils.visualization import Visualizer

    root = args.root
    if root is None and not args.fg_dir:
        root = ensure_synthetic()
        print(f"data: built-in set at {root}")
    if root is not None:
        lay = find_layout(root, args.bg_dir)
        fg_dirs, alpha_dirs, bg_dir = lay.fg_dirs, lay.alpha_dirs, lay.bg_dir
        fg_names, bg_names = args.fg_names or lay.fg_names, args.bg_names or lay.bg_names
    else:
        fg_dirs, alpha_dirs, bg_dir = args.fg_dir, args.alpha_dir, args.bg_dir
        fg_names, bg_names = args.fg_names, args.bg_names
    t0 = time.perf_counter()
    sources = find_sources(fg_dirs, alpha_dirs, bg_dir, fg_names=fg_names, bg_names=bg_names)
    ds = AdobeDataset(
        sources,
        crop_size=args.size,
        seed=args.seed,
        cache=not args.no_cache,
        cache_dir=args.cache_dir,
    )
    print(f"{ds}\nset up in {time.perf_counter() - t0:.1f} s")
    idx = np.random.default_rng(args.seed).choice(len(ds), size=args.n, replace=args.n > len(ds))
    samples, failures = [], 0
    t0 = time.perf_counter()
    for i in idx:
        samples.append(ds[int(i)])
    dt = time.perf_counter() - t0
    for i, (data, label) in zip(idx, samples, strict=True):
        problems = check_sample(data, label, args.size)
        if problems:
            failures += 1
            print(f"sample {i}: " + "; ".join(problems))
    data = torch.stack([d for d, _ in samples])
    label = torch.stack([lb for _, lb in samples])
    print(f"data  {tuple(data.shape)} float32   label {tuple(label.shape)} float32")
    for name, x in (
        ("image (normalised)", layout.image(data)),
        ("trimap (scaled)", layout.trimap(data)),
        ("bg", layout.bg(label)),
        ("fg", layout.fg(label)),
        ("merged", layout.merged(label)),
        ("alpha", layout.alpha(label)),
        ("mask", layout.mask(label)),
    ):
        print(f"  {name:20s} min {x.min().item():8.3f}  max {x.max().item():8.3f}")
    print(f"unknown fraction {layout.mask(label).mean().item():.3f}")
    rate = args.n / dt
    print(f"{args.n} samples in {dt:.2f} s: {rate:.1f} samples/s (one process)")
    with Visualizer(args.out, env="data-selftest", server=args.visdom_server,
                    port=args.visdom_port, enabled=not args.no_visdom) as viz:  # fmt: skip
        out = viz.image(0, "samples", sample_grid(samples[:8]))
        viz.scalars(0, {"samples_per_s": rate}, "speed")
        viz.text("data self-test", f"{ds!r}\n{args.n} samples, {rate:.1f} samples/s")
    print(f"grid (image | trimap | alpha | fg | bg) written to {out}")
    if failures:
        print(f"FAILED: {failures} of {args.n} samples have problems")
        return 1
    print(f"OK: composite identity and ranges hold on all {args.n} samples")
    return 0


if __name__ == "__main__":
    sys.exit(main())
