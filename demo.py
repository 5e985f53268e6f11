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
strokes are scaled up to the photo, which is matted at full resolution through the shared
inference code (tiled above ``--max-side``, so memory stays bounded). Files above
``--max-pixels`` are refused from their header before decoding.

Works offline: Gradio's usage analytics are switched off before it is imported, the theme's
fonts are served by Gradio itself, and no share link is ever requested (the browser test checks
that the page makes no request outside this machine).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
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

log = logging.getLogger("demo")
MAX_ADAPT_STEPS = 200  # per Matte press: one user cannot hold the server for long

# Brush colours (RGB) and what each stroke means; the page's palette is exactly these.
BRUSHES = {
    "object": (230, 40, 40),  # the rough object: filled, an unknown band around its edge
    "foreground": (255, 255, 255),  # sure foreground
    "background": (0, 0, 0),  # sure background
    "unknown": (40, 120, 255),  # hair, fur, glass: let the matting decide
}
TRIMAP_TINT = {0: (0, 0, 0), 128: (40, 120, 255), 255: (255, 255, 255)}


class DemoError(ValueError):
    """Something a person did on the page that cannot be matted; shown on the page."""


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
    ("12" pixels or "1%" of the photo's diagonal). Raises :class:`DemoError` saying what to
    paint when the trimap could not be matted."""
    masks = stroke_masks(layers, preview_shape)
    masks = {k: upscale_mask(v, shape) for k, v in masks.items()}
    if not (masks["object"].any() or masks["foreground"].any()):
        raise DemoError(
            "nothing painted: paint over the object with the red 'object' brush (an outline "
            "is enough), then press Matte"
        )
    trimap = compose.trimap_from_strokes(
        masks["object"],
        compose.band_pixels(band, shape),
        foreground=masks["foreground"],
        background=masks["background"],
        unknown=masks["unknown"],
    )
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
class Matter:
    """What the page's buttons call: reading photos, building trimaps, matting. No Gradio in
    here, so it is tested directly; the page turns :class:`DemoError` into a message."""

    def __init__(self, model=None, label: str | None = None, preview_side: int = 1024, **kw):
        self.model = model
        self.label = label or "closed-form matting (Levin et al. 2008, pymatting)"
        self.preview_side = preview_side
        self.max_pixels = kw.pop("max_pixels", MAX_PIXELS)
        self.adapt_steps = kw.pop("adapt", 0)  # the page's default; each Matte press may change it
        self.adapt_settings = kw.pop("adapt_settings", {})  # utils.adapt.settings_from_checkpoint
        self.inference = kw  # device, amp, tile, overlap, max_side, scale, tta
        self.out_dir = Path(tempfile.mkdtemp(prefix="dim-demo-"))

    def read_photo(self, path: str | None) -> np.ndarray:
        if not path:
            raise DemoError("no photo: upload one first")
        try:
            check_pixels(path, self.max_pixels, flag="--max-pixels (of demo.py)")
            return read_rgb(path)
        except ImageReadError as e:
            raise DemoError(f"{Path(path).name}: {str(e).split(': ', 1)[-1]}") from e

    def use_checkpoint(self, path: str, device="cpu") -> str:
        """Switch to the DIM checkpoint at ``path``; :class:`DemoError` if it is not one."""
        from utils.checkpoint import CheckpointError, load_model_for_inference

        try:
            model, state, ckpt = load_model_for_inference(path, device)
        except CheckpointError as e:
            raise DemoError(f"{Path(path).name}: {str(e).split(': ', 1)[-1]}") from e
        from utils.adapt import settings_from_checkpoint

        self.model = model
        self.label = f"Deep Image Matting, {Path(ckpt).name} (stage {state.get('stage')})"
        self.adapt_settings = settings_from_checkpoint(state)
        return self.label

    def adapted(self, image: np.ndarray, trimap: np.ndarray, steps) -> tuple[object, str]:
        """(the model to matte with, its label): with ``steps`` > 0 a copy fine-tuned on this
        photo (utils/adapt.py); :class:`DemoError` for a bad count or closed-form matting."""
        try:
            steps = int(steps or 0)
        except (TypeError, ValueError):
            raise DemoError(f"adaptation steps must be a whole number, got {steps!r}") from None
        if not 0 <= steps <= MAX_ADAPT_STEPS:  # bounded: each step is a training step
            raise DemoError(f"adaptation steps must be 0 to {MAX_ADAPT_STEPS}, got {steps}")
        if steps == 0:
            return self.model, self.label
        if self.model is None:
            raise DemoError(
                "adaptation fine-tunes a DIM checkpoint: load one, or set the adaptation steps "
                "to 0 for closed-form matting"
            )
        from utils.adapt import AdaptError, adapt

        settings = dict(self.adapt_settings)
        settings.update(scale=self.inference.get("scale"))
        try:
            model = adapt(self.model, image, trimap, steps, **settings)
        except AdaptError as e:
            raise DemoError(str(e)) from e
        return model, f"{self.label}, adapted {steps} steps"

    def matte(
        self,
        image: np.ndarray,
        layers: list[np.ndarray],
        preview_shape: tuple[int, int],
        band: str,
        background: np.ndarray | None = None,
        colour: str = "#00b140",
        adapt: int | None = None,
    ) -> dict:
        """Strokes -> trimap -> alpha, cut-out, composite at full resolution; the PNG files
        written for download; ``method`` names what made the alpha. ``adapt``: test-time
        adaptation steps (None: the page's default, ``--adapt``)."""
        from utils.matting import matte

        shape = image.shape[:2]
        trimap = trimap_from_editor(layers, preview_shape, shape, band)
        if background is None:
            background = solid_background(colour, shape)
        t0 = time.perf_counter()
        model, label = self.adapted(image, trimap, self.adapt_steps if adapt is None else adapt)
        result = matte(model, image, trimap, "ml", background, **self.inference)
        seconds = time.perf_counter() - t0
        folder = Path(tempfile.mkdtemp(dir=self.out_dir))
        files = [
            write_png(folder / "alpha.png", result["alpha"]),
            write_png(folder / "cutout.png", result["rgba"]),
            write_png(folder / "trimap.png", trimap),
        ]
        return {**result, "trimap": trimap, "files": files, "method": label, "s": seconds}


def build_app(matter: Matter):
    """The Gradio page around ``matter``."""
    import gradio as gr

    def fail(e: Exception):
        return gr.Error(str(e), print_exception=False)

    def load_photo(path):
        try:
            image = matter.read_photo(path)
        except DemoError as e:
            raise fail(e) from None
        preview = shrink(image, matter.preview_side)
        h, w = image.shape[:2]
        note = (
            f"Photo {w}x{h}"
            + (
                f" (painting on a {preview.shape[1]}x{preview.shape[0]} preview)"
                if preview is not image
                else ""
            )
            + f". Method: **{matter.label}**. Paint the object with the red brush, then Matte."
        )
        return {"background": preview, "layers": [], "composite": None}, image, note

    def load_checkpoint(path):
        if not path:
            return gr.update()
        try:
            return f"Method: **{matter.use_checkpoint(path)}**"
        except DemoError as e:
            raise fail(e) from None

    def run(editor, image, band, colour, bg_path, steps):
        try:
            if image is None or editor is None or editor.get("background") is None:
                raise DemoError("no photo: upload one first")
            preview = editor["background"]
            background = None
            if bg_path:
                background = matter.read_photo(bg_path)
            r = matter.matte(
                image,
                editor.get("layers") or [],
                preview.shape[:2],
                f"{band}%",
                background,
                colour,
                adapt=steps,
            )
        except DemoError as e:
            raise fail(e) from None
        side = matter.preview_side
        h, w = image.shape[:2]
        status = (
            f"Matted {w}x{h} with **{r['method']}** in {r['s']:.1f} s; "
            f"{int((r['trimap'] == 128).sum())} unknown pixels. Downloads are full resolution."
        )
        return (
            shrink(overlay(image, r["trimap"]), side),
            shrink(r["alpha"], side),
            shrink(r["rgba"], side),
            shrink(r["composite"], side),
            [str(p) for p in r["files"]],
            status,
        )

    brush = gr.Brush(
        colors=[f"rgb{c}" for c in BRUSHES.values()],
        default_color=f"rgb{BRUSHES['object']}",
        default_size=6,
        color_mode="fixed",
    )
    with gr.Blocks(title="Deep Image Matting", analytics_enabled=False) as app:
        gr.Markdown(
            "## Deep Image Matting: paint a rough trimap, get the matte\n"
            "Brushes: **red** object (roughly; an outline is filled), **white** sure "
            "foreground, **black** sure background, **blue** unknown (hair, fur)."
        )
        status = gr.Markdown(f"Method: **{matter.label}**. Upload a photo.", elem_id="status")
        full = gr.State(None)
        with gr.Row():
            with gr.Column(scale=3):
                photo = gr.File(label="Photo", file_types=["image"], elem_id="photo")
                editor = gr.ImageEditor(
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
                    0.2, 5.0, value=1.0, step=0.1, label="Unknown band (% of diagonal)"
                )
                colour = gr.ColorPicker(value="#00b140", label="Composite on colour")
                bg = gr.File(label="...or on a background photo", file_types=["image"])
                ckpt = gr.File(label="Checkpoint (.pt, optional)", file_types=[".pt"])
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

        photo.upload(load_photo, photo, [editor, full, status])
        ckpt.upload(load_checkpoint, ckpt, status)
        go.click(
            run,
            [editor, full, band, colour, bg, steps],
            [trimap_view, alpha_view, cut_view, comp_view, files, status],
        )
    return app, matter.out_dir


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
    from utils.checkpoint import CheckpointError, load_model_for_inference
    from utils.device import check_amp, pick_device

    if args.adapt and not args.checkpoint:
        msg = "--adapt fine-tunes a DIM checkpoint: pass --checkpoint (or drop --adapt)"
        print(f"demo.py: error: {msg}", file=sys.stderr)
        return 2
    why = cannot_listen(args.host, args.port)  # before the model loads and the page is built
    if why:
        print(f"demo.py: error: {why}", file=sys.stderr)
        return 2
    from utils.adapt import settings_from_checkpoint

    try:
        device = pick_device(args.device)
        check_amp(args.amp, device)
        model, label, settings = None, None, {}
        if args.checkpoint:
            model, state, ckpt = load_model_for_inference(args.checkpoint, device)
            label = f"Deep Image Matting, {ckpt} (stage {state.get('stage')})"
            settings = settings_from_checkpoint(state)
    except (CheckpointError, ValueError, RuntimeError) as e:
        print(f"demo.py: error: {e}", file=sys.stderr)
        return 2
    matter = Matter(
        model,
        label,
        preview_side=args.preview_side,
        max_pixels=args.max_pixels,
        device=device,
        amp=args.amp,
        tile=args.tile,
        overlap=args.overlap,
        max_side=args.max_side or None,
        scale=args.infer_scale,
        tta=args.tta,
        adapt=args.adapt,
        adapt_settings=settings,
    )
    app, out_dir = build_app(matter)
    print(f"matting with {matter.label}; open http://{args.host}:{args.port} (Ctrl-C stops)")
    app.launch(
        server_name=args.host,
        server_port=args.port,
        share=False,
        inbrowser=False,
        show_error=True,
        allowed_paths=[str(out_dir)],
        quiet=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
