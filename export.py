"""Export a trained checkpoint to ONNX for deployment (onnxruntime, no PyTorch needed to run it).

    python export.py --checkpoint runs/demo --out model.onnx
    python predict.py --onnx model.onnx --image photo.jpg --trimap photo_trimap.png

``--checkpoint`` is resolved as in predict.py (a .pt file, a run or stage folder, or the only
run under runs/) and loaded with ``weights_only=True``. The whole network is exported, max
unpooling included, with dynamic batch, height and width:

    input   x              (N, 4, H, W) float32: data/layout.make_data's ImageNet-normalised RGB
                           + scaled trimap, H and W multiples of 32 -- the ONNX model expects
                           padded input: pad with utils/inference.pad_to_multiple (numpy) and crop
                           the outputs with utils/inference.crop_back, or let
                           utils/onnx_inference.py do it all (predict.py --onnx uses it)
    output  alpha_raw      (N, 1, H, W) float32 in [0, 1]
    output  alpha_refined  (N, 1, H, W) float32 in [0, 1], only for checkpoints with a refine
                           head (stage 2 and 3), as the model's forward returns it

The file's metadata_props name this repository, the model config, the stage and the source
checkpoint, so predict.py can refuse an ONNX file that is not ours. After writing, the file is
run once on onnxruntime and compared with PyTorch (random input, batch 2, a size other than the
one traced); a difference above ``--tolerance`` is an error.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # repo root

import numpy as np
import torch
from torch import nn

from data import layout
from models.py_encoder_decoder import DIM
from utils.checkpoint import CheckpointWriteError, write_atomically
from utils.cli import OneLineParser, add_checkpoint_args, number, output
from utils.onnx_inference import (
    FORMAT,
    INPUT,
    OUTPUT_RAW,
    OUTPUT_REFINED,
    REPOSITORY,
    OnnxModelError,
    load_onnx_model,
)

OPSET = 17
# Opsets this network exports to: 9 is the first with the ops its unpooling needs (arange),
# 20 the TorchScript exporter's newest (both ends tried: faithful on onnxruntime).
MIN_OPSET, MAX_OPSET = 9, 20
TRACE_SIZE = (64, 96)  # (H, W) of the example input the exporter traces
CHECK_SIZE = (96, 64)  # another size, and batch 2: the dynamic axes are exercised too
TOLERANCE = 1e-4


class ExportError(RuntimeError):
    """The export failed or the exported file does not reproduce the PyTorch model."""


class _Exported(nn.Module):
    """The DIM forward with ONNX-friendly outputs: a tuple without the stage-1 ``None``."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raw, refined = self.model(x)
        return (raw,) if refined is None else (raw, refined)


@contextlib.contextmanager
def elementwise_unpool(model: nn.Module) -> Iterator[nn.Module]:
    """Compute the decoder's max unpooling with elementwise ops while exporting (see
    ``models.py_encoder_decoder.unpool2x_elementwise``); each module's flag is restored."""
    from models.py_encoder_decoder import Upsample

    flags = [(m, m.elementwise) for m in model.modules() if isinstance(m, Upsample)]
    for m, _ in flags:
        m.elementwise = True
    try:
        yield model
    finally:
        for m, flag in flags:
            m.elementwise = flag


def onnx_metadata(model: DIM, stage: int | None, source: str | os.PathLike) -> dict:
    """The metadata_props of an export: how utils/onnx_inference.py recognises our files and
    tiles and scales as the PyTorch path does."""
    return {
        "repository": REPOSITORY,
        "format": FORMAT,
        "model_config": json.dumps(model.config.to_dict(), sort_keys=True),
        "stage": "" if stage is None else str(stage),
        "infer_scale": repr(float(getattr(model, "infer_scale", 1.0))),
        "receptive_field": str(model.receptive_field),
        "stride": str(model.stride),
        "source_checkpoint": str(source),
        "torch": torch.__version__,
        "input": f"{INPUT}: (N, 4, H, W) float32, H and W multiples of 32, data/layout.make_data "
        "padded with utils/inference.pad_to_multiple",
    }


def _to_onnx_bytes(model: nn.Module, opset: int) -> tuple[bytes, list[str]]:
    """Trace ``model`` (eval mode) into ONNX bytes; returns (bytes, output names)."""
    wrapped = _Exported(model).eval()
    example = torch.randn(1, layout.DATA_CHANNELS, *TRACE_SIZE)
    with torch.no_grad():
        names = [OUTPUT_RAW, OUTPUT_REFINED][: len(wrapped(example))]
    axes = {0: "batch", 2: "height", 3: "width"}
    buf = io.BytesIO()
    # The TorchScript exporter (dynamo=False): the torch.export-based one needs onnxscript, an
    # extra dependency, and this network traces to a static graph (no data-dependent control
    # flow) whose shapes the tracer records as ONNX Shape ops, so dynamic_axes suffice. torch
    # warns that the TorchScript exporter is deprecated; that warning is not for our users.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            wrapped,
            (example,),
            buf,
            dynamo=False,
            input_names=[INPUT],
            output_names=names,
            dynamic_axes={n: axes for n in [INPUT, *names]},
            opset_version=opset,
            do_constant_folding=True,
        )
    return buf.getvalue(), names


def export_onnx(
    model: nn.Module,
    out: str | os.PathLike,
    metadata: dict[str, str] | None = None,
    opset: int = OPSET,
    tolerance: float = TOLERANCE,
) -> float:
    """Write ``model`` (a DIM, any stage) to ``out`` as ONNX with ``metadata`` and check it.

    The model is put in eval mode and left unchanged. The file is written atomically (temporary
    file + rename). Returns the largest absolute difference between onnxruntime's and PyTorch's
    outputs on a random (2, 4, 96, 64) input; raises :class:`ExportError` when it exceeds
    ``tolerance``.
    """
    import onnx

    out = Path(out)
    model = model.eval()
    with elementwise_unpool(model):
        data, names = _to_onnx_bytes(model, opset)
    proto = onnx.load_from_string(data)
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    # Atomic, checked against the free space first; a full disk or a read-only folder is a
    # utils.checkpoint.CheckpointWriteError naming the folder and the space needed and free.
    write_atomically(out, lambda f: f.write(data), len(data))
    return check_export(model, out, names, tolerance)


def check_export(model: nn.Module, path: Path, names: list[str], tolerance: float) -> float:
    """Max |onnxruntime - PyTorch| over every output on a random input of another size."""
    onnx_model = load_onnx_model(path)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, layout.DATA_CHANNELS, *CHECK_SIZE, generator=gen)
    with torch.no_grad():
        expected = [t for t in model(x) if t is not None]
    got = onnx_model.run(x.numpy())
    pairs = zip(names, expected, strict=True)
    diff = max(float(np.abs(got[name] - e.numpy()).max()) for name, e in pairs)
    if diff > tolerance:
        raise ExportError(
            f"{path}: onnxruntime differs from PyTorch by {diff:.3g} (> {tolerance:g}); the "
            "export is not faithful, do not deploy it"
        )
    return diff


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="export.py",
        description="Export a Deep Image Matting checkpoint to ONNX (run it with "
        "predict.py --onnx, or onnxruntime directly).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_checkpoint_args(p)
    p.add_argument("--out", type=output("file"), required=True, help="the .onnx file to write")
    p.add_argument(
        "--opset",
        type=number(int, MIN_OPSET, high=MAX_OPSET),
        default=OPSET,
        help=f"ONNX opset version ({MIN_OPSET}..{MAX_OPSET})",
    )
    p.add_argument(
        "--tolerance",
        type=number(float, 0, strict=True),
        default=TOLERANCE,
        help="max |onnxruntime - PyTorch| accepted (> 0, finite)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from utils.checkpoint import CheckpointError, load_model_for_inference

    out = Path(args.out)
    try:
        if out.is_dir():
            raise ExportError(f"--out {out} is a folder: give a file name such as {out}/model.onnx")
        model, state, ckpt = load_model_for_inference(args.checkpoint, "cpu", stage=args.stage)
        meta = onnx_metadata(model, state.get("stage"), ckpt)
        diff = export_onnx(model, out, meta, args.opset, args.tolerance)
    except (CheckpointError, ExportError, OnnxModelError) as e:
        print(f"export.py: error: {e}", file=sys.stderr)
        return 2
    except CheckpointWriteError as e:  # a full disk or a read-only folder
        print(f"export.py: error: {e}; free space or pass another --out", file=sys.stderr)
        return 1
    outputs = "alpha_raw, alpha_refined" if model.refine_head is not None else "alpha_raw"
    print(
        f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB): {ckpt} (stage {state.get('stage')}), "
        f"input x (N, 4, H, W), outputs {outputs}; onnxruntime vs PyTorch max |diff| {diff:.2g}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
