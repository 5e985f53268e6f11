"""Tests of models/py_loss.py against hand-computed values."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data import layout
from models.py_loss import AlphaPredLoss, ComposeLoss, DIMLoss

ROOT = Path(__file__).resolve().parents[1]
EPS = 1e-6


def _t(rows) -> torch.Tensor:
    """Nested lists (H, W) -> (1, 1, H, W) float32."""
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def _rgb(color, h: int = 2, w: int = 2) -> torch.Tensor:
    return torch.tensor(color, dtype=torch.float32).reshape(1, 3, 1, 1).expand(1, 3, h, w)


def _robust(d: float) -> float:
    return math.sqrt(d * d + EPS * EPS)


def test_alpha_loss_hand_computed():
    pred = _t([[0.2, 0.5], [0.9, 1.0]])
    gt = _t([[0.0, 0.5], [1.0, 0.0]])
    mask = _t([[1, 1], [1, 0]])  # the big error at (1, 1) is outside the unknown region
    expected = (_robust(0.2) + _robust(0.0) + _robust(0.1)) / 3
    assert AlphaPredLoss()(pred, gt, mask).item() == pytest.approx(expected, rel=1e-6)


def test_alpha_loss_errors_do_not_cancel():
    """+d and -d errors both count (a signed sum would cancel them)."""
    gt = _t([[0.5, 0.5]])
    pred = _t([[0.7, 0.3]])
    assert AlphaPredLoss()(pred, gt, torch.ones_like(gt)).item() == pytest.approx(0.2, rel=1e-6)


def test_mean_runs_over_all_unknown_pixels_of_the_batch():
    pred = torch.zeros(2, 1, 1, 4)
    gt = torch.zeros(2, 1, 1, 4)
    gt[0] = 0.4  # image 0: one unknown pixel with error 0.4
    gt[1] = 0.1  # image 1: three unknown pixels with error 0.1
    mask = torch.zeros(2, 1, 1, 4)
    mask[0, 0, 0, 0] = 1
    mask[1, 0, 0, :3] = 1
    expected = (_robust(0.4) + 3 * _robust(0.1)) / 4  # not the mean of per-image means
    assert AlphaPredLoss()(pred, gt, mask).item() == pytest.approx(expected, rel=1e-6)


def test_compose_loss_hand_computed():
    fg, bg = _rgb((255, 0, 0)), _rgb((0, 0, 255))
    alpha_gt = torch.full((1, 1, 2, 2), 0.5)
    merged = alpha_gt * fg + (1 - alpha_gt) * bg  # (127.5, 0, 127.5)
    pred = torch.full((1, 1, 2, 2), 0.25)  # composite (63.75, 0, 191.25) -> diff 0.25, 0, 0.25
    mask = _t([[1, 0], [0, 0]])
    expected = (2 * _robust(0.25) + _robust(0.0)) / 3  # mean over unknown pixels x 3 channels
    got = ComposeLoss()(pred, fg, bg, merged, mask).item()
    assert got == pytest.approx(expected, rel=1e-6)


def test_compose_loss_uses_fg_and_bg_the_right_way_round():
    fg, bg = _rgb((255, 255, 255)), _rgb((0, 0, 0))
    alpha = _t([[1.0, 0.8], [0.2, 0.0]])
    merged = alpha * fg + (1 - alpha) * bg
    mask = torch.ones_like(alpha)
    right = ComposeLoss()(alpha, fg, bg, merged, mask).item()
    swapped = ComposeLoss()(alpha, bg, fg, merged, mask).item()
    assert right == pytest.approx(EPS, abs=1e-6)
    assert swapped == pytest.approx((1.0 + 0.6 + 0.6 + 1.0) / 4, rel=1e-5)  # |1 - 2a| per pixel


def test_perfect_prediction_gives_eps():
    alpha = torch.rand(2, 1, 8, 8)
    mask = (torch.rand(2, 1, 8, 8) > 0.5).float()
    assert AlphaPredLoss()(alpha, alpha, mask).item() == pytest.approx(EPS, rel=1e-6)


@pytest.mark.parametrize("loss", ["alpha", "comp", "dim"])
def test_empty_mask_gives_zero_and_backward_works(loss):
    pred = torch.rand(2, 1, 8, 8, requires_grad=True)
    label = torch.rand(2, layout.LABEL_CHANNELS, 8, 8) * 255
    label[:, layout.LABEL_ALPHA] /= 255
    label[:, layout.LABEL_MASK] = 0
    m = layout.mask(label)
    if loss == "alpha":
        value = AlphaPredLoss()(pred, layout.alpha(label), m)
    elif loss == "comp":
        value = ComposeLoss()(pred, layout.fg(label), layout.bg(label), layout.merged(label), m)
    else:
        value = DIMLoss()(pred, label)[0]
    assert value.item() == 0.0 and not torch.isnan(value)
    value.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_gradient_is_finite_also_at_zero_error():
    alpha = torch.rand(1, 1, 8, 8)
    pred = alpha.clone()
    pred[..., :4] += 0.1
    pred.requires_grad_(True)
    label = torch.zeros(1, layout.LABEL_CHANNELS, 8, 8)
    label[:, layout.LABEL_FG] = 200
    label[:, layout.LABEL_BG] = 30
    label[:, layout.LABEL_ALPHA] = alpha
    label[:, layout.LABEL_MERGED] = alpha * 200 + (1 - alpha) * 30
    label[:, layout.LABEL_MASK] = 1
    total, _ = DIMLoss()(pred, label)
    total.backward()
    assert torch.isfinite(pred.grad).all()
    assert (pred.grad[..., :4] > 0).all()  # pushes the too-high half down
    assert pred.grad[..., 4:].abs().max() < 1e-6  # zero error: zero slope, not NaN


def _label_from_numpy(seed: int = 0):
    rng = np.random.default_rng(seed)
    h, w = 16, 16
    fg = rng.integers(0, 256, (h, w, 3)).astype(np.float32)
    bg = rng.integers(0, 256, (h, w, 3)).astype(np.float32)
    alpha = rng.random((h, w)).astype(np.float32)
    merged = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
    trimap = np.where(alpha > 0.9, 255, np.where(alpha < 0.1, 0, 128)).astype(np.uint8)
    return torch.from_numpy(layout.make_label(bg, fg, merged, alpha, trimap))[None]


def test_dim_loss_weights_and_layout():
    label = _label_from_numpy()
    pred = torch.rand(1, 1, 16, 16)
    m = layout.mask(label)
    la = AlphaPredLoss()(pred, layout.alpha(label), m)
    lc = ComposeLoss()(pred, layout.fg(label), layout.bg(label), layout.merged(label), m)
    total, parts = DIMLoss(0.3, 0.7)(pred, label)
    assert parts["alpha"].item() == pytest.approx(la.item())
    assert parts["comp"].item() == pytest.approx(lc.item())
    assert total.item() == pytest.approx(0.3 * la.item() + 0.7 * lc.item(), rel=1e-6)


def test_dim_loss_without_composition():
    label = _label_from_numpy(1)
    pred = torch.rand(1, 1, 16, 16, requires_grad=True)
    total, parts = DIMLoss(1.0, 0.0)(pred, label)
    assert total.item() == pytest.approx(parts["alpha"].item())
    assert not parts["comp"].requires_grad and parts["comp"].item() > 0  # logged, not trained
    total.backward()
    direct = pred.detach().clone().requires_grad_(True)
    AlphaPredLoss()(direct, layout.alpha(label), layout.mask(label)).backward()
    torch.testing.assert_close(pred.grad, direct.grad)


def test_bf16_prediction_is_computed_in_float32():
    label = _label_from_numpy(2)
    pred = torch.rand(1, 1, 16, 16)
    total32, _ = DIMLoss()(pred, label)
    total16, _ = DIMLoss()(pred.bfloat16(), label)
    assert total16.dtype == torch.float32
    assert total16.item() == pytest.approx(total32.item(), abs=5e-3)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="disagree"):
        AlphaPredLoss()(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 9), torch.ones(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        AlphaPredLoss()(torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8), torch.ones(1, 1, 8, 8))
    with pytest.raises(ValueError, match="weights"):
        DIMLoss(0.0, 0.0)


def test_self_test_script_runs_by_path():
    proc = subprocess.run(
        [sys.executable, "models/py_loss.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks passed" in proc.stdout and "FAIL" not in proc.stdout
