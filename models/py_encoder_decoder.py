"""The Deep Image Matting network (Xu et al., CVPR 2017): encoder-decoder and refine head.

Shapes and ranges (everything here is NCHW; ``channels_last`` memory format works too):

    data       (N, 4, H, W) float  -- layout.py: ImageNet-normalised RGB + trimap in [-1, 1]
    raw_alpha  (N, 1, H, W) float in [0, 1]  -- encoder-decoder output (sigmoid)
    refined    (N, 1, H, W) float in [0, 1]  -- refine head output, or None without a head

H and W must be multiples of ``model.stride`` (32: five 2x2 poolings). For other sizes pad
with :func:`utils.inference.pad_to_multiple` and crop the prediction with
:func:`utils.inference.crop_back` (utils/inference.py does both for whole images).

The architecture is one record, :class:`ModelConfig`: ``DIM(config)`` builds it, checkpoints
store it (``model_config``), a resume compares it, the trainer's model flags come from it.

Parts
    encoder      any :class:`MattingEncoder` (the interface the decoder reads: per-level
                 features, pooling indices and sizes, channel counts, and which input pixels a
                 feature sees); :data:`ENCODERS` names them. "vgg16_bn" (:class:`VGG16BNEncoder`):
                 VGG16-BN's 13 conv+BN+ReLU layers and 5 max-pools (indices kept), first conv
                 widened to 4 input channels, then the fc6 replacement ("transmap": 3x3 + 1x1
                 conv, the original repository's; or "conv1x1": the paper/mmagic 1x1 conv).
                 The layer structure is taken from ``torchvision.models.vgg16_bn`` itself, so
                 :func:`load_vggbn` derives the mapping to torchvision's state dict by position.
    decoder      1x1 conv, then per level an upsampling step ("unpool" with the encoder's
                 indices, "bilinear", or "deconv" = 2x2 transposed conv) and a 5x5 conv+BN+ReLU
                 (512, 256, 128, 64, 64 channels after VGG16-BN), then a 5x5 conv to one
                 channel (a logit). Optional skip connections add ("add") or concatenate
                 ("concat") the encoder feature of the same resolution before each 5x5 conv.
                 Xavier-initialised.
    refine_head  cat(image, raw alpha) -> 4 conv 3x3 (64, 64, 64, 1), ReLU after the first three;
                 its output is added to the raw alpha (see :class:`RefineHead`).
    coarse_scale With ``coarse_scale`` s < 1 the encoder-decoder sees the input shrunk by s
                 (area average; the trimap keeps every unknown pixel) and its logit is
                 upsampled back, while the refine head works on the full-resolution image:
                 the network's context at a coarse scale, edges at the photograph's own.

The model states its ``stride`` and ``receptive_field`` (px an input pixel can reach, followed
through every path of the network); tiled inference (utils/inference.py) reads them.

Run ``python models/py_encoder_decoder.py`` for the self-test.
"""

from __future__ import annotations

import functools
import itertools
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from data import layout

log = logging.getLogger(__name__)

FC6_CHOICES = ("transmap", "conv1x1")
UPSAMPLE_CHOICES = ("unpool", "bilinear", "deconv")
SKIP_CHOICES = (False, "add", "concat")
REFINE_ADD_CHOICES = ("logit", "clip")
COARSE_SCALE_CHOICES = (1.0, 0.5, 0.25)  # powers of two: the coarse input stays on the grid
MULTIPLE = 32  # 2 ** number of poolings
FINAL_CHANNELS = 64  # the decoder's last 5x5 conv+BN+ReLU, before the 1-channel prediction
REFINE_CHANNELS = 64


# --- building blocks -------------------------------------------------------------------------
def conv_bn_relu(cin: int, cout: int, k: int) -> nn.Sequential:
    """Conv (k x k, same padding) + BN + ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, padding=k // 2),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def _vgg16_bn_features() -> nn.Sequential:
    """torchvision's vgg16_bn ``features`` on the meta device: structure only, no memory."""
    with torch.device("meta"):
        return torchvision.models.vgg16_bn(weights=None).features


def _clone_layer(m: nn.Module, in_channels: int | None = None) -> nn.Module:
    """A fresh real-device copy of a torchvision conv/BN/ReLU layer (same hyper-parameters)."""
    if isinstance(m, nn.Conv2d):
        return nn.Conv2d(
            m.in_channels if in_channels is None else in_channels,
            m.out_channels,
            m.kernel_size,
            stride=m.stride,
            padding=m.padding,
            bias=m.bias is not None,
        )
    if isinstance(m, nn.BatchNorm2d):
        return nn.BatchNorm2d(m.num_features, eps=m.eps, momentum=m.momentum)
    if isinstance(m, nn.ReLU):
        return nn.ReLU(inplace=True)
    raise TypeError(f"unexpected layer in torchvision vgg16_bn features: {m}")


class EncoderOutput(NamedTuple):
    """What an encoder hands the decoder. Lists are ordered shallow -> deep, one entry per
    2x2 max-pool (level ``l`` is at 1/2**l of the input resolution before its pool)."""

    x: Tensor  # (N, out_channels, H/stride, W/stride): the deepest features
    indices: list[Tensor]  # per level: the 2x2 max-pool's indices (what "unpool" puts back)
    sizes: list[torch.Size]  # per level: (H_l, W_l) before the pool
    features: list[Tensor]  # per level: activations before the pool (skip connections)


def conv_span(layers: nn.Module, lo: int, hi: int) -> tuple[int, int]:
    """The input pixels (one axis) that output pixels ``lo..hi`` of ``layers`` depend on.

    ``layers`` is a chain of convolutions and point-wise layers (BN, ReLU): each
    ``nn.Conv2d`` widens the span by its kernel, stride, padding and dilation (taken from the
    module, so any conv chain is covered). Borders are ignored: the image is taken as unbounded,
    which is what the tiles' interiors see.
    """
    convs = [m for m in layers.modules() if isinstance(m, nn.Conv2d)]
    for conv in reversed(convs):
        k, s, p, d = conv.kernel_size[0], conv.stride[0], conv.padding[0], conv.dilation[0]
        lo, hi = lo * s - p, hi * s - p + (k - 1) * d
    return lo, hi


class MattingEncoder(nn.Module):
    """The interface between an encoder (backbone) and the decoder; a new backbone is one
    subclass, registered in :data:`ENCODERS`.

    A subclass sets, in ``__init__``:
        level_channels  channels of ``features[l]`` per level, shallow -> deep; one level per
                        2x2 max-pool, so the input must be a multiple of ``stride``
        out_channels    channels of ``x``
    and implements:
        forward(data (N, 4, H, W)) -> :class:`EncoderOutput`
        input_span(level, lo, hi) -> (lo, hi): the input pixels (one axis) that pixels
            ``lo..hi`` of ``features[level]`` depend on; ``level == len(level_channels)`` is
            ``x``. :attr:`DIM.receptive_field` (and so exact tiling) is derived from it.
    """

    level_channels: list[int]
    out_channels: int

    @property
    def stride(self) -> int:
        """Total down-sampling: 2 ** number of pools."""
        return 2 ** len(self.level_channels)

    def input_span(self, level: int, lo: int, hi: int) -> tuple[int, int]:
        raise NotImplementedError


class VGG16BNEncoder(MattingEncoder):
    """VGG16-BN features (4-channel input) with pooling indices, then the fc6 replacement.

    ``stages[i]`` are the conv+BN+ReLU layers of level i, ``pools[i]`` its 2x2 max-pool.
    ``vgg_names`` maps each of this encoder's conv/BN module names to the torchvision
    ``features.<k>`` name it was cloned from; :func:`load_vggbn` uses it.
    """

    def __init__(self, in_channels: int = layout.DATA_CHANNELS, fc6: str = "transmap"):
        super().__init__()
        if fc6 not in FC6_CHOICES:
            raise ValueError(f"fc6 must be one of {FC6_CHOICES}, got {fc6!r}")
        stages: list[nn.Sequential] = []
        current: list[nn.Module] = []
        self.vgg_names: dict[str, str] = {}
        first = True
        for k, m in enumerate(_vgg16_bn_features()):
            if isinstance(m, nn.MaxPool2d):
                stages.append(nn.Sequential(*current))
                current = []
                continue
            if isinstance(m, nn.Conv2d | nn.BatchNorm2d):
                self.vgg_names[f"stages.{len(stages)}.{len(current)}"] = f"features.{k}"
            current.append(_clone_layer(m, in_channels if first else None))
            first = first and not isinstance(m, nn.Conv2d)
        if current or len(stages) != 5:
            raise RuntimeError("torchvision vgg16_bn no longer has 5 pooled stages")
        self.stages = nn.ModuleList(stages)
        self.pools = nn.ModuleList(
            nn.MaxPool2d(2, 2, return_indices=True) for _ in range(len(stages))
        )
        self.level_channels = [s[-3].out_channels for s in stages]  # [64, 128, 256, 512, 512]
        c = self.level_channels[-1]
        if fc6 == "transmap":
            self.fc6 = nn.Sequential(conv_bn_relu(c, c, 3), conv_bn_relu(c, c, 1))
        else:
            self.fc6 = conv_bn_relu(c, c, 1)
        self.out_channels = c
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """torchvision's VGG initialisation (used when no ImageNet weights are loaded)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> EncoderOutput:
        indices, sizes, features = [], [], []
        for stage, pool in zip(self.stages, self.pools, strict=True):
            x = stage(x)
            features.append(x)
            sizes.append(x.shape[-2:])
            x, idx = pool(x)
            indices.append(idx)
        return EncoderOutput(self.fc6(x), indices, sizes, features)

    def input_span(self, level: int, lo: int, hi: int) -> tuple[int, int]:
        if level == len(self.stages):
            lo, hi = conv_span(self.fc6, lo, hi)
            lo, hi = 2 * lo, 2 * hi + 1  # the last pool
            level -= 1
        for lev in range(level, -1, -1):
            lo, hi = conv_span(self.stages[lev], lo, hi)
            if lev > 0:
                lo, hi = 2 * lo, 2 * hi + 1  # the pool before this level
        return lo, hi


def _repeat2x(t: Tensor) -> Tensor:
    """Nearest-neighbour 2x upsampling of (N, C, h, w) by broadcasting: any dtype, exact."""
    n, c, h, w = t.shape
    return t[:, :, :, None, :, None].expand(n, c, h, 2, w, 2).reshape(n, c, 2 * h, 2 * w)


def unpool2x_elementwise(x: Tensor, indices: Tensor) -> Tensor:
    """``F.max_unpool2d(x, indices, 2, 2)`` for an even-sized input, from elementwise ops only.

    x, indices (N, C, h, w) from a 2x2 stride-2 max-pool of a (2h, 2w) map -> (N, C, 2h, 2w).
    Each output pixel lies in exactly one pooling window; it gets that window's maximum when
    the pool's flat per-channel index (row * 2w + column) names it, else zero. Bit-identical
    to ``max_unpool2d``. Used for ONNX export (``Upsample.elementwise``): the exporters do not
    write ONNX MaxUnpool with PyTorch's per-channel index layout, and these ops (Expand,
    Reshape, Equal, Where) run in any ONNX runtime.
    """
    h2, w2 = 2 * x.shape[-2], 2 * x.shape[-1]
    grid = torch.arange(h2 * w2, device=x.device, dtype=indices.dtype).reshape(1, 1, h2, w2)
    return torch.where(_repeat2x(indices) == grid, _repeat2x(x), torch.zeros((), dtype=x.dtype))


class Upsample(nn.Module):
    """One 2x upsampling step of the decoder: "unpool", "bilinear" or "deconv".

    "unpool" puts each value back where the encoder's max-pool found it (``output_size`` is
    the pre-pool size, so any multiple of 32 works); "bilinear" ignores the indices;
    "deconv" is a learned 2x2 stride-2 transposed convolution keeping the channel count.
    ``elementwise = True`` computes "unpool" with :func:`unpool2x_elementwise` (same values,
    slower): ``export.py`` sets it on the model it exports, training never does.
    """

    elementwise = False

    def __init__(self, mode: str, channels: int):
        super().__init__()
        if mode not in UPSAMPLE_CHOICES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_CHOICES}, got {mode!r}")
        self.mode = mode
        self.deconv = (
            nn.ConvTranspose2d(channels, channels, 2, stride=2) if mode == "deconv" else None
        )

    def forward(self, x: Tensor, indices: Tensor, size: torch.Size) -> Tensor:
        if self.mode == "unpool":
            if self.elementwise:
                return unpool2x_elementwise(x, indices)
            return F.max_unpool2d(x, indices, 2, 2, output_size=size)
        if self.mode == "bilinear":
            return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return self.deconv(x, output_size=size)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"


class Decoder(nn.Module):
    """1x1 conv, 5 x (upsample + 5x5 conv+BN+ReLU), 5x5 conv to a 1-channel alpha logit.

    ``encoder_channels`` are the encoder's per-level channels (shallow -> deep); with skip
    connections the encoder activation of the same resolution is added ("add", the channel
    counts match at every level) or concatenated ("concat") after each upsampling.
    """

    def __init__(
        self,
        encoder_channels: list[int],
        in_channels: int = 512,
        upsample: str = "unpool",
        skip: str | bool = False,
    ):
        super().__init__()
        if skip not in SKIP_CHOICES:
            raise ValueError(f"skip must be one of {SKIP_CHOICES}, got {skip!r}")
        self.skip = skip
        # Unpooling puts a level's values where that level's pool found them, so the decoder
        # enters each level with the encoder's channel count there (VGG16-BN: 512, 512, 256,
        # 128, 64 deep -> shallow) and leaves the shallowest with FINAL_CHANNELS.
        self.conv6 = conv_bn_relu(in_channels, encoder_channels[-1], 1)
        ups, convs = [], []
        cin = encoder_channels[-1]
        widths = [*reversed(encoder_channels[:-1]), FINAL_CHANNELS]
        for cout, cenc in zip(widths, reversed(encoder_channels), strict=True):
            if skip == "add" and cenc != cin:
                raise ValueError(f"skip='add' needs equal channels, got {cenc} and {cin}")
            ups.append(Upsample(upsample, cin))
            convs.append(conv_bn_relu(cin + cenc if skip == "concat" else cin, cout, 5))
            cin = cout
        self.ups = nn.ModuleList(ups)
        self.convs = nn.ModuleList(convs)
        self.pred = nn.Conv2d(cin, 1, 5, padding=2)
        self.reset_parameters()

    def input_span(self, encoder: MattingEncoder, lo: int, hi: int) -> tuple[int, int]:
        """The input pixels (one axis) that output pixels ``lo..hi`` depend on, through every
        path: the deepest features, each level's pooling indices ("unpool") and skips."""
        spans = []
        lo, hi = conv_span(self.pred, lo, hi)
        for level in range(len(self.convs)):  # shallow -> deep, the reverse of forward()
            up, conv = self.ups[-1 - level], self.convs[-1 - level]
            lo, hi = conv_span(conv, lo, hi)
            if self.skip:
                spans.append(encoder.input_span(level, lo, hi))
            if up.mode == "bilinear":
                lo, hi = (lo - 1) // 2, (hi + 1) // 2
            else:  # unpool and the 2x2 stride-2 deconv: one coarse pixel per 2x2 block
                lo, hi = lo // 2, hi // 2
            if up.mode == "unpool":  # the indices come from the pool of features[level]
                spans.append(encoder.input_span(level, 2 * lo, 2 * hi + 1))
        spans.append(encoder.input_span(len(self.convs), *conv_span(self.conv6, lo, hi)))
        return min(a for a, _ in spans), max(b for _, b in spans)

    def reset_parameters(self) -> None:
        """Xavier (uniform) weights and zero biases, as in the paper."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, enc: EncoderOutput) -> Tensor:
        """Encoder output -> alpha logit (N, 1, H, W)."""
        x = self.conv6(enc.x)
        levels = zip(
            self.ups,
            self.convs,
            reversed(enc.indices),
            reversed(enc.sizes),
            reversed(enc.features),
            strict=True,
        )
        for up, conv, idx, size, feat in levels:
            x = up(x, idx, size)
            if self.skip == "add":
                x = x + feat
            elif self.skip == "concat":
                x = torch.cat([x, feat], dim=1)
            x = conv(x)
        return self.pred(x)


class RefineHead(nn.Module):
    """The refinement stage: cat(image RGB, raw alpha) -> residual added to the raw alpha.

    Four 3x3 convs (64, 64, 64, 1 channels), ReLU after the first three, no down-sampling.
    The image is the normalised RGB straight from ``data`` (scale does not matter to a conv).

    How the residual is added (``add``):
      "logit" (default)  refined = sigmoid(raw_logit + residual). The paper adds in alpha space
          and clips to [0, 1]; a clip has zero gradient wherever it saturates, which is exactly
          where a refinement towards 0 or 1 should push (most of the unknown band). Adding in
          logit space keeps the output in [0, 1] with gradients everywhere (mmagic does this).
      "clip"  the paper's literal refined = clamp(raw_alpha + residual, 0, 1).

    The last conv starts at zero, so an untrained head returns the raw alpha unchanged and
    stage 2 starts from the stage-1 result (Adam moves the zero layer at the full learning
    rate on the first step, after which the other layers get gradients too).
    """

    def __init__(self, add: str = "logit", channels: int = REFINE_CHANNELS):
        super().__init__()
        if add not in REFINE_ADD_CHOICES:
            raise ValueError(f"refine_add must be one of {REFINE_ADD_CHOICES}, got {add!r}")
        self.add = add
        self.body = nn.Sequential(
            nn.Conv2d(4, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, 1, 3, padding=1),
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.body:
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.zeros_(self.body[-1].weight)

    def forward(self, image: Tensor, raw_logit: Tensor) -> Tensor:
        """image (N, 3, H, W) normalised RGB, raw_logit (N, 1, H, W) -> refined alpha in [0, 1]."""
        raw_logit = raw_logit.float()  # output arithmetic in float32, also under autocast
        raw_alpha = torch.sigmoid(raw_logit)
        residual = self.body(torch.cat([image, raw_alpha.to(image.dtype)], dim=1)).float()
        if self.add == "logit":
            return torch.sigmoid(raw_logit + residual)
        return torch.clamp(raw_alpha + residual, 0.0, 1.0)

    def extra_repr(self) -> str:
        return f"add={self.add!r}"


ENCODERS: dict[str, Callable[[ModelConfig], MattingEncoder]] = {
    "vgg16_bn": lambda config: VGG16BNEncoder(layout.DATA_CHANNELS, fc6=config.fc6),
}


@dataclass(frozen=True)
class ModelConfig:
    """The whole architecture. ``DIM(config)`` builds it, checkpoints store ``to_dict()`` as
    ``model_config``, a resume compares it, and the trainer has one flag per field that has
    a ``help`` (``refine`` has none: the stage decides)."""

    encoder: str = field(
        default="vgg16_bn", metadata={"help": "backbone (models.py_encoder_decoder.ENCODERS)"}
    )
    fc6: str = field(
        default="transmap",
        metadata={
            "choices": FC6_CHOICES,
            "help": "VGG's fc6 as a conv layer after the last pool: transmap (3x3 then 1x1 conv, "
            "the original Caffe repository's) or conv1x1 (one 1x1 conv, as mmagic; the paper "
            "does not give the kernel)",
        },
    )
    upsample: str = field(
        default="unpool",
        metadata={"choices": UPSAMPLE_CHOICES, "help": "decoder upsampling"},
    )
    skip: str | bool = field(
        default=False,
        metadata={
            "choices": ("none", "add", "concat"),
            "help": "skip connections from the encoder to the decoder",
        },
    )
    refine: bool = True  # the refine head (stages 2 and 3)
    refine_add: str = field(
        default="logit",
        metadata={
            "choices": REFINE_ADD_CHOICES,
            "help": "how the refine head adds its residual (RefineHead)",
        },
    )
    coarse_scale: float = field(
        default=1.0,
        metadata={
            "choices": COARSE_SCALE_CHOICES,
            "type": float,
            "help": "the encoder-decoder runs on the input shrunk by this factor and the refine "
            "head on the full-resolution input (1: both at the input's resolution)",
        },
    )

    def __post_init__(self):
        skip = "add" if self.skip is True else self.skip
        object.__setattr__(self, "skip", False if skip in (None, "none") else skip)
        object.__setattr__(self, "refine", bool(self.refine))
        try:
            object.__setattr__(self, "coarse_scale", float(self.coarse_scale))
        except (TypeError, ValueError):
            raise ValueError(f"coarse_scale must be a number, got {self.coarse_scale!r}") from None
        checks = (("encoder", tuple(ENCODERS)), ("fc6", FC6_CHOICES),
                  ("upsample", UPSAMPLE_CHOICES), ("skip", SKIP_CHOICES),
                  ("refine_add", REFINE_ADD_CHOICES),
                  ("coarse_scale", COARSE_SCALE_CHOICES))  # fmt: skip
        for name, choices in checks:
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {getattr(self, name)!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, config: Mapping[str, Any] | None) -> ModelConfig:
        """From a checkpoint's ``model_config`` (missing keys: defaults)."""
        config = dict(config or {})
        names = {f.name for f in fields(cls)}
        unknown = set(config) - names
        if unknown:
            raise ValueError(
                f"unknown model config keys {sorted(unknown)}; allowed: {sorted(names)}"
            )
        return cls(**config)

    @staticmethod
    def flags() -> list[Any]:
        """The fields the trainer's command line sets (``--fc6`` ...)."""
        return [f for f in fields(ModelConfig) if "help" in f.metadata]

    def flag_value(self, name: str) -> str:
        """A field as its command-line flag spells it (skip False -> "none")."""
        value = getattr(self, name)
        return "none" if value is False else str(value)


class DIM(nn.Module):
    """Deep Image Matting: ``model(data) -> (raw_alpha, refined_alpha or None)``.

    ``DIM(config)`` or ``DIM(**fields)`` (or both: the fields change the config); see
    :class:`ModelConfig`. ``model.config`` is that config; the model states its ``stride``
    (inputs are multiples of it) and its ``receptive_field`` (what exact tiling needs).
    """

    def __init__(self, config: ModelConfig | None = None, **changes: Any):
        super().__init__()
        self.config = replace(config or ModelConfig(), **changes)
        self.encoder = ENCODERS[self.config.encoder](self.config)
        self.decoder = Decoder(
            self.encoder.level_channels,
            self.encoder.out_channels,
            upsample=self.config.upsample,
            skip=self.config.skip,
        )
        self.refine_head = RefineHead(self.config.refine_add) if self.config.refine else None

    @property
    def factor(self) -> int:
        """Input pixels per encoder-decoder pixel, one axis (1 / coarse_scale)."""
        return round(1 / self.config.coarse_scale)

    @property
    def stride(self) -> int:
        return self.encoder.stride * self.factor

    @functools.cached_property
    def receptive_field(self) -> int:
        """How far (px, either side) an input pixel can change an output pixel, the most over
        the ``stride`` phases of the pooling grid. Tiles with at least this much context
        equal whole-image inference (utils/inference.py)."""
        f = self.factor

        def span(lo: int, hi: int) -> tuple[int, int]:
            if self.refine_head is not None:
                lo, hi = conv_span(self.refine_head.body, lo, hi)
            if f == 1:
                return self.decoder.input_span(self.encoder, lo, hi)
            # bilinear upsampling reads the two coarse pixels around a fine one; each coarse
            # pixel averages an f x f block
            lo, hi = self.decoder.input_span(self.encoder, (lo - f) // f, (hi + f) // f)
            return lo * f, hi * f + f - 1

        return max(max(i - lo, hi - i) for i in range(self.stride) for lo, hi in [span(i, i)])

    def forward(self, data: Tensor, refine: bool | None = None) -> tuple[Tensor, Tensor | None]:
        """data (N, 4, H, W), H, W multiples of ``stride`` -> (raw, refined), each (N, 1, H, W)
        in [0, 1].

        Outputs are float32 even under ``torch.autocast``.
        ``refine=False`` skips the refine head (refined is None), e.g. for stage 1 on a
        model that has one; ``None`` runs it whenever the model has one.
        """
        check_input(data, self.stride)
        if self.factor == 1:
            logit = self.decoder(self.encoder(data))
        else:
            logit = self.decoder(self.encoder(coarse_input(data, self.factor)))
            logit = F.interpolate(logit, size=data.shape[-2:], mode="bilinear", align_corners=False)
        # float32 sigmoid: under bf16 autocast alpha would otherwise be quantised to ~1/256
        raw = torch.sigmoid(logit.float())
        if self.refine_head is None or refine is False:
            return raw, None
        return raw, self.refine_head(layout.image(data), logit)


def coarse_input(data: Tensor, factor: int) -> Tensor:
    """data (N, 4, H, W) -> (N, 4, H / factor, W / factor): the image averaged over each
    factor x factor block; the trimap as utils.inference.scale_trimap shrinks it (unknown
    where any pixel of the block is, else foreground where at least half the block is)."""
    image = F.avg_pool2d(layout.image(data), factor)
    t = layout.trimap(data)
    fg = F.avg_pool2d((t > 0.5).to(data.dtype), factor) >= 0.5
    unknown = F.max_pool2d((t.abs() < 0.5).to(data.dtype), factor) > 0
    bg_v, unknown_v, fg_v = layout.scale_trimap([layout.TRIMAP_BG, layout.TRIMAP_UNKNOWN,
                                                 layout.TRIMAP_FG]).tolist()  # fmt: skip
    trimap = torch.where(unknown, unknown_v, torch.where(fg, fg_v, bg_v))
    return torch.cat([image, trimap.to(image.dtype)], 1)


def check_input(data: Tensor, multiple: int = MULTIPLE) -> None:
    """Raise a ValueError explaining what is wrong with a model input, if anything."""
    if data.dim() != 4 or data.shape[1] != layout.DATA_CHANNELS:
        raise ValueError(
            f"DIM expects data of shape (N, {layout.DATA_CHANNELS}, H, W) (RGB + trimap, "
            f"see data/layout.py), got {tuple(data.shape)}"
        )
    h, w = data.shape[-2:]
    if h % multiple or w % multiple:
        raise ValueError(
            f"DIM needs height and width that are multiples of {multiple}, got {h}x{w}: pad with "
            "utils.inference.pad_to_multiple(data) and cut the prediction back with "
            "utils.inference.crop_back(pred, pads) (utils/inference.py does both for whole images)"
        )


def build_model(config: Mapping[str, Any] | None = None) -> DIM:
    """Build a :class:`DIM` from a checkpoint's ``model_config`` dict (missing keys: defaults)."""
    return DIM(ModelConfig.from_dict(config))


def count_parameters(module: nn.Module | None) -> int:
    """Number of parameters of ``module`` (0 for None)."""
    return 0 if module is None else sum(p.numel() for p in module.parameters())


# --- ImageNet VGG16-BN weights ---------------------------------------------------------------
class VGGWeightsError(ValueError):
    """The VGG16-BN weights are missing, unreadable or of another architecture."""


@dataclass
class VGGLoadReport:
    """What :func:`load_vggbn` did."""

    source: str
    copied: int = 0  # tensors copied into the encoder
    copied_keys: list[str] = field(default_factory=list)  # encoder state-dict keys
    skipped: list[str] = field(default_factory=list)  # source keys not used (classifier.*)
    not_loaded: list[str] = field(default_factory=list)  # encoder keys left as initialised

    def summary(self) -> str:
        return (
            f"VGG16-BN weights from {self.source}: copied {self.copied} tensors into the encoder "
            f"(trimap-channel filters zero), skipped {len(self.skipped)} source tensors "
            f"(classifier), {len(self.not_loaded)} encoder tensors keep their init (fc6)"
        )


def _vgg_weights_file(weights: torchvision.models.WeightsEnum) -> Path:
    name = os.path.basename(urlparse(weights.url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def vgg_hub_cache_file() -> Path:
    """Where torch's hub cache keeps torchvision's ImageNet ``vgg16_bn`` weights (may not exist)."""
    return _vgg_weights_file(torchvision.models.VGG16_BN_Weights.IMAGENET1K_V1)


def _missing_weights_message(where: str) -> str:
    url = torchvision.models.VGG16_BN_Weights.IMAGENET1K_V1.url
    cache = _vgg_weights_file(torchvision.models.VGG16_BN_Weights.IMAGENET1K_V1)
    return (
        f"{where}. Nothing is downloaded at run time: fetch {url} yourself "
        f"(e.g. `curl -L -o {cache} {url}`) and put it at {cache} (torch's hub cache; "
        "TORCH_HOME moves it), or pass the file's path"
    )


def read_vgg_state_dict(weights: Any) -> tuple[Mapping[str, Any], str]:
    """Resolve ``weights`` (path, state dict or torchvision enum) to (state dict, description),
    checked to be torchvision's ``vgg16_bn`` (names and shapes; ``module.`` prefixes and a saved
    ``.features`` alone accepted). Raises :class:`VGGWeightsError` naming the file."""
    enum_type = torchvision.models.VGG16_BN_Weights
    if isinstance(weights, str) and not Path(weights).exists():
        if weights.lower() in ("imagenet", "imagenet1k_v1", "default"):
            weights = enum_type.IMAGENET1K_V1
    if isinstance(weights, torchvision.models.WeightsEnum):
        if not isinstance(weights, enum_type):
            raise VGGWeightsError(f"{weights} are not VGG16_BN weights; use {enum_type.__name__}")
        cached = _vgg_weights_file(weights)
        if not cached.is_file():
            raise VGGWeightsError(_missing_weights_message(f"{weights} not found in {cached}"))
        try:
            state = weights.get_state_dict(progress=False, weights_only=True)
        except Exception as e:
            raise VGGWeightsError(
                _missing_weights_message(f"cannot read cached {cached} ({type(e).__name__}: {e})")
            ) from e
        source = str(cached)
    elif isinstance(weights, str | os.PathLike):
        path = Path(weights)
        if not path.is_file():
            raise VGGWeightsError(
                _missing_weights_message(f"VGG16-BN weights file {path} not found")
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            first = (str(e).strip().splitlines() or [""])[0]
            if "Weights only load failed" in first:  # torch's text goes on to advise unsafe loading
                raise VGGWeightsError(
                    f"refused to load {path}: it holds Python objects other than tensors, and "
                    "unpickling those can run arbitrary code; expected torchvision's "
                    "vgg16_bn-*.pth (a plain state dict)"
                ) from None
            raise VGGWeightsError(
                f"cannot read {path} as a PyTorch state dict ({type(e).__name__}: {first}); "
                "expected torchvision's vgg16_bn-*.pth"
            ) from e
        source = str(path)
    elif isinstance(weights, Mapping):
        state, source = weights, "a state dict"
    else:
        raise VGGWeightsError(
            f"weights must be a path, a state dict or torchvision.models.VGG16_BN_Weights, "
            f"got {type(weights).__name__}"
        )
    if isinstance(state, Mapping):
        for key in ("state_dict", "model"):  # common checkpoint wrappers
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not all(isinstance(v, Tensor) for v in state.values()):
        raise VGGWeightsError(
            f"{source} is not a state dict (a mapping of names to tensors), "
            f"got {type(state).__name__}; expected torchvision's vgg16_bn weights"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if not any(k.startswith("features.") for k in state) and "0.weight" in state:
        state = {f"features.{k}": v for k, v in state.items()}  # a saved `.features` alone

    expected = {f"features.{k}": v.shape for k, v in _vgg16_bn_features().state_dict().items()}
    problems = []
    for key, shape in expected.items():
        if key not in state:
            if not key.endswith("num_batches_tracked"):  # absent in old torchvision files
                problems.append(f"missing {key}")
        elif tuple(state[key].shape) != tuple(shape):
            problems.append(f"{key} has shape {tuple(state[key].shape)}, expected {tuple(shape)}")
    extra = [k for k in state if k.startswith("features.") and k not in expected]
    if extra:
        problems.append(f"unexpected {extra[0]} (+{len(extra) - 1} more)")
    if problems:
        raise VGGWeightsError(
            f"{source} is not a torchvision vgg16_bn state dict: {_describe_architecture(state)}; "
            f"{'; '.join(problems[:3])}{' ...' if len(problems) > 3 else ''}"
        )
    return state, source


def _describe_architecture(state: Mapping[str, Tensor]) -> str:
    keys = list(state)
    if any(k.endswith("running_mean") for k in keys):
        return "it has batch norm but other layer names/shapes (another network?)"
    if any(k.startswith("features.") for k in keys):
        return "it has no batch-norm layers: VGG16 without BN (torchvision vgg16) is not supported"
    return "it does not look like a VGG at all"


def load_vggbn(model: nn.Module, weights: Any) -> VGGLoadReport:
    """Copy torchvision's ImageNet ``vgg16_bn`` weights into the encoder of ``model``.

    ``model`` is a :class:`DIM` (also wrapped by DDP or ``torch.compile``) or its Encoder.

    ``weights`` is a path to torchvision's ``vgg16_bn-6c64b313.pth`` (or any saved
    ``vgg16_bn().state_dict()``), such a state dict itself, or
    ``torchvision.models.VGG16_BN_Weights.IMAGENET1K_V1`` (read from torch's hub cache only;
    ``"imagenet"`` is accepted as a shorthand). Files are read with ``weights_only=True``.

    The mapping is derived: the encoder was cloned layer by layer from torchvision's
    ``vgg16_bn().features`` and remembers each conv/BN's ``features.<k>`` name; every
    tensor's shape is checked. The first conv gets the RGB filters in input channels 0-2 and
    zeros for the trimap channel 3; BN weight, bias and running statistics are copied too.
    fc6 and the decoder keep their initialisation.

    Returns a :class:`VGGLoadReport` (also logged as one line). Raises
    :class:`VGGWeightsError` (a ValueError) for a missing or unreadable file, something that
    is not a state dict, or a state dict of another architecture.
    """
    for attr in ("module", "_orig_mod"):  # DistributedDataParallel, torch.compile wrappers
        model = getattr(model, attr, model)
    encoder = model.encoder if isinstance(model, DIM) else model
    if not isinstance(encoder, VGG16BNEncoder):
        raise TypeError(f"load_vggbn needs a DIM model or its Encoder, got {type(model).__name__}")
    state, source = read_vgg_state_dict(weights)
    expected = {f"features.{k}" for k in _vgg16_bn_features().state_dict()}
    report = VGGLoadReport(source=source, skipped=[k for k in state if k not in expected])
    target = encoder.state_dict(keep_vars=True)
    with torch.no_grad():
        for ours, theirs in encoder.vgg_names.items():
            for suffix in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
                src_key, dst_key = f"{theirs}.{suffix}", f"{ours}.{suffix}"
                if dst_key not in target or src_key not in state:
                    continue
                dst, src = target[dst_key], state[src_key]
                if dst.shape != src.shape:  # the widened first conv: RGB + zero trimap filters
                    dst.zero_()
                    dst[:, : src.shape[1]].copy_(src)
                else:
                    dst.copy_(src)
                report.copied += 1
                report.copied_keys.append(dst_key)
    report.not_loaded = [k for k in target if k not in set(report.copied_keys)]
    log.info(report.summary())
    return report


# --- self-test -------------------------------------------------------------------------------
def _randomized_vgg16_bn_state() -> dict[str, Tensor]:
    """A torchvision vgg16_bn state dict (weights=None) with BN statistics made non-trivial."""
    g = torch.Generator().manual_seed(0)
    state = torchvision.models.vgg16_bn(weights=None).state_dict()
    for k, v in state.items():
        if k.endswith(("running_mean", "bias")) and k.startswith("features."):
            v.copy_(torch.randn(v.shape, generator=g))
        elif k.endswith(("running_var",)) or (k.endswith("weight") and v.dim() == 1):
            v.copy_(torch.rand(v.shape, generator=g) + 0.5)
        elif k.endswith("num_batches_tracked"):
            v.fill_(7)
    return state


def check_vgg_transplant(model: DIM, state: Mapping[str, Tensor]) -> list[str]:
    """Compare the encoder with a vgg16_bn state dict; return a list of mismatches (empty: ok)."""
    errors = []
    ours = model.encoder.state_dict()
    for dst, src in model.encoder.vgg_names.items():
        for suffix in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
            a, b = ours.get(f"{dst}.{suffix}"), state.get(f"{src}.{suffix}")
            if a is None or b is None:
                continue
            if a.shape != b.shape:
                if not torch.equal(a[:, : b.shape[1]], b):
                    errors.append(f"{dst}.{suffix}: RGB filters differ from {src}.{suffix}")
                if a[:, b.shape[1] :].abs().sum() != 0:
                    errors.append(f"{dst}.{suffix}: trimap-channel filters are not zero")
            elif not torch.equal(a, b):
                errors.append(f"{dst}.{suffix} differs from {src}.{suffix}")
    return errors


def _self_test() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    failures: list[str] = []
    t0 = time.perf_counter()

    print("== parameter counts of every variant (fc6, upsample, skip, refine) ==")
    print(
        f"{'fc6':9s} {'upsample':9s} {'skip':7s} {'refine':7s} {'encoder':>11s} "
        f"{'decoder':>11s} {'refine':>8s}"
    )
    small = torch.randn(1, 4, 32, 32)  # smallest legal size: a quick smoke test
    for fc6, up, skip, refine in itertools.product(
        FC6_CHOICES, UPSAMPLE_CHOICES, SKIP_CHOICES, (False, True)
    ):
        config = {"fc6": fc6, "upsample": up, "skip": skip, "refine": refine}
        with torch.device("meta"):  # structure only: counting needs no memory or init
            model = build_model(config)
        counts = [count_parameters(m) for m in (model.encoder, model.decoder, model.refine_head)]
        print(
            f"{fc6:9s} {up:9s} {skip!s:7s} {refine!s:7s} {counts[0]:11,d} {counts[1]:11,d} "
            f"{counts[2]:8,d}"
        )
        if refine or (up, skip) == ("unpool", False):  # refine=False only changes the tail
            with torch.no_grad():
                raw, ref = DIM(**config).eval()(small)
            if raw.shape != small[:, :1].shape or (ref is None) == refine:
                failures.append(f"{fc6}/{up}/{skip}/{refine}: wrong outputs at 32x32")
        with torch.device("meta"):
            rebuilt = build_model(model.config.to_dict())
        shapes = {k: v.shape for k, v in model.state_dict().items()}
        if rebuilt.config != model.config or shapes != {
            k: v.shape for k, v in rebuilt.state_dict().items()
        }:
            failures.append(f"build_model(config) does not round-trip {model.config}")

    print("\n== forward at 320x320 on CPU (batch 1), per stage and upsampling mode ==")
    data = torch.randn(1, 4, 320, 320)
    for up in UPSAMPLE_CHOICES:
        for stage, refine in (("1", False), ("2/3", True)):
            model = DIM(upsample=up, refine=refine).eval()
            t = time.perf_counter()
            with torch.no_grad():
                raw, ref = model(data)
            outs = [raw] + ([ref] if refine else [])
            ok = all(o.shape == (1, 1, 320, 320) and 0 <= o.min() and o.max() <= 1 for o in outs)
            ok = ok and (ref is None) != refine
            print(
                f"stage {stage:3s} upsample={up:8s} raw {tuple(raw.shape)} "
                f"refined {None if ref is None else tuple(ref.shape)} "
                f"{time.perf_counter() - t:5.2f} s {'ok' if ok else 'FAIL'}"
            )
            if not ok:
                failures.append(f"stage {stage} {up}: bad output shape/range")

    print("\n== load_vggbn vs torchvision.models.vgg16_bn(weights=None) ==")
    state = _randomized_vgg16_bn_state()
    model = DIM()
    report = load_vggbn(model, state)
    errors = check_vgg_transplant(model, state)
    n_expected = sum(1 for k in state if k.startswith("features."))
    if report.copied != n_expected:
        errors.append(f"copied {report.copied} tensors, expected {n_expected}")
    print(
        f"{report.copied} tensors copied, {len(report.skipped)} classifier tensors skipped, "
        f"{len(errors)} mismatches"
    )
    failures += errors

    print(f"\nself-test took {time.perf_counter() - t0:.1f} s")
    if failures:
        print("FAILED:\n  " + "\n  ".join(failures))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(_self_test())
