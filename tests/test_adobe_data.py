"""data/py_adobe_data.py + data/sources.py: sample layout, randomness, workers, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from data import layout
from data.demo import make_demo_folder
from data.py_adobe_data import AdobeDataset, main, worker_init_fn
from data.sources import DataSourceError, find_layout, find_sources, match_foregrounds
from data.testsets import ExampleSet
from data.trainval import build_train_val
from utils.image_io import write_png

S = 64  # output size of every sample in these tests


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    # Tiny backgrounds (24x32) are smaller than the foregrounds (60x80): always upscaled.
    return make_demo_folder(
        tmp_path_factory.mktemp("demo"), n_fg=4, n_bg=6, fg_hw=(60, 80), bg_hw=(24, 32),
        bg_per_fg=3,
    )  # fmt: skip


def _sources(root: Path, **kw):
    lay = find_layout(root)
    kw.setdefault("fg_names", lay.fg_names)
    kw.setdefault("bg_names", lay.bg_names)
    return find_sources(lay.fg_dirs, lay.alpha_dirs, lay.bg_dir, **kw)


def _dataset(root: Path, tmp_path: Path, **kw) -> AdobeDataset:
    kw.setdefault("crop_size", S)
    kw.setdefault("cache_dir", tmp_path / "cache")
    kw.setdefault("workers", 0)
    kw.setdefault("progress", False)
    return AdobeDataset(_sources(root), **kw)


def _assert_valid(data: torch.Tensor, label: torch.Tensor, size: int = S):
    assert data.shape == (4, size, size) and label.shape == (11, size, size)
    assert data.dtype == label.dtype == torch.float32
    a, fg, bg, merged = (
        layout.alpha(label),
        layout.fg(label),
        layout.bg(label),
        layout.merged(label),
    )
    assert (merged - (a * fg + (1 - a) * bg)).abs().max() <= 1e-3
    assert 0 <= a.min() and a.max() <= 1
    for x in (fg, bg, merged):
        assert 0 <= x.min() and x.max() <= 255
    tri = layout.unscale_trimap(layout.trimap(data)).round()
    assert set(tri.unique().tolist()) <= {0.0, 128.0, 255.0}
    assert torch.equal(layout.mask(label) > 0.5, tri == 128)
    img = layout.denormalize_image(layout.image(data)) * 255
    assert (img - merged).abs().max() < 1e-2


# --- layout and identity ---------------------------------------------------------------------
def test_samples_have_the_layout_and_the_composite_identity(demo, tmp_path):
    ds = _dataset(demo, tmp_path)
    assert len(ds) == 4 * 3  # (fg, bg) pairs from the name lists
    assert ds.cut_sizes == (64, 96, 128)  # (S, 1.5 S, 2 S)
    for i in range(len(ds)):
        _assert_valid(*ds[i])
    assert any(layout.mask(ds[i][1]).sum() > 0 for i in range(len(ds)))


def test_cache_and_no_cache_give_the_same_samples(demo, tmp_path):
    cached = _dataset(demo, tmp_path)
    plain = _dataset(demo, tmp_path, cache=False)
    assert list((tmp_path / "cache").rglob("*.npy"))
    for i in (0, 5, 11):
        for a, b in zip(cached[i], plain[i], strict=True):
            assert torch.equal(a, b)


def test_default_crop_sizes_at_320(demo, tmp_path):
    ds = _dataset(demo, tmp_path, crop_size=320, cache=False)
    assert ds.cut_sizes == (320, 480, 640)


# --- randomness ------------------------------------------------------------------------------
def test_same_seed_same_samples_other_seed_or_epoch_differs(demo, tmp_path):
    a = _dataset(demo, tmp_path, seed=1)
    b = _dataset(demo, tmp_path, seed=1)
    c = _dataset(demo, tmp_path, seed=2)
    assert torch.equal(a[3][0], b[3][0]) and torch.equal(a[3][1], b[3][1])
    assert not torch.equal(a[3][1], c[3][1])
    e0 = a[3][1]
    a.set_epoch(1)
    assert a.epoch == 1
    assert not torch.equal(a[3][1], e0)
    a.set_epoch(0)
    assert torch.equal(a[3][1], e0)


@pytest.fixture(scope="module")
def one_pair(tmp_path_factory) -> Path:
    """One foreground, one background, six samples per epoch: any repeat is visible."""
    root = make_demo_folder(
        tmp_path_factory.mktemp("one"), n_fg=1, n_bg=1, fg_hw=(60, 80), bg_hw=(40, 50),
        bg_per_fg=6,
    )  # fmt: skip
    return root


def _labels(loader) -> list[torch.Tensor]:
    return [label[0] for _, label in loader]


def test_workers_draw_distinct_repeatable_samples(one_pair, tmp_path):
    ds = _dataset(one_pair, tmp_path)
    serial = _labels(torch.utils.data.DataLoader(ds, batch_size=1))
    kw = dict(batch_size=1, num_workers=2, worker_init_fn=worker_init_fn, persistent_workers=True)
    loader = torch.utils.data.DataLoader(ds, **kw)
    parallel = _labels(loader)
    # every sample differs from every other (no repeats across workers)
    for i in range(len(parallel)):
        for j in range(i):
            assert not torch.equal(parallel[i], parallel[j])
    # and they do not depend on the number of workers
    for p, s in zip(parallel, serial, strict=True):
        assert torch.equal(p, s)
    # set_epoch reaches persistent workers: epoch 1 is new and equals the serial epoch 1
    ds.set_epoch(1)
    epoch1 = _labels(loader)
    serial1 = [ds[i][1] for i in range(len(ds))]
    for a, b, s in zip(epoch1, parallel, serial1, strict=True):
        assert not torch.equal(a, b)
        assert torch.equal(a, s)


class _GlobalNumpyDataset(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.tensor(np.random.random())  # noqa: NPY002 (the global generator on purpose)


def test_worker_init_fn_seeds_numpy_per_worker():
    kw = dict(batch_size=2, num_workers=2, worker_init_fn=worker_init_fn)
    values = torch.cat(list(torch.utils.data.DataLoader(_GlobalNumpyDataset(), **kw)))
    # batch 0 from worker 0, batch 1 from worker 1: with forked identical states they'd match
    assert not torch.equal(values[0:2], values[2:4])


# --- sources, split, train/val ---------------------------------------------------------------
def test_name_list_pairing_rule(demo):
    """Foreground i of training_fg_names.txt uses lines k*i .. k*i+k-1 of the bg list."""
    src = _sources(demo)
    fg_list = (demo / "training_fg_names.txt").read_text().split()
    bg_list = (demo / "training_bg_names.txt").read_text().split()
    assert [f.name for f in src.foregrounds] == fg_list
    assert len(bg_list) == 12 and len(src.backgrounds) == 6  # repeated names kept once
    assert len(src) == 12
    for row, (f, b) in enumerate(src.pairs):
        assert f == row // 3
        assert src.backgrounds[b].name == bg_list[row]


def test_split_by_foreground(demo):
    src = _sources(demo)
    train, val = src.split(0.25, seed=0)
    tn = {f.name for f in train.foregrounds}
    vn = {f.name for f in val.foregrounds}
    assert not tn & vn and len(tn | vn) == 4 and len(vn) == 1
    assert len(train) + len(val) == len(src)
    assert train.pairs[:, 0].max() < len(train.foregrounds)
    again = src.split(0.25, seed=0)[1]
    assert [f.name for f in again.foregrounds] == [f.name for f in val.foregrounds]
    assert len(src.split(0.0)[1]) == 0


def test_random_background_pairs_without_lists(demo):
    src = _sources(demo, fg_names=None, bg_names=None, bg_per_fg=5, seed=3)
    assert len(src) == 4 * 5
    assert src.pairs[:, 1].max() < len(src.backgrounds) == 6
    same = _sources(demo, fg_names=None, bg_names=None, bg_per_fg=5, seed=3)
    np.testing.assert_array_equal(src.pairs, same.pairs)


def test_build_train_val_writes_a_fixed_validation_set_once(demo, tmp_path):
    kw = dict(crop_size=S, val_fraction=0.25, val_n=4, cache_dir=tmp_path / "c" / "decoded",
              workers=0, progress=False)  # fmt: skip
    train, val = build_train_val(demo, **kw)
    assert isinstance(val, ExampleSet) and len(val) == 4
    val_fgs = {n.rsplit("_", 1)[0] for n in val.names}
    assert not val_fgs & {f.stem for f in train.sources.foregrounds}
    ex = val[0]
    assert ex.image.shape == (S, S, 3) and ex.trimap.shape == (S, S)
    assert set(np.unique(ex.trimap)) <= {0, 128, 255} and (ex.trimap == 128).any()
    stamp = [(f.merged if hasattr(f, "merged") else f.image).stat().st_mtime_ns for f in val.files]
    _, val2 = build_train_val(demo, **kw)
    assert val2.root == val.root
    assert [f.image.stat().st_mtime_ns for f in val2.files] == stamp  # reused, not rewritten
    _assert_valid(*train[0])


def test_build_train_val_uses_a_val_folder_beside_the_data(demo, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(demo, root)
    img = np.zeros((8, 8, 3), np.uint8)
    for sub, arr in (("merged", img), ("alpha_copy", img[..., 0]), ("trimaps", img[..., 0])):
        write_png(root / "val" / sub / "x_0.png", arr)
    train, val = build_train_val(root, crop_size=S, cache=False)
    assert val.kind == "composition1k" and val.names == ["x_0"]
    assert len(train.sources.foregrounds) == 4  # no split when a validation folder exists


# --- input that must work --------------------------------------------------------------------
def test_odd_but_valid_inputs_are_handled(tmp_path):
    """Greyscale and RGBA foregrounds, 16-bit alpha, alpha saved as RGB, a tiny background,
    binary and constant alphas."""
    rng = np.random.default_rng(0)
    fgd, ald, bgd = tmp_path / "fg", tmp_path / "alpha", tmp_path / "bg"
    h, w = 40, 50
    soft = np.clip(np.linspace(-200, 455, w)[None].repeat(h, 0), 0, 255).astype(np.uint8)
    binary = np.zeros((h, w), np.uint8)
    binary[10:30, 10:40] = 255
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    write_png(fgd / "grey.png", rgb[..., 0])
    write_png(ald / "grey.png", soft.astype(np.uint16) * 257)  # 16-bit alpha
    write_png(fgd / "rgba.png", np.dstack([rgb, np.full((h, w), 200, np.uint8)]))
    write_png(ald / "rgba.png", np.repeat(soft[..., None], 3, 2))  # alpha as RGB
    write_png(fgd / "binary.jpg", rgb)
    cv2.imwrite(str(fgd / "binary.jpg"), rgb)  # fg .jpg with alpha .png: matched by stem
    write_png(ald / "binary.png", binary)
    write_png(fgd / "opaque.png", rgb)
    write_png(ald / "opaque.png", np.full((h, w), 255, np.uint8))
    write_png(bgd / "tiny.png", rng.integers(0, 256, (3, 4, 3), dtype=np.uint8))
    src = find_sources(fgd, ald, bgd, bg_per_fg=2)
    assert {f.name for f in src.foregrounds} == {"grey.png", "rgba.png", "binary.jpg", "opaque.png"}
    for cache in (True, False):
        ds = AdobeDataset(src, crop_size=32, cache=cache, cache_dir=tmp_path / "c", workers=0,
                          progress=False)  # fmt: skip
        for i in range(len(ds)):
            _assert_valid(*ds[i], size=32)
    # the binary matte's crops are placed on its edge (no fractional pixels to pick); the
    # 32 px window in a 40x50 image is shifted inside it, so the edge is in the crop, not
    # necessarily at its centre
    binary_i = [f.name for f in src.foregrounds].index("binary.jpg")
    ds = AdobeDataset(src.select([binary_i]), crop_size=32, cut_sizes=(32,), cache=False,
                      flip_p=0)  # fmt: skip
    for i in range(len(ds)):
        crop = layout.alpha(ds[i][1])[0]
        assert crop.min() == 0 and crop.max() == 1


def test_find_layout_recognises_adobe_release(tmp_path):
    base = tmp_path / "Combined_Dataset" / "Training_set"
    for sub in ("Adobe-licensed images", "Other"):
        for d in ("fg", "alpha"):
            (base / sub / d).mkdir(parents=True)
    (tmp_path / "train2014").mkdir()
    lay = find_layout(tmp_path)
    assert lay.fg_dirs == [base / "Adobe-licensed images" / "fg", base / "Other" / "fg"]
    assert lay.alpha_dirs == [base / "Adobe-licensed images" / "alpha", base / "Other" / "alpha"]
    assert lay.bg_dir == tmp_path / "train2014"
    with pytest.raises(DataSourceError, match="no foreground folders"):
        find_layout(tmp_path / "train2014")


# --- bad input: errors at construction, naming the file --------------------------------------
def _copy(demo: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(demo, root)
    return root


def test_missing_and_empty_folders(demo, tmp_path):
    root = _copy(demo, tmp_path)
    with pytest.raises(DataSourceError, match=r"foreground folder .*nowhere does not exist"):
        find_sources(root / "nowhere", root / "alpha", root / "bg")
    (root / "empty").mkdir()
    with pytest.raises(DataSourceError, match=r"background folder .*empty holds no images"):
        find_sources(root / "fg", root / "alpha", root / "empty")
    with pytest.raises(DataSourceError, match="as many alpha folders"):
        match_foregrounds([root / "fg", root / "fg"], [root / "alpha"])


def test_foreground_without_alpha_and_reverse(demo, tmp_path):
    root = _copy(demo, tmp_path)
    (root / "alpha" / "fg_001.png").rename(root / "alpha" / "stray.png")
    with pytest.raises(DataSourceError) as e:
        find_sources(root / "fg", root / "alpha", root / "bg")
    msg = str(e.value)
    assert "fg_001.png has no alpha" in msg and "stray.png has no foreground" in msg
    # with the name list: the listed foreground without alpha is named with its line
    with pytest.raises(
        DataSourceError, match=r"training_fg_names.txt:2: .*fg_001.png has no alpha"
    ):
        _sources(root)


def test_size_mismatch(demo, tmp_path):
    root = _copy(demo, tmp_path)
    write_png(root / "alpha" / "fg_002.png", np.zeros((10, 10), np.uint8))
    with pytest.raises(DataSourceError, match=r"fg_002.png is 80x60 but its alpha .* is 10x10"):
        _sources(root)


def test_corrupt_and_empty_images(demo, tmp_path):
    root = _copy(demo, tmp_path)
    (root / "fg" / "fg_000.png").write_bytes(b"this is not a png")
    (root / "bg" / "bg_003.jpg").write_bytes(b"")
    with pytest.raises(DataSourceError) as e:
        _sources(root)
    assert "fg_000.png: not a readable image" in str(e.value)
    (root / "fg" / "fg_000.png").write_bytes((demo / "fg" / "fg_000.png").read_bytes())
    with pytest.raises(DataSourceError, match=r"bg_003.jpg: file is empty"):
        _sources(root)


def test_truncated_image_is_caught_when_the_cache_is_built(demo, tmp_path):
    root = _copy(demo, tmp_path)
    data = (root / "fg" / "fg_001.png").read_bytes()
    (root / "fg" / "fg_001.png").write_bytes(data[: len(data) // 2])  # header intact
    src = _sources(root)
    with pytest.raises(DataSourceError, match=r"fg_001.png: not a readable image"):
        AdobeDataset(src, crop_size=S, cache_dir=tmp_path / "c", workers=0, progress=False)


def test_name_lists_pointing_at_missing_files(demo, tmp_path):
    root = _copy(demo, tmp_path)
    names = (root / "training_fg_names.txt").read_text().splitlines()
    (root / "training_fg_names.txt").write_text("\n".join([*names[:2], "ghost.png", *names[3:]]))
    with pytest.raises(DataSourceError, match=r"training_fg_names.txt:3: foreground ghost.png not"):
        _sources(root)
    (root / "training_fg_names.txt").write_text("\n".join(names))
    bgs = (root / "training_bg_names.txt").read_text().splitlines()
    bgs[4] = "COCO_missing.jpg"
    (root / "training_bg_names.txt").write_text("\n".join(bgs))
    with pytest.raises(DataSourceError, match=r"training_bg_names.txt:5: background COCO_missing"):
        _sources(root)
    bgs[4] = bgs[3]
    (root / "training_bg_names.txt").write_text("\n".join(bgs[:-1]))  # 11 lines for 4 fgs
    with pytest.raises(DataSourceError, match="same number of backgrounds"):
        _sources(root)
    with pytest.raises(DataSourceError, match="without a foreground list"):
        _sources(root, fg_names=None)
    (root / "training_bg_names.txt").write_text("\n")
    with pytest.raises(DataSourceError, match="is empty"):
        _sources(root)


def test_dataset_argument_checks(demo, tmp_path):
    src = _sources(demo)
    with pytest.raises(ValueError, match="k_range"):
        AdobeDataset(src, k_range=(0, 5), cache=False)
    with pytest.raises(DataSourceError, match="no \\(foreground, background\\) pairs"):
        AdobeDataset(src.select([]), cache=False)
    ds = AdobeDataset(src, crop_size=S, cache=False)
    with pytest.raises(IndexError):
        ds[len(ds)]


# --- self-test script ------------------------------------------------------------------------
def test_self_test_script(demo, tmp_path, capsys):
    out = tmp_path / "selftest"
    rc = main(["--root", str(demo), "--n", "6", "--size", "32", "--out", str(out),
               "--cache-dir", str(tmp_path / "c"), "--no-visdom"])  # fmt: skip
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "OK: composite identity" in text and "samples/s" in text
    # through the Visualizer: the grid panel, the speed point and the text log
    grid = cv2.imread(str(out / "panels" / "samples_0000000.png"))
    assert grid.shape == (6 * 32, 5 * 32, 3)
    assert "samples_per_s" in (out / "metrics.jsonl").read_text()
    assert "data self-test" in (out / "text.log").read_text()
