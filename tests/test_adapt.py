"""Test-time adaptation (utils/adapt.py, ``--adapt STEPS``): ground truth is never read, exactly
STEPS optimiser steps, the loaded model is never changed, 0 is today's path, bad values are
one-line errors, and the same seed gives the same adapted matte."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

import demo
import evaluate
import predict
from models.py_encoder_decoder import DIM
from utils import adapt
from utils.checkpoint import save_checkpoint
from utils.image_io import write_png
from utils.inference import predict_alpha

CROP = 64  # the smallest crop that keeps a step well under a second on two shared cores


def disc_photo(h: int = 80, w: int = 96, seed: int = 0):
    """(image uint8 (h, w, 3), trimap {0, 128, 255}, alpha float32): a red disc with a soft
    edge on a blue background, with noise; the unknown band is a ring around the edge."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - h / 2, xx - w / 2)
    alpha = np.clip((26 - r) / 4, 0, 1).astype(np.float32)
    fg, bg = np.array([200, 60, 40], np.float32), np.array([30, 90, 160], np.float32)
    image = alpha[..., None] * fg + (1 - alpha[..., None]) * bg + rng.normal(0, 6, (h, w, 3))
    trimap = np.full((h, w), 128, np.uint8)
    trimap[r < 18] = 255
    trimap[r > 32] = 0
    return np.clip(image, 0, 255).astype(np.uint8), trimap, alpha


def tiny_checkpoint(path: Path, stage: int = 1) -> Path:
    """A random-init checkpoint whose trainer used ``CROP`` px crops, at full resolution."""
    torch.manual_seed(0)
    model = DIM(refine=stage > 1, fc6="conv1x1")
    state = {"model": model.state_dict(), "model_config": model.config.to_dict(), "stage": stage}
    config = {"crop_size": CROP, "infer_scale": 1.0}
    return save_checkpoint(path, {**state, "config": config, "epoch": 0})


@pytest.fixture(scope="module")
def model() -> DIM:
    torch.manual_seed(0)
    return DIM(refine=False, fc6="conv1x1").eval()


@pytest.fixture(scope="module")
def photo():
    return disc_photo()


def small(model, image, trimap, steps, **kw):
    return adapt.adapt(model, image, trimap, steps, crop_size=CROP, batch_size=1, **kw)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def modes(model) -> list[tuple[bool, ...]]:
    """Each module's training flag and its own parameters' requires_grad flags."""
    return [(m.training, *(p.requires_grad for p in m.parameters(False))) for m in model.modules()]


# --- the library -------------------------------------------------------------------------------
def test_the_only_inputs_about_the_photo_are_its_image_and_trimap():
    params = inspect.signature(adapt.adapt).parameters
    positional = [n for n, p in params.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == ["model", "image_u8", "trimap_u8", "steps"]
    assert not [n for n in params if any(w in n for w in ("alpha", "gt", "truth", "label"))]


def test_colour_fields_take_the_nearest_known_colour():
    image = np.zeros((4, 6, 3), np.uint8)
    image[:, 0] = (255, 0, 0)  # definite foreground: the left column
    image[:, 5] = (0, 0, 255)  # definite background: the right column
    image[:, 1:5] = 77  # unknown: its own colour must never leak into the fields
    trimap = np.full((4, 6), 128, np.uint8)
    trimap[:, 0], trimap[:, 5] = 255, 0
    fg, bg = adapt.colour_fields(image, trimap)
    assert (fg == (255, 0, 0)).all() and (bg == (0, 0, 255)).all()
    with pytest.raises(adapt.AdaptError, match="no definite foreground"):
        adapt.colour_fields(image, np.where(trimap == 255, 128, trimap).astype(np.uint8))


def test_exactly_steps_optimiser_steps(model, photo):
    image, trimap, _ = photo
    count = []
    handle = register_optimizer_step_post_hook(lambda *a: count.append(1))
    try:
        assert small(model, image, trimap, 0) is model and not count
        small(model, image, trimap, 2)
    finally:
        handle.remove()
    assert len(count) == 2


def test_the_model_is_untouched_and_the_copy_moved(model, photo):
    image, trimap, _ = photo
    before = snapshot(model)
    flags = modes(model)
    adapted = small(model, image, trimap, 1, lr=1e-4)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before), "the loaded model changed"
    assert modes(model) == flags
    assert adapted is not model and not adapted.training
    moved = [k for k, v in adapted.state_dict().items() if not torch.equal(v, before[k])]
    assert moved and all("running" not in k and "num_batches" not in k for k in moved), (
        "weights moved; BatchNorm statistics stayed frozen"
    )
    plain = predict_alpha(model, image, trimap, device="cpu")
    assert not np.array_equal(predict_alpha(adapted, image, trimap, device="cpu"), plain)


def test_same_seed_same_matte(model, photo):
    image, trimap, _ = photo
    first, again, other = (small(model, image, trimap, 1, lr=1e-4, seed=s) for s in (7, 7, 8))
    alpha = predict_alpha(first, image, trimap, device="cpu")
    np.testing.assert_array_equal(predict_alpha(again, image, trimap, device="cpu"), alpha)
    w = next(first.parameters())
    assert torch.equal(next(again.parameters()), w) and not torch.equal(next(other.parameters()), w)


def test_a_trimap_without_known_colours_skips_with_one_warning(model, photo, caplog):
    image, trimap, _ = photo
    no_fg = np.where(trimap == 255, 128, trimap).astype(np.uint8)
    with caplog.at_level("WARNING", logger="utils.adapt"):
        assert small(model, image, no_fg, 2) is model
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "foreground" in lines[0] and "\n" not in lines[0]
    with pytest.raises(adapt.AdaptError, match="steps"):
        small(model, image, trimap, -1)
    with pytest.raises(adapt.AdaptError, match="refine head"):
        small(model, image, trimap, 1, stage=3)
    with pytest.raises(adapt.AdaptError, match="choose among"):
        small(model, image, trimap, 1, trains=("refine_head",))


def test_only_the_chosen_parts_learn(model, photo):
    image, trimap, _ = photo
    before = snapshot(model)
    adapted = small(model, image, trimap, 1, lr=1e-4, trains=("decoder",))
    after = adapted.state_dict()
    assert {k.split(".")[0] for k in before if not torch.equal(after[k], before[k])} == {"decoder"}


# --- the command lines -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> Path:
    """images/, trimaps/, alphas/ of a small photograph, and zeros/ of a blank alpha."""
    d = tmp_path_factory.mktemp("photos")
    for i, name in enumerate(("a",)):
        image, trimap, alpha = disc_photo(seed=i)
        write_png(d / "images" / f"{name}.png", image)
        write_png(d / "trimaps" / f"{name}.png", trimap)
        write_png(d / "alphas" / f"{name}.png", np.round(alpha * 255).astype(np.uint8))
        write_png(d / "zeros" / f"{name}.png", np.zeros(trimap.shape, np.uint8))
    return d


def run_evaluate(ckpt: Path, folders: Path, out: Path, alphas: str, *extra: str) -> dict:
    argv = ["--checkpoint", str(ckpt), "--images", str(folders / "images"), "--trimaps",
            str(folders / "trimaps"), "--alphas", str(folders / alphas), "--device", "cpu",
            "--out", str(out), "--quiet", *extra]  # fmt: skip
    assert evaluate.main(argv) == 0
    return {p.name: p.read_bytes() for p in sorted((out / "alpha").iterdir())}


@pytest.mark.slow
def test_evaluate_never_reads_ground_truth_and_adapt_0_is_todays_path(
    folders, tmp_path, monkeypatch
):
    """The same photograph with its true alpha or a blank one: byte-identical adapted mattes;
    --adapt 0 gives the bytes of no flag at all, without adapting anything."""
    calls = []

    def spy(model, image, trimap, steps, **settings):
        calls.append((image.shape, trimap.shape, steps, sorted(settings)))
        return real_adapt(model, image, trimap, steps, **settings)

    real_adapt = adapt.adapt
    monkeypatch.setattr(adapt, "adapt", spy)
    ckpt = tiny_checkpoint(tmp_path / "run" / "stage1" / "best.pt")
    plain = run_evaluate(ckpt, folders, tmp_path / "plain", "alphas")
    assert run_evaluate(ckpt, folders, tmp_path / "zero", "alphas", "--adapt", "0") == plain
    assert not calls
    adapted = run_evaluate(ckpt, folders, tmp_path / "true", "alphas", "--adapt", "1")
    blank = run_evaluate(ckpt, folders, tmp_path / "blank", "zeros", "--adapt", "1")
    assert len(adapted) == 1 and blank == adapted, "the prediction depended on the ground truth"
    shape = disc_photo()[1].shape
    assert calls == [((*shape, 3), shape, 1, ["crop_size", "scale", "stage"])] * 2
    summary = json.loads((tmp_path / "blank" / "summary.json").read_text())
    assert summary["adapt"] == 1 and "adapted 1 steps" in summary["method_label"]


@pytest.mark.parametrize("cli", [evaluate, predict, demo])
def test_negative_steps_are_a_one_line_usage_error(cli, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--adapt", "-1"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--adapt" in err[0] and ">= 0" in err[0], err


def test_adapt_is_refused_where_nothing_can_be_fine_tuned(folders, tmp_path, capsys):
    image, trimap = folders / "images" / "a.png", folders / "trimaps" / "a.png"
    argv = ["--image", str(image), "--trimap", str(trimap), "--out", str(tmp_path), "--adapt", "2"]
    for extra in (["--onnx", str(tmp_path / "model.onnx")], ["--method", "closed-form"]):
        assert predict.main([*argv, *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "--adapt" in err[0] and extra[0] in err[0], err
    assert evaluate.main(["--method", "trimap-only", "--adapt", "2", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--adapt" in err[0], err
    assert demo.main(["--adapt", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--adapt" in err[0] and "--checkpoint" in err[0], err
    with pytest.raises(demo.DemoError, match="checkpoint"):
        demo.Matter().adapted(*disc_photo()[:2], 3)
    with pytest.raises(demo.DemoError, match="0 to 200"):
        demo.Matter().adapted(*disc_photo()[:2], -2)


@pytest.mark.slow
def test_predict_and_the_page_adapt_a_copy_per_photo(folders, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "run" / "stage1" / "best.pt")
    image, trimap = folders / "images" / "a.png", folders / "trimaps" / "a.png"
    out = tmp_path / "out"
    argv = ["--checkpoint", str(ckpt), "--image", str(image), "--trimap", str(trimap)]
    argv += ["--out", str(out), "--device", "cpu", "--fg-method", "none", "--adapt", "1"]
    assert predict.main(argv) == 0
    assert "adapted 1 steps per image" in (out / "a_method.txt").read_text()
    assert (out / "a_alpha.png").is_file()

    matter = demo.Matter(demo.method_from_checkpoint(str(ckpt)), adapt=1)
    assert matter.method.adapt_settings == {"crop_size": CROP, "stage": 1}
    photo, tri, _ = disc_photo()
    model, label = matter.adapted(photo, tri, 1)
    assert model is not matter.method.model and "adapted 1 steps" in label
    assert matter.adapted(photo, tri, 0) == (matter.method.model, matter.label)
