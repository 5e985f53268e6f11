"""Hostile inputs to the command lines, each one line and exit 2 (or a correct matte): images
smaller than the network's stride, oversized masks and image headers, output paths that are
files or lie under files, and checkpoints whose weights do not fit the model."""

from __future__ import annotations

import errno
import logging
import struct
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import predict
from benchmarks.bench_page import png_header
from models.py_encoder_decoder import DIM, ModelConfig
from tests.helpers import random_checkpoint
from utils.checkpoint import CheckpointError, load_model_for_inference, save_checkpoint
from utils.image_io import decode, image_size, read_gray, write_png
from utils.visdom_frontend import free_port


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("run") / "tiny" / "stage2" / "best.pt"
    return random_checkpoint(path, stage=2, fc6="conv1x1")


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def exit_code(fn, argv) -> int:
    """A main's exit status, whether it returns it or argparse exits."""
    try:
        return fn(argv)
    except SystemExit as e:
        return e.code


# --- tiny images -----------------------------------------------------------------------------
TINY = [(1, 1), (1, 2), (2, 1), (2, 2), (1, 40), (40, 1), (5, 7), (31, 31), (33, 2)]


def tiny_pair(tmp_path: Path, h: int, w: int) -> tuple[Path, Path, np.ndarray]:
    rng = np.random.default_rng(h * 100 + w)
    trimap = np.full((h, w), 128, np.uint8)
    flat = trimap.reshape(-1)
    if flat.size >= 3:  # a sure background and foreground pixel when there is room
        flat[0], flat[-1] = 0, 255
    write_png(tmp_path / "img.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    write_png(tmp_path / "tri.png", trimap)
    return tmp_path / "img.png", tmp_path / "tri.png", trimap


@pytest.mark.parametrize(("h", "w"), TINY, ids=[f"{h}x{w}" for h, w in TINY])
def test_images_smaller_than_the_stride_are_matted_or_refused_in_one_line(
    checkpoint, tmp_path, capsys, h, w
):
    """DIM pads any size up to its stride: every tiny image is matted (alpha of the image's
    size, exact where the trimap is sure; one pixel too, foreground colours included).
    Closed-form matting needs sure foreground and background: refused in one line when the
    trimap has none, matted otherwise (sides under 3 px are padded for its 3x3 windows)."""
    image, tri, trimap = tiny_pair(tmp_path, h, w)
    common = ["--image", str(image), "--trimap", str(tri), "--fg-method", "ml"]
    for method in (
        ["--checkpoint", str(checkpoint), "--device", "cpu"],
        ["--method", "closed-form"],
    ):
        out = tmp_path / ("out" + method[0])
        code = predict.main([*method, *common, "--out", str(out)])
        if code == 2:
            assert method[0] == "--method" and trimap.size < 3, (h, w)
            assert "needs sure" in one_line(capsys)
            continue
        assert code == 0, (method, h, w)
        alpha = read_gray(out / "img_alpha.png")
        assert alpha.shape == (h, w)
        assert (alpha[trimap == 0] == 0).all() and (alpha[trimap == 255] == 255).all()
        assert cv2.imread(str(out / "img_rgba.png"), cv2.IMREAD_UNCHANGED).shape == (h, w, 4)


# --- oversized masks and hostile headers -----------------------------------------------------
def bmp_header_only(path: Path, w: int, h: int) -> None:
    """A BMP file header + BITMAPINFOHEADER declaring w x h, no pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    path.write_bytes(b"BM" + struct.pack("<IHHI", 54, 0, 0, 54) + info + b"\0" * 16)


@pytest.mark.parametrize(
    ("make", "w", "h", "says"),
    [
        (png_header, 60000, 60000, "--max-pixels"),  # above the limit
        (png_header, 9000, 9000, "must be the same size"),  # below it, not the image's
        (bmp_header_only, 60000, 60000, "--max-pixels"),  # a format read from its header too
    ],
)
def test_oversized_mask_is_refused_from_its_header(tmp_path, capsys, make, w, h, says):
    image, _, _ = tiny_pair(tmp_path, 40, 50)
    mask = tmp_path / ("mask.bmp" if make is bmp_header_only else "mask.png")
    make(mask, w, h)
    argv = ["--method", "closed-form", "--image", str(image), "--mask", str(mask)]
    tracemalloc.start()
    t0 = time.perf_counter()
    assert predict.main([*argv, "--out", str(tmp_path / "o")]) == 2
    seconds, (_, peak) = time.perf_counter() - t0, tracemalloc.get_traced_memory()
    tracemalloc.stop()
    msg = one_line(capsys)
    assert str(mask) in msg and says in msg and f"{w}x{h}" in msg, msg
    assert seconds < 1.0 and peak < 50 * 2**20, (seconds, peak)
    assert not (tmp_path / "o").exists()


def test_a_header_opencv_refuses_to_decode_is_one_line(tmp_path, capsys):
    """With the limit raised, a 60000x60000 BMP reaches the decoder, which refuses it: one
    line (an ImageReadError), not OpenCV's assertion traceback."""
    bmp_header_only(tmp_path / "huge.bmp", 60000, 60000)
    huge = str(tmp_path / "huge.bmp")
    argv = ["--method", "closed-form", "--image", huge, "--trimap", huge,
            "--max-pixels", str(10**10), "--out", str(tmp_path / "o")]  # fmt: skip
    assert predict.main(argv) == 2
    msg = one_line(capsys)
    assert "huge.bmp" in msg and "cannot decode" in msg, msg


@pytest.mark.parametrize(
    ("ext", "params", "shape"),
    [
        (".bmp", [], (37, 53, 3)),
        (".bmp", [], (300, 2)),
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80], (37, 53, 3)),  # lossy: VP8
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101], (37, 53, 3)),  # lossless: VP8L
        (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80], (300, 2, 4)),  # alpha: VP8X
        (".tif", [], (37, 53)),
        (".tif", [], (1, 1, 3)),
    ],
)
def test_image_size_reads_bmp_webp_and_tiff_headers(tmp_path, monkeypatch, ext, params, shape):
    """Sizes come from the header (the decoder is never called) and match the decoded image."""
    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    ok, buf = cv2.imencode(ext, img, params)
    assert ok
    path = tmp_path / f"a{ext}"
    buf.tofile(path)
    want = decode(path).shape[:2]

    def no_decoding(*_):
        raise AssertionError("image_size decoded the file")

    monkeypatch.setattr("utils.image_io.decode", no_decoding)
    assert image_size(path) == want == shape[:2]


# --- output paths ----------------------------------------------------------------------------
@pytest.fixture
def a_file(tmp_path) -> Path:
    path = tmp_path / "taken.png"
    write_png(path, np.zeros((4, 4), np.uint8))
    return path


def test_out_that_is_a_file_or_lies_under_one_is_one_line(checkpoint, tmp_path, a_file, capsys):
    import evaluate
    import export

    image, tri, _ = tiny_pair(tmp_path, 8, 8)
    cases = [
        (predict.main, ["--image", str(image), "--trimap", str(tri), "--out", str(a_file)],
         "is a file"),
        (predict.main, ["--image", str(image), "--trimap", str(tri), "--out",
                        str(a_file / "sub")], "lies under"),
        (evaluate.main, ["--method", "trimap-only", "--out", str(a_file)], "is a file"),
        (evaluate.main, ["--method", "trimap-only", "--out", str(a_file / "o")], "lies under"),
        (export.main, ["--checkpoint", str(checkpoint), "--out", str(a_file / "m.onnx")],
         "lies under"),
        (export.main, ["--checkpoint", str(checkpoint), "--out", str(tmp_path)], "is a folder"),
    ]  # fmt: skip
    for main, argv, says in cases:
        assert exit_code(main, argv) == 2, argv
        msg = one_line(capsys)
        assert "--out" in msg and says in msg, msg
    assert a_file.is_file()


def test_results_that_cannot_be_written_are_one_line(tmp_path, monkeypatch, capsys):
    """A write that fails mid-run (a full disk) is one line naming the file, not a traceback."""
    image, tri, _ = tiny_pair(tmp_path, 8, 8)

    def full(path, arr):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(predict, "write_png", full)
    argv = ["--method", "closed-form", "--image", str(image), "--trimap", str(tri),
            "--fg-method", "none", "--out", str(tmp_path / "o")]  # fmt: skip
    assert predict.main(argv) == 2
    msg = one_line(capsys)
    assert "--out" in msg and "img_alpha.png" in msg and "No space left" in msg, msg


# --- checkpoints whose weights do not fit ----------------------------------------------------
def lying_checkpoint(path: Path, weights_config: dict, claimed: dict, stage: int = 1, **extra):
    """A checkpoint whose weights are of ``weights_config`` but whose model_config says
    ``claimed`` (a file edited by hand, or written by other code)."""
    torch.manual_seed(0)
    model = DIM(ModelConfig(refine=stage > 1, **weights_config))
    state = {"model": model.state_dict(), "model_config": ModelConfig(refine=stage > 1, **claimed)
             .to_dict(), "stage": stage, "config": {}, "epoch": 0, **extra}  # fmt: skip
    return save_checkpoint(path, state)


@pytest.mark.parametrize(
    ("weights", "claimed", "key", "flag"),
    [
        ({"skip": "concat"}, {"skip": "add"}, "decoder.", "--skip concat"),  # shapes differ
        ({"fc6": "conv1x1"}, {"fc6": "transmap"}, "encoder.fc6", "--fc6 conv1x1"),  # keys differ
    ],
)
def test_inference_checkpoint_that_does_not_fit_names_key_shapes_and_flag(
    tmp_path, weights, claimed, key, flag
):
    path = lying_checkpoint(tmp_path / "lying.pt", weights, claimed)
    with pytest.raises(CheckpointError) as e:
        load_model_for_inference(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and key in msg and flag in msg, msg
    if "skip" in weights:
        assert msg.count("[") >= 2, msg  # both shapes


def _train_args(runs: Path, *extra: str) -> list[str]:
    return ["--runs-dir", str(runs), "--device", "cpu", "--threads", "1", "--workers", "0",
            "--no-visdom", "--cache-dir", str(runs / "cache"), *extra]  # fmt: skip


def test_init_checkpoint_of_another_model_names_the_flag_that_matches(tmp_path, caplog):
    """--init of a stage-1 checkpoint trained with --skip concat into a --skip add run: one
    line naming the first key whose shapes differ, both shapes, and --skip concat; refused
    before the data set-up (the synthetic set is never built here)."""
    import train_encoder_decoder as tr

    init = lying_checkpoint(tmp_path / "s1.pt", {"skip": "concat"}, {"skip": "concat"})
    caplog.set_level(logging.ERROR)
    args = _train_args(tmp_path / "runs", "--stage", "2", "--skip", "add", "--init", str(init))
    assert tr.main(args) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    msg = errors[0]
    assert "--init" in msg and str(init) in msg and "decoder." in msg and msg.count("[") >= 2
    assert "--skip concat" in msg, msg
    assert not (tmp_path / "runs" / "dim").exists()


def test_resume_checkpoint_whose_weights_lie_names_the_flag_that_fits(tmp_path, caplog):
    """A last.pt whose stored model_config matches the command line but whose weights are of
    another model (edited, or written by other code): one line, not a size-mismatch
    traceback, naming the key, both shapes and the flag the weights fit."""
    import train_encoder_decoder as tr

    resumable = {"optimizer": {}, "scheduler": {}, "scaler": {}, "rng": {}, "iteration": 1}
    last = lying_checkpoint(tmp_path / "last.pt", {"fc6": "transmap", "skip": "concat"},
                            {"fc6": "transmap", "skip": "add"}, **resumable)  # fmt: skip
    caplog.set_level(logging.ERROR)
    args = _train_args(tmp_path / "runs", "--stage", "1", "--resume", str(last))
    assert tr.main(args) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    msg = errors[0]
    assert "--resume" in msg and "decoder." in msg and "--skip concat" in msg, msg


# --- stored settings ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "key, value",
    [("infer_scale", -1.0), ("infer_scale", float("nan")), ("crop_size", 0), ("stage", 7)],
)
def test_a_checkpoint_whose_stored_settings_are_out_of_range_is_refused_on_load(
    checkpoint, tmp_path, capsys, key, value
):
    """Refused when loaded, by every entry point, naming the key: not at the first matte."""
    import demo
    import evaluate
    import export

    state = torch.load(checkpoint, weights_only=True)
    if key == "stage":
        state["stage"] = value
    else:
        state["config"] = {**state["config"], key: value}
    bad = save_checkpoint(tmp_path / "bad.pt", state)
    with pytest.raises(CheckpointError, match=key):
        load_model_for_inference(bad)
    image, trimap, tri = tiny_pair(tmp_path, 40, 40)
    testset = tmp_path / "testset"
    write_png(testset / "images" / "x.png", read_gray(image))
    write_png(testset / "trimaps" / "x.png", tri)
    write_png(testset / "alphas" / "x.png", tri)
    for fn, argv in [
        (predict.main, ["--checkpoint", str(bad), "--image", str(image), "--trimap", str(trimap),
                        "--out", str(tmp_path / "out")]),
        (evaluate.main, ["--checkpoint", str(bad), "--testset", str(testset), "--limit", "1"]),
        (export.main, ["--checkpoint", str(bad), "--out", str(tmp_path / "m.onnx")]),
        (demo.main, ["--checkpoint", str(bad), "--port", str(free_port())]),
    ]:  # fmt: skip
        capsys.readouterr()
        code = exit_code(fn, argv)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and key in err[0], (fn.__module__, code, err)
