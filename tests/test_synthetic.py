"""The built-in synthetic data set: determinism, alpha statistics, layout, cache behaviour."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

from data import synthetic
from data.synthetic import MARKER, VERSION, Sizes, ensure_synthetic, is_complete
from tests.helpers import TINY_SYNTHETIC

# Tiny: every kind of job runs, and one foreground of each primary structure.
TINY = TINY_SYNTHETIC
# Large enough that the alpha statistics mean something (still ~2 s on one core).
SMALL = dict(TINY, n_train_fg=8, n_bg=4, fg_size=(200, 240), n_test_fg=4, test_size=(240, 192))


def _gen(root: Path, seed: int = 0, **kw) -> Path:
    sizes = {**TINY, **kw}
    return ensure_synthetic(root, seed, workers=1, progress=False, **sizes)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _gray(p: Path) -> np.ndarray:
    img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.ndim == 2 and img.dtype == np.uint8, p
    return img


def _rgb(p: Path) -> np.ndarray:
    img = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    assert img is not None and img.ndim == 3 and img.shape[2] == 3, p
    return img


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synthetic") / "small"
    return ensure_synthetic(root, 0, workers=1, progress=False, **SMALL)


def test_same_seed_same_bytes_any_worker_count(tmp_path):
    a = _gen(tmp_path / "a", seed=3)
    b = ensure_synthetic(tmp_path / "b", 3, workers=2, progress=False, **TINY)
    fa, fb = _files(a), _files(b)
    assert sorted(fa) == sorted(fb)
    assert all(fa[k] == fb[k] for k in fa), [k for k in fa if fa[k] != fb[k]]


def test_different_seed_different_images(tmp_path):
    a, b = _files(_gen(tmp_path / "a", seed=0)), _files(_gen(tmp_path / "b", seed=1))
    images = [k for k in a if k.endswith((".png", ".jpg"))]
    assert images and sorted(a) == sorted(b)
    assert all(a[k] != b[k] for k in images if k.startswith(("fg/", "alpha/", "bg/")))


def test_layout_and_name_lists(tmp_path):
    root = _gen(tmp_path / "s")
    s = Sizes(**TINY)
    fg_names = (root / "training_fg_names.txt").read_text().split()
    bg_names = (root / "training_bg_names.txt").read_text().split()
    assert fg_names == sorted(p.name for p in (root / "fg").iterdir())
    assert fg_names == sorted(p.name for p in (root / "alpha").iterdir())
    assert len(fg_names) == s.n_train_fg
    assert len(bg_names) == s.n_train_fg * s.bg_per_fg  # fg i uses lines [k*i, k*i + k)
    assert set(bg_names) == {p.name for p in (root / "bg").iterdir()}
    assert len(set(bg_names)) == s.n_bg
    for name in fg_names:
        fg, alpha = _rgb(root / "fg" / name), _gray(root / "alpha" / name)
        assert fg.shape[:2] == alpha.shape
        assert s.fg_size[0] <= min(alpha.shape) and max(alpha.shape) <= s.fg_size[1]
        assert alpha.max() == 255 and alpha.min() == 0
    for name in bg_names:
        bg = _rgb(root / "bg" / name)
        assert s.bg_size[0] <= min(bg.shape[:2]) and max(bg.shape[:2]) <= s.bg_size[1]

    for split, n_fg, per, (w, h) in (
        ("val", s.n_val_fg, s.val_per_fg, s.val_size),
        ("test", s.n_test_fg, s.test_per_fg, s.test_size),
    ):
        expected = sorted(f"{split}_fg_{i:03d}_{k}.png" for i in range(n_fg) for k in range(per))
        for sub in ("merged", "alpha_copy", "trimaps", "fg", "bg"):
            assert sorted(p.name for p in (root / split / sub).iterdir()) == expected, sub
        for name in expected:
            tri = _gray(root / split / "trimaps" / name)
            assert tri.shape == (h, w)
            assert set(np.unique(tri)) == {0, 128, 255}  # every trimap has all three regions
    meta = json.loads((root / "meta.json").read_text())
    assert meta["version"] == VERSION and meta["seed"] == 0
    assert meta["counts"] == {
        "train_fg": 4,
        "bg": 5,
        "train_pairs": 8,
        "val": 2,
        "test": 4,
    }
    # Nothing left over from generation next to the set (temporary folders are removed).
    assert [p.name for p in root.parent.iterdir() if ".tmp" in p.name] == []


def test_composite_identity(small_set):
    n = 0
    for split in ("val", "test"):
        for p in sorted((small_set / split / "merged").iterdir()):
            merged = _rgb(p).astype(np.float64)
            fg = _rgb(small_set / split / "fg" / p.name).astype(np.float64)
            bg = _rgb(small_set / split / "bg" / p.name).astype(np.float64)
            a = _gray(small_set / split / "alpha_copy" / p.name).astype(np.float64)[..., None]
            expected = np.rint(a / 255 * fg + (1 - a / 255) * bg)
            np.testing.assert_array_equal(merged, expected, err_msg=str(p))
            n += 1
    assert n == 2 + 8


def test_fractional_alpha_share(small_set):
    """At least 30% of the unknown pixels have 0.05 < alpha < 0.95, training and test alike."""
    lo, hi = 0.05 * 255, 0.95 * 255
    frac = tot = 0
    for p in sorted((small_set / "alpha").iterdir()):
        alpha = _gray(p)
        unknown = synthetic.band_trimap(alpha, synthetic.trimap_radius(10, alpha.shape)) == 128
        frac += int(((alpha > lo) & (alpha < hi) & unknown).sum())
        tot += int(unknown.sum())
    assert tot > 0 and frac / tot >= 0.30, frac / tot
    frac = tot = 0
    for split in ("val", "test"):
        for p in sorted((small_set / split / "alpha_copy").iterdir()):
            alpha = _gray(p)
            unknown = _gray(small_set / split / "trimaps" / p.name) == 128
            frac += int(((alpha > lo) & (alpha < hi) & unknown).sum())
            tot += int(unknown.sum())
    assert tot > 0 and frac / tot >= 0.30, frac / tot


def test_second_call_reuses(tmp_path):
    root = _gen(tmp_path / "s")
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    assert _gen(tmp_path / "s") == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_default_root_in_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("DIM_CACHE_DIR", str(tmp_path / "cache"))
    root = ensure_synthetic(seed=2, workers=1, progress=False, **TINY)
    assert root.parent == tmp_path / "cache" / "synthetic"
    assert root.name.startswith(f"v{VERSION}-s2-")
    assert is_complete(root, 2, Sizes(**TINY))
    other = synthetic.default_root(2, Sizes(**{**TINY, "n_bg": 6}))
    assert other != root  # other sizes, other folder


@pytest.mark.parametrize(
    "damage", ["no_marker", "truncated", "missing", "old_version", "other_generator"]
)
def test_partial_or_corrupted_set_is_regenerated(tmp_path, damage):
    root = _gen(tmp_path / "s")
    good = _files(root)
    victim = root / "test" / "merged" / "test_fg_000_0.png"
    if damage == "no_marker":  # a generation killed before it finished
        (root / MARKER).unlink()
    elif damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:100])
    elif damage == "missing":
        victim.unlink()
    else:  # made by an older release, or by edited generator code of the same VERSION
        meta = json.loads((root / "meta.json").read_text())
        key, value = ("version", VERSION - 1) if damage == "old_version" else ("generator", "x")
        (root / "meta.json").write_text(json.dumps({**meta, key: value}))
    assert not is_complete(root)
    assert _gen(tmp_path / "s") == root
    assert is_complete(root) and _files(root) == good


def test_other_sizes_in_same_folder_regenerate(tmp_path):
    root = _gen(tmp_path / "s")
    _gen(tmp_path / "s", n_train_fg=3)
    assert len((root / "training_fg_names.txt").read_text().split()) == 3


def test_refuses_to_overwrite_a_foreign_folder(tmp_path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "holiday.jpg").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="not a synthetic data folder"):
        _gen(root)
    assert (root / "holiday.jpg").read_bytes() == b"not ours"


def test_concurrent_callers_share_one_generation(tmp_path):
    results, errors = [], []

    def call():
        try:
            results.append(_gen(tmp_path / "s"))
        except Exception as e:  # surfaced by the assert below
            errors.append(e)

    threads = [threading.Thread(target=call) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    assert is_complete(results[0])
    assert [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []


def test_user_backgrounds_replace_generated_ones(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        coarse = rng.integers(0, 256, (4, 5, 3), np.uint8)  # smooth: JPEG keeps it close
        cv2.imwrite(str(photos / f"p{i}.png"), cv2.resize(coarse, (200, 150)))
    root = _gen(tmp_path / "s", bg_dir=photos)
    bgs = sorted((root / "bg").iterdir())
    assert len(bgs) == 5
    # Photos larger than the background size are scaled to fit it, keeping their aspect.
    assert all(_rgb(p).shape == (108, 144, 3) for p in bgs)
    photo = cv2.imread(str(photos / "p0.png"))
    resized = cv2.resize(photo, (144, 108), interpolation=cv2.INTER_AREA)
    err = [np.abs(_rgb(p).astype(int) - resized).mean() for p in bgs[:2]]
    assert err[0] < 3 < 10 < err[1], err  # bg_0000 is a JPEG of p0, bg_0001 of p1
    assert json.loads((root / "meta.json").read_text())["bg_dir"] == str(photos.resolve())
    with pytest.raises(FileNotFoundError, match="no images"):
        _gen(tmp_path / "t", bg_dir=tmp_path / "s" / "val")  # folder of folders, no images


def test_cli_and_bad_sizes(tmp_path, capsys):
    args = ["--out", str(tmp_path / "c"), "--seed", "1", "--workers", "1"]
    for k, v in TINY.items():
        flag = "--" + k.replace("_", "-")
        args += [flag, f"{v[0]},{v[1]}" if isinstance(v, tuple) else str(v)]
    root = synthetic.main(args)
    assert is_complete(root, 1, Sizes(**TINY))
    assert "synthetic set" in capsys.readouterr().out
    with pytest.raises(ValueError, match="bad size"):
        Sizes(n_train_fg=-1)
    with pytest.raises(TypeError, match="unknown size"):
        ensure_synthetic(tmp_path / "x", n_fg=3)
    with pytest.raises(SystemExit):
        synthetic.main(["--out", str(tmp_path / "d"), "--fg-size", "12"])


def test_script_runs_by_path(tmp_path):
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "data/synthetic.py", "--help"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "--n-train-fg" in out.stdout and "--bg-dir" in out.stdout


def test_calibration_baselines_on_the_set(small_set):
    """Neither constant is near perfect on the test split: the unknown band holds real work."""
    from data.testsets import load_composition1k
    from utils.baselines import trimap_only, zeros
    from utils.evaluation import score

    examples = load_composition1k(small_set / "test")
    assert len(examples) == 8
    _, half = score(examples, trimap_only)
    _, zero = score(examples, zeros)
    assert min(half["sad"], zero["sad"]) > 1.0


@pytest.mark.slow
def test_closed_form_beats_trimap_only(small_set):
    """The set is neither trivial nor hopeless for a classical method (pymatting; its first
    import compiles with numba, ~45 s)."""
    pytest.importorskip("pymatting")
    from data.testsets import load_composition1k
    from utils.baselines import closed_form, trimap_only
    from utils.evaluation import score

    examples = load_composition1k(small_set / "test")[:4]
    _, cf = score(examples, closed_form)
    _, base = score(examples, trimap_only)
    assert cf["sad"] < 0.6 * base["sad"]


def test_photographs_feed_training_only_and_leave_eval_splits_unchanged(tmp_path):
    """--photo-dir: some training backgrounds are views of the photographs, the validation
    and test composites are byte-identical to a set made without photographs (so numbers
    measured on them stay comparable), and the cache key follows the folder."""
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        img = np.zeros((160, 200, 3), np.uint8)
        img[:, :, i] = 200  # a pure red / pure green photograph: easy to recognise
        img[:, :, 2] = rng.integers(0, 40, (160, 200), dtype=np.uint8)
        cv2.imwrite(str(photos / f"p{i}.png"), img)
    with_photos = _gen(tmp_path / "a", photo_dir=photos, n_bg=12)
    without = _gen(tmp_path / "b", photo_dir="none", n_bg=12)
    meta = json.loads((with_photos / "meta.json").read_text())
    assert meta["photos"] == ["p0.png", "p1.png"]
    for split in ("val", "test"):
        files = sorted(p.relative_to(with_photos) for p in (with_photos / split).rglob("*.png"))
        assert files
        for f in files:
            assert (with_photos / f).read_bytes() == (without / f).read_bytes(), f
    # A background cut from these photographs is strongly red or green against blue.
    from_photo = 0
    for p in sorted((with_photos / "bg").iterdir()):
        r, g, b = _rgb(p).astype(np.float32).mean(axis=(0, 1))
        from_photo += int(max(r, g) - b > 60)
    assert 2 <= from_photo < 12, from_photo
    assert synthetic.default_root(0, photo_dir=photos) != synthetic.default_root(
        0, photo_dir="none"
    )
    with pytest.raises(FileNotFoundError, match="--photo-dir"):
        synthetic.list_photos(tmp_path / "missing")
    assert synthetic.list_photos("none") == []


def test_solid_training_structure_is_opaque_with_thin_edges():
    """The training-only "solid" structure: mostly exactly 0 or 1, fractional only along a
    thin anti-aliased edge, and never empty; each kind (foliage, twigs, holes) is drawn."""
    for seed in range(6):
        cov = synthetic.solid_shape(np.random.default_rng(seed), 400, 440)
        inside, frac = (cov >= 0.999).mean(), ((cov > 0.001) & (cov < 0.999)).mean()
        assert 0.05 < inside < 0.9, (seed, inside)
        assert frac < 0.25 * inside, (seed, frac, inside)
    assert set(synthetic.PRIMARY) < set(synthetic.TRAIN_PRIMARY)
