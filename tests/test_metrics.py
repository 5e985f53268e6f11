"""utils.metrics: hand-derived cases, the fast version against the literal MATLAB mirror, inputs.

The literal mirror is tests/reference_metrics.py; expected values in the hand-made cases are
derived in the comments from the official definitions, not from either implementation.
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from tests import reference_metrics as reference
from utils import metrics
from utils.metrics import compute_all, connectivity_error, gradient_error, mse, sad

U = 128  # unknown


# ---------------------------------------------------------------- SAD / MSE
def test_sad_mse_hand_computed():
    # 4x4, unknown only in the 2x2 centre; huge differences outside it must not count.
    gt = np.zeros((4, 4), np.uint8)
    pred = np.full((4, 4), 255, np.uint8)
    pred[1:3, 1:3] = [[51, 102], [0, 255]]  # |p - g| = 0.2, 0.4, 0, 1 on the [0, 1] scale
    trimap = np.zeros((4, 4), np.uint8)
    trimap[1:3, 1:3] = U
    assert sad(pred, gt, trimap) == pytest.approx((0.2 + 0.4 + 0 + 1.0) / 1000, rel=1e-12)
    assert mse(pred, gt, trimap) == pytest.approx((0.04 + 0.16 + 0 + 1.0) / 4, rel=1e-12)
    # trimap 255 / 0 elsewhere: flipping known pixels changes nothing
    trimap[0, 0] = 255
    assert sad(pred, gt, trimap) == pytest.approx(1.6e-3, rel=1e-12)


def test_empty_unknown_region_gives_zeros():
    rng = np.random.default_rng(0)
    pred, gt = rng.random((8, 9)), rng.random((8, 9))
    trimap = np.where(gt > 0.5, 255, 0).astype(np.uint8)
    assert compute_all(pred, gt, trimap) == {"sad": 0.0, "mse": 0.0, "grad": 0.0, "conn": 0.0}


# ---------------------------------------------------------------- gradient
def _ramp(h: int, w: int) -> np.ndarray:
    return np.tile(np.arange(w, dtype=np.float64) / (w - 1), (h, 1))


def test_gradient_kernel_matches_literal_loops():
    g, dg = metrics.gaussian_derivative_kernels(1.4)
    assert len(g) == 9  # half-size ceil(1.4*sqrt(-2 ln(sqrt(2 pi)*1.4*0.01))) = 4
    assert math.ceil(1.4 * math.sqrt(-2 * math.log(math.sqrt(2 * math.pi) * 1.4 * 0.01))) == 4
    hx = reference.gaussgradient_kernel(1.4)
    np.testing.assert_allclose(np.outer(g, dg), hx, rtol=0, atol=1e-15)
    assert np.sum(hx**2) == pytest.approx(1.0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.uint8])
def test_identical_mattes_score_exactly_zero(dtype):
    # Equal values in differently aligned buffers (SIMD head/tail paths) must still give 0.
    rng = np.random.default_rng(1)
    gt = cv2.GaussianBlur(rng.random((37, 45)), (0, 0), 2)
    gt = (gt * 255).astype(np.uint8) if dtype == np.uint8 else gt.astype(dtype)
    shifted = np.empty((gt.shape[0], gt.shape[1] + 1), gt.dtype)[:, 1:]
    shifted[:] = gt
    trimap = np.full(gt.shape, U, np.uint8)
    trimap[:3] = 0
    for other in (gt, gt.copy(), shifted):
        for _ in range(3):
            assert compute_all(other, gt, trimap) == {
                "sad": 0.0,
                "mse": 0.0,
                "grad": 0.0,
                "conn": 0.0,
            }


def test_gradient_error_of_a_ramp_hand_derived():
    # gt = x / (W-1): a linear ramp, already mat2gray-normalised (min 0, max 1). Away from the
    # left/right borders (>= 4 columns, the kernel half-size) imfilter(.., 'conv') with
    # hx(u, v) = G(u) dG(v) / ||G|| ||dG|| gives gx = c * sum_u G / ||G|| * sum_v v^2 G(v) /
    # sqrt(sum_v v^2 G(v)^2) (c = 1/(W-1); dG(v) = -v G(v) / sigma^2, the sigma^2 and the
    # Gaussian's constant cancel), and gy = 0. A constant prediction has no gradient, so the
    # error is |U| * gx^2.
    h, w = 12, 20
    gt = _ramp(h, w)
    pred = np.full((h, w), 0.3)
    trimap = np.zeros((h, w), np.uint8)
    trimap[:, 4 : w - 4] = U
    v = np.arange(-4, 5, dtype=np.float64)
    G = np.exp(-(v**2) / (2 * 1.4**2))
    gx = (1 / (w - 1)) * G.sum() / np.sqrt((G**2).sum()) * (v**2 * G).sum()
    gx /= np.sqrt((v**2 * G**2).sum())
    expected = h * (w - 8) * gx**2 / 1000
    assert gradient_error(pred, gt, trimap) == pytest.approx(expected, rel=1e-5)
    assert reference.compute_gradient_loss(pred, gt, trimap) == pytest.approx(expected, rel=1e-5)


def test_gradient_error_uses_mat2gray():
    # 0.2 + 0.5 * ramp becomes the ramp itself after mat2gray: no gradient error at all.
    gt = _ramp(10, 16)
    pred = 0.2 + 0.5 * gt
    trimap = np.full(gt.shape, U, np.uint8)
    assert gradient_error(pred, gt, trimap) == pytest.approx(0.0, abs=1e-10)
    # ... while a genuinely flatter prediction (its own min-max spans more than the unknown
    # region) is penalised.
    pred2 = pred.copy()
    pred2[0, 0] = 0.0
    pred2[-1, -1] = 1.0
    trimap2 = trimap.copy()
    trimap2[[0, -1], :] = 0
    assert gradient_error(pred2, gt, trimap2) > 1e-4


# ---------------------------------------------------------------- connectivity
def test_connectivity_two_components_hand_derived():
    # min(p, g) (what the thresholds see) is a 3x3 blob of 1.0 with one pixel at 140/255, a
    # 2-pixel component at 110/255 on the right, and 0 elsewhere (the pred-only pixel at (1, 3)
    # has min 0). The background (10 pixels) is larger than the blob (9): it must never be
    # taken as the "largest component".
    gt = np.array(
        [
            [255, 255, 255, 0, 0, 0, 0],
            [255, 255, 255, 0, 0, 204, 204],
            [255, 255, 255, 0, 0, 0, 0],
        ],
        np.uint8,
    )
    pred = gt.copy()
    pred[1, 2] = 140
    pred[1, 3] = 230
    pred[1, 5:7] = 110
    trimap = np.full(gt.shape, U, np.uint8)
    # Per pixel, l and phi = 1 - d*(d >= 0.15), d = alpha - l:
    # - blob pixels of 1.0 stay in Omega at every threshold: l = 1, d = 0, no difference;
    # - (1, 2): min 0.549, outside Omega first at t = 0.6, so l = 0.5:
    #   d_p = 0.049 -> phi 1, d_g = 0.5 -> phi 0.5: difference 0.5;
    # - (1, 3): min 0, outside at 0.1, l = 0: phi_p = 1 - 230/255, phi_g = 1: 230/255;
    # - (1, 5), (1, 6): a smaller component, outside at 0.1, l = 0: phi_p = 1 - 110/255,
    #   phi_g = 1 - 204/255: 94/255 each;
    # - background: alpha 0, l = 0, phi 1 for both.
    expected = (0.5 + 230 / 255 + 2 * 94 / 255) / 1000
    assert connectivity_error(pred, gt, trimap) == pytest.approx(expected, rel=1e-6)
    assert reference.compute_connectivity_error(pred, gt, trimap) == pytest.approx(
        expected, rel=1e-6
    )
    # Only trimap == 128 counts.
    trimap[1, 3] = 0
    assert connectivity_error(pred, gt, trimap) == pytest.approx(
        expected - 230 / 255 / 1000, rel=1e-6
    )


def test_connectivity_never_picks_the_background():
    # An L of 9 foreground pixels (top row + left column of a 5x5 image) around 16 background
    # pixels, p = 1 and g = 26/255 = 0.102 on the L. The L is the only (so the largest)
    # component at t = 0.1 and nothing is left at 0.2, so l = 0.1 on the L:
    # d_p = 0.9 -> phi 0.1; d_g = 0.002 -> phi 1; difference 0.9 per pixel, 8.1 in all.
    # Taking the (larger) background as Omega would give l = 0 and 1.0 per pixel, 9.0.
    pred = np.zeros((5, 5), np.uint8)
    gt = np.zeros((5, 5), np.uint8)
    for a, v in ((pred, 255), (gt, 26)):
        a[0, :] = v
        a[:, 0] = v
    trimap = np.full((5, 5), U, np.uint8)
    assert connectivity_error(pred, gt, trimap) == pytest.approx(8.1 / 1000, rel=1e-6)
    assert reference.compute_connectivity_error(pred, gt, trimap) == pytest.approx(
        8.1 / 1000, rel=1e-6
    )


def test_connectivity_float32_threshold_pitfall():
    # 153/255 is 0.6. MATLAB compares single(153)/255 with the threshold in single precision,
    # so the pixel is still in at t = 0.6 and leaves at 0.7: l = 0.6.
    # d_p = 0 -> phi 1; d_g = 0.4 -> phi 0.6: difference 0.4.
    # float64 thresholds from np.arange (0.6000000000000001 > 0.6) would give l = 0.5 and 0.5.
    assert np.arange(0, 1.01, 0.1)[6] > 0.6  # the trap itself
    pred = np.zeros((3, 3), np.uint8)
    gt = np.zeros((3, 3), np.uint8)
    pred[1, 1], gt[1, 1] = 153, 255
    trimap = np.full((3, 3), U, np.uint8)
    expected = 0.4 / 1000
    assert connectivity_error(pred, gt, trimap) == pytest.approx(expected, rel=1e-6)
    assert reference.compute_connectivity_error(pred, gt, trimap) == pytest.approx(
        expected, rel=1e-6
    )
    # The same matte given as float64 or float32 in [0, 1].
    for dtype in (np.float64, np.float32):
        p, g = pred.astype(dtype) / dtype(255), gt.astype(dtype) / dtype(255)
        assert connectivity_error(p, g, trimap) == pytest.approx(expected, rel=1e-6)


def test_connectivity_thresholds_are_matlab_colon_in_float32():
    np.testing.assert_array_equal(
        metrics.CONN_THRESHOLDS, reference._colon(0, 0.1, 1).astype(np.float32)
    )


def test_connectivity_tie_goes_to_first_component_in_column_major_order():
    # Two 2-pixel components at t = 0.1: A top-right (min 26/255 = 0.102), B bottom-left
    # (min 56/255 = 0.22). MATLAB numbers bwconncomp components in column-major order, so B
    # comes first and max() keeps it: Omega(0.1) = B, Omega(0.2) = B (A has gone), nothing at
    # 0.3. A: l = 0, d_p = 1 -> 0, d_g = 0.102 -> 1: difference 1 per pixel.
    # B: l = 0.2, d_p = 0.8 -> 0.2, d_g = 0.0196 -> 1: difference 0.8 per pixel. Total 3.6.
    # (Row-major numbering would pick A and give 3.3608.)
    pred = np.zeros((4, 4), np.uint8)
    gt = np.zeros((4, 4), np.uint8)
    pred[0, 2:4], gt[0, 2:4] = 255, 26  # A
    pred[3, 0:2], gt[3, 0:2] = 255, 56  # B
    trimap = np.full((4, 4), U, np.uint8)
    assert connectivity_error(pred, gt, trimap) == pytest.approx(3.6 / 1000, rel=1e-6)
    assert reference.compute_connectivity_error(pred, gt, trimap) == pytest.approx(
        3.6 / 1000, rel=1e-6
    )


# ---------------------------------------------------------------- fast vs literal reference
def _smooth(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    x = cv2.GaussianBlur(rng.standard_normal(shape), (0, 0), sigma)
    return x / x.std()


def _random_case(seed: int, kind: str, shape=(60, 80)):
    """Smooth mattes with 0/1 plateaus (many components at some thresholds) and a trimap."""
    rng = np.random.default_rng(seed)
    gt = np.clip(0.5 + 0.8 * _smooth(rng, shape, 4), 0, 1)
    if kind == "noise":  # many small components, none holding half the mask
        gt = rng.random(shape)
        pred = np.clip(gt + 0.3 * rng.standard_normal(shape), 0, 1)
    else:
        pred = np.clip(gt + 0.15 * _smooth(rng, shape, 2) - 0.05, 0, 1)
    band = _smooth(rng, shape, 6) > 0.3
    if kind == "small_box":  # unknown far from the borders: mat2gray extremes outside it
        band[:] = False
        band[20:35, 30:50] = True
    elif kind == "all_unknown":
        band[:] = True
    trimap = np.where(band, U, np.where(gt > 0.5, 255, 0)).astype(np.uint8)
    return pred, gt, trimap


def _close(fast: dict, ref: dict) -> None:
    for k in ("sad", "mse", "grad", "conn"):
        assert fast[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-12), k


@pytest.mark.parametrize("kind", ["band", "small_box", "all_unknown", "noise"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_matches_literal_reference(seed, kind):
    pred, gt, trimap = _random_case(seed, kind)
    for conv in (
        lambda a: a,  # float64
        lambda a: a.astype(np.float32),
        lambda a: np.round(a * 255).astype(np.uint8),
    ):
        p, g = conv(pred), conv(gt)
        _close(compute_all(p, g, trimap), reference.compute_all(p, g, trimap))
    # mixed dtypes
    p8 = np.round(pred * 255).astype(np.uint8)
    g32 = gt.astype(np.float32)
    _close(compute_all(p8, g32, trimap), reference.compute_all(p8, g32, trimap))


def test_fast_matches_reference_with_unknown_touching_the_borders():
    pred, gt, trimap = _random_case(5, "band", shape=(41, 57))
    trimap[0, :] = U
    trimap[:, -1] = U
    _close(compute_all(pred, gt, trimap), reference.compute_all(pred, gt, trimap))


def test_compute_all_equals_the_single_metrics():
    pred, gt, trimap = _random_case(3, "band")
    allm = compute_all(pred, gt, trimap)
    assert allm == {
        "sad": sad(pred, gt, trimap),
        "mse": mse(pred, gt, trimap),
        "grad": gradient_error(pred, gt, trimap),
        "conn": connectivity_error(pred, gt, trimap),
    }
    assert all(isinstance(v, float) for v in allm.values())


def _read_channel0(path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img if img.ndim == 2 else img[..., 0]  # the official gt(:, :, 1)


@pytest.mark.parametrize("name", ["GT01.png", "GT02.png"])
def test_fast_matches_reference_on_real_alphamatting_mattes(alphamatting_dev, name):
    gt = _read_channel0(alphamatting_dev / "gt_training_lowres" / name)
    trimap = _read_channel0(alphamatting_dev / "trimap_training_lowres" / "Trimap1" / name)
    # Two predictions as an evaluation would see them: the trimap with 0.5 in the unknown
    # region, and a blurred ground truth with the known pixels forced (uint8, as from PNG).
    trimap_only = np.where(trimap == U, 128, trimap).astype(np.uint8)
    blurred = cv2.GaussianBlur(gt, (0, 0), 3)
    blurred[trimap != U] = trimap[trimap != U]
    for pred in (trimap_only, blurred):
        fast = compute_all(pred, gt, trimap)
        _close(fast, reference.compute_all(pred, gt, trimap))
        assert fast["sad"] > 0 and fast["conn"] > 0


# ---------------------------------------------------------------- inputs
def test_uint8_and_float_inputs_agree():
    pred, gt, trimap = _random_case(7, "band")
    p8, g8 = np.round(pred * 255).astype(np.uint8), np.round(gt * 255).astype(np.uint8)
    from_u8 = compute_all(p8, g8, trimap)
    for dtype in (np.float64, np.float32):
        from_float = compute_all(p8.astype(dtype) / 255, g8.astype(dtype) / 255, trimap)
        for k in from_u8:
            assert from_float[k] == pytest.approx(from_u8[k], rel=1e-6), (dtype, k)
        # single(v)/255 == single(v/255): connectivity sees identical float32 mattes
        assert from_float["conn"] == pytest.approx(from_u8["conn"], rel=1e-12)


def test_shape_mismatch_names_the_shapes():
    a = np.zeros((4, 5), np.float32)
    with pytest.raises(ValueError, match=r"\(4, 5\).*\(5, 4\)"):
        sad(a, np.zeros((5, 4), np.float32), np.zeros((4, 5), np.uint8))
    with pytest.raises(ValueError, match=r"trimap \(4, 6\)"):
        compute_all(a, a, np.zeros((4, 6), np.uint8))


def test_bad_inputs_are_explained():
    tri = np.full((4, 5), U, np.uint8)
    with pytest.raises(ValueError, match="2-D"):
        mse(np.zeros((4, 5, 3)), np.zeros((4, 5, 3)), np.zeros((4, 5, 3)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sad(np.full((4, 5), 200.0), np.zeros((4, 5)), tri)
    with pytest.raises(ValueError, match="NaN"):
        sad(np.full((4, 5), np.nan), np.zeros((4, 5)), tri)
    with pytest.raises(ValueError, match="uint16"):
        sad(np.zeros((4, 5), np.uint16), np.zeros((4, 5)), tri)
    with pytest.raises(ValueError, match="0/128/255"):
        sad(np.zeros((4, 5)), np.zeros((4, 5)), np.full((4, 5), 0.5))


def test_units_string_states_the_convention():
    assert "/ 1000" in metrics.UNITS and "MSE" in metrics.UNITS


# ---------------------------------------------------------------- benchmark smoke test
def test_benchmark_quick_run_writes_json(tmp_path, capsys):
    from benchmarks import bench_metrics

    out = tmp_path / "bench.json"
    assert bench_metrics.main(["--quick", "--repeat", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    for key in ("seconds_all_four", "speedup_vs_reference", "reference_seconds_all_four"):
        assert res[key] > 0
    assert res["max_rel_diff_vs_reference"] < 1e-5
    assert 0.13 < res["unknown_fraction"] < 0.17
    assert "speedup" in capsys.readouterr().out
