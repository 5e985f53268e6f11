"""utils/inference.py: padding, tiling, known pixels, eval mode, checkpoint resolution."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from data import layout
from models.py_encoder_decoder import (
    DIM,
    ENCODERS,
    EncoderOutput,
    MattingEncoder,
    coarse_input,
    conv_span,
)
from utils import device as device_mod
from utils.checkpoint import (
    CheckpointError,
    find_checkpoint,
    load_model_for_inference,
    save_checkpoint,
)
from utils.device import check_amp
from utils.inference import (
    eval_mode,
    exact_overlap,
    plan_tiles,
    predict_alpha,
    resolve_tile,
    scale_trimap,
    with_tta,
)


class PointwiseModel(nn.Module):
    """raw alpha = the image's red channel, refined = its green channel (in [0, 1]).

    A per-pixel function: whatever padding, cropping and tiling do, a correct implementation
    returns exactly these channels at every pixel, so misaligned crops or tiles show up.
    """

    def __init__(self, refine: bool = True):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))
        self.bn = nn.BatchNorm2d(1)
        self.refine = refine
        self.receptive_field, self.stride = 0, 32  # per pixel, on VGG's pooling grid
        self.calls: list[tuple[int, int, bool]] = []

    def forward(self, data):
        h, w = data.shape[-2:]
        assert h % 32 == 0 and w % 32 == 0, "the model must only see multiples of 32"
        self.calls.append((h, w, self.training))
        rgb = layout.denormalize_image(layout.image(data)).clamp(0, 1)
        raw = rgb[:, 0:1] * self.scale
        return raw, (rgb[:, 1:2] if self.refine else None)


def random_inputs(h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    trimap = rng.choice(np.array([0, 128, 255], np.uint8), size=(h, w), p=[0.2, 0.6, 0.2])
    return image, trimap


# --- pure helpers ----------------------------------------------------------------------------
@pytest.mark.parametrize(("h", "w", "tile", "overlap"), [(96, 160, 64, 32), (64, 64, 32, 0)])
def test_plan_tiles_cores_partition_and_windows_align(h, w, tile, overlap):
    cover = np.zeros((h, w), int)
    for t in plan_tiles(h, w, tile, overlap):
        cover[t.core] += 1
        (cy, cx), (wy, wx) = t.core, t.window
        assert wy.start % 32 == 0 and wx.start % 32 == 0  # the encoder's pooling grid
        assert (wy.stop - wy.start) % 32 == 0 and (wx.stop - wx.start) % 32 == 0
        assert wy.start == max(0, cy.start - overlap) and wy.stop == min(h, cy.stop + overlap)
        assert wx.start == max(0, cx.start - overlap) and wx.stop == min(w, cx.stop + overlap)
        iy, ix = t.inner
        assert iy.stop - iy.start == cy.stop - cy.start and ix.start == cx.start - wx.start
    assert (cover == 1).all()


def test_plan_tiles_rejects_unaligned_sizes():
    with pytest.raises(ValueError, match="multiple of 32"):
        plan_tiles(96, 96, 48, 32)
    with pytest.raises(ValueError, match="multiple of 32"):
        plan_tiles(96, 96, 64, 16)


def test_resolve_tile():
    assert resolve_tile((600, 800), None, 224, None) is None
    assert resolve_tile((600, 800), None, 224, 800) is None  # long side not above max_side
    assert resolve_tile((600, 801), None, 224, 800) == 352  # window 352 + 2*224 = 800
    assert resolve_tile((600, 801), None, 224, 300) == 32  # never below one pooling cell
    assert resolve_tile((600, 800), 100, 224, None) == 128  # explicit tile, rounded up to 32


@pytest.mark.parametrize(
    ("config", "overlap"),
    [({}, 224), ({"fc6": "conv1x1"}, 192), ({"upsample": "bilinear"}, 256),
     ({"refine": False}, 224), ({"upsample": "deconv", "skip": "concat"}, 224)],
)  # fmt: skip
def test_exact_overlap_per_architecture(config, overlap):
    with torch.device("meta"):  # the receptive field needs the structure only
        model = DIM(**config)
    assert model.stride == 32 and exact_overlap(model.receptive_field, model.stride) == overlap


def test_amp_on_cpu_is_bf16_or_off(monkeypatch):
    cpu = torch.device("cpu")
    assert check_amp(None, cpu) is None
    assert check_amp("off", cpu) is None
    assert check_amp("bf16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="needs a CUDA device"):
        check_amp("fp16", cpu)
    # auto follows the CPU's bf16 support, and says so when it stays float32
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: True)
    assert check_amp("auto", cpu) is torch.bfloat16
    assert "bf16" in device_mod.describe_amp(torch.bfloat16, cpu)
    monkeypatch.setattr(device_mod, "cpu_has_native_bf16", lambda: False)
    assert check_amp("auto", cpu) is None
    assert "no native bf16" in device_mod.describe_amp(None, cpu)
    with pytest.raises(ValueError, match="expected one of"):
        check_amp("int8", torch.device("cuda"))
    image, trimap = random_inputs(32, 32)
    with pytest.raises(ValueError, match="needs a CUDA device"):
        predict_alpha(PointwiseModel(), image, trimap, device="cpu", amp="fp16")


# --- padding, cropping, known pixels ---------------------------------------------------------
@pytest.mark.parametrize(("h", "w"), [(37, 53), (1, 70), (64, 96), (65, 33)])
@pytest.mark.parametrize("tile", [None, 32])
def test_pad_crop_roundtrip_odd_sizes(h, w, tile):
    image, trimap = random_inputs(h, w)
    model = PointwiseModel()
    alpha = predict_alpha(model, image, trimap, tile=tile, overlap=32)
    assert alpha.shape == (h, w) and alpha.dtype == np.float32
    unknown = trimap == 128
    # the refined output (green channel) lands on the very pixel it came from
    np.testing.assert_allclose(alpha[unknown], image[..., 1][unknown] / 255.0, atol=1e-5)
    if tile is not None and max(h, w) > 64:
        assert len(model.calls) > 1  # really tiled


def test_max_side_tiles_automatically():
    image, trimap = random_inputs(64, 704)
    model = PointwiseModel()
    whole = predict_alpha(model, image, trimap, max_side=704)  # long side not above: one pass
    assert model.calls == [(64, 704, False)]
    model.calls.clear()
    tiled = predict_alpha(model, image, trimap, max_side=608, overlap=224)  # core 160
    assert len(model.calls) == 5 and max(max(h, w) for h, w, _ in model.calls) <= 608
    np.testing.assert_array_equal(tiled, whole)


def test_raw_alpha_when_no_refine_head():
    image, trimap = random_inputs(40, 40)
    alpha = predict_alpha(PointwiseModel(refine=False), image, trimap)
    unknown = trimap == 128
    np.testing.assert_allclose(alpha[unknown], image[..., 0][unknown] / 255.0, atol=1e-5)


def test_known_pixels_forced():
    image, trimap = random_inputs(50, 70, seed=1)
    alpha = predict_alpha(PointwiseModel(), image, trimap)
    assert (alpha[trimap == 0] == 0.0).all()
    assert (alpha[trimap == 255] == 1.0).all()
    assert 0.0 <= alpha.min() and alpha.max() <= 1.0


def test_eval_mode_during_inference_and_flags_restored():
    model = PointwiseModel()
    model.train()
    model.bn.eval()  # a mixed state, like a frozen encoder in stage 2
    image, trimap = random_inputs(32, 32)
    predict_alpha(model, image, trimap)
    assert model.calls[-1][2] is False  # ran in eval mode
    assert model.training is True and model.bn.training is False  # each flag restored
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert model.training and not model.bn.training


def test_bad_shapes_are_clear_errors():
    image, trimap = random_inputs(32, 32)
    with pytest.raises(ValueError, match="RGB"):
        predict_alpha(PointwiseModel(), image[..., :2], trimap)
    with pytest.raises(ValueError, match="sizes must match"):
        predict_alpha(PointwiseModel(), image, trimap[:, :20])


# --- tiling == whole-image inference, on the real network ------------------------------------
@pytest.fixture(scope="module")
def sharp_dim():
    """Random-init DIM (eval mode: BN uses running stats) whose output spans (0, 1).

    At random init the logits are ~1e-3 (alpha ~0.5 everywhere), which would hide any tiling
    error; scaling the last layer's weights by 1000 makes a net with the same receptive field
    whose alpha varies over the whole range, so differences are visible.
    """
    torch.manual_seed(0)
    model = DIM(refine=True).eval()
    with torch.no_grad():
        model.decoder.pred.weight.mul_(1000.0)
    rng = np.random.default_rng(0)
    h, w = 64, 704
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    trimap = np.full((h, w), 128, np.uint8)
    whole = predict_alpha(model, image, trimap)
    assert whole.std() > 0.05, "test model too flat to show tiling errors"
    return model, image, trimap, whole


@pytest.mark.slow
def test_tiling_with_exact_overlap_equals_whole_image(sharp_dim):
    model, image, trimap, whole = sharp_dim
    overlap = exact_overlap(model.receptive_field)
    tiles = plan_tiles(64, 704, 352, overlap)
    assert len(tiles) == 2 and all(t.window[1].stop - t.window[1].start < 704 for t in tiles)
    tiled = predict_alpha(model, image, trimap, tile=352)  # default overlap = exact
    # every pixel's whole receptive field lies inside its window: only float rounding differs
    np.testing.assert_allclose(tiled, whole, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_small_overlap_matches_beyond_the_receptive_field(sharp_dim):
    """overlap=64: cores [0, 352) and [352, 704) see windows [0, 416) and [288, 704).

    A pixel matches whole-image inference when its window holds its receptive field, i.e.
    when it is >= 221 px (224 on the 32-px grid) from the window's inner edge: x < 192 and
    x >= 512. In between, zero padding at the cut reaches it, and this net shows it.
    """
    model, image, trimap, whole = sharp_dim
    tiled = predict_alpha(model, image, trimap, tile=352, overlap=64)
    diff = np.abs(tiled - whole).max(axis=0)
    assert diff[:192].max() < 1e-5
    assert diff[512:].max() < 1e-5
    assert diff[192:512].max() > 1e-3  # the seam region really differs: the check can fail
    near_seam = diff[352 - 16 : 352 + 16].max()
    assert near_seam >= diff[192:224].max()  # errors are largest at the seam


class ToyEncoder(MattingEncoder):
    """A backbone other than VGG, through the interface alone: five levels of one 3x3 conv
    (8 channels) and a 2x2 max-pool, then a 3x3 conv."""

    def __init__(self):
        super().__init__()
        self.level_channels, self.out_channels = [8] * 5, 8
        self.levels = nn.ModuleList(
            nn.Sequential(nn.Conv2d(4 if i == 0 else 8, 8, 3, padding=1), nn.ReLU())
            for i in range(5)
        )
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.last = nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        indices, sizes, features = [], [], []
        for level in self.levels:
            x = level(x)
            features.append(x)
            sizes.append(x.shape[-2:])
            x, idx = self.pool(x)
            indices.append(idx)
        return EncoderOutput(self.last(x), indices, sizes, features)

    def input_span(self, level, lo, hi):
        if level == len(self.levels):
            lo, hi = conv_span(self.last, lo, hi)
            lo, hi, level = 2 * lo, 2 * hi + 1, level - 1
        for lev in range(level, -1, -1):
            lo, hi = conv_span(self.levels[lev], lo, hi)
            if lev > 0:
                lo, hi = 2 * lo, 2 * hi + 1
        return lo, hi


@pytest.mark.slow
def test_a_toy_encoder_plugs_in_and_tiles_exactly(monkeypatch):
    """A new backbone is one class: registered, it builds through ModelConfig, states its
    receptive field (no input pixel outside it moves an output pixel, at any of the 32
    phases), and tiles with the overlap derived from it equal whole-image inference."""
    monkeypatch.setitem(ENCODERS, "toy", lambda config: ToyEncoder())
    torch.manual_seed(0)
    model = DIM(encoder="toy", skip="concat").eval()
    assert isinstance(model.encoder, ToyEncoder) and model.stride == 32
    rf = model.receptive_field
    assert 0 < rf < 221  # smaller than VGG's, and not the VGG figure
    x = torch.randn(1, 4, 64, 1024, requires_grad=True)
    _, refined = model(x)
    for phase in range(32):  # gradients reach no farther than the stated field
        (grad,) = torch.autograd.grad(refined[0, 0, 32, 480 + phase], x, retain_graph=True)
        cols = grad.abs().sum(dim=(0, 1, 2)).nonzero().flatten()
        assert 480 + phase - cols.min() <= rf and cols.max() - 480 - phase <= rf
    with torch.no_grad():
        model.decoder.pred.weight.mul_(1000.0)
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (64, 704, 3), dtype=np.uint8)
    trimap = np.full((64, 704), 128, np.uint8)
    whole = predict_alpha(model, image, trimap)
    assert whole.std() > 0.05
    tiled = predict_alpha(model, image, trimap, tile=352)  # overlap: exact_overlap(rf)
    # float rounding only (the x1000 last layer makes it ~2e-5 here)
    np.testing.assert_allclose(tiled, whole, atol=1e-4, rtol=0)
    thin = predict_alpha(model, image, trimap, tile=352, overlap=64)
    assert np.abs(thin - whole).max() > 1e-3  # too little context shows: the check can fail


def test_a_coarse_encoder_decoder_with_a_full_resolution_refine_head_tiles_exactly(monkeypatch):
    """coarse_scale 0.5: the encoder-decoder sees the input as utils.inference.at_scale shrinks
    a photograph (area-averaged image, scale_trimap's trimap), the refine head the full
    resolution; the stride and receptive field the model states bound what it does, so
    tiling stays exact."""
    monkeypatch.setitem(ENCODERS, "toy", lambda config: ToyEncoder())
    torch.manual_seed(0)
    model = DIM(encoder="toy", skip="add", coarse_scale=0.5).eval()
    fine = DIM(encoder="toy", skip="add")
    assert model.stride == 64 and model.receptive_field > fine.receptive_field
    rng = np.random.default_rng(4)
    trimap = cv2.resize(rng.choice(np.array([0, 128, 255], np.uint8), (16, 32)), (128, 64),
                        interpolation=cv2.INTER_NEAREST)  # fmt: skip
    trimap[3:5, 7:90] = 128  # thin unknown lines must survive the shrinking
    image = rng.random((64, 128, 3), dtype=np.float32)
    data = torch.cat([torch.from_numpy(image).permute(2, 0, 1),
                      torch.from_numpy(layout.scale_trimap(trimap))[None]])[None]  # fmt: skip
    small = coarse_input(data, 2)[0]
    np.testing.assert_array_equal(
        layout.unscale_trimap(small[3].numpy()), scale_trimap(trimap, (64, 32))
    )
    area = cv2.resize(image, (64, 32), interpolation=cv2.INTER_AREA)
    np.testing.assert_allclose(small[:3].permute(1, 2, 0).numpy(), area, atol=1e-6)
    rf = model.receptive_field
    x = torch.randn(1, 4, 64, 1536, requires_grad=True)
    _, refined = model(x)
    assert refined.shape == (1, 1, 64, 1536)
    for phase in range(0, 64, 3):
        (grad,) = torch.autograd.grad(refined[0, 0, 32, 704 + phase], x, retain_graph=True)
        cols = grad.abs().sum(dim=(0, 1, 2)).nonzero().flatten()
        assert 704 + phase - cols.min() <= rf and cols.max() - 704 - phase <= rf
    with torch.no_grad():
        model.decoder.pred.weight.mul_(1000.0)
    photo = rng.integers(0, 256, (64, 1280, 3), dtype=np.uint8)
    band = np.full((64, 1280), 128, np.uint8)
    whole = predict_alpha(model, photo, band)
    assert whole.std() > 0.05
    tiled = predict_alpha(model, photo, band, tile=384)  # overlap: exact_overlap(rf)
    np.testing.assert_allclose(tiled, whole, atol=1e-4, rtol=0)


# --- test-time augmentation -------------------------------------------------------------------
def test_tta_none_is_the_plain_forward_and_unknown_modes_are_refused():
    def forward(w):
        return w[0, 0]

    assert with_tta(forward, "none") is forward  # today's path, untouched
    with pytest.raises(ValueError, match="tta must be one of none, flip, d4"):
        with_tta(forward, "rot")


@pytest.mark.slow
def test_tta_predictions_follow_the_flips_and_turns_of_the_photo(sharp_dim):
    """With flip, the alpha of a mirrored photo is the mirrored alpha; with d4 the same holds
    for quarter turns; both differ from no TTA (the network is not symmetric), and tiles with
    TTA still equal the whole image."""
    model = sharp_dim[0]
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)  # multiples of 32: no padding
    trimap = np.full((64, 96), 128, np.uint8)
    trimap[:8] = 0
    plain = predict_alpha(model, image, trimap)
    flip = predict_alpha(model, image, trimap, tta="flip")
    mirrored = predict_alpha(model, image[:, ::-1], trimap[:, ::-1], tta="flip")
    np.testing.assert_allclose(mirrored, flip[:, ::-1], atol=1e-5, rtol=0)
    assert np.abs(flip - plain).max() > 1e-3
    d4 = predict_alpha(model, image, trimap, tta="d4")
    turned = predict_alpha(model, np.rot90(image), np.rot90(trimap), tta="d4")
    np.testing.assert_allclose(turned, np.rot90(d4), atol=1e-5, rtol=0)
    wide = rng.integers(0, 256, (64, 704, 3), dtype=np.uint8)
    band = np.full((64, 704), 128, np.uint8)
    whole = predict_alpha(model, wide, band, tta="flip")
    np.testing.assert_allclose(predict_alpha(model, wide, band, tile=352, tta="flip"), whole,
                               atol=1e-5, rtol=0)  # fmt: skip


# --- checkpoints -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """runs/demo with a stage-1 and a stage-2 checkpoint of a small-config DIM."""
    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    for stage, refine in ((1, False), (2, True)):
        model = DIM(fc6="conv1x1", refine=refine)
        state = {
            "model": model.state_dict(),
            "model_config": model.config.to_dict(),
            "stage": stage,
        }
        save_checkpoint(root / "demo" / f"stage{stage}" / "best.pt", {**state, "config": {}})
    return root


def test_find_checkpoint(run_dir, tmp_path):
    demo = run_dir / "demo"
    assert find_checkpoint(demo) == demo / "stage2" / "best.pt"  # highest stage
    assert find_checkpoint(demo / "stage1") == demo / "stage1" / "best.pt"
    assert find_checkpoint(demo / "stage1" / "best.pt") == demo / "stage1" / "best.pt"
    assert find_checkpoint(None, runs_dir=run_dir) == demo / "stage2" / "best.pt"
    with pytest.raises(CheckpointError, match="not found"):
        find_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="no run folders"):
        find_checkpoint(None, runs_dir=tmp_path)
    with pytest.raises(CheckpointError, match="without a checkpoint"):
        find_checkpoint(tmp_path)


def test_load_model_for_inference(run_dir, tmp_path):
    model, state, path = load_model_for_inference(run_dir / "demo" / "stage1", "cpu", stage=1)
    assert path == run_dir / "demo" / "stage1" / "best.pt"
    assert state["stage"] == 1 and model.refine_head is None and not model.training
    with pytest.raises(CheckpointError, match="stage-2 checkpoint but stage 1"):
        load_model_for_inference(run_dir / "demo", "cpu", stage=1)
    foreign = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match="not a Deep Image Matting checkpoint"):
        load_model_for_inference(foreign, "cpu")
    odd = tmp_path / "odd.pt"
    torch.save({"model": {}, "model_config": {"layers": 50}}, odd)
    with pytest.raises(CheckpointError, match="not a Deep Image Matting checkpoint"):
        load_model_for_inference(odd, "cpu")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot load"):
        load_model_for_inference(garbage, "cpu")


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_unsafe_checkpoint_is_refused_without_advice_to_bypass(tmp_path, capsys):
    """A pickle that would run code on load is refused; the message says why and how to
    re-save from trusted code, and never suggests weights_only=False."""
    bad = tmp_path / "evil.pt"
    torch.save({"model": _RunsCode(), "model_config": {}}, bad)
    with pytest.raises(CheckpointError) as e:
        load_model_for_inference(bad)
    msg = str(e.value)
    assert "refused" in msg and "arbitrary code" in msg and "weights_only=False" not in msg
    assert "this must never run" not in capsys.readouterr().out


# --- inference scale -------------------------------------------------------------------------
def test_at_scale_runs_smaller_and_returns_full_size():
    image, trimap = random_inputs(200, 300)
    model = PointwiseModel(refine=False)
    predict_alpha(model, image, trimap, scale=1.0)
    assert model.calls[-1][:2] == (224, 320)  # padded to multiples of 32
    half = predict_alpha(model, image, trimap, scale=0.5)
    assert model.calls[-1][:2] == (128, 160)  # 100x150, padded
    assert half.shape == (200, 300) and half.dtype == np.float32
    assert (half[trimap == 0] == 0).all() and (half[trimap == 255] == 1).all()
    # The red channel at half size, brought back: close to full-size inference on a smooth
    # image, never outside [0, 1].
    smooth = np.repeat(np.linspace(0, 255, 300, dtype=np.float32)[None], 200, 0)
    smooth_img = np.stack([smooth] * 3, -1).astype(np.uint8)
    unk = np.full((200, 300), 128, np.uint8)
    a1 = predict_alpha(model, smooth_img, unk, scale=1.0)
    a2 = predict_alpha(model, smooth_img, unk, scale=0.5)
    assert np.abs(a1 - a2).max() < 0.02 and 0 <= a2.min() and a2.max() <= 1


def test_model_infer_scale_is_the_default_and_an_argument_overrides_it():
    image, trimap = random_inputs(128, 192)
    model = PointwiseModel(refine=False)
    model.infer_scale = 0.5
    predict_alpha(model, image, trimap)
    assert model.calls[-1][:2] == (64, 96)
    predict_alpha(model, image, trimap, scale=1.0)
    assert model.calls[-1][:2] == (128, 192)


def test_scaled_trimap_keeps_a_thin_unknown_band():
    from utils.inference import scale_trimap

    trimap = np.zeros((100, 100), np.uint8)
    trimap[:, 50:] = 255
    trimap[:, 49] = 128  # one-pixel band: nearest-neighbour resizing could drop it
    small = scale_trimap(trimap, (33, 33))
    assert set(np.unique(small)) == {0, 128, 255}
    assert (small == 128).any(axis=0).sum() >= 1 and (small[:, :10] == 0).all()
    assert (small[:, -10:] == 255).all()


def test_inference_scale_is_checked_and_tiny_images_are_not_shrunk():
    from utils.inference import MIN_SCALED_SIDE, resolve_scale

    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"inference scale must be in \(0, 1\]"):
            resolve_scale(bad, (100, 100))
    assert resolve_scale(0.5, (1000, 800)) == 0.5
    assert resolve_scale(0.5, (80, 400)) == MIN_SCALED_SIDE / 80
    assert resolve_scale(0.5, (40, 40)) == 1.0


def test_checkpoint_carries_the_inference_scale(tmp_path):
    model = DIM(fc6="conv1x1")
    state = {"model": model.state_dict(), "model_config": model.config.to_dict(), "stage": 1}
    save_checkpoint(tmp_path / "a.pt", {**state, "config": {"infer_scale": 0.5}})
    save_checkpoint(tmp_path / "b.pt", {**state, "config": {}})  # older checkpoints: 1
    assert load_model_for_inference(tmp_path / "a.pt")[0].infer_scale == 0.5
    assert load_model_for_inference(tmp_path / "b.pt")[0].infer_scale == 1.0
