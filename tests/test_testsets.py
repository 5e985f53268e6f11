"""data/testsets.py: the three loaders, layout detection, the Composition-1k builder and the
fixed validation set."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from data import compose
from data.demo import make_demo_folder
from data.sources import DataSourceError, find_layout, find_sources
from data.testsets import (
    ExampleSet,
    MattingExample,
    build_composition1k,
    build_validation_set,
    load_alphamatting,
    load_composition1k,
    load_folders,
    open_testset,
)
from utils.image_io import ImageReadError, read_gray, read_rgb, write_png


def _img(h=12, w=16, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _trimap(h=12, w=16):
    t = np.zeros((h, w), np.uint8)
    t[:, w // 3 :] = 128
    t[:, 2 * w // 3 :] = 255
    return t


def _c1k(root: Path, names=("a_0", "a_1", "b_0"), alpha_dir="alpha_copy") -> Path:
    for i, n in enumerate(names):
        write_png(root / "merged" / f"{n}.png", _img(seed=i))
        write_png(root / alpha_dir / f"{n}.png", _img(seed=10 + i)[..., 0])
        write_png(root / "trimaps" / f"{n}.png", _trimap())
    return root


def _check_example(ex: MattingExample, has_alpha=True):
    assert ex.image.dtype == np.uint8 and ex.image.ndim == 3 and ex.image.shape[2] == 3
    assert ex.trimap.dtype == np.uint8 and ex.trimap.shape == ex.image.shape[:2]
    assert set(np.unique(ex.trimap)) <= {0, 128, 255}
    if has_alpha:
        assert ex.alpha.dtype == np.float32 and ex.alpha.shape == ex.image.shape[:2]
        assert 0 <= ex.alpha.min() and ex.alpha.max() <= 1
    else:
        assert ex.alpha is None


# --- Composition-1k --------------------------------------------------------------------------
def test_load_composition1k(tmp_path):
    root = _c1k(tmp_path / "c1k")
    ts = load_composition1k(root)
    assert isinstance(ts, ExampleSet) and ts.kind == "composition1k"
    assert ts.names == ["a_0", "a_1", "b_0"] and len(ts) == 3
    ex = ts[1]
    _check_example(ex)
    assert ex.name == "a_1"
    np.testing.assert_array_equal(ex.image, _img(seed=1))
    np.testing.assert_allclose(ex.alpha, _img(seed=11)[..., 0] / 255.0, atol=1e-6)
    np.testing.assert_array_equal(ex.trimap, _trimap())
    assert [e.name for e in ts] == ts.names
    assert isinstance(ts[1:], ExampleSet) and ts[1:].names == ["a_1", "b_0"]


def test_composition1k_alpha_folder_variants(tmp_path):
    ts = load_composition1k(_c1k(tmp_path / "x", alpha_dir="alpha"))
    assert ts.has_alpha
    # one alpha per foreground, as in the Adobe Test_set folder
    root = tmp_path / "per_fg"
    for n in ("boy_0", "boy_1"):
        write_png(root / "merged" / f"{n}.png", _img())
        write_png(root / "trimaps" / f"{n}.png", _trimap())
    write_png(root / "alpha" / "boy.png", _img(seed=5)[..., 0])
    ts = load_composition1k(root)
    assert [f.alpha.name for f in ts.files] == ["boy.png", "boy.png"]
    # no alpha folder at all: alphas are None (prediction only)
    root2 = tmp_path / "noalpha"
    write_png(root2 / "merged" / "q_0.png", _img())
    write_png(root2 / "trimaps" / "q_0.png", _trimap())
    _check_example(load_composition1k(root2)[0], has_alpha=False)


def test_composition1k_errors(tmp_path):
    root = _c1k(tmp_path / "c1k")
    (root / "trimaps" / "a_1.png").unlink()
    (root / "alpha_copy" / "b_0.png").unlink()
    with pytest.raises(DataSourceError) as e:
        load_composition1k(root)
    assert "a_1.png has no trimap" in str(e.value) and "b_0" in str(e.value)
    with pytest.raises(DataSourceError, match="no 'merged' folder"):
        load_composition1k(tmp_path)
    root = _c1k(tmp_path / "mismatch")
    write_png(root / "trimaps" / "a_0.png", np.zeros((5, 5), np.uint8))
    with pytest.raises(DataSourceError, match=r"a_0\.png is \(5, 5\) but image"):
        load_composition1k(root)


def test_examples_are_read_lazily(tmp_path):
    root = _c1k(tmp_path / "c1k")
    ts = load_composition1k(root)
    write_png(root / "merged" / "a_0.png", _img(seed=99))  # changed after loading
    np.testing.assert_array_equal(ts[0].image, _img(seed=99))
    write_png(root / "trimaps" / "a_0.png", np.zeros((3, 3), np.uint8))
    with pytest.raises(ImageReadError, match="must match"):
        ts[0]


# --- plain folders and alphamatting.com ------------------------------------------------------
def test_load_folders_match_by_stem_and_quantize(tmp_path):
    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "x.jpg"), _img())  # .jpg image, .png trimap/alpha
    noisy = _trimap()
    noisy[0, 0], noisy[0, -1] = 10, 250  # JPEG-like noise snapped to 0 / 255
    write_png(tmp_path / "tri" / "x.png", noisy)
    write_png(tmp_path / "gt" / "x.png", _img()[..., 0])
    ts = load_folders(tmp_path / "img", tmp_path / "tri", tmp_path / "gt")
    ex = ts[0]
    _check_example(ex)
    assert ex.trimap[0, 0] == 0 and ex.trimap[0, -1] == 255
    _check_example(load_folders(tmp_path / "img", tmp_path / "tri")[0], has_alpha=False)
    write_png(tmp_path / "tri" / "y.png", _trimap())
    write_png(tmp_path / "gt" / "z.png", _trimap())
    with pytest.raises(DataSourceError) as e:
        load_folders(tmp_path / "img", tmp_path / "tri", tmp_path / "gt")
    assert "trimap" in str(e.value) and "y.png has no image" in str(e.value)
    assert "z.png has no image" in str(e.value)
    with pytest.raises(DataSourceError, match="does not exist"):
        load_folders(tmp_path / "nope", tmp_path / "tri")


def _alphamatting(root: Path, n=2) -> Path:
    for i in range(n):
        name = f"GT{i + 1:02d}.png"
        write_png(root / "input_training_lowres" / name, _img(seed=i))
        write_png(root / "gt_training_lowres" / name, np.repeat(_img(seed=i)[..., :1], 3, 2))
        for t in ("Trimap1", "Trimap2"):
            write_png(root / "trimap_training_lowres" / t / name, np.dstack([_trimap()] * 3))
    return root


def test_load_alphamatting_generated(tmp_path):
    root = _alphamatting(tmp_path / "am")
    ts = load_alphamatting(root)
    assert ts.kind == "alphamatting" and ts.names == ["GT01", "GT02"]
    ex = ts[1]
    _check_example(ex)
    np.testing.assert_allclose(ex.alpha, _img(seed=1)[..., 0] / 255.0, atol=1e-6)
    assert load_alphamatting(root, "Trimap2").files[0].trimap.parent.name == "Trimap2"
    with pytest.raises(DataSourceError, match=r"Trimap3 does not exist; .*Trimap1"):
        load_alphamatting(root, "Trimap3")
    with pytest.raises(DataSourceError, match=r"not an alphamatting\.com folder"):
        load_alphamatting(tmp_path)


def test_load_alphamatting_real(alphamatting_dev):
    ts = load_alphamatting(alphamatting_dev)
    assert len(ts) == 18 and ts.names[0] == "GT01"
    ex = ts[0]
    _check_example(ex)
    assert ex.image.shape == (497, 800, 3)
    assert (ex.trimap == 128).any() and 0 < ex.alpha.mean() < 1
    # the alpha is stored as RGB: one channel, exactly
    raw = cv2.imread(str(alphamatting_dev / "gt_training_lowres" / "GT01.png"))
    np.testing.assert_allclose(ex.alpha, raw[..., 0] / 255.0, atol=1e-6)
    assert len(load_alphamatting(alphamatting_dev, "Trimap2")) == 18
    assert open_testset(alphamatting_dev).kind == "alphamatting"


def test_open_testset_detects_layouts(tmp_path):
    assert open_testset(_c1k(tmp_path / "c")).kind == "composition1k"
    assert open_testset(_alphamatting(tmp_path / "a")).kind == "alphamatting"
    plain = tmp_path / "p"
    write_png(plain / "images" / "u.png", _img())
    write_png(plain / "trimaps" / "u.png", _trimap())
    write_png(plain / "alphas" / "u.png", _img()[..., 0])
    ts = open_testset(plain)
    assert ts.kind == "folders" and ts.has_alpha
    (tmp_path / "junk").mkdir()
    with pytest.raises(DataSourceError, match="layout not recognised"):
        open_testset(tmp_path / "junk")
    with pytest.raises(DataSourceError, match="does not exist"):
        open_testset(tmp_path / "missing")


# --- Composition-1k builder ------------------------------------------------------------------
def _official(fg_path, alpha_path, bg_path):
    """Composition_code.py, restated: cv2 reads, ceil of the larger ratio, bicubic, top-left
    window, float32 composite truncated to uint8."""
    im = cv2.imread(str(fg_path))
    a = cv2.imread(str(alpha_path), 0)
    h, w = im.shape[:2]
    bg = cv2.imread(str(bg_path))
    bh, bw = bg.shape[:2]
    ratio = max(w / bw, h / bh)
    if ratio > 1:
        bg = cv2.resize(
            bg, (math.ceil(bw * ratio), math.ceil(bh * ratio)), interpolation=cv2.INTER_CUBIC
        )
    alpha = np.zeros((h, w, 1), np.float32)
    alpha[:, :, 0] = a / 255.0
    comp = alpha * np.float32(im) + (1 - alpha) * np.float32(bg[0:h, 0:w])
    return cv2.cvtColor(comp.astype(np.uint8), cv2.COLOR_BGR2RGB)


def test_build_composition1k_follows_the_official_rule(tmp_path):
    src = tmp_path / "Test_set"
    rng = np.random.default_rng(0)
    fg_names = ["cat.png", "dog.jpg"]
    for n in fg_names:
        fg = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
        if n.endswith(".jpg"):
            (src / "fg").mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(src / "fg" / n), fg)
        else:
            write_png(src / "fg" / n, fg)
        write_png(src / "alpha" / n, rng.integers(0, 256, (20, 30), dtype=np.uint8))
        for k in range(2):
            write_png(src / "trimaps" / f"{Path(n).stem}_{k}.png", _trimap(20, 30))
    # bg 0 is smaller than the foreground (upscaled), the others larger (cropped)
    bg_sizes = [(8, 10), (25, 40), (40, 35), (30, 50)]
    bg_names = [f"voc_{j}.jpg" for j in range(4)][::-1]  # list order != sorted order
    for j, (h, w) in enumerate(bg_sizes):
        (src / "bg").mkdir(exist_ok=True)
        cv2.imwrite(
            str(src / "bg" / f"voc_{j}.jpg"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        )
    (src / "test_fg_names.txt").write_text("\n".join(fg_names) + "\n")
    (src / "test_bg_names.txt").write_text("\n".join(bg_names) + "\n")
    out = tmp_path / "c1k"
    args = (src / "fg", src / "alpha", src / "bg", src / "test_fg_names.txt")
    build_composition1k(*args, src / "test_bg_names.txt", out, trimap_dir=src / "trimaps",
                        progress=False)  # fmt: skip
    ts = load_composition1k(out)
    assert ts.names == ["cat_0", "cat_1", "dog_0", "dog_1"]
    for i, n in enumerate(fg_names):
        for k in range(2):
            name = f"{Path(n).stem}_{k}"
            bg = src / "bg" / bg_names[2 * i + k]  # fg i uses list lines 2i, 2i+1
            got = read_rgb(out / "merged" / f"{name}.png")
            np.testing.assert_array_equal(got, _official(src / "fg" / n, src / "alpha" / n, bg))
            np.testing.assert_array_equal(
                read_gray(out / "alpha_copy" / f"{name}.png"), read_gray(src / "alpha" / n)
            )
    # existing outputs are kept
    stamp = (out / "merged" / "cat_0.png").stat().st_mtime_ns
    build_composition1k(*args, src / "test_bg_names.txt", out, progress=False)
    assert (out / "merged" / "cat_0.png").stat().st_mtime_ns == stamp
    # a list line pointing at a missing background is reported before anything is written
    (src / "bad_bg.txt").write_text("\n".join([*bg_names[:3], "voc_missing.jpg"]))
    with pytest.raises(DataSourceError, match=r"bad_bg\.txt:4: background voc_missing\.jpg"):
        build_composition1k(*args, src / "bad_bg.txt", tmp_path / "o2", progress=False)
    (src / "odd_bg.txt").write_text("\n".join(bg_names[:3]))
    with pytest.raises(DataSourceError, match="same number per foreground"):
        build_composition1k(*args, src / "odd_bg.txt", tmp_path / "o3", progress=False)
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def test_composition1k_command_line_builds_checks_and_names_what_is_missing(tmp_path, capsys):
    """`python data/testsets.py composition1k` on a small fake layout (2 foregrounds x 2
    backgrounds): builds a set evaluate.py reads; a missing background and a wrong count are
    one error each, naming the file, before anything is written."""
    import subprocess
    import sys

    from data import testsets

    src = tmp_path / "Test_set"
    rng = np.random.default_rng(1)
    for n in ("cat", "dog"):
        write_png(src / "fg" / f"{n}.png", rng.integers(0, 256, (20, 30, 3), dtype=np.uint8))
        write_png(src / "alpha" / f"{n}.png", rng.integers(0, 256, (20, 30), dtype=np.uint8))
        for k in range(2):
            write_png(src / "trimaps" / f"{n}_{k}.png", _trimap(20, 30))
    for j in range(4):
        write_png(src / "bg" / f"voc_{j}.png", rng.integers(0, 256, (25, 40, 3), dtype=np.uint8))
    (src / "fg.txt").write_text("cat.png\ndog.png\n")
    (src / "bg.txt").write_text("".join(f"voc_{j}.png\n" for j in range(4)))

    def run(out, *extra):
        folders = [f"--{k}-dir={src / k}" for k in ("fg", "alpha", "bg")]
        names = [f"--fg-names={src / 'fg.txt'}", f"--bg-names={src / 'bg.txt'}"]
        trimaps = [f"--trimap-dir={src / 'trimaps'}", f"--out={out}"]
        return testsets.main(["composition1k", *folders, *names, *trimaps, *extra])

    assert run(tmp_path / "wrong") == 2  # 4 lines are not 2 x 20 (the official count)
    err = capsys.readouterr().err
    assert "bg.txt has 4 lines" in err and "need 40" in err and "50 x 20 = 1000" in err
    assert not (tmp_path / "wrong").exists()
    (src / "bg" / "voc_3.png").unlink()
    assert run(tmp_path / "missing", "--per-fg", "2") == 2
    assert "bg.txt:4: background voc_3.png not in" in capsys.readouterr().err
    assert not (tmp_path / "missing").exists()
    write_png(src / "bg" / "voc_3.png", rng.integers(0, 256, (25, 40, 3), dtype=np.uint8))
    assert run(tmp_path / "c1k", "--per-fg", "2") == 0
    assert "not the official 50 x 20" in capsys.readouterr().err
    ts = load_composition1k(tmp_path / "c1k")
    assert ts.names == ["cat_0", "cat_1", "dog_0", "dog_1"] and ts[3].alpha is not None
    out = subprocess.run([sys.executable, str(Path(testsets.__file__)), "composition1k",
                          "--help"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0 and "--trimap-dir" in out.stdout and "official" in out.stdout


# --- validation set --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def val_sources(tmp_path_factory):
    root = make_demo_folder(tmp_path_factory.mktemp("vs"), n_fg=3, n_bg=4, fg_hw=(50, 60),
                            bg_hw=(30, 40), bg_per_fg=2)  # fmt: skip
    lay = find_layout(root)
    src = find_sources(lay.fg_dirs, lay.alpha_dirs, lay.bg_dir, fg_names=lay.fg_names,
                       bg_names=lay.bg_names)  # fmt: skip
    return src


@pytest.mark.parametrize("size", [32, None])
def test_build_validation_set_is_deterministic_and_written_once(val_sources, tmp_path, size):
    a = build_validation_set(val_sources, tmp_path / "a", n=5, seed=3, size=size)
    b = build_validation_set(val_sources, tmp_path / "b", n=5, seed=3, size=size)
    ts = load_composition1k(a)
    assert len(ts) == 5
    for ex in ts:
        _check_example(ex)
        if size:
            assert ex.image.shape == (size, size, 3)
            assert (ex.trimap == 128).any()
        else:
            assert ex.image.shape == (50, 60, 3)
        assert (ex.trimap[ex.alpha * 255 > 0.5] != 0).all()  # trimap from this alpha
    for f in sorted((a / "merged").iterdir()):
        assert f.read_bytes() == (b / "merged" / f.name).read_bytes()
    stamp = (a / "valset.json").stat().st_mtime_ns
    assert build_validation_set(val_sources, a, n=5, seed=3, size=size) == a  # reused
    assert (a / "valset.json").stat().st_mtime_ns == stamp
    with pytest.raises(DataSourceError, match="different validation set"):
        build_validation_set(val_sources, a, n=5, seed=4, size=size)
    c = build_validation_set(val_sources, tmp_path / "c", n=5, seed=4, size=size)
    differs = [
        f.read_bytes() != (c / "merged" / f.name).read_bytes()
        for f in sorted((a / "merged").iterdir())
    ]
    assert any(differs)


def test_validation_set_composites_are_faithful(val_sources, tmp_path):
    """Whole-image examples: merged = official composite of the listed fg on a window of the
    listed bg, within truncation."""
    out = build_validation_set(val_sources, tmp_path / "v", n=2, seed=0, size=None)
    ts = load_composition1k(out)
    fg = val_sources.foregrounds[0]
    ex = ts[0]
    np.testing.assert_allclose(ex.alpha, read_gray(fg.alpha_path) / 255.0, atol=1e-6)
    rgb = read_rgb(fg.fg_path)
    full = ex.alpha == 1  # where alpha == 1 the composite is the foreground itself
    assert full.any()
    np.testing.assert_array_equal(ex.image[full], rgb[full])
    # and where alpha == 0 it is the background: some window of the (upscaled) background
    bgs = {val_sources.backgrounds[int(b)] for f, b in val_sources.pairs if int(f) == 0}
    none = ex.alpha == 0
    matches = []
    for bg_path in bgs:
        fitted = compose.fit_background(read_rgb(bg_path), ex.alpha.shape)
        fh, fw = fitted.shape[:2]
        for y in range(fh - 50 + 1):
            for x in range(fw - 60 + 1):
                win = fitted[y : y + 50, x : x + 60]
                matches.append(np.array_equal(win[none], ex.image[none]))
    assert any(matches)
