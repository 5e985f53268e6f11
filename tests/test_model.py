"""Tests of models/py_encoder_decoder.py: shapes, ranges, gradients, padding, VGG loading."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from models.py_encoder_decoder import (
    DIM,
    VGGWeightsError,
    build_model,
    load_vggbn,
    unpool2x_elementwise,
)
from utils import inference

ROOT = Path(__file__).resolve().parents[1]
VGG_URL = torchvision.models.VGG16_BN_Weights.IMAGENET1K_V1.url


def _data(n: int = 2, h: int = 64, w: int = 64) -> torch.Tensor:
    x = torch.randn(n, 4, h, w)
    x[:, 3] = torch.randint(-1, 2, (n, h, w)).float()  # trimap in {-1, 0, 1}
    return x


def _conv_weights(module: nn.Module) -> list[tuple[str, torch.Tensor]]:
    return [
        (f"{name}.weight", m.weight)
        for name, m in module.named_modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
    ]


@pytest.fixture(scope="module")
def shared_model() -> DIM:
    """One model for the tests that only check errors (it must never be modified)."""
    return DIM(refine=False).eval()


# --- shapes and ranges -----------------------------------------------------------------------
@pytest.mark.parametrize("upsample", ["unpool", "bilinear", "deconv"])
@pytest.mark.parametrize("refine", [False, True], ids=["stage1", "stage2-3"])
def test_shapes_and_ranges(upsample, refine):
    model = DIM(upsample=upsample, refine=refine).eval()
    with torch.no_grad():
        raw, refined = model(_data())
    assert raw.shape == (2, 1, 64, 64) and raw.dtype == torch.float32
    assert 0 <= raw.min() and raw.max() <= 1
    if refine:
        assert refined.shape == (2, 1, 64, 64)
        assert 0 <= refined.min() and refined.max() <= 1
    else:
        assert refined is None and model.refine_head is None


@pytest.mark.parametrize(
    "config",
    [
        {"skip": "add"},
        {"skip": "concat", "upsample": "bilinear"},
        {"skip": True, "upsample": "deconv"},
        {"fc6": "conv1x1"},
        {"refine_add": "clip"},
    ],
)
def test_variants_forward(config):
    model = build_model(config).eval()
    with torch.no_grad():
        raw, refined = model(_data(1, 32, 96))  # non-square, smallest legal height
    assert raw.shape == refined.shape == (1, 1, 32, 96)
    assert 0 <= refined.min() and refined.max() <= 1


def test_skip_changes_decoder_input():
    """concat doubles the 5x5 convs' inputs; add keeps them (channels match at every level)."""
    plain, add, cat = (DIM(skip=s, refine=False) for s in (False, "add", "concat"))
    ins = [[c[0].in_channels for c in m.decoder.convs] for m in (plain, add, cat)]
    assert ins[0] == ins[1] == [512, 512, 256, 128, 64]
    assert ins[2] == [1024, 1024, 512, 256, 128]


def test_forward_refine_false_skips_head():
    model = DIM().eval()
    with torch.no_grad():
        raw, refined = model(_data(1), refine=False)
    assert refined is None and raw.shape == (1, 1, 64, 64)


def test_untrained_refine_head_is_identity_and_residual_is_added():
    model = DIM().eval()
    data = _data(1)
    with torch.no_grad():
        raw, refined = model(data)
        torch.testing.assert_close(refined, raw)
        last = model.refine_head.body[-1]
        last.bias.fill_(1.0)  # a constant residual of +1
        _, refined = model(data)
        logit = torch.logit(raw.double(), eps=0).float()
        torch.testing.assert_close(refined, torch.sigmoid(logit + 1.0), atol=1e-5, rtol=1e-4)
        model.refine_head.add = "clip"
        _, refined = model(data)
        torch.testing.assert_close(refined, (raw + 1.0).clamp(0, 1))


@pytest.mark.parametrize("shape", [(1, 4, 65, 64), (1, 4, 64, 48), (1, 4, 31, 32)])
def test_sizes_not_multiple_of_32_are_rejected(shape, shared_model):
    with pytest.raises(ValueError, match=r"multiples of 32.*utils.inference.pad_to_multiple"):
        shared_model(torch.zeros(shape))


def test_wrong_channel_count_is_rejected(shared_model):
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\)"):
        shared_model(torch.zeros(1, 3, 64, 64))


@pytest.mark.parametrize("bad", [{"fc6": "fc"}, {"upsample": "nearest"}, {"skip": "sum"}])
def test_bad_options_are_rejected(bad):
    with pytest.raises(ValueError, match="must be one of"):
        build_model(bad)


def test_config_round_trip():
    model = DIM(fc6="conv1x1", upsample="deconv", skip=True, refine=False)
    assert model.config.to_dict() == {
        "encoder": "vgg16_bn",
        "fc6": "conv1x1",
        "upsample": "deconv",
        "skip": "add",
        "refine": False,
        "refine_add": "logit",
        "coarse_scale": 1.0,
    }
    rebuilt = build_model(model.config.to_dict())
    rebuilt.load_state_dict(model.state_dict())  # same architecture: strict load works
    with pytest.raises(ValueError, match="unknown model config keys"):
        build_model({"fc7": 1})


def test_decoder_xavier_init():
    model = DIM(upsample="deconv")
    for name, w in _conv_weights(model.decoder):
        fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(w)
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
        assert w.abs().max() <= bound + 1e-6, name
        assert w.abs().max() > 0.8 * bound, name  # uniform over the whole Xavier range


def test_channels_last_and_bf16_autocast():
    model = DIM(skip="add").to(memory_format=torch.channels_last)
    data = _data(1).to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        raw, refined = model(data)
    assert raw.dtype == refined.dtype == torch.float32
    assert raw.shape == refined.shape == (1, 1, 64, 64)
    assert 0 <= refined.min() and refined.max() <= 1
    (raw.mean() + refined.mean()).backward()
    assert model.encoder.stages[0][0].weight.grad is not None


# --- padding (utils/inference.py, the one padding rule) -----------------------------------------
@pytest.mark.parametrize("shape", [(1, 4, 37, 50), (2, 3, 65, 33), (33, 70), (3, 31, 31)])
def test_pad_crop_round_trip(shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    padded, pads = inference.pad_to_multiple(x)
    assert padded.shape[-2] % 32 == 0 and padded.shape[-1] % 32 == 0
    assert padded.shape[:-2] == x.shape[:-2]
    np.testing.assert_array_equal(inference.crop_back(padded, pads), x)
    # reflect: the row above the image mirrors the image's second row
    if pads[2] > 0:
        np.testing.assert_array_equal(
            padded[..., pads[2] - 1, pads[0] : pads[0] + shape[-1]], x[..., 1, :]
        )


def test_pad_tiny_and_integer_inputs_fall_back_to_replicate():
    x = np.arange(15, dtype=np.uint8).reshape(1, 1, 3, 5)
    padded, pads = inference.pad_to_multiple(x)  # pads of 13-15 px exceed the sides
    assert padded.shape == (1, 1, 32, 32) and padded.dtype == np.uint8
    np.testing.assert_array_equal(inference.crop_back(padded, pads), x)
    assert padded[0, 0, 0, 0] == x[0, 0, 0, 0]  # replicated corner


def test_aligned_input_is_not_padded_and_padded_input_runs(shared_model):
    x = _data(1, 64, 64).numpy()
    same, pads = inference.pad_to_multiple(x)
    assert pads == (0, 0, 0, 0) and np.shares_memory(same, x)
    padded, pads = inference.pad_to_multiple(_data(1, 50, 45).numpy())
    with torch.no_grad():
        raw, _ = shared_model(torch.from_numpy(padded))
    assert inference.crop_back(raw, pads).shape == (1, 1, 50, 45)


@pytest.mark.parametrize("shape", [(1, 1, 4, 6), (2, 3, 32, 64), (1, 64, 96, 32)])
def test_elementwise_unpool_is_bit_identical_to_max_unpool(shape):
    x = torch.randn(shape)
    x[..., ::3, ::2] = 0.0  # ties inside pooling windows: the pool's choice must be kept
    pooled, idx = torch.nn.functional.max_pool2d(x, 2, 2, return_indices=True)
    want = torch.nn.functional.max_unpool2d(pooled, idx, 2, 2, output_size=shape[-2:])
    got = unpool2x_elementwise(pooled, idx)
    assert torch.equal(got, want) and got.dtype == want.dtype


def test_elementwise_unpool_flag_keeps_the_model_output():
    torch.manual_seed(0)
    model = DIM(refine=True).eval()
    x = _data(1, 64, 96)
    with torch.no_grad():
        want = model(x)
        for m in model.decoder.ups:
            m.elementwise = True
        got = model(x)
    assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))


# --- gradients per stage ---------------------------------------------------------------------
def _backward(model, refined: bool, **kw):
    raw, ref = model(_data(2), **kw)
    out = ref if refined else raw
    (out - 0.5).abs().mean().backward()


def test_stage1_gradients_reach_encoder_and_decoder_not_refine_head():
    model = DIM(refine=True)
    _backward(model, refined=False, refine=False)
    for part in (model.encoder, model.decoder):
        for name, w in _conv_weights(part):
            assert w.grad is not None and w.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.refine_head.parameters())


def test_stage2_gradients_reach_only_the_refine_head():
    model = DIM(refine=True)
    nn.init.xavier_uniform_(model.refine_head.body[-1].weight)  # as after some training
    for part in (model.encoder, model.decoder):  # what the trainer does in stage 2
        part.requires_grad_(False)
    _backward(model, refined=True)
    for name, w in _conv_weights(model.refine_head):
        assert w.grad is not None and w.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is None for p in model.decoder.parameters())


def test_fresh_refine_head_learns_through_its_zero_last_layer():
    model = DIM(refine=True)
    _backward(model, refined=True)
    last = model.refine_head.body[-1]
    assert last.weight.grad.abs().sum() > 0 and last.bias.grad.abs().sum() > 0


def test_stage3_gradients_reach_everything():
    model = DIM(refine=True)
    nn.init.xavier_uniform_(model.refine_head.body[-1].weight)
    _backward(model, refined=True)
    for name, w in _conv_weights(model):
        assert w.grad is not None and w.grad.abs().sum() > 0, name


# --- load_vggbn ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vgg_state() -> dict[str, torch.Tensor]:
    """torchvision vgg16_bn(weights=None) state dict with non-default BN values."""
    g = torch.Generator().manual_seed(1)
    state = torchvision.models.vgg16_bn(weights=None).state_dict()
    for k, v in state.items():
        if k.startswith("features.") and v.dim() == 1:  # BN affine + statistics, conv biases
            v.copy_(torch.rand(v.shape, generator=g) + 0.5)
        elif k.endswith("num_batches_tracked"):
            v.fill_(3)
    return state


def _check_transplant(model: DIM, state: dict[str, torch.Tensor]) -> int:
    """Walk torchvision's features and the encoder in order; assert equality; count tensors."""
    tv = torchvision.models.vgg16_bn(weights=None).features
    tv_layers = [
        (f"features.{i}", m) for i, m in enumerate(tv) if isinstance(m, nn.Conv2d | nn.BatchNorm2d)
    ]
    ours = [m for m in model.encoder.stages.modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d)]
    assert len(ours) == len(tv_layers) == 26
    n = 0
    for (prefix, theirs), mine in zip(tv_layers, ours, strict=True):
        assert type(theirs) is type(mine)
        for name, t in mine.state_dict().items():
            src = state[f"{prefix}.{name}"]
            if t.shape != src.shape:  # first conv: RGB + trimap
                assert prefix == "features.0" and t.shape[1] == 4
                assert torch.equal(t[:, :3], src)
                assert torch.count_nonzero(t[:, 3]) == 0
            else:
                assert torch.equal(t, src), f"{prefix}.{name}"
            n += 1
    return n


def test_load_vggbn_state_dict_exact(vgg_state):
    model = DIM()
    fc6_before = {k: v.clone() for k, v in model.encoder.fc6.state_dict().items()}
    report = load_vggbn(model, vgg_state)
    assert _check_transplant(model, vgg_state) == report.copied == 13 * 2 + 13 * 5
    assert sorted(report.skipped) == sorted(k for k in vgg_state if k.startswith("classifier."))
    assert all(k.startswith("fc6.") for k in report.not_loaded) and report.not_loaded
    for k, v in model.encoder.fc6.state_dict().items():
        assert torch.equal(v, fc6_before[k])
    assert "copied 91 tensors" in report.summary()


def test_load_vggbn_from_file_without_num_batches_tracked(vgg_state, tmp_path):
    old_style = {k: v for k, v in vgg_state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "vgg16_bn.pth"
    torch.save(old_style, path)
    model = DIM(fc6="conv1x1", refine=False)
    report = load_vggbn(model, path)
    assert report.copied == 13 * 2 + 13 * 4 and report.source == str(path)
    assert torch.equal(
        model.encoder.stages[4][-2].running_var, vgg_state["features.41.running_var"]
    )
    assert torch.count_nonzero(model.encoder.stages[0][0].weight[:, 3]) == 0


def test_load_vggbn_from_hub_cache_enum(vgg_state, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    weights = torchvision.models.VGG16_BN_Weights.IMAGENET1K_V1
    with pytest.raises(VGGWeightsError, match="Nothing is downloaded") as err:
        load_vggbn(DIM(), weights)
    cached = tmp_path / "checkpoints" / Path(VGG_URL).name
    assert VGG_URL in str(err.value) and str(cached) in str(err.value)
    cached.parent.mkdir()
    torch.save(vgg_state, cached)
    model = DIM()
    assert load_vggbn(model, weights).copied == 91
    assert load_vggbn(DIM(), "imagenet").source == str(cached)
    _check_transplant(model, vgg_state)


def test_load_vggbn_missing_file(tmp_path, shared_model):
    with pytest.raises(ValueError, match="not found") as err:
        load_vggbn(shared_model, tmp_path / "nope.pth")
    assert VGG_URL in str(err.value)


def test_load_vggbn_not_a_state_dict(tmp_path, shared_model):
    tensor_file = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(ValueError, match="not a state dict"):
        load_vggbn(shared_model, tensor_file)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        load_vggbn(shared_model, garbage)
    with pytest.raises(ValueError, match="not a state dict"):
        load_vggbn(shared_model, {"features.0.weight": [1, 2, 3]})


def test_load_vggbn_vgg16_without_bn(shared_model):
    with torch.device("meta"):  # shapes are all the check needs
        state = torchvision.models.vgg16(weights=None).state_dict()
    with pytest.raises(ValueError, match="without BN"):
        load_vggbn(shared_model, state)


def test_load_vggbn_resnet18(shared_model):
    state = torchvision.models.resnet18(weights=None).state_dict()
    with pytest.raises(ValueError, match="not a torchvision vgg16_bn state dict"):
        load_vggbn(shared_model, state)


def test_load_vggbn_leaves_model_untouched_on_error():
    model = DIM()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.device("meta"):
        state = torchvision.models.vgg19_bn(weights=None).state_dict()
    with pytest.raises(ValueError, match="vgg16_bn"):
        load_vggbn(model, state)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# --- self-test -------------------------------------------------------------------------------
@pytest.mark.slow
def test_self_test_script_runs_by_path():
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, "models/py_encoder_decoder.py"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "all checks passed" in proc.stdout
    assert "91 tensors copied" in proc.stdout
    assert proc.stdout.count(" ok") == 6  # 3 upsampling modes x 2 stage groups at 320x320
