"""predict.py: image + trimap -> alpha, RGBA cut-out, composite; folders; errors naming the file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import predict
from benchmarks.bench_page import png_header
from data import compose
from data.testsets import open_testset
from tests.helpers import random_checkpoint
from utils import matting
from utils.image_io import read_gray, read_rgb, write_png

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("run") / "demo" / "stage2" / "best.pt"
    return random_checkpoint(path, stage=2, fc6="conv1x1")


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """Two small composites of the synthetic test split with their trimaps, and a background."""
    d = tmp_path_factory.mktemp("inputs")
    for i, name in enumerate(("cat", "dog")):
        ex = open_testset("synthetic")[i * 5]
        image = cv2.resize(ex.image, (160, 120), interpolation=cv2.INTER_AREA)
        trimap = cv2.resize(ex.trimap, (160, 120), interpolation=cv2.INTER_NEAREST)
        write_png(d / "images" / f"{name}.png", image)
        write_png(d / "trimaps" / f"{name}.png", trimap)
    write_png(d / "trimaps" / "unused.png", trimap)  # extra trimaps are ignored
    rng = np.random.default_rng(0)
    write_png(d / "bg.png", rng.integers(0, 256, (50, 90, 3), dtype=np.uint8))
    return {"dir": d, "image": d / "images" / "cat.png", "trimap": d / "trimaps" / "cat.png"}


def read_rgba(path: Path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)


# --- end to end ------------------------------------------------------------------------------
@pytest.mark.slow
def test_cli_alpha_rgba_and_composite(checkpoint, inputs, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, "predict.py", "--checkpoint", str(checkpoint), "--device", "cpu"]
    cmd += ["--image", str(inputs["image"]), "--trimap", str(inputs["trimap"])]
    cmd += ["--out", str(out), "--background", str(inputs["dir"] / "bg.png")]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "cat_alpha.png",
        "cat_composite.png",
        "cat_method.txt",
        "cat_rgba.png",
    ]
    assert "Deep Image Matting" in (out / "cat_method.txt").read_text()
    image, trimap = read_rgb(inputs["image"]), read_gray(inputs["trimap"])
    alpha = read_gray(out / "cat_alpha.png")
    assert alpha.shape == trimap.shape
    assert (alpha[trimap == 0] == 0).all() and (alpha[trimap == 255] == 255).all()

    rgba = read_rgba(out / "cat_rgba.png")
    assert rgba.shape == (*trimap.shape, 4)
    np.testing.assert_array_equal(rgba[..., 3], alpha)
    # estimated foreground colours: the image where the matte is opaque, new values elsewhere
    opaque, soft = alpha == 255, (alpha > 10) & (alpha < 245)
    assert np.abs(rgba[..., :3].astype(int) - image)[opaque].mean() < 2.0
    assert soft.any() and (rgba[..., :3] != image)[soft].any()

    comp = read_rgb(out / "cat_composite.png")
    bg = compose.cover_background(read_rgb(inputs["dir"] / "bg.png"), trimap.shape)
    np.testing.assert_array_equal(comp[alpha == 0], bg[alpha == 0])
    np.testing.assert_array_equal(comp[opaque], rgba[..., :3][opaque])


def test_tta_flag_reaches_the_network(checkpoint, inputs, tmp_path):
    """--tta flip averages the network over the mirror: another alpha than --tta none, which
    is the default and equals a run without the flag."""
    image, trimap = inputs["dir"] / "images" / "cat.png", inputs["dir"] / "trimaps" / "cat.png"
    argv = ["--checkpoint", str(checkpoint), "--device", "cpu", "--fg-method", "none",
            "--image", str(image), "--trimap", str(trimap), "--infer-scale", "1"]  # fmt: skip
    alphas = {}
    for name, extra in (("plain", []), ("none", ["--tta", "none"]), ("flip", ["--tta", "flip"])):
        assert predict.main([*argv, *extra, "--out", str(tmp_path / name)]) == 0
        alphas[name] = read_gray(tmp_path / name / "cat_alpha.png")
    np.testing.assert_array_equal(alphas["plain"], alphas["none"])
    assert (alphas["flip"] != alphas["none"]).any()


def test_folders_in_folder_out(checkpoint, inputs, tmp_path):
    out = tmp_path / "out"
    argv = ["--checkpoint", str(checkpoint.parents[1]), "--device", "cpu", "--fg-method", "none"]
    argv += ["--image", str(inputs["dir"] / "images"), "--trimap", str(inputs["dir"] / "trimaps")]
    assert predict.main([*argv, "--out", str(out), "--stage", "2"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        f"{n}_{k}" for n in ("cat", "dog") for k in ("alpha.png", "method.txt", "rgba.png")
    ]
    # --fg-method none keeps the image's colours in the cut-out
    rgba = read_rgba(out / "dog_rgba.png")
    np.testing.assert_array_equal(rgba[..., :3], read_rgb(inputs["dir"] / "images" / "dog.png"))


# --- errors ----------------------------------------------------------------------------------
@pytest.fixture
def run_error(checkpoint, inputs, tmp_path, capsys):
    """Run predict.main expecting exit code 2; return the error message."""

    def run(image=None, trimap=None, *extra: str, ckpt=None) -> str:
        argv = ["--checkpoint", str(ckpt or checkpoint), "--device", "cpu", "--fg-method", "none"]
        argv += [
            "--image",
            str(image or inputs["image"]),
            "--trimap",
            str(trimap or inputs["trimap"]),
        ]
        assert predict.main([*argv, "--out", str(tmp_path / "err_out"), *extra]) == 2
        return capsys.readouterr().err

    return run


def test_error_size_mismatch(run_error, inputs, tmp_path):
    trimap = tmp_path / "small.png"
    write_png(trimap, read_gray(inputs["trimap"])[:100])
    msg = run_error(None, trimap)
    assert "160x120 (WxH)" in msg and "160x100" in msg and str(trimap) in msg


def test_error_jpeg_trimap_then_snap(run_error, checkpoint, inputs, tmp_path):
    jpg = tmp_path / "cat.jpg"
    cv2.imwrite(str(jpg), read_gray(inputs["trimap"]), [cv2.IMWRITE_JPEG_QUALITY, 75])
    msg = run_error(None, jpg)
    assert str(jpg) in msg and "distinct values" in msg and "JPEG" in msg
    assert "--snap-trimap" in msg
    argv = ["--checkpoint", str(checkpoint), "--device", "cpu", "--fg-method", "none"]
    argv += ["--image", str(inputs["image"]), "--trimap", str(jpg), "--snap-trimap"]
    assert predict.main([*argv, "--out", str(tmp_path / "snapped")]) == 0


def test_error_antialiased_trimap(run_error, inputs, tmp_path):
    blurred = tmp_path / "blurred.png"
    write_png(blurred, cv2.GaussianBlur(read_gray(inputs["trimap"]), (5, 5), 0))
    msg = run_error(None, blurred)
    assert "anti-aliased" in msg and "nearest-neighbour" in msg and str(blurred) in msg


def test_error_unreadable_file(run_error, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    msg = run_error(broken, None)
    assert str(broken) in msg


def test_error_checkpoints(run_error, tmp_path):
    foreign = tmp_path / "resnet.pt"
    torch.save({"state_dict": {"fc.weight": torch.zeros(2, 2)}}, foreign)
    assert "not a Deep Image Matting checkpoint" in run_error(None, None, ckpt=foreign)
    msg = run_error(None, None, "--stage", "3")
    assert "stage-2 checkpoint but stage 3" in msg


def test_error_unmatched_folders(run_error, inputs, tmp_path):
    (tmp_path / "imgs").mkdir()
    write_png(tmp_path / "imgs" / "cow.png", read_rgb(inputs["image"]))
    msg = run_error(tmp_path / "imgs", inputs["dir"] / "trimaps")
    assert "no trimap with the same stem" in msg and "cow" in msg
    assert "one file" in run_error(tmp_path / "imgs", inputs["trimap"])


# --- helpers ---------------------------------------------------------------------------------
def test_check_and_snap_trimap():
    t = np.array([[0, 3, 60, 64], [127, 128, 190, 192], [250, 255, 255, 0]], np.uint8)
    np.testing.assert_array_equal(
        compose.quantize_trimap(t), [[0, 0, 0, 128], [128, 128, 128, 255], [255, 255, 255, 0]]
    )
    predict.check_trimap(compose.quantize_trimap(t), "ok.png")
    with pytest.raises(predict.InputError, match="0/1 mask"):
        predict.check_trimap(np.array([[0, 1]], np.uint8), "mask.png")
    with pytest.raises(predict.InputError, match="0/1/2 label map"):
        predict.check_trimap(np.array([[0, 1, 2]], np.uint8), "labels.png")


def test_fit_background_covers_and_centres():
    bg = np.zeros((50, 100, 3), np.uint8)
    bg[:, 45:55] = 255  # a bright stripe in the middle stays in the middle
    out = compose.cover_background(bg, (120, 160))
    assert out.shape == (120, 160, 3)
    cols = np.flatnonzero(out[60, :, 0] > 128)
    assert abs((cols.min() + cols.max()) / 2 - 79.5) <= 2
    assert compose.cover_background(np.zeros((400, 300, 3), np.uint8), (120, 160)).shape == (
        120,
        160,
        3,
    )


def test_composite_math():
    fg = np.full((2, 2, 3), 255, np.uint8)
    bg = np.zeros((2, 2, 3), np.uint8)
    alpha = np.array([[0, 0.5], [1, 0.25]], np.float32)
    out = matting.composite_on(fg, alpha, bg)
    np.testing.assert_array_equal(out[..., 0], [[0, 128], [255, 64]])


# --- from a rough mask -----------------------------------------------------------------------
def _disc_mask(h=60, w=80, r=18, cy=30, cx=40) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).astype(np.uint8) * 255


@pytest.mark.parametrize("band", [1, 3, 7])
def test_trimap_from_mask_band_width(band):
    """The unknown band reaches exactly ``band`` px on each side of the mask's edge."""
    mask = _disc_mask()
    tri = compose.trimap_from_mask(mask, band)
    assert set(np.unique(tri)) == {0, 128, 255}
    inside = cv2.distanceTransform((mask > 0).astype(np.uint8), cv2.DIST_L2, 5)
    outside = cv2.distanceTransform((mask == 0).astype(np.uint8), cv2.DIST_L2, 5)
    # object pixels deeper than band are foreground, background pixels farther than band
    # are background, and everything within band of the edge is unknown
    assert (tri[inside > band + 0.5] == 255).all() and (tri[outside > band + 0.5] == 0).all()
    assert (tri[(inside > 0) & (inside <= band - 0.5)] == 128).all()
    assert (tri[(outside > 0) & (outside <= band - 0.5)] == 128).all()


def test_trimap_from_mask_odd_sizes_and_soft_masks():
    mask = _disc_mask(37, 53, 12, 18, 26)
    assert compose.trimap_from_mask(mask, 2).shape == (37, 53)
    soft = cv2.GaussianBlur(mask, (0, 0), 4)  # a segmentation network's soft edge
    tri = compose.trimap_from_mask(soft, 2)
    uncertain = (soft >= 16) & (soft <= 240)
    assert (tri[uncertain] == 128).all(), "the soft zone is unknown, whatever the band"
    assert (tri == 255).any() and (tri == 0).any()
    assert compose.trimap_from_mask(mask.astype(np.float32) / 255, 2).dtype == np.uint8


def test_band_spec_pixels_or_percent_of_diagonal():
    assert compose.band_pixels("12", (600, 800)) == 12
    assert compose.band_pixels("1%", (600, 800)) == 10  # diagonal 1000
    assert compose.band_pixels("0.01%", (60, 80)) == 1  # never below one pixel
    for bad in ("abc", "-3", "0", "%"):
        with pytest.raises(ValueError, match="--band"):
            compose.band_pixels(bad, (600, 800))


def test_mask_inputs_that_cannot_work_are_explained(tmp_path):
    img = np.zeros((60, 80, 3), np.uint8)
    write_png(tmp_path / "photo.png", img)
    cases = {
        "empty": (np.zeros((60, 80), np.uint8), "is empty"),
        "full": (np.full((60, 80), 255, np.uint8), "covers the whole image"),
        "small": (np.zeros((30, 40), np.uint8), "must be the same size"),
        "thin": (_disc_mask(r=3), "no definite foreground"),
    }
    for name, (mask, message) in cases.items():
        write_png(tmp_path / f"{name}.png", mask)
        job = predict.Job("photo", tmp_path / "photo.png", tmp_path / f"{name}.png", "mask")
        with pytest.raises(predict.InputError, match=message):
            predict.read_inputs(job, band="5")
    with pytest.raises(predict.InputError, match="--band"):
        predict.read_inputs(
            predict.Job("photo", tmp_path / "photo.png", tmp_path / "thin.png", "mask"), band="x"
        )


@pytest.mark.slow
def test_cli_mask_and_closed_form_without_checkpoint(inputs, tmp_path):
    """No trimap and no model: a rough mask + closed-form matting still gives a real matte,
    labelled with its method, with the trimap used written beside it."""
    trimap = read_gray(inputs["trimap"])
    mask = np.where(trimap == 255, 255, 0).astype(np.uint8)
    mask[trimap == 128] = 255 * (np.arange((trimap == 128).sum()) % 2)  # a rough selection
    write_png(tmp_path / "cat_mask.png", mask)
    out = tmp_path / "out"
    argv = ["--method", "closed-form", "--image", str(inputs["image"]), "--fg-method", "none",
            "--mask", str(tmp_path / "cat_mask.png"), "--band", "4", "--out", str(out)]  # fmt: skip
    assert predict.main(argv) == 0
    used = read_gray(out / "cat_trimap.png")
    alpha = read_gray(out / "cat_alpha.png")
    assert set(np.unique(used)) <= {0, 128, 255} and (used == 128).any()
    assert (alpha[used == 0] == 0).all() and (alpha[used == 255] == 255).all()
    assert 0 < np.mean((alpha > 0) & (alpha < 255))
    assert "closed-form" in (out / "cat_method.txt").read_text()
    # the written trimap goes back in as --trimap and gives the same matte
    out2 = tmp_path / "out2"
    argv2 = ["--method", "closed-form", "--image", str(inputs["image"]), "--trimap",
             str(out / "cat_trimap.png"), "--out", str(out2), "--fg-method", "none"]  # fmt: skip
    assert predict.main(argv2) == 0
    np.testing.assert_array_equal(read_gray(out2 / "cat_alpha.png"), alpha)
    assert predict.main([*argv, "--checkpoint", str(inputs["image"])]) == 2  # not with a model


def test_huge_declared_image_is_refused_from_the_header(tmp_path, capsys):
    import time
    import tracemalloc

    png_header(tmp_path / "huge.png", 30000, 30000)
    write_png(tmp_path / "tri.png", np.zeros((8, 8), np.uint8))
    tracemalloc.start()
    t0 = time.perf_counter()
    argv = ["--method", "closed-form", "--image", str(tmp_path / "huge.png"), "--trimap",
            str(tmp_path / "tri.png"), "--out", str(tmp_path / "o")]  # fmt: skip
    assert predict.main(argv) == 2
    seconds = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    err = capsys.readouterr().err
    assert "huge.png" in err and "30000x30000" in err and "--max-pixels" in err
    assert seconds < 1.0 and peak < 50 * 2**20, (seconds, peak)


def test_trimap_without_unknown_pixels_never_runs_the_network():
    from utils.inference import predict_alpha

    class Boom(torch.nn.Module):
        receptive_field, stride = 221, 32

        def forward(self, x):
            raise AssertionError("the network must not run")

    trimap = np.zeros((40, 50), np.uint8)
    trimap[10:30, 10:40] = 255
    alpha = predict_alpha(Boom(), np.zeros((40, 50, 3), np.uint8), trimap, device="cpu")
    np.testing.assert_array_equal(alpha, trimap / 255.0)
