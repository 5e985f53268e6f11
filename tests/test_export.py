"""export.py and utils/onnx_inference.py: the ONNX export reproduces PyTorch, predict.py --onnx
writes the same alpha as --checkpoint without importing torch, and foreign files are refused."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

import export
import predict
from data import layout
from models.py_encoder_decoder import DIM
from utils.checkpoint import load_model_for_inference, save_checkpoint
from utils.image_io import read_gray, read_rgb, write_png
from utils.inference import predict_alpha
from utils.onnx_inference import OnnxModelError, load_onnx_model

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "2"}


def sharp_model(refine: bool = True) -> DIM:
    """A random-init DIM whose alphas span (0, 1) and whose refine head changes them.

    At random init the logits are ~1e-3 (alpha ~0.5 everywhere) and the refine head's last
    conv is zero (refined == raw): an export that got unpooling or the head wrong could still
    match. Scaling the last decoder layer and re-initialising the head's last conv exposes both.
    """
    torch.manual_seed(0)
    model = DIM(fc6="conv1x1", refine=refine).eval()
    with torch.no_grad():
        model.decoder.pred.weight.mul_(300.0)
        if refine:
            torch.nn.init.normal_(model.refine_head.body[-1].weight, std=0.5)
    return model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    model = sharp_model()
    path = tmp_path_factory.mktemp("run") / "demo" / "stage2" / "best.pt"
    state = {"model": model.state_dict(), "model_config": model.config.to_dict(), "stage": 2}
    return save_checkpoint(path, {**state, "config": {}, "epoch": 0})


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory) -> Path:
    """The checkpoint exported through the command line, from its run folder."""
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    cmd = [sys.executable, "export.py", "--checkpoint", str(checkpoint.parents[1])]
    proc = subprocess.run(
        [*cmd, "--out", str(out)], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out}" in proc.stdout and "alpha_raw, alpha_refined" in proc.stdout
    return out


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A 120x160 image with an object, its trimap (all three values) and a background."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:120, :160]
    r = np.hypot(yy - 60, xx - 80)
    image = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
    image[r < 35] = (230, 180, 40)
    trimap = np.where(r < 28, 255, np.where(r < 44, 128, 0)).astype(np.uint8)
    write_png(d / "cat.png", image)
    write_png(d / "cat_trimap.png", trimap)
    return {"image": d / "cat.png", "trimap": d / "cat_trimap.png"}


def random_data(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """(n, 4, h, w) network input as the inference path builds it (layout.make_data)."""
    rng = np.random.default_rng(seed)
    return np.stack(
        [
            layout.make_data(
                rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
                rng.choice(np.array([0, 128, 255], np.uint8), size=(h, w)),
            )
            for _ in range(n)
        ]
    )


# --- the export reproduces PyTorch -----------------------------------------------------------
@pytest.mark.parametrize(("h", "w"), [(64, 96), (96, 128)])
def test_onnxruntime_matches_pytorch_raw_and_refined(checkpoint, exported, h, w):
    model, _, _ = load_model_for_inference(checkpoint)
    onnx_model = load_onnx_model(exported)
    x = random_data(2, h, w, seed=h)
    with torch.no_grad():
        raw, refined = model(torch.from_numpy(x))
    got = onnx_model.run(x)
    assert got["alpha_raw"].shape == got["alpha_refined"].shape == (2, 1, h, w)
    assert raw.std() > 0.05 and (refined - raw).abs().max() > 0.05  # the check can fail
    np.testing.assert_allclose(got["alpha_raw"], raw.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(got["alpha_refined"], refined.numpy(), atol=1e-4, rtol=0)


def test_metadata_names_repository_config_stage_and_source(checkpoint, exported):
    m = load_onnx_model(exported, stage=2)
    assert m.metadata["repository"] == "deep-image-matting" and m.stage == 2
    model = sharp_model()
    assert m.config == json.loads(m.metadata["model_config"]) == model.config.to_dict()
    assert (m.receptive_field, m.stride) == (model.receptive_field, model.stride) == (189, 32)
    assert m.metadata["source_checkpoint"] == str(checkpoint)
    with pytest.raises(OnnxModelError, match="stage-2 checkpoint but stage 3"):
        load_onnx_model(exported, stage=3)


def test_tiled_onnx_inference_equals_whole_image(exported):
    m = load_onnx_model(exported)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (64, 320, 3), dtype=np.uint8)
    trimap = np.full((64, 320), 128, np.uint8)
    whole = m.predict_alpha(image, trimap)
    tiled = m.predict_alpha(image, trimap, tile=64)  # 5 windows, exact overlap (192 px)
    np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_stage1_export_has_only_the_raw_output(tmp_path):
    model = sharp_model(refine=False)
    path = tmp_path / "stage1.onnx"
    diff = export.export_onnx(model, path, export.onnx_metadata(model, 1, "s1.pt"))
    assert diff <= 1e-4
    m = load_onnx_model(path)
    assert m.outputs == ("alpha_raw",) and m.stage == 1
    image = np.random.default_rng(2).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    trimap = np.full((50, 70), 128, np.uint8)
    want = predict_alpha(model, image, trimap, device="cpu")
    np.testing.assert_allclose(m.predict_alpha(image, trimap), want, atol=1e-4, rtol=0)


# --- predict.py --onnx -----------------------------------------------------------------------
def test_predict_onnx_writes_the_checkpoints_alpha_without_torch(
    checkpoint, exported, inputs, tmp_path
):
    common = ["--image", str(inputs["image"]), "--trimap", str(inputs["trimap"])]
    common += ["--fg-method", "none"]
    argv = ["--checkpoint", str(checkpoint), "--device", "cpu", *common]
    assert predict.main([*argv, "--out", str(tmp_path / "torch")]) == 0
    onnx_out = tmp_path / "onnx"
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from utils.onnx_inference import load_onnx_model
        m = load_onnx_model({str(exported)!r})
        alpha = m.predict_alpha(np.zeros((40, 50, 3), np.uint8), np.full((40, 50), 128, np.uint8))
        assert alpha.shape == (40, 50) and "torch" not in sys.modules
        import predict
        rc = predict.main(["--onnx", {str(exported)!r}, *{common!r}, "--out", {str(onnx_out)!r}])
        assert rc == 0, rc
        leaked = sorted(k for k in sys.modules if k == "torch" or k.startswith("torch."))
        print("torch modules:", leaked)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=ENV, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "torch modules: []" in proc.stdout
    want, got = (
        read_gray(tmp_path / "torch" / "cat_alpha.png"),
        read_gray(onnx_out / "cat_alpha.png"),
    )
    trimap = read_gray(inputs["trimap"])
    assert ((want > 10) & (want < 245)).sum() > 100  # a real matte, not the trimap
    assert np.abs(want.astype(int) - got).max() <= 1
    assert sorted(p.name for p in onnx_out.iterdir()) == [
        "cat_alpha.png",
        "cat_method.txt",
        "cat_rgba.png",
    ]
    assert (got[trimap == 0] == 0).all() and (got[trimap == 255] == 255).all()
    assert "ONNX" in (onnx_out / "cat_method.txt").read_text()


# --- bad files -------------------------------------------------------------------------------
@pytest.fixture
def run_onnx_error(inputs, tmp_path, capsys):
    """predict.main with --onnx PATH, expecting exit 2; returns the one-line message."""

    def run(path, *extra: str) -> str:
        argv = ["--onnx", str(path), "--image", str(inputs["image"]), "--trimap"]
        argv += [str(inputs["trimap"]), "--out", str(tmp_path / "o"), *extra]
        assert predict.main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("predict.py: error: "), err
        return err

    return run


def test_bad_onnx_files_are_one_line_naming_the_file(run_onnx_error, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    missing = tmp_path / "missing.onnx"
    assert str(missing) in run_onnx_error(missing) and "not found" in run_onnx_error(missing)
    assert "is a folder" in run_onnx_error(tmp_path)

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xffnot a protobuf at all" * 50)
    msg = run_onnx_error(garbage)
    assert str(garbage) in msg and "cannot load" in msg and "export.py" in msg

    foreign = tmp_path / "foreign.onnx"
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 32, 32])],
    )
    onnx.save(helper.make_model(graph), foreign)
    msg = run_onnx_error(foreign)
    assert str(foreign) in msg and "not one exported by this repository" in msg


def test_onnx_is_exclusive_with_checkpoint_method_and_torch_flags(
    run_onnx_error, checkpoint, exported
):
    assert "mutually exclusive" in run_onnx_error(exported, "--checkpoint", str(checkpoint))
    assert "mutually exclusive" in run_onnx_error(exported, "--method", "closed-form")
    assert "--amp" in run_onnx_error(exported, "--amp", "bf16")


def test_export_cli_errors_are_one_line(tmp_path, capsys):
    for argv in (["--checkpoint", str(tmp_path / "nope.pt"), "--out", "m.onnx"],
                 ["--checkpoint", str(tmp_path), "--out", str(tmp_path)]):  # fmt: skip
        with pytest.raises(SystemExit) as e:  # refused where the flags are parsed
            export.main(argv)
        assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "nope.pt" in err[0] and "is a folder" in err[1], err


def test_export_carries_the_inference_scale_and_onnx_uses_it(tmp_path, inputs):
    model = sharp_model(refine=False)
    state = {"model": model.state_dict(), "model_config": model.config.to_dict(), "stage": 1}
    ckpt = save_checkpoint(tmp_path / "half.pt", {**state, "config": {"infer_scale": 0.5}})
    out = tmp_path / "half.onnx"
    cmd = [sys.executable, "export.py", "--checkpoint", str(ckpt), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    onnx_model = load_onnx_model(out)
    assert onnx_model.infer_scale == 0.5
    torch_model, _, _ = load_model_for_inference(ckpt)
    image, trimap = read_rgb(inputs["image"]), read_gray(inputs["trimap"])
    want = predict_alpha(torch_model, image, trimap)
    np.testing.assert_allclose(onnx_model.predict_alpha(image, trimap), want, atol=1e-4)
    full = predict_alpha(torch_model, image, trimap, scale=1.0)
    assert np.abs(full - want).max() > 0.01  # the scale changed the result: the check can fail
