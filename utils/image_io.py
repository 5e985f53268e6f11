"""Reading and writing images with clear errors.

Every reader decodes with ``cv2.IMREAD_UNCHANGED`` and then converts explicitly, so the
result does not depend on how the file happens to be stored:

* grey, grey + alpha, RGB and RGBA files are all accepted;
* 16-bit files are scaled to 8 bits with rounding (``round(v / 257)``); :func:`read_alpha`
  keeps their full precision;
* OpenCV's BGR order is turned into RGB;
* the EXIF orientation is *not* applied (IMREAD_UNCHANGED): a foreground JPEG and its
  alpha PNG therefore always line up pixel for pixel.

A missing, empty, corrupt or unsupported file raises :class:`ImageReadError` (a
``ValueError``) naming the file and what to do about it, never a bare OpenCV ``None``.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np

# The image files every folder listing reads (data folders, test sets, predict.py inputs).
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

PathLike = str | os.PathLike


class ImageReadError(ValueError):
    """An image file cannot be used: the message names the file and the fix."""


# --- decoding --------------------------------------------------------------------------------
def _read_bytes(path: PathLike) -> np.ndarray:
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: file not found; check the path (or the list that names it)")
    if p.is_dir():
        raise ImageReadError(f"{p}: is a folder, expected an image file")
    try:
        buf = np.fromfile(p, dtype=np.uint8)
    except OSError as e:
        raise ImageReadError(f"{p}: cannot be read ({e}); check its permissions") from e
    if buf.size == 0:
        raise ImageReadError(f"{p}: file is empty (0 bytes); copy or download it again")
    return buf


def decode(path: PathLike) -> np.ndarray:
    """Decode ``path`` as stored: (H, W) or (H, W, C) with C in {1, 3, 4}, BGR(A) order,
    dtype uint8, uint16 or float32. Raises :class:`ImageReadError`."""
    buf = _read_bytes(path)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    except cv2.error as e:  # e.g. a header declaring more pixels than OpenCV ever decodes
        reason = str(e).strip().splitlines()[-1].split(") ", 1)[-1] or "decoder error"
        raise ImageReadError(
            f"{path}: OpenCV cannot decode it ({reason}); check the file, or convert it to PNG"
        ) from None
    if img is None or img.size == 0:
        raise ImageReadError(
            f"{path}: not a readable image (corrupt, truncated or an unsupported format); "
            "copy it again or convert it to PNG"
        )
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if (img.ndim == 3 and img.shape[2] not in (3, 4)) or img.ndim not in (2, 3):
        raise ImageReadError(f"{path}: unsupported channel layout {img.shape}; save it as RGB PNG")
    return img


def _to_uint8(img: np.ndarray, path: PathLike) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        # round(v / 257): 65535 -> 255 exactly, and 8-bit values stored as 16-bit (v*257) survive.
        return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if img.dtype in (np.float32, np.float64):
        return np.round(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    raise ImageReadError(f"{path}: unsupported pixel type {img.dtype}; save it as 8-bit PNG")


def _to_unit_float(img: np.ndarray, path: PathLike) -> np.ndarray:
    if img.dtype == np.uint8:
        return img.astype(np.float32) / np.float32(255.0)
    if img.dtype == np.uint16:
        return img.astype(np.float32) / np.float32(65535.0)
    if img.dtype in (np.float32, np.float64):
        return np.clip(img, 0.0, 1.0).astype(np.float32)
    raise ImageReadError(f"{path}: unsupported pixel type {img.dtype}; save it as 8-bit PNG")


def _single_channel(img: np.ndarray) -> np.ndarray:
    """One channel of a decoded image, same dtype.

    * grey: itself;
    * RGBA whose alpha channel is not fully opaque: the alpha channel (a cut-out stores its
      matte there);
    * RGB, or RGBA with an opaque alpha: one channel when R == G == B (an alpha matte saved
      as RGB), the luminance otherwise.
    """
    if img.ndim == 2:
        return img
    if img.shape[2] == 4:
        a = img[:, :, 3]
        opaque = np.iinfo(a.dtype).max if a.dtype.kind == "u" else 1.0
        if a.min() < opaque:
            return np.ascontiguousarray(a)
        img = img[:, :, :3]
    b, g, r = img[:, :, 0], img[:, :, 1], img[:, :, 2]
    if np.array_equal(b, g) and np.array_equal(b, r):
        return np.ascontiguousarray(b)
    return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2GRAY)


# --- size limit ------------------------------------------------------------------------------
# Decoding an 8-bit RGB image takes 3 bytes per pixel, and the network's input 16 more (float32,
# 4 channels): 100 megapixels is about 2 GB of input tensors already.
MAX_PIXELS = 100_000_000


def check_pixels(
    path: PathLike,
    limit: int = MAX_PIXELS,
    flag: str = "--max-pixels",
    header_only: bool = False,
    need: Callable[[int], str] | None = None,
) -> tuple[int, int]:
    """(H, W) of an image from its header (:func:`image_size`); refused when it declares more
    than ``limit`` pixels, before decoding it (:class:`ImageReadError` naming the file, its
    size and the flag that raises the limit).

    ``header_only``: a format whose size cannot be read from its header is refused instead of
    decoded. ``need(pixels)``: what the message says matting it would take (default: an
    estimate for the command-line tools).
    """
    h, w = image_size(path, decode_unknown=not header_only)
    if h * w > limit:
        said = (
            need(h * w) if need else f"about {h * w * 19 / 2**30:.0f} GiB of memory before tiling"
        )
        raise ImageReadError(
            f"{path}: {w}x{h} = {h * w / 1e6:.0f} megapixels, above the limit of "
            f"{limit / 1e6:g} MP (matting it needs {said}); pass a larger {flag} if this "
            "machine has the memory, or downscale the image"
        )
    return h, w


# --- public readers --------------------------------------------------------------------------
def read_rgb(path: PathLike) -> np.ndarray:
    """Read a colour image: uint8 (H, W, 3) RGB.

    Grey files are repeated to three channels; the alpha channel of RGBA files is dropped;
    16-bit files are rounded to 8 bits.
    """
    img = _to_uint8(decode(path), path)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    code = cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB
    return cv2.cvtColor(img, code)


def read_gray(path: PathLike) -> np.ndarray:
    """Read a one-channel image (alpha matte, trimap): uint8 (H, W).

    Grey files as they are; RGB files with R == G == B (mattes saved as RGB) give one
    channel; RGBA files with a non-opaque alpha channel give that channel; 16-bit files are
    rounded to 8 bits.
    """
    return _to_uint8(_single_channel(decode(path)), path)


def read_alpha(path: PathLike) -> np.ndarray:
    """Read an alpha matte: float32 (H, W) in [0, 1] (full precision for 16-bit files).

    Channel handling as :func:`read_gray`.
    """
    return _to_unit_float(_single_channel(decode(path)), path)


def write_png(path: PathLike, arr: np.ndarray) -> Path:
    """Write ``arr`` as a PNG, creating parent folders; atomic (temp file + rename).

    ``arr``: (H, W) grey, (H, W, 3) RGB or (H, W, 4) RGBA; uint8 or uint16 as is, bool as
    0/255, float in [0, 1] scaled to uint8 with rounding. Returns the path.
    """
    p = Path(path)
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)) or a.size == 0:
        raise ValueError(f"{p}: cannot write an array of shape {a.shape} as an image")
    if a.dtype == bool:
        a = a.astype(np.uint8) * 255
    elif a.dtype.kind == "f":
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if lo < -1e-6 or hi > 1.0 + 1e-6:
            raise ValueError(
                f"{p}: float images must be in [0, 1] (got {lo:.3g}..{hi:.3g}); "
                "convert 0-255 data to uint8 first"
            )
        a = np.round(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)
    elif a.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"{p}: cannot write dtype {a.dtype}; use uint8, uint16, bool or float")
    if a.ndim == 3:
        a = cv2.cvtColor(a, cv2.COLOR_RGB2BGR if a.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    ok, buf = cv2.imencode(".png", a)
    if not ok:
        raise OSError(f"{p}: PNG encoding failed")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        buf.tofile(tmp)
        os.replace(tmp, p)
    except BaseException:  # a full disk or a kill: no partial file left behind
        tmp.unlink(missing_ok=True)
        raise
    return p


# --- cheap size checks -----------------------------------------------------------------------
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _png_size(head: bytes) -> tuple[int, int] | None:
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR" or len(head) < 24:
        return None
    w, h = struct.unpack(">II", head[16:24])
    return (h, w)


def _jpeg_size(f) -> tuple[int, int] | None:
    f.seek(2)
    while True:
        b = f.read(1)
        while b and b != b"\xff":
            b = f.read(1)
        while b == b"\xff":
            b = f.read(1)
        if not b:
            return None
        marker = b[0]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            continue
        seg = f.read(2)
        if len(seg) < 2:
            return None
        (length,) = struct.unpack(">H", seg)
        if marker in _JPEG_SOF:
            data = f.read(5)
            if len(data) < 5:
                return None
            h, w = struct.unpack(">HH", data[1:5])
            return (h, w)
        f.seek(length - 2, os.SEEK_CUR)


def _bmp_size(head: bytes) -> tuple[int, int] | None:
    if head[:2] != b"BM" or len(head) < 26:
        return None
    (dib,) = struct.unpack("<I", head[14:18])
    if dib == 12:  # BITMAPCOREHEADER: 16-bit sides
        w, h = struct.unpack("<HH", head[18:22])
    else:
        w, h = struct.unpack("<ii", head[18:26])
    return (abs(h), abs(w))  # a negative height: stored top-down


def _webp_size(head: bytes) -> tuple[int, int] | None:
    if head[:4] != b"RIFF" or head[8:12] != b"WEBP" or len(head) < 30:
        return None
    chunk = head[12:16]
    if chunk == b"VP8 ":
        w, h = struct.unpack("<HH", head[26:30])
        return (h & 0x3FFF, w & 0x3FFF)
    if chunk == b"VP8L":
        (bits,) = struct.unpack("<I", head[21:25])
        return (((bits >> 14) & 0x3FFF) + 1, (bits & 0x3FFF) + 1)
    if chunk == b"VP8X":
        w = int.from_bytes(head[24:27], "little") + 1
        h = int.from_bytes(head[27:30], "little") + 1
        return (h, w)
    return None


def _tiff_size(f, head: bytes) -> tuple[int, int] | None:
    """The first image's size from its IFD (tags 256/257); None for BigTIFF or a bad IFD."""
    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(head[:4])
    if order is None:
        return None
    (offset,) = struct.unpack(order + "I", head[4:8])
    f.seek(offset)
    raw = f.read(2)
    if len(raw) < 2:
        return None
    (count,) = struct.unpack(order + "H", raw)
    entries = f.read(12 * min(count, 4096))
    size: dict[int, int] = {}
    for i in range(0, len(entries) - 11, 12):
        tag, kind = struct.unpack(order + "HH", entries[i : i + 4])
        if tag in (256, 257) and kind in (3, 4):
            fmt = order + ("H" if kind == 3 else "I")
            size[tag] = struct.unpack(fmt, entries[i + 8 : i + 8 + struct.calcsize(fmt)])[0]
    return (size[257], size[256]) if len(size) == 2 else None


def image_size(path: PathLike, decode_unknown: bool = True) -> tuple[int, int]:
    """(H, W) of an image, from the PNG/JPEG/BMP/WebP/TIFF header when possible (no pixel
    decoding).

    Other formats, and headers that cannot be parsed, are decoded in full, or with
    ``decode_unknown=False`` refused (a server must not decode what it cannot size). Raises
    :class:`ImageReadError` for missing, empty, unreadable or (so) refused files.
    """
    p = Path(path)
    if not p.is_file():
        raise ImageReadError(f"{p}: file not found; check the path (or the list that names it)")
    try:
        with open(p, "rb") as f:
            head = f.read(32)
            if not head:
                raise ImageReadError(f"{p}: file is empty (0 bytes); copy or download it again")
            size = _png_size(head) or _bmp_size(head) or _webp_size(head)
            if size is None and head[:2] == b"\xff\xd8":
                size = _jpeg_size(f)
            if size is None:
                size = _tiff_size(f, head)
    except OSError as e:
        raise ImageReadError(f"{p}: cannot be read ({e}); check its permissions") from e
    if size is not None and size[0] > 0 and size[1] > 0:
        return size
    if not decode_unknown:
        raise ImageReadError(
            f"{p}: not a readable image whose header gives its size (accepted here: PNG, "
            "JPEG, BMP, WebP, TIFF); save it as PNG or JPEG"
        )
    return tuple(decode(p).shape[:2])
