"""The losses of Deep Image Matting (Xu et al., CVPR 2017), counted in the unknown region only.

Per pixel (and per colour channel for the composition), with eps = 1e-6:

    alpha-prediction loss  L_a = sqrt((a_p - a_g)^2 + eps^2)
    compositional loss     L_c = sqrt((c_p - c_g)^2 + eps^2),  c_p = a_p * F + (1 - a_p) * B

averaged over the unknown-region pixels of the whole batch (the composition also over its
3 channels). Colours arrive in 0-255 as stored in ``label`` (data/layout.py) and are scaled to
[0, 1] here, so both terms are on the same scale. The total is w_alpha * L_a + w_comp * L_c
(paper: 0.5 / 0.5).

The per-pixel square root is what makes this a robust (L1-like) loss with a smooth minimum:
each pixel's error counts on its own (no global L2 norm, no signed errors that cancel). A
batch without unknown pixels gives exactly 0 (not NaN), still connected to the graph so
``backward()`` works.

All arithmetic is float32, also when the prediction comes out of bf16/fp16 autocast.
Run ``python models/py_loss.py`` for the self-test.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root

import torch
from torch import Tensor, nn

from data import layout

EPS = 1e-6


def _check_shapes(pred: Tensor, mask: Tensor, *others: Tensor) -> None:
    if pred.dim() < 3 or pred.shape[-3] != 1:
        raise ValueError(f"pred must be an alpha map (N, 1, H, W), got {tuple(pred.shape)}")
    for t in (mask, *others):
        if t.dim() != pred.dim() or t.shape[-2:] != pred.shape[-2:]:
            raise ValueError(
                f"loss inputs disagree: pred {tuple(pred.shape)} vs {tuple(t.shape)} "
                "(all (N, C, H, W) with the same N, H, W)"
            )


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` (N, C, H, W) over the pixels where ``mask`` (N, 1, H, W) is 1.

    Every channel of a masked pixel counts, so the denominator is C * mask.sum(). With an
    empty mask the result is exactly 0 (and still part of the autograd graph).
    """
    mask = mask.to(values.dtype)
    total = (values * mask).sum()
    count = mask.sum() * values.shape[-3]
    return total / count.clamp_min(1.0)


class AlphaPredLoss(nn.Module):
    """``(pred, alpha_gt, mask) -> scalar``: mean sqrt((pred - gt)^2 + eps^2) over unknown pixels.

    pred, alpha_gt: (N, 1, H, W) in [0, 1]; mask: (N, 1, H, W) in {0, 1} (1 = unknown).
    """

    def __init__(self, eps: float = EPS):
        super().__init__()
        self.eps = eps

    def forward(self, pred: Tensor, alpha_gt: Tensor, mask: Tensor) -> Tensor:
        _check_shapes(pred, mask, alpha_gt)
        diff = pred.float() - alpha_gt.float()
        return masked_mean(torch.sqrt(diff * diff + self.eps**2), mask)


class ComposeLoss(nn.Module):
    """``(pred, fg, bg, merged, mask) -> scalar``: the compositional loss.

    pred: (N, 1, H, W) alpha in [0, 1]; fg, bg, merged: (N, 3, H, W) RGB in 0-255 (scaled to
    [0, 1] here); mask: (N, 1, H, W) in {0, 1}. The composite pred * fg + (1 - pred) * bg is
    compared with ``merged``; the mean runs over unknown pixels x 3 channels.
    """

    def __init__(self, eps: float = EPS):
        super().__init__()
        self.eps = eps

    def forward(self, pred: Tensor, fg: Tensor, bg: Tensor, merged: Tensor, mask: Tensor) -> Tensor:
        _check_shapes(pred, mask, fg, bg, merged)
        a = pred.float()
        composite = (a * fg.float() + (1.0 - a) * bg.float()) / 255.0
        diff = composite - merged.float() / 255.0
        return masked_mean(torch.sqrt(diff * diff + self.eps**2), mask)


class DIMLoss(nn.Module):
    """``(pred, label) -> (total, {"alpha": L_a, "comp": L_c})`` from a ``label`` batch.

    ``label`` is (N, 11, H, W) as in data/layout.py. total = w_alpha * L_a + w_comp * L_c.
    Each stage's weights are in its record (models/stages.py: stages 1 and 3 0.5 / 0.5 as
    the paper, stage 2 the alpha loss alone). With w_comp = 0 the composition is not part of
    the loss; its value is still computed, without gradient, for the logs (a few
    element-wise ops, negligible next to the network).
    """

    def __init__(self, w_alpha: float = 0.5, w_comp: float = 0.5, eps: float = EPS):
        super().__init__()
        if w_alpha < 0 or w_comp < 0 or w_alpha + w_comp == 0:
            raise ValueError(f"loss weights must be >= 0 and not both 0, got {w_alpha}, {w_comp}")
        self.w_alpha, self.w_comp = w_alpha, w_comp
        self.alpha_loss = AlphaPredLoss(eps)
        self.comp_loss = ComposeLoss(eps)

    def forward(self, pred: Tensor, label: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        mask = layout.mask(label)
        l_alpha = self.alpha_loss(pred, layout.alpha(label), mask)
        comp_args = (pred, layout.fg(label), layout.bg(label), layout.merged(label), mask)
        if self.w_comp > 0:
            l_comp = self.comp_loss(*comp_args)
            total = self.w_alpha * l_alpha + self.w_comp * l_comp
        else:
            with torch.no_grad():
                l_comp = self.comp_loss(*comp_args)
            total = self.w_alpha * l_alpha
        return total, {"alpha": l_alpha, "comp": l_comp}

    def extra_repr(self) -> str:
        return f"w_alpha={self.w_alpha}, w_comp={self.w_comp}"


# --- self-test -------------------------------------------------------------------------------
def _toy_label(h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    """A (1, 11, h, w) label: random fg/bg, a soft alpha ramp, the middle half unknown."""
    g = torch.Generator().manual_seed(seed)
    fg = torch.rand(3, h, w, generator=g) * 255
    bg = torch.rand(3, h, w, generator=g) * 255
    alpha = torch.linspace(0, 1, w).expand(h, w)
    merged = alpha * fg + (1 - alpha) * bg
    mask = torch.zeros(h, w)
    mask[:, w // 4 : 3 * w // 4] = 1
    label = torch.empty(layout.LABEL_CHANNELS, h, w)
    label[layout.LABEL_BG], label[layout.LABEL_FG], label[layout.LABEL_MERGED] = bg, fg, merged
    label[layout.LABEL_ALPHA], label[layout.LABEL_MASK] = alpha, mask
    return label[None]


def _self_test() -> int:
    label = _toy_label()
    alpha, mask = layout.alpha(label), layout.mask(label)
    fg, bg, merged = layout.fg(label), layout.bg(label), layout.merged(label)
    swapped = torch.cat([fg, bg, merged, alpha, mask], dim=1)  # label with bg and fg exchanged
    unknown = mask.bool().expand(-1, 3, -1, -1)
    a_loss, c_loss, d = AlphaPredLoss(), ComposeLoss(), 0.1

    def unknown_mean(t: Tensor) -> float:  # hand-computed reference: mean over unknown x RGB
        return float(t.expand(-1, 3, -1, -1)[unknown].mean())

    # (name, value, expected, tolerance); for |x| >> eps, sqrt(x^2 + eps^2) ~ |x|
    cases = [
        ("perfect prediction, alpha loss", a_loss(alpha, alpha, mask), EPS, 1e-9),
        ("perfect prediction, comp loss", c_loss(alpha, fg, bg, merged, mask), EPS, 1e-6),
        (f"error +{d} in unknown, alpha loss", a_loss(alpha + d, alpha, mask), d, 1e-6),
        (f"error -{d} in unknown, alpha loss", a_loss(alpha - d, alpha, mask), d, 1e-6),
        (
            f"error +{d} outside unknown only, alpha loss",
            a_loss(torch.where(mask.bool(), alpha, alpha + d), alpha, mask),
            EPS,
            1e-9,
        ),
        (
            f"error +{d} in unknown, comp = mean {d}|F-B|/255",
            c_loss(alpha + d, fg, bg, merged, mask),
            unknown_mean(d * (fg - bg).abs() / 255),
            1e-5,
        ),
        (
            "fg/bg swapped, comp = mean |1-2a||F-B|/255",
            DIMLoss()(alpha, swapped)[1]["comp"],
            unknown_mean((1 - 2 * alpha).abs() * (fg - bg).abs() / 255),
            1e-5,
        ),
        ("empty mask, alpha loss", a_loss(alpha + d, alpha, torch.zeros_like(mask)), 0.0, 0.0),
        (
            "empty mask, comp loss",
            c_loss(alpha + d, fg, bg, merged, torch.zeros_like(mask)),
            0.0,
            0.0,
        ),
    ]
    failures = []
    for name, value, expected, tol in cases:
        v = value.item()
        ok = abs(v - expected) <= tol and bool(torch.isfinite(value))
        print(f"{name:48s} {v:.7f}  expected {expected:.7f}  {'ok' if ok else 'FAIL'}")
        if not ok:
            failures.append(name)

    right = DIMLoss()(alpha, label)[1]["comp"].item()
    wrong = DIMLoss()(alpha, swapped)[1]["comp"].item()
    ok = wrong > 1000 * right
    name = "comp loss, swapped / right way round"
    print(f"{name:48s} {wrong / right:.0f}x  {'ok' if ok else 'FAIL'}")
    if not ok:
        failures.append("fg/bg swap is not much worse")

    pred = (alpha + d).requires_grad_(True)
    total, parts = DIMLoss(0.5, 0.5)(pred, label)
    total.backward()
    expected = 0.5 * parts["alpha"].item() + 0.5 * parts["comp"].item()
    ok = bool(torch.isfinite(pred.grad).all()) and abs(total.item() - expected) < 1e-7
    print(
        f"{'DIMLoss(0.5, 0.5) total, finite gradient':48s} {total.item():.7f}  "
        f"{'ok' if ok else 'FAIL'}"
    )
    if not ok:
        failures.append("DIMLoss total/gradient")

    if failures:
        print("FAILED: " + ", ".join(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(_self_test())
