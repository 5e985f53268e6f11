"""CPU inference of the ONNX export on onnxruntime vs the PyTorch model: ms per megapixel.

A random-init DIM (default architecture with the refine head, as bench_infer.py: the weights
do not change the cost) is exported with ``export.export_onnx`` (which checks onnxruntime
against PyTorch), then the same image and trimap are matted once by each back-end through the
code predict.py runs: ``utils.inference.predict_alpha`` (PyTorch, float32) and
``utils.onnx_inference.OnnxMatting.predict_alpha`` (onnxruntime's CPU provider), whole image,
after a small warm-up. Both use the same number of threads (torch's). The alphas are compared
(target: within one 8-bit level, see ``TARGET_MAX_DIFF``).

    python benchmarks/bench_export.py [--quick] [--size 800x600] [--json out.json]

``--quick`` (< 30 s on 2 cores): a 256x192 image, for the suite's smoke test.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root

from benchmarks import common
from utils.cli import OneLineParser, output

FULL_SIZE = (800, 600)  # (width, height): bench_infer.py's first row
QUICK_SIZE = (256, 192)
# Alpha, onnxruntime vs PyTorch: one 8-bit level of the saved PNG. Not 1e-4 (what the tests ask
# at 64x96 and 96x128): two float32 back-ends may differ by more wherever a max-pool's argmax
# flips on a near-tie and unpooling puts the value elsewhere. At 800x600 this random-init
# model differs by 1.2e-4 near one such spot, and there onnxruntime is the one closer to a
# float64 run of the PyTorch model (8.6e-6 vs 1.2e-4).
TARGET_MAX_DIFF = 1 / 255


def _inputs(w: int, h: int):
    import numpy as np

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    trimap = np.full((h, w), 128, np.uint8)
    trimap[: h // 8] = 0
    trimap[-h // 8 :] = 255
    return image, trimap


def run(quick: bool = False, size: tuple[int, int] | None = None) -> dict:
    """Export, then one timed run per back-end; returns the figures (ms per megapixel, ...)."""
    import numpy as np
    import onnxruntime
    import torch

    import export
    from models.py_encoder_decoder import DIM
    from utils.inference import predict_alpha
    from utils.onnx_inference import load_onnx_model

    w, h = size or (QUICK_SIZE if quick else FULL_SIZE)
    torch.manual_seed(0)
    model = DIM(refine=True).eval()
    image, trimap = _inputs(w, h)
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dim.onnx"
        t0 = time.perf_counter()
        export_diff = export.export_onnx(model, path, export.onnx_metadata(model, 2, "-"))
        export_s = time.perf_counter() - t0
        onnx_mb = path.stat().st_size / 2**20
        onnx_model = load_onnx_model(path, threads=threads)

        seconds, alphas = {}, {}
        backends = {
            "torch": lambda im, tri: predict_alpha(model, im, tri, device="cpu"),
            "onnxruntime": onnx_model.predict_alpha,
        }
        for name, fn in backends.items():
            fn(image[:64, :64], trimap[:64, :64])  # warm-up: thread pools, allocator, kernels
            t0 = time.perf_counter()
            alphas[name] = fn(image, trimap)
            seconds[name] = time.perf_counter() - t0
    mpx = w * h / 1e6
    diff = float(np.abs(alphas["onnxruntime"] - alphas["torch"]).max())
    return {
        "quick": quick,
        "size": f"{w}x{h}",
        "mode": "whole",
        "threads": threads,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "export_seconds": export_s,
        "export_check_max_diff": export_diff,
        "onnx_mb": onnx_mb,
        "torch_seconds": seconds["torch"],
        "onnxruntime_seconds": seconds["onnxruntime"],
        "torch_ms_per_mpx": 1000.0 * seconds["torch"] / mpx,
        "onnxruntime_ms_per_mpx": 1000.0 * seconds["onnxruntime"] / mpx,
        "onnxruntime_speedup": seconds["torch"] / seconds["onnxruntime"],
        "alpha_max_abs_diff": diff,
        "target_max_abs_diff": TARGET_MAX_DIFF,
        "agrees": diff <= TARGET_MAX_DIFF,
    }


def format_result(r: dict) -> str:
    return (
        f"CPU {r['size']} whole, {r['threads']} threads: onnxruntime "
        f"{r['onnxruntime_ms_per_mpx']:.0f} ms/Mpx vs PyTorch {r['torch_ms_per_mpx']:.0f} "
        f"ms/Mpx ({r['onnxruntime_speedup']:.2f}x); "
        f"alpha max abs diff {r['alpha_max_abs_diff']:.2g}; export {r['export_seconds']:.1f} s, "
        f"{r['onnx_mb']:.0f} MB"
    )


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="python -m benchmarks.bench_export", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--quick", action="store_true", help="a 256x192 image (< 30 s)")
    p.add_argument("--size", type=common.parse_size, help="WxH of the image (default 800x600)")
    p.add_argument("--json", type=output("file"), help="write the results to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = run(args.quick, args.size)
    print(format_result(result))
    if args.json:
        common.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
