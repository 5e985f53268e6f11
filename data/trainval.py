"""Training set and fixed validation examples from one data folder: what the trainer calls.

:func:`build_train_val` finds the sources (``data/sources.py``), builds the decoded cache
(``data/cache.py``), the :class:`data.py_adobe_data.AdobeDataset` and the validation set
(a folder of the user's, the ``val/`` split beside the data, or held-out foregrounds
composited once, ``data/testsets.py``). ``"synthetic"`` is the built-in set.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

from data.cache import CachedStore, DecodingStore, default_cache_dir
from data.py_adobe_data import AdobeDataset
from data.sources import DataSourceError, find_layout, find_sources
from data.testsets import (
    ExampleSet,
    build_validation_set,
    manifest_digest,
    open_testset,
    validation_manifest,
)

PathLike = str | os.PathLike


def synthetic_root(photo_dir: PathLike | None = "auto") -> Path | None:
    if importlib.util.find_spec("data.synthetic") is None:
        return None
    from data.synthetic import ensure_synthetic

    try:
        return ensure_synthetic(photo_dir=photo_dir)
    except (FileNotFoundError, ValueError) as e:  # a bad --photo-dir or --bg-dir
        raise DataSourceError(str(e)) from e


def build_train_val(
    root: PathLike | None = None,
    *,
    fg_dirs: Sequence[PathLike] | PathLike | None = None,
    alpha_dirs: Sequence[PathLike] | PathLike | None = None,
    bg_dir: PathLike | None = None,
    fg_names: PathLike | None = None,
    bg_names: PathLike | None = None,
    bg_per_fg: int = 100,
    val_dir: PathLike | None = None,
    val_fraction: float = 0.1,
    val_n: int = 64,
    val_full_size: bool = False,
    split_seed: int = 0,
    seed: int = 0,
    crop_size: int = 320,
    cut_sizes: Sequence[int] | None = None,
    flip_p: float = 0.5,
    k_range: tuple[int, int] = (1, 30),
    cache: bool = True,
    cache_dir: PathLike | None = None,
    cache_backgrounds: bool = True,
    workers: int | None = None,
    progress: bool = True,
    photo_dir: PathLike | None = "auto",
) -> tuple[AdobeDataset, ExampleSet | None]:
    """Training dataset and fixed validation examples from one data folder.

    ``root``: an Adobe-style folder (see ``data/sources.py``), or "synthetic" for the
    built-in set; explicit ``fg_dirs``/``alpha_dirs``/``bg_dir``/name lists override what
    is found there (or replace ``root`` altogether).
    Validation: ``val_dir`` (any layout ``open_testset`` reads) when given, else the
    ``val/`` folder beside the data (the synthetic set has one), else the foregrounds are
    split (``val_fraction``, ``split_seed``; no foreground in both) and ``val_n`` held-out
    composites (output-size crops, or whole images with ``val_full_size``) are written once
    under ``<cache_dir>/valsets/`` and reused. Returns (train dataset, validation examples
    or None when val_fraction = 0 and no validation folder exists). ``photo_dir``: the
    built-in set's photographs (``data.synthetic.list_photos``; "synthetic" only).
    """
    found_val = None
    if root is not None:
        if str(root) == "synthetic":
            root = synthetic_root(photo_dir)
            if root is None:
                raise DataSourceError("the built-in synthetic set (data/synthetic.py) is missing")
        lay = find_layout(root, bg_dir)
        fg_dirs = fg_dirs if fg_dirs is not None else lay.fg_dirs
        alpha_dirs = alpha_dirs if alpha_dirs is not None else lay.alpha_dirs
        bg_dir = lay.bg_dir
        fg_names = fg_names if fg_names is not None else lay.fg_names
        bg_names = bg_names if bg_names is not None else lay.bg_names
        found_val = lay.val_dir
    if fg_dirs is None or alpha_dirs is None or bg_dir is None:
        raise DataSourceError(
            "no training data given: pass a data root, or foreground, alpha and background folders"
        )
    sources = find_sources(
        fg_dirs,
        alpha_dirs,
        bg_dir,
        fg_names=fg_names,
        bg_names=bg_names,
        bg_per_fg=bg_per_fg,
        seed=seed,
    )
    ds_kw = dict(
        crop_size=crop_size,
        cut_sizes=cut_sizes,
        flip_p=flip_p,
        k_range=k_range,
        seed=seed,
        cache=cache,
        cache_dir=cache_dir,
        cache_backgrounds=cache_backgrounds,
        workers=workers,
        progress=progress,
    )
    if val_dir is not None or found_val is not None:
        return AdobeDataset(sources, **ds_kw), open_testset(val_dir or found_val)
    if val_fraction <= 0:
        return AdobeDataset(sources, **ds_kw), None
    train_src, val_src = sources.split(val_fraction, split_seed)
    if len(val_src) == 0:
        raise DataSourceError(
            f"val_fraction={val_fraction} leaves no validation foreground out of "
            f"{len(sources.foregrounds)}; pass val_fraction=0 or a validation folder"
        )
    train = AdobeDataset(train_src, **ds_kw)
    size = None if val_full_size else crop_size
    manifest = validation_manifest(val_src, val_n, seed, size, k_range, cut_sizes)
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out = base / "valsets" / f"val-{manifest_digest(manifest)}"
    store = train.store if not isinstance(train.store, DecodingStore) else None
    if isinstance(store, CachedStore):
        store.build(val_src.foregrounds, val_src.backgrounds, workers, progress)
    build_validation_set(
        val_src, out, val_n, seed, size, k_range=k_range, cut_sizes=cut_sizes, store=store
    )
    return train, open_testset(out)
