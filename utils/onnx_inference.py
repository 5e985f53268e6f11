"""Alpha mattes from an exported ONNX model on onnxruntime: no torch needed.

``export.py`` writes the model; this module reads it back and runs it the way
:func:`utils.inference.predict_alpha` runs the PyTorch model, with the same torch-free helpers
(:mod:`utils.inference`): ``data`` built by :func:`data.layout.make_data`, reflect-padded to
multiples of 32 by :func:`utils.inference.pad_to_multiple`, run whole or in exact tiles, cropped
back, known trimap pixels forced to 0 / 1. Nothing here imports torch (tests check it), so a
deployment needs numpy, OpenCV and onnxruntime only.

The ONNX graph (what :func:`load_onnx_model` checks before using a file)::

    input   x              (N, 4, H, W) float32, H and W multiples of 32: ImageNet-normalised
                           RGB + trimap scaled to [-1, 1] (data/layout.py), already padded
    output  alpha_raw      (N, 1, H, W) float32 in [0, 1]: the encoder-decoder's alpha
    output  alpha_refined  (N, 1, H, W) float32 in [0, 1]: the refine head's (stage 2/3 only)

and ``metadata_props``: ``repository`` (this repository's name, how a foreign file is told
apart), ``format``, ``model_config`` (JSON), ``stage``, ``source_checkpoint``, ``torch``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from data import layout
from utils.inference import STRIDE, predict_with

REPOSITORY = "deep-image-matting"  # pyproject.toml's project name
FORMAT = "1"  # bump when the graph's inputs/outputs or the metadata change meaning
INPUT = "x"
OUTPUT_RAW, OUTPUT_REFINED = "alpha_raw", "alpha_refined"
# Tile context for a file that does not state its model's receptive field: more than any
# architecture models/py_encoder_decoder.py builds needs (the widest, bilinear upsampling with
# fc6 "transmap", needs 252 px).
RECEPTIVE_FIELD_UNKNOWN = 256
EXPORT_HINT = "export one with `python export.py --checkpoint runs/NAME --out model.onnx`"


class OnnxModelError(ValueError):
    """An ONNX file is missing, unreadable or not a model exported by this repository."""


@dataclass
class OnnxMatting:
    """A loaded ONNX export: ``predict_alpha(image, trimap)`` like the PyTorch path.

    ``metadata`` is the file's metadata_props; ``config`` the DIM constructor arguments it was
    exported from; ``outputs`` the graph's output names (no ``alpha_refined`` for stage 1).
    """

    path: Path
    session: Any  # onnxruntime.InferenceSession
    metadata: dict[str, str]
    config: dict = field(default_factory=dict)
    stage: int | None = None
    outputs: tuple[str, ...] = (OUTPUT_RAW,)
    infer_scale: float = 1.0  # the scale the model was validated at (utils.inference.at_scale)
    receptive_field: int = RECEPTIVE_FIELD_UNKNOWN  # DIM.receptive_field (exact tiling)
    stride: int = STRIDE  # DIM.stride (padding, tile grid)

    def describe(self) -> str:
        """One line for logs and NAME_method.txt: the file, its stage and its source."""
        src = self.metadata.get("source_checkpoint", "?")
        return f"{self.path} (stage {self.stage}, exported from {src})"

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """The graph on a padded batch ``x`` (N, 4, H, W) float32 -> {output name: array}."""
        x = np.ascontiguousarray(x, dtype=np.float32)
        arrays = self.session.run(list(self.outputs), {INPUT: x})
        return dict(zip(self.outputs, arrays, strict=True))

    def _alpha(self, window: np.ndarray) -> np.ndarray:
        """(1, 4, h, w) -> alpha (h, w): the refined output when there is one (as in PyTorch)."""
        out = self.run(window)
        alpha = out.get(OUTPUT_REFINED, out[OUTPUT_RAW])
        return np.clip(alpha[0, 0], 0.0, 1.0).astype(np.float32, copy=False)

    def predict_alpha(
        self,
        image_u8: np.ndarray,
        trimap_u8: np.ndarray,
        tile: int | None = None,
        overlap: int | None = None,
        max_side: int | None = None,
        scale: float | None = None,
        tta: str = "none",
    ) -> np.ndarray:
        """Alpha matte of a full-resolution image; the arguments of
        :func:`utils.inference.predict_alpha` that are not about torch (device, AMP).

        image_u8 (H, W, 3) RGB uint8, trimap_u8 (H, W) in {0, 128, 255} -> float32 (H, W) in
        [0, 1], exactly 0 / 1 where the trimap says background / foreground. Images whose long
        side exceeds ``max_side`` are tiled (exact overlap unless ``overlap`` is given);
        ``scale`` None = the model's ``infer_scale`` from the file's metadata.
        """
        return predict_with(
            self._alpha,
            image_u8,
            trimap_u8,
            receptive_field=self.receptive_field,
            stride=self.stride,
            tile=tile,
            overlap=overlap,
            max_side=max_side,
            scale=self.infer_scale if scale is None else scale,
            tta=tta,
        )


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".strip()


def _check_graph(path: Path, session, metadata: dict[str, str]) -> tuple[str, ...]:
    """Raise OnnxModelError unless the graph and metadata are this repository's export."""
    foreign = f"{path} is an ONNX model but not one exported by this repository's export.py"
    if metadata.get("repository") != REPOSITORY:
        raise OnnxModelError(
            f"{foreign} (its metadata has no repository={REPOSITORY!r}); {EXPORT_HINT}"
        )
    if metadata.get("format") != FORMAT:
        raise OnnxModelError(
            f"{path} was exported in format {metadata.get('format')!r} but this code reads "
            f"format {FORMAT!r}; re-export it with this version: {EXPORT_HINT}"
        )
    inputs = session.get_inputs()
    if [i.name for i in inputs] != [INPUT] or len(inputs[0].shape) != 4:
        got = ", ".join(f"{i.name} {i.shape}" for i in inputs)
        raise OnnxModelError(f"{foreign}: inputs are {got}, expected {INPUT} (N, 4, H, W)")
    if inputs[0].shape[1] != layout.DATA_CHANNELS:
        raise OnnxModelError(f"{foreign}: input {INPUT} has shape {inputs[0].shape}")
    outputs = tuple(o.name for o in session.get_outputs())
    if outputs not in ((OUTPUT_RAW,), (OUTPUT_RAW, OUTPUT_REFINED)):
        raise OnnxModelError(
            f"{foreign}: outputs are {list(outputs)}, expected {OUTPUT_RAW} [and {OUTPUT_REFINED}]"
        )
    return outputs


def load_onnx_model(
    path: str | os.PathLike, threads: int | None = None, stage: int | None = None
) -> OnnxMatting:
    """Open an ONNX file written by ``export.py`` on onnxruntime's CPU provider.

    ``threads``: intra-op threads (None: onnxruntime's default, one per physical core).
    ``stage``: when given, the file must have been exported from a checkpoint of that stage.
    Raises :class:`OnnxModelError` naming the file for a missing file, a folder, bytes that are
    not ONNX, an ONNX model of something else, or a stage mismatch.
    """
    path = Path(path)
    if not path.exists():
        raise OnnxModelError(f"ONNX model not found: {path}; {EXPORT_HINT}")
    if not path.is_file():
        raise OnnxModelError(f"{path} is a folder, expected an .onnx file; {EXPORT_HINT}")
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise OnnxModelError(
            f"--onnx {path}: onnxruntime is not installed (pip install onnxruntime)"
        ) from e
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types for garbage, truncation, bad graphs
        raise OnnxModelError(
            f"cannot load {path} as an ONNX model ({_first_line(e)}); {EXPORT_HINT}"
        ) from None
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    outputs = _check_graph(path, session, metadata)
    try:
        config = json.loads(metadata.get("model_config", "{}"))
        got_stage = int(metadata["stage"]) if metadata.get("stage") else None
        infer_scale = float(metadata.get("infer_scale") or 1.0)
        receptive_field = int(metadata.get("receptive_field") or RECEPTIVE_FIELD_UNKNOWN)
        stride = int(metadata.get("stride") or STRIDE)
    except ValueError as e:
        raise OnnxModelError(
            f"{path}: unreadable metadata ({_first_line(e)}); {EXPORT_HINT}"
        ) from None
    if stage is not None and got_stage != stage:
        raise OnnxModelError(
            f"{path} was exported from a stage-{got_stage} checkpoint but stage {stage} was "
            "asked for; export the right checkpoint or drop --stage"
        )
    return OnnxMatting(
        path, session, metadata, config, got_stage, outputs, infer_scale, receptive_field, stride
    )
