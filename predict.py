"""Matte your own images: image + trimap -> alpha, RGBA cut-out, optional new-background composite.

Examples (from the repository root)::

    python predict.py --checkpoint runs/demo --image photo.jpg --trimap photo_trimap.png
    python predict.py --checkpoint runs/demo/stage3/best.pt --image photos/ --trimap trimaps/ \\
        --out matted/ --background beach.jpg
    # no trimap? a rough mask (a segmentation output, an editor's quick selection) will do
    python predict.py --checkpoint runs/demo --image photo.jpg --mask photo_mask.png --band 1.5%
    # no trained model? classical closed-form matting
    python predict.py --method closed-form --image photo.jpg --mask photo_mask.png
    # fine-tune a copy of the model on the photo's own colours first (test-time adaptation)
    python predict.py --checkpoint runs/demo --image photo.jpg --trimap photo_trimap.png --adapt 25
    # an ONNX export (export.py) on onnxruntime: no PyTorch needed
    python predict.py --onnx model.onnx --image photo.jpg --trimap photo_trimap.png

``--image`` and ``--trimap`` are files or folders (matched by file stem: ``photos/cat.jpg`` goes
with ``trimaps/cat.png``). For each image NAME, ``--out`` (default ``out/``) receives:

    NAME_alpha.png      the alpha matte, 8-bit grey
    NAME_rgba.png       RGBA cut-out: foreground colours estimated by pymatting's multilevel
                        method (``--fg-method ml``; ``none`` keeps the image's colours, faster)
    NAME_composite.png  with ``--background IMG``: the cut-out over IMG, which is scaled to cover
                        the image and centre-cropped
    NAME_trimap.png     with ``--mask``: the trimap that was used (edit it and pass ``--trimap``)
    NAME_method.txt     which method (and checkpoint) made the alpha

``--mask``: a binary or soft object mask the size of the image; the trimap is the training
data's morphology with an unknown band of ``--band`` pixels (or a percentage of the image
diagonal, default 1%) on each side of the mask's edge; soft values between 16 and 240 are
unknown too. An empty mask, a full mask or a band wider than the object is an error that says
what to change.

Trimaps are 8-bit grey (or RGB with equal channels) with exactly 0 = background, 128 = unknown,
255 = foreground. JPEG-compressed or anti-aliased trimaps have other values near edges and
are refused with an explanation; ``--snap-trimap`` maps them to the nearest of 0/128/255.
``--checkpoint`` takes a .pt file or a run folder (its highest stage's best.pt); without it the
only run under runs/ is used. Large images are tiled (``--max-side``, default 1600 px), which
gives the same alpha as whole-image inference with bounded memory.
``--onnx model.onnx`` replaces ``--checkpoint``/``--method``: the export (export.py) runs on
onnxruntime (CPU, float32) with the same padding, tiling and known-pixel forcing, and this
path never imports torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # repo root

import numpy as np

from data import compose, layout
from utils.cli import (
    OneLineParser,
    add_checkpoint_args,
    add_inference_args,
    declare,
    existing,
    output,
    writable_target,
)
from utils.image_io import (
    IMAGE_EXTS,
    MAX_PIXELS,
    ImageReadError,
    check_pixels,
    read_gray,
    read_rgb,
    write_png,
)
from utils.matting import matte
from utils.onnx_inference import OnnxModelError

log = logging.getLogger("predict")


class InputError(ValueError):
    """An input file or folder cannot be used: the message names it and says what to do."""


@dataclass(frozen=True)
class Job:
    """One image to matte: output stem, image file, and its trimap file or rough mask file."""

    name: str
    image: Path
    guide: Path
    kind: str = "trimap"  # "trimap" or "mask"


# --- inputs ----------------------------------------------------------------------------------
def _images_in(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_EXTS:
            if p.stem in files:
                raise InputError(
                    f"{folder}: two files with the stem {p.stem!r}: {files[p.stem]}, {p}"
                )
            files[p.stem] = p
    return files


def pair_inputs(image: str | Path, trimap: str | Path, kind: str = "trimap") -> list[Job]:
    """Match images with trimaps (or masks, ``kind="mask"``): file + file, file + folder (by
    stem) or folder + folder."""
    image, trimap = Path(image), Path(trimap)
    for what, p in (("--image", image), (f"--{kind}", trimap)):
        if not p.exists():
            raise InputError(f"{what} {p} does not exist")
    if image.is_file():
        if trimap.is_file():
            return [Job(image.stem, image, trimap, kind)]
        tri = _images_in(trimap).get(image.stem)
        if tri is None:
            raise InputError(f"no {kind} named {image.stem}.* in {trimap} for {image}")
        return [Job(image.stem, image, tri, kind)]
    if trimap.is_file():
        raise InputError(
            f"--image {image} is a folder but --{kind} {trimap} is one file: pass a folder of "
            f"{kind}s named like the images"
        )
    images, trimaps = _images_in(image), _images_in(trimap)
    if not images:
        raise InputError(f"{image} holds no images ({', '.join(IMAGE_EXTS)})")
    missing = [n for n in images if n not in trimaps]
    if missing:
        raise InputError(
            f"{len(missing)} image(s) in {image} have no {kind} with the same stem in {trimap}: "
            f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )
    return [Job(n, p, trimaps[n], kind) for n, p in images.items()]


def check_trimap(trimap: np.ndarray, path: str | Path) -> None:
    """Raise :class:`InputError` explaining a trimap that is not purely 0/128/255."""
    try:
        layout.check_trimap_values(trimap, str(path))
    except layout.TrimapError as e:
        raise InputError(
            f"{e} Fix the file, or pass --snap-trimap to map each value to the nearest of "
            "0/128/255."
        ) from None


def read_inputs(
    job: Job, snap: bool = False, band: str = "1%", max_pixels: int = MAX_PIXELS
) -> tuple[np.ndarray, np.ndarray]:
    """Read and check one pair: (RGB uint8 (H, W, 3), trimap uint8 (H, W) in {0, 128, 255}).
    A mask job's trimap is built with :func:`data.compose.trimap_from_mask` (``band``: pixels
    or a percentage of the image diagonal)."""
    # From the headers, before any decoding: an oversized mask is never decoded.
    (h, w), (gh, gw) = (check_pixels(path, max_pixels) for path in (job.image, job.guide))
    if (h, w) != (gh, gw):
        raise InputError(
            f"image {job.image} is {w}x{h} (WxH) but {job.kind} {job.guide} is {gw}x{gh}: "
            f"they must be the same size (resize the {job.kind} to the image with "
            "nearest-neighbour interpolation)"
        )
    image = read_rgb(job.image)
    guide = read_gray(job.guide)
    if image.shape[:2] != guide.shape:  # a header that lied about the size
        raise InputError(
            f"image {job.image} is {image.shape[1]}x{image.shape[0]} (WxH) but {job.kind} "
            f"{job.guide} is {guide.shape[1]}x{guide.shape[0]}: they must be the same size"
        )
    if job.kind == "mask":
        return image, mask_to_trimap(guide, job.guide, band)
    if snap:
        trimap = compose.quantize_trimap(guide)
    else:
        check_trimap(guide, job.guide)
        trimap = guide
    if not (trimap == 128).any():
        log.warning("%s has no unknown (128) pixels: the alpha is the trimap itself", job.guide)
    return image, trimap


def mask_to_trimap(mask: np.ndarray, path: str | Path, band: str = "1%") -> np.ndarray:
    """A rough mask (binary or soft, 8-bit) -> trimap, with errors that say what to do."""
    obj = mask >= 128
    if not obj.any():
        raise InputError(f"mask {path} is empty (no pixel >= 128): paint the object white on black")
    if obj.all():
        raise InputError(
            f"mask {path} covers the whole image: the object must not fill every pixel; "
            "paint the background black"
        )
    try:
        px = compose.band_pixels(band, mask.shape)
    except ValueError as e:
        raise InputError(str(e)) from e
    trimap = compose.trimap_from_mask(mask, px)
    if not (trimap == 255).any():
        raise InputError(
            f"mask {path}: a band of {px} px leaves no definite foreground (the object is "
            f"thinner than the band): lower --band (now {band})"
        )
    if not (trimap == 0).any():
        raise InputError(
            f"mask {path}: a band of {px} px leaves no definite background: lower --band "
            f"(now {band})"
        )
    log.info("%s: trimap from the mask with a %d px unknown band", Path(path).name, px)
    return trimap


# --- CLI -------------------------------------------------------------------------------------
@declare("band", "0", "-3", "x", "nan%", "1e999")
def band_arg(text: str) -> str:
    """argparse type of ``--band``: pixels ("12") or a percentage of the image diagonal
    ("1.5%"), positive and finite."""
    try:
        compose.band_pixels(text, (1000, 1000))
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(
            f"expected pixels (e.g. 12) or a percentage of the image diagonal (e.g. 1.5%), "
            f"positive and finite, got {text!r}"
        ) from None
    return text


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="predict.py",
        description="Matte images with a trained Deep Image Matting checkpoint: alpha PNG, "
        "RGBA cut-out and an optional composite on a new background.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_checkpoint_args(p)
    p.add_argument(
        "--onnx",
        help="run this ONNX export (export.py) on onnxruntime instead of a checkpoint: no "
        "PyTorch needed; CPU, float32",
    )
    p.add_argument(
        "--method",
        choices=("dim", "closed-form"),
        default="dim",
        help="dim: the checkpoint; closed-form: classical matting, no checkpoint needed",
    )
    p.add_argument(
        "--image", type=existing("any"), required=True, help="an image file or a folder of images"
    )
    guide = p.add_mutually_exclusive_group(required=True)
    guide.add_argument(
        "--trimap", type=existing("any"), help="a trimap file or a folder (same stems)"
    )
    guide.add_argument(
        "--mask",
        type=existing("any"),
        help="instead of a trimap: a rough object mask (binary or soft; file or folder, same "
        "stems); the trimap is built around its edge and written as NAME_trimap.png",
    )
    p.add_argument(
        "--band",
        type=band_arg,
        default="1%",
        help="with --mask: unknown band on each side of the mask edge, pixels (12) or a "
        "percentage of the image diagonal (1.5%%)",
    )
    p.add_argument("--out", type=output("dir"), default="out", help="output folder")
    p.add_argument(
        "--background", type=existing("file"), help="composite the cut-out on this image"
    )
    p.add_argument("--fg-method", choices=("ml", "none"), default="ml", help="foreground colours")
    p.add_argument("--snap-trimap", action="store_true", help="map trimap values to 0/128/255")
    add_inference_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    errors: tuple[type[Exception], ...] = (InputError, ImageReadError, OnnxModelError)
    if args.onnx is None:  # the --onnx path never imports torch (utils/checkpoint.py does)
        from utils.adapt import AdaptError
        from utils.checkpoint import CheckpointError

        errors += (CheckpointError, AdaptError)
    try:
        return _run(args)
    except errors as e:
        print(f"predict.py: error: {e}", file=sys.stderr)
        return 2


def _check_onnx_flags(args) -> None:
    """--onnx replaces --checkpoint/--method and runs on onnxruntime's CPU provider in float32."""
    if args.checkpoint or args.method != "dim":
        raise InputError(
            "--onnx runs the exported model: drop --checkpoint/--method (they are mutually "
            "exclusive with --onnx)"
        )
    if args.device not in ("auto", "cpu") or args.amp != "off":
        raise InputError(
            f"--onnx runs on onnxruntime's CPU provider in float32: drop --device {args.device}"
            f"/--amp {args.amp} (or run the checkpoint with --checkpoint)"
        )


def _run(args) -> int:
    from tqdm import tqdm

    if args.method == "closed-form" and (args.checkpoint or args.stage):
        raise InputError("--method closed-form needs no checkpoint: drop --checkpoint/--stage")
    if args.onnx is not None:
        _check_onnx_flags(args)
    if args.adapt and (args.onnx is not None or args.method != "dim"):
        what = "--onnx (an export cannot be fine-tuned)" if args.onnx else "--method closed-form"
        raise InputError(f"--adapt fine-tunes a DIM checkpoint: drop it with {what}")
    if args.onnx is not None and not Path(args.onnx).is_file():  # before any input is read
        what = "is a folder" if Path(args.onnx).is_dir() else "not found"
        raise InputError(f"--onnx {args.onnx}: {what}, expected an .onnx file written by export.py")
    if args.mask:
        jobs = pair_inputs(args.image, args.mask, kind="mask")
    else:
        jobs = pair_inputs(args.image, args.trimap)
    background = read_rgb(args.background) if args.background else None
    kwargs: dict = dict(
        tile=args.tile,
        overlap=args.overlap,
        max_side=args.max_side or None,
        scale=args.infer_scale,
        tta=args.tta,
    )
    adapted = None  # (image, trimap) -> the model to matte them with
    if args.onnx is not None:
        from utils.onnx_inference import load_onnx_model

        model = load_onnx_model(args.onnx, stage=args.stage)
        label, device = f"Deep Image Matting (ONNX), {model.describe()}", "onnxruntime CPU"
    else:
        model, label, device, adapted = _torch_model(args)
        kwargs.update(device=device, amp=args.amp)
    log.info("method: %s on %s", label, device)
    out = Path(args.out)
    for job in tqdm(jobs, desc="matting", unit="img", disable=len(jobs) == 1):
        image, trimap = read_inputs(job, args.snap_trimap, args.band, args.max_pixels)
        if args.onnx is None and args.method == "closed-form":
            check_closed_form(trimap, job.guide)
        t0 = time.perf_counter()
        net = model if adapted is None else adapted(image, trimap)
        result = matte(net, image, trimap, args.fg_method, background, **kwargs)
        if job.kind == "mask":
            result["trimap"] = trimap  # the trimap used: fix it by hand and pass --trimap
        written = write_outputs(out, job.name, result, label)
        log.info(
            "%s: %dx%d in %.1f s -> %s",
            job.name,
            image.shape[1],
            image.shape[0],
            time.perf_counter() - t0,
            ", ".join(str(p) for p in written),
        )
    return 0


def check_closed_form(trimap: np.ndarray, path: str | Path) -> None:
    """Closed-form matting propagates from sure pixels: it needs both kinds."""
    missing = [name for value, name in ((0, "background (0)"), (255, "foreground (255)"))
               if not (trimap == value).any()]  # fmt: skip
    if missing:
        raise InputError(
            f"{path}: closed-form matting needs sure {' and '.join(missing)} pixels in the "
            "trimap, and it has none; mark some, or use --method dim"
        )


def write_outputs(out: Path, name: str, result: dict, label: str) -> list[Path]:
    """NAME_<kind>.png for each result and NAME_method.txt in ``out``; a folder that cannot
    be written (read-only, full, a file in the way) is one :class:`InputError`."""
    why = writable_target(out, "dir")
    if why:
        raise InputError(f"--out {why}")
    try:
        written = [write_png(out / f"{name}_{kind}.png", arr) for kind, arr in result.items()]
        (out / f"{name}_method.txt").write_text(label + "\n", encoding="utf-8")
    except OSError as e:
        raise InputError(
            f"--out {out}: cannot write {e.filename or 'the results'}: {e.strerror or e}"
        ) from None
    return written


def _torch_model(args):
    """(model or None for closed-form, label, torch device, adapted) from the torch-path flags;
    ``adapted(image, trimap)`` is the model fine-tuned on that image (``--adapt``), or None."""
    from utils import adapt
    from utils.checkpoint import load_model_for_inference
    from utils.device import check_amp, pick_device

    try:
        device = pick_device(args.device)
        check_amp(args.amp, device)
    except (ValueError, RuntimeError) as e:
        raise InputError(str(e)) from e
    if args.method != "dim":
        return None, "closed-form matting (Levin et al. 2008, pymatting)", device, None
    model, state, ckpt = load_model_for_inference(args.checkpoint, device, stage=args.stage)
    label = f"Deep Image Matting, {ckpt} (stage {state.get('stage')})"
    if not args.adapt:
        return model, label, device, None
    settings = adapt.settings_from_checkpoint(state)
    settings.update(scale=args.infer_scale)

    def adapted(image, trimap):  # a fresh copy per image
        return adapt.adapt(model, image, trimap, args.adapt, **settings)

    return model, f"{label}, adapted {args.adapt} steps per image", device, adapted


if __name__ == "__main__":
    sys.exit(main())
