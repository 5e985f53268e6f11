"""utils/image_io.py: channel/bit-depth handling, clear errors, cheap size reading."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from utils.image_io import (
    ImageReadError,
    image_size,
    read_alpha,
    read_gray,
    read_rgb,
    write_png,
)


def _rgb(h=5, w=7, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_read_rgb_returns_rgb_order(tmp_path):
    rgb = _rgb()
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(read_rgb(tmp_path / "a.png"), rgb)


def test_read_rgb_grey_rgba_and_16bit(tmp_path):
    g = _rgb()[..., 0]
    cv2.imwrite(str(tmp_path / "g.png"), g)
    out = read_rgb(tmp_path / "g.png")
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(g[..., None], 3, 2))

    rgb = _rgb(seed=1)
    bgra = np.dstack([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), np.full((5, 7), 77, np.uint8)])
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    np.testing.assert_array_equal(read_rgb(tmp_path / "rgba.png"), rgb)

    rgb16 = rgb.astype(np.uint16) * 257  # 8-bit values stored as 16-bit survive exactly
    rgb16[0, 0] = (65535, 128, 129)  # rounding: 128/257 -> 0, 129/257 -> 1
    cv2.imwrite(str(tmp_path / "16.png"), cv2.cvtColor(rgb16, cv2.COLOR_RGB2BGR))
    out = read_rgb(tmp_path / "16.png")
    expected = rgb.copy()
    expected[0, 0] = (255, 0, 1)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)


def test_read_gray_channel_rules(tmp_path):
    g = _rgb()[..., 0]
    # alpha saved as RGB (R == G == B): exactly one channel, no luminance rounding
    cv2.imwrite(str(tmp_path / "rgb_alpha.png"), np.repeat(g[..., None], 3, 2))
    np.testing.assert_array_equal(read_gray(tmp_path / "rgb_alpha.png"), g)
    # colour image: luminance
    rgb = _rgb(seed=2)
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(tmp_path / "colour.png"), bgr)
    np.testing.assert_array_equal(
        read_gray(tmp_path / "colour.png"), cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    )
    # RGBA cut-out: the matte is the alpha channel
    cut = np.dstack([bgr, g])
    cut[0, 0, 3] = 10  # surely not fully opaque
    cv2.imwrite(str(tmp_path / "cut.png"), cut)
    np.testing.assert_array_equal(read_gray(tmp_path / "cut.png"), cut[..., 3])
    # RGBA with opaque alpha: the colour channels
    opaque = np.dstack([np.repeat(g[..., None], 3, 2), np.full_like(g, 255)])
    cv2.imwrite(str(tmp_path / "opaque.png"), opaque)
    np.testing.assert_array_equal(read_gray(tmp_path / "opaque.png"), g)
    # 16-bit grey
    cv2.imwrite(str(tmp_path / "g16.png"), g.astype(np.uint16) * 257)
    np.testing.assert_array_equal(read_gray(tmp_path / "g16.png"), g)


def test_read_alpha_ranges_and_16bit_precision(tmp_path):
    a8 = np.array([[0, 128, 255]], np.uint8)
    cv2.imwrite(str(tmp_path / "a8.png"), a8)
    out = read_alpha(tmp_path / "a8.png")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, a8 / 255.0, atol=1e-7)
    a16 = np.array([[0, 32768, 65535]], np.uint16)
    cv2.imwrite(str(tmp_path / "a16.png"), a16)
    np.testing.assert_allclose(read_alpha(tmp_path / "a16.png"), a16 / 65535.0, atol=1e-7)


@pytest.mark.parametrize("reader", [read_rgb, read_gray, read_alpha, image_size])
def test_errors_name_the_file(tmp_path, reader):
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageReadError, match=r"nope\.png.*not found"):
        reader(missing)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"empty\.png.*empty"):
        reader(empty)
    junk = tmp_path / "junk.png"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(ImageReadError, match=r"junk\.png"):
        reader(junk)
    assert issubclass(ImageReadError, ValueError)


def test_truncated_png_is_an_error(tmp_path):
    ok, buf = cv2.imencode(".png", _rgb(64, 64))
    assert ok
    p = tmp_path / "cut.png"
    p.write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.png"):
        read_rgb(p)


def test_folder_is_an_error(tmp_path):
    with pytest.raises(ImageReadError, match="folder"):
        read_rgb(tmp_path)


def test_write_png_roundtrip_and_checks(tmp_path):
    rgb = _rgb()
    p = write_png(tmp_path / "sub" / "dir" / "x.png", rgb)  # creates parents
    np.testing.assert_array_equal(read_rgb(p), rgb)
    g = rgb[..., 1]
    np.testing.assert_array_equal(read_gray(write_png(tmp_path / "g.png", g)), g)
    f = np.array([[0.0, 0.5, 1.0]], np.float32)
    np.testing.assert_array_equal(read_gray(write_png(tmp_path / "f.png", f)), [[0, 128, 255]])
    b = np.array([[True, False]])
    np.testing.assert_array_equal(read_gray(write_png(tmp_path / "b.png", b)), [[255, 0]])
    rgba = np.dstack([rgb, np.full((5, 7), 9, np.uint8)])
    back = cv2.imread(str(write_png(tmp_path / "rgba.png", rgba)), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(cv2.cvtColor(back, cv2.COLOR_BGRA2RGBA), rgba)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        write_png(tmp_path / "bad.png", np.full((2, 2), 255.0))
    with pytest.raises(ValueError, match="shape"):
        write_png(tmp_path / "bad.png", np.zeros((2, 2, 5), np.uint8))
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind


def test_image_size_reads_headers(tmp_path):
    img = _rgb(37, 53)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    cv2.imwrite(str(tmp_path / "a.jpg"), img)
    cv2.imwrite(str(tmp_path / "p.jpg"), img, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    cv2.imwrite(str(tmp_path / "a.bmp"), img)  # no header parser: decoded
    for name in ("a.png", "a.jpg", "p.jpg", "a.bmp"):
        assert image_size(tmp_path / name) == (37, 53), name
