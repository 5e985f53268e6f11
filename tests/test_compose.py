"""data/compose.py: trimaps, crop placement, background fit, one sample, hand-checked cases."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from data import compose


def _rng(seed=0):
    return np.random.default_rng(seed)


def _alpha(h=80, w=96, seed=0, edge_to_border=True):
    """A soft blob (fractional band), a hard-edged square, thin strands; 255 touches the
    left border so border handling matters."""
    rng = _rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(yy - h * 0.5, xx - w * 0.6) / (min(h, w) * 0.3)
    a = np.clip((1.2 - d) * 200, 0, 255)
    a[5:20, 5:25] = 255
    if edge_to_border:
        a[30:50, 0:12] = 255
    for _ in range(3):
        p = tuple(int(v) for v in rng.integers(0, [w, h]))
        q = tuple(int(v) for v in rng.integers(0, [w, h]))
        cv2.line(a, p, q, 180.0, 1, cv2.LINE_AA)
    return np.rint(a).astype(np.uint8)


def _reference_trimap(alpha, ke, kd):
    fg = cv2.erode((alpha == 255).astype(np.uint8), compose.disc_kernel(ke))
    reg = cv2.dilate((alpha > 0).astype(np.uint8), compose.disc_kernel(kd))
    t = np.where(reg > 0, 128, 0).astype(np.uint8)
    t[fg > 0] = 255
    return t


# --- trimaps ---------------------------------------------------------------------------------
def test_disc_kernel():
    assert compose.disc_kernel(1).tolist() == [[1]]
    assert compose.disc_kernel(3).tolist() == [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    for k in (5, 16, 30):
        ker = compose.disc_kernel(k)
        assert ker.shape[0] == ker.shape[1] == 2 * ((k - 1) // 2) + 1
        np.testing.assert_array_equal(ker, ker.T)
        np.testing.assert_array_equal(ker, ker[::-1])
        assert ker[ker.shape[0] // 2].all()  # full middle row: as wide as the kernel
    with pytest.raises(ValueError):
        compose.disc_kernel(0)


def test_trimap_values_and_unknown_cover_fractional_alpha():
    a = _alpha()
    for seed in range(5):
        t = compose.trimap_from_alpha(a, _rng(seed), (1, 30))
        assert set(np.unique(t)) <= {0, 128, 255}
        assert (t[(a > 0) & (a < 255)] == 128).all()
        assert (t[a == 0] != 255).all() and (t[a == 255] != 0).all()
    # float alpha is accepted the same way
    t_f = compose.trimap_from_alpha(a / 255.0, _rng(1))
    np.testing.assert_array_equal(t_f, compose.trimap_from_alpha(a, _rng(1)))


def test_trimap_kernels_are_random():
    a = _alpha()
    maps = {compose.trimap_from_alpha(a, _rng(s), (1, 30)).tobytes() for s in range(8)}
    assert len(maps) > 4
    # k = 1: no erosion or dilation, unknown is exactly the fractional band
    t = compose.trimap_from_alpha(a, _rng(0), (1, 1))
    np.testing.assert_array_equal(t == 128, (a > 0) & (a < 255))


@pytest.mark.parametrize("ke,kd", [(1, 1), (2, 3), (3, 2), (7, 16), (16, 7), (30, 30), (32, 31)])
def test_distance_trimap_equals_morphology(ke, kd):
    a = _alpha(seed=ke)
    d = compose.distance_maps(a)
    assert d.dtype == np.uint8 and d.shape == (*a.shape, 2)
    np.testing.assert_array_equal(
        compose.trimap_from_distances(d, ke, kd), _reference_trimap(a, ke, kd)
    )
    with pytest.raises(ValueError):
        compose.trimap_from_distances(d, 33, 1)


def test_distance_maps_constant_alphas():
    for value in (0, 255, 100):
        a = np.full((9, 11), value, np.uint8)
        for k in (1, 9, 30):
            np.testing.assert_array_equal(
                compose.trimap_from_distances(compose.distance_maps(a), k, k),
                _reference_trimap(a, k, k),
            )


def test_window_distances_match_full_image():
    a = _alpha()
    full = compose.distance_maps(a)
    for y0, x0, size, k in [(10, 20, 40, 30), (-15, -10, 50, 16), (60, 70, 48, 9), (0, 0, 30, 1)]:
        m = (k - 1) // 2 + 1
        win = compose.window_distances(a, y0, x0, size, m)
        ref = compose.crop_padded(full, y0, x0, size, size, fill=(0, 255))
        np.testing.assert_array_equal(
            compose.trimap_from_distances(win, k, k), compose.trimap_from_distances(ref, k, k)
        )


def test_quantize_trimap():
    t = np.array([0, 10, 63, 64, 127, 128, 191, 192, 250, 255], np.uint8)
    assert compose.quantize_trimap(t).tolist() == [0, 0, 0, 128, 128, 128, 128, 255, 255, 255]


# --- crop placement --------------------------------------------------------------------------
def test_unknown_candidates():
    a = _alpha()
    idx = compose.unknown_candidates(a)
    assert idx.dtype == np.int32
    np.testing.assert_array_equal(idx, np.flatnonzero((a > 0) & (a < 255)))
    binary = np.zeros((10, 10), np.uint8)
    binary[3:7, 3:7] = 255
    ys, xs = np.unravel_index(compose.unknown_candidates(binary), binary.shape)
    assert len(ys) > 0
    # every candidate touches the edge: it or a 4-neighbour differs
    for y, x in zip(ys, xs, strict=True):
        nb = binary[max(y - 1, 0) : y + 2, max(x - 1, 0) : x + 2]
        assert nb.min() != nb.max()
    assert compose.unknown_candidates(np.full((5, 5), 255, np.uint8)).size == 0


@pytest.mark.parametrize("size", [32, 33, 64])
def test_crop_is_centred_on_an_unknown_pixel(size):
    """Before any resize the crop holds the chosen unknown pixel, at its centre
    (size//2, size//2) when that fits; near a border the window is shifted to stay inside the
    image (never padded), and the pixel is still inside."""
    a = _alpha()
    cands = compose.unknown_candidates(a)
    for seed in range(40):
        cy, cx = compose.pick_centre(cands, a.shape, _rng(seed))
        assert 0 < a[cy, cx] < 255
        y0, x0 = compose.crop_origin((cy, cx), size, a.shape)
        assert 0 <= y0 <= a.shape[0] - size and 0 <= x0 <= a.shape[1] - size
        assert y0 <= cy < y0 + size and x0 <= cx < x0 + size
        if size // 2 <= cy < a.shape[0] - (size - size // 2) + 1:
            assert y0 == cy - size // 2
        crop = compose.crop_padded(a, y0, x0, size, size)
        assert crop[cy - y0, cx - x0] == a[cy, cx]
    # a corner pixel: the window is shifted to the corner, not padded
    a2 = np.zeros((20, 20), np.uint8)
    a2[0, 0] = 100
    (cy, cx) = compose.pick_centre(compose.unknown_candidates(a2), a2.shape, _rng(0))
    assert (cy, cx) == (0, 0)
    assert compose.crop_origin((cy, cx), 16, a2.shape) == (0, 0)
    assert compose.crop_origin((19, 19), 16, a2.shape) == (4, 4)
    # a window larger than the image is centred on it; fit_cut caps the size instead
    assert compose.crop_origin((3, 3), 24, a2.shape) == (-2, -2)
    assert compose.fit_cut(24, a2.shape) == 20 and compose.fit_cut(8, a2.shape) == 8


def test_training_samples_never_contain_padding():
    """Crops near the border and crops larger than the image: every pixel of the sample is
    image content (a foreground that is nowhere black, a background that is nowhere black)."""
    h, w = 40, 56
    fg = np.full((h, w, 3), 200, np.uint8)
    fga = np.dstack([fg, _alpha(h, w, 3)])
    bg = np.full((30, 40, 3), 90, np.uint8)
    for seed in range(30):
        s = compose.make_sample(fga, bg, _rng(seed), crop_size=32, cut_sizes=(32, 48, 64))
        assert s.cut <= min(h, w)
        assert s.fg.min() == 200 and s.bg.min() == 90, seed


def test_pick_centre_without_candidates_is_anywhere():
    seen = {compose.pick_centre(np.zeros(0, np.int32), (7, 9), _rng(s)) for s in range(50)}
    assert len(seen) > 10
    assert all(0 <= y < 7 and 0 <= x < 9 for y, x in seen)


def test_crop_padded_matches_numpy_reference():
    rng = _rng(0)
    arr3 = rng.integers(0, 256, (13, 17, 2), dtype=np.uint8)
    arrf = rng.random((13, 17)).astype(np.float32)
    arr5 = rng.integers(0, 256, (13, 17, 5), dtype=np.uint8)  # > 4 channels: numpy path
    for _ in range(60):
        y0, x0 = (int(v) for v in rng.integers(-25, 25, 2))
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        for arr, fill in ((arr3, (3, 200)), (arrf, 0.5), (arr5, 7)):
            big = np.empty((13 + 120, 17 + 120, *arr.shape[2:]), arr.dtype)
            big[...] = fill
            big[60:73, 60:77] = arr
            ref = big[60 + y0 : 60 + y0 + h, 60 + x0 : 60 + x0 + w]
            out = compose.crop_padded(arr, y0, x0, h, w, fill)
            assert out.dtype == arr.dtype and out.flags.c_contiguous
            np.testing.assert_array_equal(out, ref)
    view = compose.crop_view(arr3, 2, 3, 5, 6)
    assert np.shares_memory(view, arr3)
    assert not np.shares_memory(compose.crop_view(arr3, -1, 3, 5, 6), arr3)


# --- backgrounds -----------------------------------------------------------------------------
def test_fitted_size_official_rule():
    assert compose.fitted_size((480, 640), (1080, 1440)) == (1080, 1440)  # ratio 2.25
    # ratios 400/300 and 600/500: the larger (4/3) wins, rounded up
    assert compose.fitted_size((300, 500), (400, 600)) == (400, math.ceil(500 * 400 / 300))
    assert compose.fitted_size((1000, 1000), (400, 600)) == (1000, 1000)  # never shrunk
    assert compose.fitted_size((8, 8), (50, 30)) == (50, 50)  # tiny background
    bg = _rng(0).integers(0, 256, (30, 50, 3), dtype=np.uint8)
    up = compose.fit_background(bg, (40, 60))
    np.testing.assert_array_equal(up, cv2.resize(bg, (67, 40), interpolation=cv2.INTER_CUBIC))
    assert compose.fit_background(bg, (10, 10)) is bg


def test_random_window_inside():
    for s in range(30):
        y, x = compose.random_window((50, 70), (40, 60), _rng(s))
        assert 0 <= y <= 10 and 0 <= x <= 10


def test_official_composite_truncates():
    rng = _rng(3)
    fg = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    a = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    bg = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    fitted = cv2.resize(
        bg, (math.ceil(12 * 2.5), math.ceil(10 * 2.5)), interpolation=cv2.INTER_CUBIC
    )
    af = np.zeros((20, 30, 1), np.float32)
    af[:, :, 0] = a / 255.0  # as Composition_code.py
    ref = (af * np.float32(fg) + (1 - af) * np.float32(fitted[:20, :30])).astype(np.uint8)
    np.testing.assert_array_equal(compose.official_composite(fg, a, bg), ref)


def _smooth_bg(h, w, seed=0):
    g = _rng(seed).integers(0, 256, (h // 8 + 2, w // 8 + 2, 3), dtype=np.uint8)
    return cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)


def test_resample_background_matches_fit_crop_resize():
    """One resampling ~= fit (upscale) + window + crop + resize, with zeros outside the
    foreground-sized window."""
    bg = _smooth_bg(48, 64)
    fg_hw = (108, 144)  # ratio 2.25
    for (y0, x0, c), out in [((10, 20, 64), 32), ((30, 40, 48), 32), ((-16, 100, 64), 32)]:
        window = (0, 0)
        got = compose.resample_background(bg, fg_hw, window, (y0, x0, c), out).astype(float)
        fitted = cv2.resize(bg, (144, 108), interpolation=cv2.INTER_LINEAR)
        crop = compose.crop_padded(fitted, y0, x0, c, c)
        ref = cv2.resize(crop, (out, out), interpolation=cv2.INTER_AREA).astype(float)
        valid = ref.sum(-1) > 0
        inside = cv2.erode(valid.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        assert np.abs(got - ref)[inside].mean() < 3.0
        assert (got[~valid] == 0).all() if (~valid).any() else True
    # no upscale, crop == output: an exact copy of the window
    big = _smooth_bg(200, 300)
    got = compose.resample_background(big, (100, 120), (7, 11), (5, 9, 32), 32)
    np.testing.assert_array_equal(got, big[12:44, 20:52])
    # no upscale, shrinking crop: INTER_AREA of the window
    got = compose.resample_background(big, (100, 120), (7, 11), (5, 9, 64), 32)
    ref = cv2.resize(
        np.ascontiguousarray(big[12:76, 20:84]), (32, 32), interpolation=cv2.INTER_AREA
    )
    np.testing.assert_array_equal(got, ref)


# --- a whole sample --------------------------------------------------------------------------
def _fga(h=80, w=96, seed=0):
    fg = _rng(seed + 100).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return np.dstack([fg, _alpha(h, w, seed)])


def test_make_sample_layout_and_identity():
    fga, bg = _fga(), _smooth_bg(30, 40)
    for seed in range(12):
        s = compose.make_sample(fga, bg, _rng(seed), crop_size=32, cut_sizes=(32, 48, 64))
        assert s.fg.shape == s.bg.shape == s.merged.shape == (32, 32, 3)
        assert s.alpha.shape == s.trimap.shape == (32, 32)
        assert s.fg.dtype == s.bg.dtype == s.trimap.dtype == np.uint8
        assert s.alpha.dtype == s.merged.dtype == np.float32
        assert 0 <= s.alpha.min() and s.alpha.max() <= 1
        assert set(np.unique(s.trimap)) <= {0, 128, 255}
        ref = s.alpha[..., None] * s.fg + (1 - s.alpha[..., None]) * s.bg.astype(np.float32)
        assert np.abs(s.merged - ref).max() <= 1e-3
        assert s.cut in (32, 48, 64)


def test_make_sample_matches_reference_pipeline():
    """Trimap = whole-image morphology, crop, INTER_NEAREST; alpha/fg = crop + INTER_AREA;
    flip; for cached distance maps, on-the-fly ones and huge kernels alike."""
    fga = _fga()
    alpha = fga[..., 3]
    bg = _smooth_bg(30, 40)
    dist = compose.distance_maps(alpha)
    cands = compose.unknown_candidates(alpha)
    for seed in range(16):
        k_range = (1, 30) if seed % 4 else (33, 40)
        kw = dict(crop_size=32, cut_sizes=(32, 48, 64), k_range=k_range)
        s = compose.make_sample(fga, bg, _rng(seed), **kw, candidates=cands, dist2=dist)
        s2 = compose.make_sample(fga, bg, _rng(seed), **kw)  # no cache: computed per crop
        for name in ("fg", "bg", "alpha", "merged", "trimap"):
            np.testing.assert_array_equal(getattr(s, name), getattr(s2, name), err_msg=name)
        y0, x0 = compose.crop_origin(s.centre, s.cut, alpha.shape)
        tri = compose.crop_padded(_reference_trimap(alpha, *s.kernels), y0, x0, s.cut, s.cut)
        tri = compose.resize_to(tri, 32, nearest=True)
        crop = compose.crop_padded(fga, y0, x0, s.cut, s.cut)
        small = compose.resize_to(crop, 32)
        if s.flipped:
            tri, small = tri[:, ::-1], small[:, ::-1]
        np.testing.assert_array_equal(s.trimap, tri)
        np.testing.assert_array_equal(s.fg, small[..., :3])
        np.testing.assert_array_equal(np.rint(s.alpha * 255), small[..., 3])


def test_make_sample_centre_pixel_is_unknown_without_resize():
    fga, bg = _fga(), _smooth_bg(30, 40)
    for seed in range(20):
        s = compose.make_sample(fga, bg, _rng(seed), crop_size=33, cut_sizes=(33,), flip_p=0)
        assert s.trimap[16, 16] == 128
        assert 0 < s.alpha[16, 16] < 1
        assert not s.flipped


def test_make_sample_is_a_function_of_the_rng():
    fga, bg = _fga(), _smooth_bg(30, 40)
    a = compose.make_sample(fga, bg, _rng(5), crop_size=32)
    b = compose.make_sample(fga, bg, _rng(5), crop_size=32)
    c = compose.make_sample(fga, bg, _rng(6), crop_size=32)
    np.testing.assert_array_equal(a.merged, b.merged)
    assert not np.array_equal(a.merged, c.merged)
    flips = [compose.make_sample(fga, bg, _rng(s), crop_size=32).flipped for s in range(40)]
    assert 5 < sum(flips) < 35


def test_make_sample_handles_constant_alpha_and_tiny_background():
    fg = _rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    tiny_bg = _rng(1).integers(0, 256, (3, 4, 3), dtype=np.uint8)
    for value in (0, 255):
        fga = np.dstack([fg, np.full((40, 50), value, np.uint8)])
        s = compose.make_sample(fga, tiny_bg, _rng(0), crop_size=32)
        ref = s.alpha[..., None] * s.fg + (1 - s.alpha[..., None]) * s.bg.astype(np.float32)
        assert np.abs(s.merged - ref).max() <= 1e-3
        assert set(np.unique(s.trimap)) <= {0, 128, 255}
