"""Matte your own photo in the browser: paint the object roughly, get alpha, cut-out, composite.

    python demo.py                                  # closed-form matting, no checkpoint needed
    python demo.py --checkpoint runs/dim            # this repository's Deep Image Matting model
    python demo.py --checkpoint runs/dim --adapt 25 # ... fine-tuned on each photo first

It prints the local address (http://127.0.0.1:7860 by default) and serves nothing beyond this
machine unless ``--host`` says so. On the page: upload a photo, paint the object with the
*object* brush (an outline is filled), fix with the *foreground*, *background* and
*unknown (hair)* brushes, set the band width, press "Matte". The trimap built from the strokes
is shown over the photo; the alpha, the cut-out (foreground colours estimated by pymatting, not
image x alpha) and a composite on a colour or an uploaded background are shown, and the alpha,
the RGBA cut-out and the trimap download as full-resolution PNGs.

Test-time adaptation: the *Adapt* box (default ``--adapt``) fine-tunes a copy of the checkpoint
for that many steps on composites of the photo's own known colours before it mattes the photo
(utils/adapt.py); the loaded model itself never changes.

Large photos: the painting canvas shows a copy whose long side is at most ``--preview-side``;
the trimap is built on it from the strokes and scaled up to the photo, which is matted at full
resolution (closed-form and foreground colours on windows around the unknown band, the network
in windows of at most ``--max-side`` px: memory grows with the photo by a few bytes per pixel).

Limits (what one user may cost the server): one Matte or photo upload runs at a time (others
queue, at most ``--queue-size``; beyond that a request is told to retry); photos above the
pixel limit are refused from their header before decoding, the limit being derived from
``--memory-budget`` and the measured bytes per pixel unless ``--max-pixels`` is given; uploads
above ``--max-upload-mb`` are refused; each session's photo and downloads are files in its own
folder, removed when the tab closes or after ``--session-minutes`` idle, and at most
``--max-sessions`` exist at once. A checkpoint can be uploaded on the page only with
``--allow-checkpoint-upload``, and then mattes that session's photos only.

Works offline: Gradio's usage analytics are switched off before it is imported, the theme's
fonts are served by Gradio itself, and no share link is ever requested (the browser test checks
that the page makes no request outside this machine).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

# Before gradio is imported anywhere: no usage analytics (a network call at start and on use).
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import cv2
import numpy as np

from data import compose, layout
from utils.cli import OneLineParser, add_inference_args, existing, host_arg, number, port_arg
from utils.image_io import MAX_PIXELS, ImageReadError, check_pixels, read_rgb, write_png
from utils.serving import (
    BYTES_PER_PIXEL,
    MAX_UPLOADED_MODELS,
    MODEL_BYTES,
    PAGE_MAX_SIDE,
    WORK_BYTES,
    DemoError,
    Sessions,
    pixel_limit,
    resident_bytes,
)

log = logging.getLogger("demo")
MAX_ADAPT_STEPS = 200  # per Matte press: one user cannot hold the server for long
BAND_RANGE = (0.2, 5.0)  # the band slider's range, % of the photo's diagonal

# Brush colours (RGB) and what each stroke means; the page's palette is exactly these.
BRUSHES = {
    "object": (230, 40, 40),  # the rough object: filled, an unknown band around its edge
    "foreground": (255, 255, 255),  # sure foreground
    "background": (0, 0, 0),  # sure background
    "unknown": (40, 120, 255),  # hair, fur, glass: let the matting decide
}
TRIMAP_TINT = {0: (0, 0, 0), 128: (40, 120, 255), 255: (255, 255, 255)}


# --- strokes and trimaps (pure functions) ----------------------------------------------------
def stroke_masks(layers: list[np.ndarray], shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """The editor's stroke layers (RGBA uint8, any number) -> one bool (H, W) mask per brush
    of :data:`BRUSHES`: each painted pixel (alpha >= 128) goes to the nearest brush colour."""
    names = list(BRUSHES)
    colours = np.array([BRUSHES[n] for n in names], np.float32)
    masks = {n: np.zeros(shape, bool) for n in names}
    for layer in layers:
        if layer is None or layer.ndim != 3 or layer.shape[2] < 4:
            continue
        if layer.shape[:2] != shape:
            layer = cv2.resize(layer, shape[::-1], interpolation=cv2.INTER_NEAREST)
        painted = layer[..., 3] >= 128
        if not painted.any():
            continue
        rgb = layer[..., :3][painted].astype(np.float32)
        nearest = np.argmin(((rgb[:, None, :] - colours[None]) ** 2).sum(-1), axis=1)
        for i, n in enumerate(names):
            masks[n][painted] |= nearest == i
    return masks


def upscale_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A preview-sized bool mask at the photo's size (nearest neighbour)."""
    if mask.shape == shape:
        return mask
    return cv2.resize(mask.astype(np.uint8), shape[::-1], interpolation=cv2.INTER_NEAREST) > 0


def trimap_from_editor(
    layers: list[np.ndarray], preview_shape: tuple[int, int], shape: tuple[int, int], band: str
) -> np.ndarray:
    """Strokes painted on the preview -> a full-resolution trimap with a ``band`` unknown band
    ("12" pixels of the photo or "1%" of its diagonal). Raises :class:`DemoError` saying what
    to paint when the trimap could not be matted.

    The trimap is built at the preview's size, where the strokes were painted (they hold no
    finer detail), and scaled to the photo (nearest neighbour): cheap for any photo size."""
    masks = stroke_masks(layers, preview_shape)
    if not (masks["object"].any() or masks["foreground"].any()):
        raise DemoError(
            "nothing painted: paint over the object with the red 'object' brush (an outline "
            "is enough), then press Matte"
        )
    try:
        width = compose.band_pixels(band, shape)
    except ValueError:
        raise DemoError(f"band width {band!r} is not a number of pixels or a percentage") from None
    scale = max(preview_shape) / max(shape)
    trimap = compose.trimap_from_strokes(
        masks["object"],
        max(1, round(width * scale)),
        foreground=masks["foreground"],
        background=masks["background"],
        unknown=masks["unknown"],
    )
    if trimap.shape != shape:
        trimap = cv2.resize(trimap, shape[::-1], interpolation=cv2.INTER_NEAREST)
    check_trimap(trimap)
    return trimap


def check_trimap(trimap: np.ndarray) -> None:
    """A trimap the matting can use: some unknown, some sure foreground and background; the
    message says which brush fixes it."""
    missing = layout.missing_trimap_regions(trimap)
    if "foreground" in missing:
        raise DemoError(
            "the trimap has no sure foreground: the band is wider than the object; lower the "
            "band width or paint the object's inside with the white 'foreground' brush"
        )
    if "background" in missing:
        raise DemoError(
            "the trimap has no sure background: the object covers the photo; lower the band "
            "width or paint some background with the black 'background' brush"
        )
    if "unknown" in missing:
        raise DemoError(
            "the trimap has no unknown pixels, so there is nothing to matte: widen the band or "
            "paint the edges with the blue 'unknown' brush"
        )


def overlay(image: np.ndarray, trimap: np.ndarray, strength: float = 0.5) -> np.ndarray:
    """The trimap tinted over the photo (RGB uint8): white sure foreground, black sure
    background, blue unknown."""
    tint = np.zeros_like(image)
    for value, colour in TRIMAP_TINT.items():
        tint[trimap == value] = colour
    return cv2.addWeighted(image, 1.0 - strength, tint, strength, 0.0)


def shrink(image: np.ndarray, side: int) -> np.ndarray:
    """A copy whose long side is at most ``side`` (area interpolation); the image itself if
    it is small enough."""
    h, w = image.shape[:2]
    scale = side / max(h, w)
    if scale >= 1.0:
        return image
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def solid_background(colour: str, shape: tuple[int, int]) -> np.ndarray:
    """A (H, W, 3) uint8 image of a CSS colour as Gradio's colour picker gives it: "#rrggbb",
    "rgb(r, g, b)" or "rgba(r, g, b, a)"."""
    text = (colour or "#00b140").strip()
    try:
        if text.startswith("#") and len(text) == 7:
            rgb = tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))
        elif text.startswith("rgb") and text.endswith(")"):
            rgb = tuple(round(float(v)) for v in text[text.index("(") + 1 : -1].split(",")[:3])
        else:
            raise ValueError(text)
    except ValueError:
        raise DemoError(
            f"background colour {colour!r} is not '#rrggbb' or 'rgb(r, g, b)'"
        ) from None
    out = np.empty((*shape, 3), np.uint8)
    out[:] = np.clip(rgb, 0, 255)
    return out


# --- the app ---------------------------------------------------------------------------------
@dataclass
class Method:
    """What mattes: a DIM model (None: closed-form matting), its label on the page and the
    test-time adaptation settings its checkpoint implies."""

    model: object = None
    label: str = "closed-form matting (Levin et al. 2008, pymatting)"
    adapt_settings: dict = field(default_factory=dict)


def method_from_checkpoint(path, device="cpu") -> Method:
    """The :class:`Method` of the DIM checkpoint at ``path``; :class:`DemoError` if it is not
    one of this project's (its stored settings are checked as it loads)."""
    from utils.adapt import settings_from_checkpoint
    from utils.checkpoint import CheckpointError, load_model_for_inference

    try:
        model, state, ckpt = load_model_for_inference(path, device)
    except CheckpointError as e:
        raise DemoError(f"{Path(path).name}: {str(e).split(': ', 1)[-1]}") from e
    label = f"Deep Image Matting, {Path(ckpt).name} (stage {state.get('stage')})"
    return Method(model, label, settings_from_checkpoint(state))


def check_band(band) -> str:
    """The band slider's value as :func:`data.compose.band_pixels` takes it ("1.5%");
    :class:`DemoError` unless it is a number in :data:`BAND_RANGE`."""
    try:
        value = float(band)
    except (TypeError, ValueError):
        value = float("nan")
    lo, hi = BAND_RANGE
    if not lo <= value <= hi:  # also NaN
        raise DemoError(
            f"band width must be a number from {lo} to {hi} (% of the diagonal), got {band!r}"
        )
    return f"{value}%"


class Matter:
    """What the page's buttons call: reading photos, building trimaps, matting. No Gradio in
    here, so it is tested directly; the page turns :class:`DemoError` into a message."""

    def __init__(
        self, method: Method | None = None, preview_side: int = 1024, cost: str | None = None, **kw
    ):
        self.method = method or Method()  # the page's; a session may upload its own
        self.preview_side = preview_side
        self.max_pixels = kw.pop("max_pixels", MAX_PIXELS)
        # What a Matte costs in memory (serving.pixel_limit): the network's whenever a model
        # may run, closed-form's otherwise.
        self.cost = cost or ("closed-form" if self.method.model is None else "network")
        self.adapt_steps = kw.pop("adapt", 0)  # the page's default; each Matte press may change it
        self.inference = kw  # device, amp, tile, overlap, max_side, scale, tta
        self.out_dir = Path(tempfile.mkdtemp(prefix="dim-demo-"))

    @property
    def label(self) -> str:
        return self.method.label

    def read_photo(self, path: str | os.PathLike | None) -> np.ndarray:
        """Decode a photo the page was given; refused from its header when it has more than
        ``max_pixels`` pixels or a format whose size cannot be read without decoding it."""
        if not path:
            raise DemoError("no photo: upload one first")
        try:
            check_pixels(path, self.max_pixels, "--max-pixels (of demo.py)", True, self.need)
            return read_rgb(path)
        except ImageReadError as e:
            raise DemoError(f"{Path(path).name}: {str(e).split(': ', 1)[-1]}") from e

    def need(self, pixels: int) -> str:
        """What one Matte of a photo of ``pixels`` adds to the server's memory, in words."""
        gib = (pixels * BYTES_PER_PIXEL[self.cost] + WORK_BYTES[self.cost]) / 2**30
        return f"about {gib:.1f} GiB on this page"

    def adapted(
        self, image: np.ndarray, trimap: np.ndarray, steps, method: Method | None = None
    ) -> tuple[object, str]:
        """(the model to matte with, its label): with ``steps`` > 0 a copy fine-tuned on this
        photo (utils/adapt.py); :class:`DemoError` for a bad count or closed-form matting."""
        method = method or self.method
        try:
            steps = int(steps or 0)
        except (TypeError, ValueError, OverflowError):
            raise DemoError(f"adaptation steps must be a whole number, got {steps!r}") from None
        if not 0 <= steps <= MAX_ADAPT_STEPS:  # bounded: each step is a training step
            raise DemoError(f"adaptation steps must be 0 to {MAX_ADAPT_STEPS}, got {steps}")
        if steps == 0:
            return method.model, method.label
        if method.model is None:
            raise DemoError(
                "adaptation fine-tunes a DIM checkpoint: load one, or set the adaptation steps "
                "to 0 for closed-form matting"
            )
        from utils.adapt import AdaptError, adapt

        settings = dict(method.adapt_settings)
        settings.update(scale=self.inference.get("scale"))
        try:
            model = adapt(method.model, image, trimap, steps, **settings)
        except AdaptError as e:
            raise DemoError(str(e)) from e
        return model, f"{method.label}, adapted {steps} steps"

    def matte(
        self,
        image: np.ndarray,
        layers: list[np.ndarray],
        preview_shape: tuple[int, int],
        band: str,
        background: np.ndarray | None = None,
        colour: str = "#00b140",
        adapt: int | None = None,
        method: Method | None = None,
        out_dir: Path | None = None,
    ) -> dict:
        """Strokes -> trimap -> alpha, cut-out, composite at full resolution; the PNG files
        written for download into ``out_dir`` (default: the page's own folder), replacing the
        previous Matte's; ``method`` names what made the alpha. ``adapt``: test-time
        adaptation steps (None: the page's default, ``--adapt``); ``method``: None = the
        page's."""
        from utils.matting import matte

        shape = image.shape[:2]
        trimap = trimap_from_editor(layers, preview_shape, shape, band)
        if background is None:
            background = solid_background(colour, shape)
        t0 = time.perf_counter()
        steps = self.adapt_steps if adapt is None else adapt
        model, label = self.adapted(image, trimap, steps, method)
        result = matte(model, image, trimap, "ml", background, **self.inference)
        seconds = time.perf_counter() - t0
        folder = Path(out_dir or self.out_dir) / "matte"
        shutil.rmtree(folder, ignore_errors=True)  # the previous Matte's downloads
        files = [
            write_png(folder / "alpha.png", result["alpha"]),
            write_png(folder / "cutout.png", result["rgba"]),
            write_png(folder / "trimap.png", trimap),
        ]
        return {**result, "trimap": trimap, "files": files, "method": label, "s": seconds}


def checked_editor(max_side: int, **kwargs):
    """Gradio's image editor whose background and stroke layers are sized from their headers
    and refused above ``max_side`` x ``max_side`` pixels before they are decoded (the page only
    ever shows a preview of at most that size, so a larger one is not from the page)."""
    import gradio as gr
    import PIL.Image

    editor = gr.ImageEditor(**kwargs)
    convert = editor.convert_and_format_image  # what decodes each layer

    def checked(file, flatten_on_white=False):
        if file is not None:
            try:
                source = file.path if hasattr(file, "path") else io.BytesIO(file)
                with PIL.Image.open(source) as im:
                    w, h = im.size
            except (OSError, ValueError, PIL.Image.DecompressionBombError):
                raise gr.Error(
                    "the painting canvas sent an unreadable image", print_exception=False
                ) from None
            if w * h > max_side * max_side:
                raise gr.Error(
                    f"the painting canvas sent a {w}x{h} image; the page's canvas is at most "
                    f"{max_side}x{max_side} (--preview-side): upload the photo with the Photo box",
                    print_exception=False,
                )
        return convert(file, flatten_on_white)

    editor.convert_and_format_image = checked
    return editor


def build_app(matter: Matter, sessions: Sessions, allow_checkpoint_upload: bool = False):
    """The Gradio page around ``matter``; each session's files and checkpoint in ``sessions``."""
    import gradio as gr

    def fail(e: Exception):
        return gr.Error(str(e), print_exception=False)

    def session(fn):
        """Let Gradio pass the caller's ``request`` (it looks for the class in the annotations,
        which this module keeps as strings)."""
        fn.__annotations__["request"] = gr.Request
        return fn

    @session
    def load_photo(path, request: gr.Request):
        try:
            image = matter.read_photo(path)
            kept = sessions.keep_photo(request.session_hash, path)
            method = sessions.method(request.session_hash) or matter.method
        except DemoError as e:
            raise fail(e) from None
        preview = shrink(image, matter.preview_side)
        h, w = image.shape[:2]
        del image  # the session keeps the file, not the pixels
        # Images go back as files of the session (Gradio copies a file into its cache under a
        # temporary name; an array it writes in place under a hash of its content, which races
        # when two sessions get identical images at once).
        shown = write_png(kept.parent / "preview.png", preview)
        note = (
            f"Photo {w}x{h}"
            + (
                f" (painting on a {preview.shape[1]}x{preview.shape[0]} preview)"
                if preview.shape[:2] != (h, w)
                else ""
            )
            + f". Method: **{method.label}**. Paint the object with the red brush, then Matte."
        )
        return {"background": str(shown), "layers": [], "composite": None}, note

    @session
    def load_checkpoint(path, request: gr.Request):
        if not path:
            return gr.update()
        try:
            sessions.folder(request.session_hash, create=True)
            method = method_from_checkpoint(path, matter.inference.get("device") or "cpu")
            sessions.set_method(request.session_hash, method)
        except DemoError as e:
            raise fail(e) from None
        return f"Method (this session): **{method.label}**"

    @session
    def run(editor, band, colour, bg_path, steps, request: gr.Request):
        try:
            if editor is None or editor.get("background") is None:
                raise DemoError("no photo: upload one first")
            band = check_band(band)
            photo = sessions.photo(request.session_hash)
            preview = editor["background"]
            background = matter.read_photo(bg_path) if bg_path else None
            image = matter.read_photo(photo)
            r = matter.matte(
                image,
                editor.get("layers") or [],  # (stroke_masks scales any layer to the canvas)
                preview.shape[:2],
                band,
                background,
                colour,
                adapt=steps,
                method=sessions.method(request.session_hash),
                out_dir=sessions.folder(request.session_hash),
            )
        except DemoError as e:
            raise fail(e) from None
        side = matter.preview_side
        h, w = image.shape[:2]
        status = (
            f"Matted {w}x{h} with **{r['method']}** in {r['s']:.1f} s; "
            f"{int((r['trimap'] == 128).sum())} unknown pixels. Downloads are full resolution."
        )
        small = preview[..., :3]  # the photo as the canvas shows it (shrunk at upload)
        trimap_small = cv2.resize(r["trimap"], small.shape[1::-1], interpolation=cv2.INTER_NEAREST)
        views = {
            "trimap": overlay(small, trimap_small),
            "alpha": shrink(r["alpha"], side),
            "cutout": shrink(r["rgba"], side),
            "composite": shrink(r["composite"], side),
        }
        folder = r["files"][0].parent
        shown = [str(write_png(folder / f"view-{k}.png", v)) for k, v in views.items()]
        return (*shown, [str(p) for p in r["files"]], status)

    @session
    def close(request: gr.Request):
        sessions.close(request.session_hash)

    brush = gr.Brush(
        colors=[f"rgb{c}" for c in BRUSHES.values()],
        default_color=f"rgb{BRUSHES['object']}",
        default_size=6,
        color_mode="fixed",
    )
    # Photo uploads, checkpoint loads and Mattes share one worker: at most one runs at a time,
    # which is what the memory budget counts on (and all a 2-core CPU could run anyway).
    work = {"concurrency_limit": 1, "concurrency_id": "work"}
    with gr.Blocks(
        title="Deep Image Matting", analytics_enabled=False, delete_cache=(600, 3600)
    ) as app:
        gr.Markdown(
            "## Deep Image Matting: paint a rough trimap, get the matte\n"
            "Brushes: **red** object (roughly; an outline is filled), **white** sure "
            "foreground, **black** sure background, **blue** unknown (hair, fur)."
        )
        status = gr.Markdown(f"Method: **{matter.label}**. Upload a photo.", elem_id="status")
        with gr.Row():
            with gr.Column(scale=3):
                photo = gr.File(label="Photo", file_types=["image"], elem_id="photo")
                editor = checked_editor(
                    matter.preview_side,
                    label="Paint here",
                    type="numpy",
                    image_mode="RGBA",
                    sources=(),
                    brush=brush,
                    eraser=gr.Eraser(),
                    layers=False,
                    transforms=(),
                    elem_id="editor",
                )
            with gr.Column(scale=1):
                band = gr.Slider(
                    *BAND_RANGE, value=1.0, step=0.1, label="Unknown band (% of diagonal)"
                )
                colour = gr.ColorPicker(value="#00b140", label="Composite on colour")
                bg = gr.File(label="...or on a background photo", file_types=["image"])
                ckpt = (
                    gr.File(label="Checkpoint (.pt, this session only)", file_types=[".pt"])
                    if allow_checkpoint_upload
                    else None
                )
                steps = gr.Number(
                    value=matter.adapt_steps,
                    minimum=0,
                    maximum=MAX_ADAPT_STEPS,
                    precision=0,
                    step=5,
                    label="Adapt: fine-tune steps on this photo first (DIM only; 0 = off)",
                    elem_id="adapt",
                )
                go = gr.Button("Matte", variant="primary", elem_id="matte")
        with gr.Row():
            trimap_view = gr.Image(label="Trimap over the photo", elem_id="trimap")
            alpha_view = gr.Image(label="Alpha", elem_id="alpha", image_mode="L")
            cut_view = gr.Image(label="Cut-out", elem_id="cutout", image_mode="RGBA", format="png")
            comp_view = gr.Image(label="Composite", elem_id="composite")
        files = gr.File(
            label="Downloads (full resolution)", file_count="multiple", elem_id="downloads"
        )

        photo.upload(load_photo, photo, [editor, status], **work)
        if ckpt is not None:
            ckpt.upload(load_checkpoint, ckpt, status, **work)
        go.click(
            run,
            [editor, band, colour, bg, steps],
            [trimap_view, alpha_view, cut_view, comp_view, files, status],
            **work,
        )
        app.unload(close)
    return app


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="demo.py",
        description="Interactive matting page: paint a rough trimap on your photo.",
        epilog="Without --checkpoint the page mattes with closed-form matting.",
    )
    p.add_argument(
        "--checkpoint", type=existing("any"), help="a .pt file or a run folder (runs/NAME)"
    )
    p.add_argument(
        "--host",
        type=host_arg,
        default="127.0.0.1",
        help="address to serve on (default: this machine only)",
    )
    p.add_argument("--port", type=port_arg, default=7860, help="TCP port (1..65535)")
    p.add_argument(
        "--preview-side",
        type=number(int, 64),
        default=1024,
        help="long side of the painting canvas (>= 64)",
    )
    add_inference_args(p)
    p.set_defaults(max_side=PAGE_MAX_SIDE, max_pixels=None)
    limits = p.add_argument_group("limits (what one user may cost the server)")
    limits.add_argument(
        "--memory-budget",
        type=number(float, 1.0),
        default=4.0,
        metavar="GIB",
        help="peak resident memory the server should stay under, GiB (default 4); sets the "
        "pixel limit from measured bytes per pixel unless --max-pixels is given",
    )
    limits.add_argument(
        "--max-sessions",
        type=number(int, 1),
        default=64,
        help="browser sessions kept at once, each with its photo on disk (default 64)",
    )
    limits.add_argument(
        "--session-minutes",
        type=number(float, 1.0),
        default=30.0,
        help="an idle session's files are removed after this long (default 30)",
    )
    limits.add_argument(
        "--queue-size",
        type=number(int, 1),
        default=64,
        help="requests waiting for the worker; beyond it a request is told to retry (64)",
    )
    limits.add_argument(
        "--max-upload-mb",
        type=number(int, 1),
        default=200,
        help="largest file accepted from a browser, MB (default 200)",
    )
    limits.add_argument(
        "--allow-checkpoint-upload",
        action="store_true",
        help="show a checkpoint box on the page; an uploaded checkpoint mattes only its own "
        f"session's photos, and at most {MAX_UPLOADED_MODELS} sessions hold one at a time",
    )
    return p


def cannot_listen(host: str, port: int) -> str | None:
    """Why the page cannot be served at ``host``:``port`` (a name that does not resolve, an
    address of another machine, a port in use or reserved), or None: the address is resolved
    and bound once, then released for the server."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        return f"--host {host}: cannot be resolved ({reason}); use an address of this machine"
    last: OSError | None = None
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(address)
                return None
            except OSError as e:
                last = e
    reason = last.strerror if last is not None and last.strerror else str(last)
    return (
        f"cannot serve on --host {host} --port {port}: {reason} (the address must be one of "
        "this machine's, e.g. 127.0.0.1 or 0.0.0.0, and the port free; ports below 1024 need "
        "privileges)"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # gradio's own start-up pings
    from utils.device import check_amp, pick_device

    if args.adapt and not args.checkpoint:
        msg = "--adapt fine-tunes a DIM checkpoint: pass --checkpoint (or drop --adapt)"
        print(f"demo.py: error: {msg}", file=sys.stderr)
        return 2
    why = cannot_listen(args.host, args.port)  # before the model loads and the page is built
    if why:
        print(f"demo.py: error: {why}", file=sys.stderr)
        return 2
    try:
        device = pick_device(args.device)
        check_amp(args.amp, device)
        method = method_from_checkpoint(args.checkpoint, device) if args.checkpoint else Method()
    except DemoError as e:
        print(f"demo.py: error: --checkpoint {e}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError) as e:
        print(f"demo.py: error: {e}", file=sys.stderr)
        return 2
    network = method.model is not None or args.allow_checkpoint_upload
    matter = Matter(
        method,
        preview_side=args.preview_side,
        cost="network" if network else "closed-form",
        device=device,
        amp=args.amp,
        tile=args.tile,
        overlap=args.overlap,
        max_side=args.max_side or None,
        scale=args.infer_scale,
        tta=args.tta,
        adapt=args.adapt,
    )
    sessions = Sessions(matter.out_dir / "sessions", args.max_sessions, args.session_minutes * 60)
    app = build_app(matter, sessions, args.allow_checkpoint_upload)
    matter.max_pixels = args.max_pixels or budget_pixels(args, matter)
    if matter.max_pixels < 1_000_000:
        print(
            f"demo.py: error: --memory-budget {args.memory_budget:g} GiB leaves room for photos "
            f"of only {matter.max_pixels / 1e6:.2f} megapixels once the server's "
            f"{resident_bytes() / 2**30:.1f} GiB are counted; raise it (or pass --max-pixels)",
            file=sys.stderr,
        )
        return 2
    print(
        f"matting with {matter.label}; photos up to {matter.max_pixels / 1e6:.0f} megapixels; "
        f"open http://{args.host}:{args.port} (Ctrl-C stops)"
    )
    app.queue(max_size=args.queue_size, default_concurrency_limit=1)
    app.launch(
        server_name=args.host,
        server_port=args.port,
        share=False,
        inbrowser=False,
        show_error=True,
        allowed_paths=[str(matter.out_dir)],
        max_file_size=args.max_upload_mb * 1024 * 1024,
        quiet=True,
    )
    return 0


def budget_pixels(args, matter: Matter) -> int:
    """The pixel limit ``--memory-budget`` allows: what is resident now (the model, Gradio) and
    the uploaded models the page may hold are taken off the budget, then
    :func:`utils.serving.pixel_limit` for the page's cost."""
    held = MAX_UPLOADED_MODELS * MODEL_BYTES if args.allow_checkpoint_upload else 0
    return pixel_limit(args.memory_budget * 2**30, resident_bytes() + held, matter.cost)


if __name__ == "__main__":
    sys.exit(main())
