"""The CUDA paths, each tested through its CPU twin.

Every test is one function parametrised over the device: the ``cpu`` case runs in the normal
suite at tiny sizes, the ``cuda`` case is marked ``cuda``; it skips where no GPU is, and fails
instead when DIM_REQUIRE_CUDA=1 (tests/conftest.py), which the GPU check sets:

    DIM_REQUIRE_CUDA=1 python -m pytest -m cuda tests/test_cuda.py    # the GPU half only
    python -m benchmarks --gpu-check                                  # the same, and the rest

Tolerances are stated where they are used, with the reason for their size. On CUDA, cuDNN
convolutions run in TF32 by default (10-bit mantissa); comparisons that are about *our* code
(memory format, compile, tiling) switch TF32 and cuDNN's benchmark mode off, so the only
differences left are fp32 summation order, and a real bug (a wrong layout, a missing tile
context) is orders of magnitude larger than the tolerance.
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import train_encoder_decoder as tr
from benchmarks.common import PeakMemory
from models.py_encoder_decoder import DIM
from tests.helpers import random_checkpoint
from utils.checkpoint import load_checkpoint, load_model_for_inference
from utils.inference import exact_overlap, predict_alpha

CPU = pytest.param("cpu", id="cpu")
CUDA = pytest.param("cuda", id="cuda", marks=pytest.mark.cuda)
DEVICES = [CPU, CUDA]
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def make_trainer(root: Path, runs: Path, device: str, stage: int = 1, *extra: str) -> tr.Trainer:
    """A Trainer as ``train_encoder_decoder.py`` builds it: 64x64 crops, batch 4, no workers."""
    argv = [
        "--stage", str(stage), "--data-root", str(root), "--runs-dir", str(runs),
        "--cache-dir", str(runs.parent / "cache"), "--crop-size", "64", "--batch-size", "4",
        "--epochs", "1", "--iters-per-epoch", "2", "--workers", "0", "--no-visdom",
        "--threads", "2", "--val-limit", "1", "--lr", "1e-4", "--device", device, *extra,
    ]  # fmt: skip
    return tr.Trainer(tr.resolve_config(tr.build_parser().parse_args(argv)))


def stage_init(tmp_path: Path, stage: int) -> list[str]:
    """Stage 3 starts from a stage-2 checkpoint (random weights, refine head)."""
    if stage == 1:
        return []
    init = random_checkpoint(tmp_path / "stage2.pt", 2, fc6="conv1x1", skip="add")
    return ["--init", str(init)]


@contextlib.contextmanager
def exact_fp32(device: str):
    """On CUDA: no TF32 and no cuDNN benchmark mode (which may pick Winograd/FFT kernels with
    a different rounding per shape) inside the block; the Trainer's own setting of the benchmark
    flag is undone on exit. Nothing to change on CPU."""
    if device != "cuda":
        yield
        return
    matmul = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.backends.cudnn.flags(enabled=True, benchmark=False, allow_tf32=False):
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul


def random_inputs(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A random image and a trimap: background on top, foreground at the bottom, unknown
    between (most of the image, so the network's output is what is compared)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    trimap = np.full((h, w), 128, np.uint8)
    trimap[: h // 10] = 0
    trimap[h - h // 10 :] = 255
    return image, trimap


def sharpen(model: torch.nn.Module) -> torch.nn.Module:
    """Scale the decoder's last weights by 1000: a near-random network's alpha sits at ~0.5
    and would hide any difference; scaled, it spans (0, 1) with the same receptive field (as
    in test_inference.py)."""
    with torch.no_grad():
        model.decoder.pred.weight.mul_(1000.0)
    return model


# --- mixed precision -------------------------------------------------------------------------
AMP_CASES = [
    pytest.param("cpu", "bf16", id="cpu-bf16"),
    pytest.param("cuda", "bf16", id="cuda-bf16", marks=pytest.mark.cuda),
    pytest.param("cuda", "fp16", id="cuda-fp16", marks=pytest.mark.cuda),  # CUDA only
]


@pytest.mark.parametrize("stage", [1, 3])
@pytest.mark.parametrize(("device", "amp"), AMP_CASES)
def test_mixed_precision_steps_train_and_the_scaler_resumes(tiny_root, tmp_path, device, amp,
                                                            stage):  # fmt: skip
    """bf16, and fp16 with the GradScaler, through Trainer.train_step on a tiny fixed batch:
    finite losses that fall, weights and Adam state in float32, the scaler's state in last.pt
    and back after --resume."""
    runs = tmp_path / "runs"
    extra = ["--amp", amp, *stage_init(tmp_path, stage)]
    t = make_trainer(tiny_root, runs, device, stage, *extra)
    assert t.amp_dtype is AMP_DTYPES[amp]
    assert t.scaler.is_enabled() is (amp == "fp16")
    data, label = next(iter(t.loader))
    # fp16 starts at a loss scale of 65536 and skips the steps whose gradients overflow while
    # the scale comes down: CUDA steps are cheap, so give it more of them.
    steps = 6 if device == "cpu" else 12
    losses = [t.train_step(data, label)[0]["total"].item() for _ in range(steps)]
    assert all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < 0.9 * losses[0], f"{amp} loss did not fall: {losses}"
    assert all(p.dtype == torch.float32 for p in t.model.parameters())
    for state in t.optimizer.state.values():
        assert all(v.dtype == torch.float32 for v in state.values() if v.is_floating_point())
    scaler = t.scaler.state_dict()
    if amp == "fp16":
        assert 0 < scaler["scale"] <= 65536.0 and math.isfinite(scaler["scale"])

    ck = load_checkpoint(t.save("last.pt"))
    assert ck["scaler"] == scaler and ck["iteration"] == steps
    resumed = make_trainer(tiny_root, runs, device, stage, "--amp", amp, "--resume")
    assert resumed.iteration == steps and resumed.scaler.state_dict() == scaler
    after = resumed.train_step(data, label)[0]["total"].item()
    assert math.isfinite(after) and after < losses[0]


# --- channels_last and torch.compile against the eager, contiguous step ----------------------
# fp32 on both sides: only the summation order differs (other kernels for another memory
# format, fused kernels when compiled), and a layout or compile bug is an O(1) difference.
# Forward (relative on the loss, absolute on alpha in [0, 1]): CPU oneDNN differs by ~1e-7;
# CUDA cuDNN's fp32 algorithms for NHWC and NCHW (implicit GEMM, Winograd, ...) by up to
# ~1e-4 relative per layer, over ~30 layers. Backward (||g - g_eager|| / ||g_eager|| over all
# gradients): BatchNorm's backward in training mode subtracts the mean gradient and its
# projection on the normalised input, which nearly cancel at random init, so the rounding
# differences grow ~1000x there (measured on CPU at 64x64, batch 4: 4e-3 for channels_last,
# 1e-3 compiled, the same relative error in every layer below the last BatchNorm).
# The weights after the step are not compared: Adam's first update is lr * g / |g| per weight,
# so a gradient at the rounding level can flip its update's sign.
FORMAT_TOLERANCE = {  # device: (forward, gradients); max-pool ties: see the test
    "cpu": (1e-4, 5e-2),
    "cuda": (1e-3, 5e-2),
}
FORMAT_CASES = [
    pytest.param("cpu", "channels_last", id="cpu-channels_last"),
    pytest.param("cpu", "compile", id="cpu-compile", marks=pytest.mark.slow),  # ~1 min to compile
    pytest.param("cuda", "channels_last", id="cuda-channels_last", marks=pytest.mark.cuda),
    pytest.param("cuda", "compile", id="cuda-compile", marks=pytest.mark.cuda),
]
FORMAT_FLAGS = {
    "eager": ["--channels-last", "off"],
    "channels_last": ["--channels-last", "on"],
    "compile": ["--channels-last", "off", "--compile"],
}


def relative_difference(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    """||a - b|| / ||a|| over all tensors together."""
    diff = sum(float((x.float() - y.float()).pow(2).sum()) for x, y in zip(a, b, strict=True))
    norm = sum(float(x.float().pow(2).sum()) for x in a)
    return math.sqrt(diff / max(norm, 1e-30))


@pytest.mark.parametrize(("device", "variant"), FORMAT_CASES)
def test_channels_last_and_compile_agree_with_the_eager_step(tiny_root, tmp_path, device,
                                                            variant):  # fmt: skip
    """One Trainer.train_step from the same weights on the same batch (fp32): the loss, the
    alpha (forward) and every gradient (backward) match the eager contiguous step within
    FORMAT_TOLERANCE."""
    tol, grad_tol = FORMAT_TOLERANCE[device]
    results = {}
    with exact_fp32(device):
        for name in ("eager", variant):
            t = make_trainer(tiny_root, tmp_path / name, device, 1, "--amp", "off",
                             *FORMAT_FLAGS[name])  # fmt: skip
            if name == "eager":
                data, label = next(iter(t.loader))
            losses, raw, *_ = t.train_step(data, label)
            if name == "channels_last":
                assert raw.is_contiguous(memory_format=torch.channels_last)
            grads = [p.grad.detach().cpu() for p in t.model.parameters() if p.requires_grad]
            results[name] = (losses["total"].item(), raw.detach().float().cpu(), grads)
    (loss, alpha, grads), (v_loss, v_alpha, v_grads) = results["eager"], results[variant]
    assert v_loss == pytest.approx(loss, rel=tol)
    # Mean, not max: a 2x2 max-pool over equal values (ReLU zeros) may keep another of them in
    # a compiled kernel, and unpooling then puts that feature one pixel away - a local, legal
    # difference of a few hundredths in a handful of pixels; a wrong layer moves every pixel.
    diff = (v_alpha - alpha).abs()
    assert diff.mean().item() <= tol and diff.max().item() <= 0.1, (diff.mean(), diff.max())
    assert relative_difference(grads, v_grads) <= grad_tol
    assert any(g.abs().max() > 0 for g in grads), "no gradient to compare"


# --- checkpoints across devices --------------------------------------------------------------
# Predictions of the same checkpoint on two devices, in the default precision users get (on
# CUDA: TF32 convolutions, 10-bit mantissa): on the sharpened network (logits of order 1-10)
# a relative error of ~1e-3 in the logits moves alpha by < 3e-3; a weight that did not move
# across (or moved wrongly) changes alpha by O(0.1). Same device: identical computation.
MOVE_TOLERANCE = {"same": 1e-6, "across": 2e-2}
MOVES = [
    pytest.param("cpu", "cpu", id="cpu-to-cpu"),
    pytest.param("cuda", "cpu", id="cuda-to-cpu", marks=pytest.mark.cuda),
    pytest.param("cpu", "cuda", id="cpu-to-cuda", marks=pytest.mark.cuda),
]


@pytest.mark.parametrize(("written_on", "read_on"), MOVES)
def test_checkpoint_written_on_one_device_predicts_on_another(tiny_root, tmp_path, written_on,
                                                              read_on):  # fmt: skip
    t = make_trainer(tiny_root, tmp_path / "runs", written_on)
    data, label = next(iter(t.loader))
    t.train_step(data, label)
    path = t.save("last.pt")
    assert all(v.device.type == "cpu" for v in load_checkpoint(path)["model"].values())
    image, trimap = random_inputs(96, 128)
    alphas = []
    for device in (written_on, read_on):
        model, state, _ = load_model_for_inference(path, device=device)
        assert state["stage"] == 1 and {p.device.type for p in model.parameters()} == {device}
        alphas.append(predict_alpha(sharpen(model), image, trimap))
    written, read = alphas
    assert written.std() > 0.05, "test network too flat to show a difference"
    tol = MOVE_TOLERANCE["same" if written_on == read_on else "across"]
    np.testing.assert_allclose(read, written, atol=tol, rtol=0)
    assert np.abs(read - written).mean() <= tol / 10


# --- inference memory and exact tiling ---------------------------------------------------------
def peak_mb(device: str, fn) -> tuple[object, float]:
    """``fn()`` and the memory it needed, MB: on CUDA torch.cuda.max_memory_allocated over the
    call (the allocator's exact peak, weights included); on CPU the process's RSS high-water
    mark above its level on entry (a lower bound: freed memory that is still resident may be
    reused), None where the high-water mark cannot be reset."""
    with PeakMemory(device) as mem:
        out = fn()
    if device == "cuda":
        return out, mem.cuda_peak_mb
    return out, mem.rss_added_mb if mem.rss_exact else None


# (width, height, tile, overlap, peak bound MB). CUDA: the README's target for a 4000x3000
# photograph tiled as the CLIs do (--max-side 1600, the exact 224 px overlap): one 1600x1600
# window at a time, ~4 GB of fp32 activations, must stay under 8 GB. CPU twin: the same code
# on a small image (128-px cores, 32 px of context: 192x192 windows, ~60 MB of activations;
# the whole image would need ~250 MB) under a bound with room for the allocator's slack.
TILED_CASES = {
    "cuda": (4000, 3000, None, None, 8 * 1024),
    "cpu": (480, 352, 128, 32, 200),
}


@pytest.mark.parametrize("device", DEVICES)
def test_tiled_inference_of_a_large_image_stays_under_its_memory_bound(device):
    width, height, tile, overlap, bound_mb = TILED_CASES[device]
    torch.manual_seed(0)
    model = DIM(refine=True).to(device).eval()
    image, trimap = random_inputs(height, width)
    predict_alpha(model, image[:64, :64], trimap[:64, :64])  # warm-up: kernels, caches
    max_side = 1600 if tile is None else None
    alpha, peak = peak_mb(
        device,
        lambda: predict_alpha(model, image, trimap, tile=tile, overlap=overlap, max_side=max_side),
    )
    assert alpha.shape == (height, width) and np.isfinite(alpha).all()
    if peak is None:
        pytest.skip("this system cannot reset the RSS high-water mark")
    assert peak <= bound_mb, f"tiled {width}x{height} on {device} peaked at {peak:.0f} MB"


# (height, width, tile): CUDA: a 2000x2000 image whole (~6 GB of fp32 activations) against
# 1024-px cores with the exact overlap; CPU twin: 64x704 against 352-px cores (two windows).
# Tolerance: the sharpened network in exact fp32 (see exact_fp32); test_inference.py shows a
# too-small overlap differs by > 1e-3 at the seams.
EXACT_CASES = {"cuda": (2000, 2000, 1024, 1e-3), "cpu": (64, 704, 352, 1e-5)}


@pytest.mark.parametrize("device", DEVICES)
def test_whole_image_inference_fits_and_equals_exact_tiling(device):
    h, w, tile, tol = EXACT_CASES[device]
    torch.manual_seed(0)
    model = sharpen(DIM(refine=True)).to(device).eval()
    image, trimap = random_inputs(h, w)
    with exact_fp32(device):
        whole, peak = peak_mb(device, lambda: predict_alpha(model, image, trimap))
        tiled = predict_alpha(model, image, trimap, tile=tile)  # default overlap: exact
    assert whole.std() > 0.05, "test network too flat to show tiling errors"
    assert exact_overlap(model.receptive_field) == 224
    np.testing.assert_allclose(tiled, whole, atol=tol, rtol=0)
    if device == "cuda":  # it fitted; the figure is bench_infer's to report
        assert peak < torch.cuda.get_device_properties(0).total_memory / 2**20


# --- the DataLoader path: pinned memory, persistent workers, time waiting for data -----------
@pytest.mark.parametrize("device", DEVICES)
def test_loader_workers_feed_the_device_and_the_wait_is_reported(tiny_root, tmp_path, device,
                                                                 caplog):  # fmt: skip
    """A short fit() through the Trainer's own DataLoader (2 persistent workers; pinned memory
    on CUDA): the epoch line, the history and metrics.jsonl report the time spent waiting."""
    caplog.set_level("INFO", logger="train")
    t = make_trainer(tiny_root, tmp_path / "runs", device, 1, "--workers", "2")
    loader = t.loader
    assert loader.num_workers == 2 and loader.persistent_workers
    assert loader.pin_memory is (device == "cuda")
    if device == "cuda":
        data, _ = next(iter(loader))
        assert data.is_pinned()
    t.fit()
    record = t.history[-1]
    assert record["iteration"] == 2 and record["train_samples"] == 8
    assert 0 <= record["train_data_wait_s"] <= record["train_seconds"]
    assert 0 <= record["train_data_wait_fraction"] <= 1
    assert "waiting for data" in caplog.text
    lines = (t.stage_dir / "metrics.jsonl").read_text().splitlines()
    throughput = [r["values"] for r in map(json.loads, lines) if r["group"] == "throughput"]
    assert throughput and throughput[-1]["samples_per_s"] > 0
