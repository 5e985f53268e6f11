"""Full-resolution inference speed and peak memory: whole image vs tiled, CPU and CUDA.

A random-init DIM (default architecture with the refine head: what stage 2/3 checkpoints run;
the weights do not change the cost) matting 800x600, 2000x2000 and 4000x3000 images through
``utils.inference.predict_alpha`` - the code evaluate.py and predict.py use. Each case runs in
its own subprocess so its peak memory is its own: peak RSS (``VmHWM``, which includes
~1 GB of torch libraries and model weights; ``rss_before_mb`` is that level) and, on CUDA,
``torch.cuda.max_memory_allocated``.

Tiled rows use ``--tile`` (default 512), or with ``--max-side N`` the tiles the CLIs pick
(windows <= N px; evaluate.py/predict.py default to 1600), with the exact overlap (224 px:
same output as whole-image inference). On CPU, where a 4000x3000 image takes many minutes,
large tiled cases run only the ``--cpu-windows`` largest windows of the real tiling plan (real
full-size input and output buffers, real window sizes: the peak memory is the true one) and
the time is extrapolated to all windows by window area; rows say so (``windows_run`` <
``windows``).
Whole-image cases whose estimated memory (1.5 GB per megapixel on CPU) exceeds
``--mem-budget-gb`` are skipped with the estimate.

    python benchmarks/bench_infer.py [--quick] [--device cpu|cuda|all] [--json out.json]

``--quick`` (< 60 s on 2 cores): 800x600 whole, and a small tiled case (400x300, 128-px tiles,
one window run) that exercises the tiled path.
Target: 4000x3000 runs within 8 GB of RAM on CPU and of GPU memory (tiled).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root

from benchmarks import common
from benchmarks.common import peak_rss_mb
from utils.cli import OneLineParser, number, output

ROOT = Path(__file__).resolve().parents[1]
SIZES = ((800, 600), (2000, 2000), (4000, 3000))  # (width, height)
CPU_GB_PER_MPX = 1.5  # whole-image activations, float32, measured on this project's CPU
TARGET_GB = 8.0


def _rss_mb() -> float:
    # VmHWM, not ru_maxrss: on Linux a child's ru_maxrss starts at its parent's peak.
    return peak_rss_mb()


def _worker(args: argparse.Namespace) -> dict:
    """Run one case in this process; return its figures."""
    import numpy as np
    import torch

    from models.py_encoder_decoder import DIM
    from utils import inference

    w, h = args.size
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = DIM(refine=True).to(device).eval()
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    trimap = np.full((h, w), 128, np.uint8)
    trimap[: h // 8] = 0
    trimap[-h // 8 :] = 255

    inference.predict_alpha(model, image[:64, :64], trimap[:64, :64], device=device)  # warm-up
    plan = inference.plan_tiles
    info: dict = {}

    def sampled_plan(*a, **k):
        tiles = plan(*a, **k)
        area = [
            (t.window[0].stop - t.window[0].start) * (t.window[1].stop - t.window[1].start)
            for t in tiles
        ]
        info.update(windows=len(tiles), window_px=sum(area), windows_run=len(tiles))
        if args.windows and len(tiles) > args.windows:
            order = sorted(range(len(tiles)), key=lambda i: -area[i])[: args.windows]
            info.update(windows_run=len(order), run_px=sum(area[i] for i in order))
            return [tiles[i] for i in order]
        info["run_px"] = info["window_px"]
        return tiles

    inference.plan_tiles = sampled_plan  # what utils.inference.infer_padded calls
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss_mb()
    t0 = time.perf_counter()
    inference.predict_alpha(
        model,
        image,
        trimap,
        device=device,
        amp=args.amp,
        tile=args.tile or None,
        max_side=args.max_side,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    extrapolated = info.get("windows_run", 1) < info.get("windows", 1)
    if extrapolated:  # time of the sampled windows, scaled to every window of the plan
        seconds *= info["window_px"] / info["run_px"]
    row = {
        "seconds": seconds,
        "ms_per_mpx": 1000.0 * seconds / (w * h / 1e6),
        "peak_rss_mb": _rss_mb(),
        "rss_before_mb": rss_before,
        "windows": info.get("windows", 1),
        "windows_run": info.get("windows_run", 1),
        "extrapolated": extrapolated,
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        row["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
        row["device_name"] = torch.cuda.get_device_name(device)
    return row


def _available_gb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def run_case(
    device: str,
    size: tuple[int, int],
    tile: int | None,
    windows: int | None = None,
    amp: str | None = None,
    max_side: int | None = None,
    timeout: float = 1800,
) -> dict:
    """One case in a fresh subprocess; returns its row (or a row with "error")."""
    w, h = size
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", "--size", f"{w}x{h}"]
    cmd += ["--device", device]
    tiled = bool(tile)
    if tiled and max_side:  # tiled rows with the CLIs' automatic choice instead of a tile size
        cmd += ["--tile", "0", "--max-side", str(max_side)]
    else:
        cmd += ["--tile", str(tile or 0)]  # 0: whole image
    if windows:
        cmd += ["--windows", str(windows)]
    if amp:
        cmd += ["--amp", amp]
    row = {"device": device, "size": f"{w}x{h}", "mode": "tiled" if tiled else "whole"}
    row.update(tile=None if max_side else tile, max_side=max_side if tiled else None)
    row["amp"] = amp or "off"
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        row["error"] = f"exit {proc.returncode}: {' | '.join(tail)}"
        return row
    row.update(json.loads(proc.stdout.strip().splitlines()[-1]))
    return row


def run(
    quick: bool = False,
    devices: list[str] | None = None,
    tile: int = 512,
    cpu_windows: int = 3,
    mem_budget_gb: float | None = None,
    amp: str | None = None,
    max_side: int | None = None,
) -> dict:
    """Every case; returns {"rows": [...], flat "<device>_<size>_<mode>_<figure>" keys, ...}."""
    import torch

    if devices is None:
        devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if mem_budget_gb is None:
        avail = _available_gb()
        mem_budget_gb = min(TARGET_GB, 0.6 * avail) if avail else TARGET_GB
    rows = []
    for device in devices:
        cases = (
            [((800, 600), None, None), ((400, 300), 128, 1)]
            if quick
            else [
                (
                    size,
                    t,
                    cpu_windows if device == "cpu" and t and size[0] * size[1] > 2e6 else None,
                )
                for size in SIZES
                for t in (None, tile)
            ]
        )
        for size, t, windows in cases:
            mpx = size[0] * size[1] / 1e6
            if device == "cpu" and t is None and CPU_GB_PER_MPX * mpx + 1.0 > mem_budget_gb:
                rows.append(
                    {
                        "device": device,
                        "size": f"{size[0]}x{size[1]}",
                        "mode": "whole",
                        "skipped": f"needs ~{CPU_GB_PER_MPX * mpx + 1:.0f} GB "
                        f"(> budget {mem_budget_gb:.1f} GB)",
                    }
                )
                continue
            amp_d = amp if device == "cuda" else None
            rows.append(run_case(device, size, t, windows, amp_d, max_side if t else None))
            print(_format_row(rows[-1]), file=sys.stderr, flush=True)
    result: dict = {
        "quick": quick,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "mem_budget_gb": mem_budget_gb,
        "rows": rows,
    }
    for r in rows:
        key = f"{r['device']}_{r['size']}_{r['mode']}"
        for fig in ("ms_per_mpx", "peak_rss_mb", "cuda_peak_mb"):
            if fig in r:
                result[f"{key}_{fig}"] = r[fig]
    big = [
        r for r in rows if r["size"] == "4000x3000" and r["mode"] == "tiled" and "error" not in r
    ]
    for r in big:
        peak = r.get("cuda_peak_mb", r.get("peak_rss_mb", 0.0)) / 1024
        result[f"{r['device']}_4000x3000_tiled_within_8gb"] = bool(peak <= TARGET_GB)
    return result


def _format_row(r: dict) -> str:
    head = f"{r['device']:5s} {r['size']:>10s} {r['mode']:6s}"
    if "skipped" in r:
        return f"{head} skipped: {r['skipped']}"
    if "error" in r:
        return f"{head} ERROR {r['error']}"
    mem = f"peak RSS {r['peak_rss_mb'] / 1024:5.2f} GB (base {r['rss_before_mb'] / 1024:4.2f})"
    if "cuda_peak_mb" in r:
        mem += f", GPU {r['cuda_peak_mb'] / 1024:5.2f} GB"
    win = f"{r['windows_run']}/{r['windows']} windows" if r["mode"] == "tiled" else ""
    est = " (extrapolated)" if r.get("extrapolated") else ""
    return f"{head} {r['ms_per_mpx']:9.0f} ms/Mpx {r['seconds']:7.1f} s{est}  {mem}  {win}"


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m benchmarks.bench_infer", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="800x600 whole + small tiled (< 60 s)")
    p.add_argument(
        "--device",
        choices=("cpu", "cuda", "all"),
        default="all",
        help="cpu | cuda | all (CPU, and CUDA if present)",
    )
    p.add_argument(
        "--tile", type=number(int, 0), default=512, help="tile size of the tiled rows (0: whole)"
    )
    p.add_argument(
        "--max-side",
        type=number(int, 1),
        help="tiled rows: pick tiles as the CLIs do (e.g. 1600) instead",
    )
    p.add_argument(
        "--cpu-windows",
        type=number(int, 1),
        default=3,
        help="windows run for large CPU cases",
    )
    p.add_argument(
        "--mem-budget-gb",
        type=number(float, 0, strict=True),
        help="skip whole-image CPU cases above this",
    )
    p.add_argument("--amp", choices=("bf16", "fp16"), help="autocast for the CUDA rows")
    p.add_argument("--json", type=output("file"), help="write the results to this JSON file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--size", type=common.parse_size, help=argparse.SUPPRESS)
    p.add_argument("--windows", type=number(int, 1), help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args)))
        return 0
    devices = None if args.device == "all" else [args.device]
    result = run(
        args.quick,
        devices,
        args.tile,
        args.cpu_windows,
        args.mem_budget_gb,
        args.amp,
        args.max_side,
    )
    print("\n".join(_format_row(r) for r in result["rows"]))
    if args.json:
        common.write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
