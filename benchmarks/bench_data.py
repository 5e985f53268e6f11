"""Data-loading benchmark: samples/s of the naive loader vs the project's path, same run.

Builds, in a temporary folder, an Adobe-like set of synthetic 1440x1080 foregrounds (smooth
random alpha with an unknown band, thin strands, photo-like noise; PNG) and 640x480 JPEG
backgrounds, then times one process drawing 320x320 samples in the layout of data/layout.py:

(a) naive: decode the whole PNGs/JPEG, upscale the whole background, composite the whole
    image in float32, build the trimap on the whole alpha, then crop and resize (how a
    widely used public loader works; ~11 samples/s on this project's 2-core machine);
(c) project path without cache: decode the whole files, but compose only the crop;
(b) project path: AdobeDataset with the decoded cache (memory-mapped uint8 arrays), so a
    sample costs a crop, a resize and a composite.

Targets: (b) >= 10x (a) and >= 200 samples/s per process at 320x320.
``--json PATH`` writes the figures as one flat JSON object (``samples_per_s`` = (b),
``speedup_vs_naive`` = (b)/(a)); ``--workers N`` adds a DataLoader row with N workers.

    python benchmarks/bench_data.py [--quick] [--json out.json] [--workers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root

import cv2
import numpy as np
import torch

from data import compose, layout
from data.demo import make_demo_folder
from data.py_adobe_data import AdobeDataset, worker_init_fn
from data.sources import find_layout, find_sources
from utils.cli import OneLineParser, number, output

FG_HW = (1080, 1440)
BG_HW = (480, 640)
TARGET_SPEEDUP = 10.0
TARGET_SAMPLES_PER_S = 200.0


def naive_sample(fg_path, alpha_path, bg_path, rng: np.random.Generator, crop_size: int):
    """One sample the naive way: everything on the whole image, crop at the end."""
    fg = cv2.cvtColor(cv2.imread(str(fg_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    alpha = cv2.imread(str(alpha_path), cv2.IMREAD_GRAYSCALE)
    bg = cv2.cvtColor(cv2.imread(str(bg_path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    h, w = alpha.shape
    bg = compose.fit_background(bg, (h, w))
    y, x = compose.random_window(bg.shape[:2], (h, w), rng)
    bg = bg[y : y + h, x : x + w].astype(np.float32)
    a = alpha.astype(np.float32)[..., None] / 255.0
    fgf = fg.astype(np.float32)
    merged = a * fgf + (1 - a) * bg
    trimap = compose.trimap_from_alpha(alpha, rng)
    ys, xs = np.nonzero(trimap == 128)
    c = int(rng.choice(compose.default_cut_sizes(crop_size)))
    k = int(rng.integers(len(ys))) if len(ys) else 0
    c = compose.fit_cut(c, (h, w))
    centre = (int(ys[k]), int(xs[k])) if len(ys) else (h // 2, w // 2)
    y0, x0 = compose.crop_origin(centre, c, (h, w))
    out = []
    for arr in (fgf, bg, merged, a[..., 0]):
        out.append(compose.resize_to(compose.crop_padded(arr, y0, x0, c, c), crop_size))
    tri = compose.resize_to(compose.crop_padded(trimap, y0, x0, c, c), crop_size, nearest=True)
    if rng.random() < 0.5:
        out, tri = [compose.hflip(o) for o in out], compose.hflip(tri)
    fg_o, bg_o, merged_o, a_o = out
    return (
        torch.from_numpy(layout.make_data(merged_o, tri)),
        torch.from_numpy(layout.make_label(bg_o, fg_o, merged_o, a_o, tri)),
    )


def _rate(fn, n: int, warmup: int = 2) -> tuple[float, float]:
    """(samples per wall-clock second, samples per CPU second of this process).

    On a shared machine the wall rate depends on the other load; the CPU-time rate
    estimates what an otherwise idle core would do (everything runs single-threaded).
    """
    for i in range(warmup):
        fn(i)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(n):
        fn(warmup + i)
    return n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9)


def _loader_rate(ds: AdobeDataset, workers: int, batches: int, batch_size: int = 16) -> float:
    loader = torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        worker_init_fn=worker_init_fn,
        generator=torch.Generator().manual_seed(0),
    )
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        try:
            n += len(next(it)[0])
        except StopIteration:
            break
    return n / (time.perf_counter() - t0)


def run(quick: bool = False, size: int = 320, workers: int = 0) -> dict:
    """Build the temporary data, time the paths, return a flat dict of figures."""
    n_fg, n_bg = (4, 8) if quick else (8, 16)
    n_naive, n_nocache, n_cached = (8, 8, 300) if quick else (20, 20, 1500)
    cv2.setNumThreads(1)  # one process = one core: what each DataLoader worker gets
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="dim_bench_data_") as tmp:
            t0 = time.perf_counter()
            root = make_demo_folder(
                Path(tmp) / "data", n_fg, n_bg, FG_HW, BG_HW, bg_per_fg=n_bg, seed=0
            )
            t_make = time.perf_counter() - t0
            lay = find_layout(root)
            sources = find_sources(
                lay.fg_dirs,
                lay.alpha_dirs,
                lay.bg_dir,
                fg_names=lay.fg_names,
                bg_names=lay.bg_names,
            )
            rng = np.random.default_rng(0)
            perm = rng.permutation(len(sources))

            def order(i: int) -> int:
                return int(perm[i % len(perm)])

            def naive(i: int):
                f, b = sources.pairs[order(i)]
                fg = sources.foregrounds[int(f)]
                naive_sample(fg.fg_path, fg.alpha_path, sources.backgrounds[int(b)], rng, size)

            plain = AdobeDataset(sources, crop_size=size, cache=False)
            t0 = time.perf_counter()
            cached = AdobeDataset(
                sources,
                crop_size=size,
                cache=True,
                cache_dir=Path(tmp) / "cache",
                workers=0,
                progress=False,
            )
            t_cache = time.perf_counter() - t0
            rate_a, cpu_a = _rate(naive, n_naive)
            rate_c, cpu_c = _rate(lambda i: plain[order(i)], n_nocache)
            rate_b, cpu_b = _rate(lambda i: cached[order(i)], n_cached, warmup=len(sources))
            res = {
                "samples_per_s": round(rate_b, 1),
                "speedup_vs_naive": round(rate_b / rate_a, 1),
                "naive_samples_per_s": round(rate_a, 2),
                "nocache_samples_per_s": round(rate_c, 2),
                "samples_per_cpu_s": round(cpu_b, 1),
                "speedup_vs_naive_cpu": round(cpu_b / cpu_a, 1),
                "naive_samples_per_cpu_s": round(cpu_a, 2),
                "nocache_samples_per_cpu_s": round(cpu_c, 2),
                "ms_per_sample": round(1000.0 / rate_b, 2),
                "naive_ms_per_sample": round(1000.0 / rate_a, 1),
                "target_samples_per_s": TARGET_SAMPLES_PER_S,
                "target_speedup": TARGET_SPEEDUP,
                "meets_targets": bool(
                    rate_b >= TARGET_SAMPLES_PER_S and rate_b / rate_a >= TARGET_SPEEDUP
                ),
                "load_average_1min": round(os.getloadavg()[0], 2)
                if hasattr(os, "getloadavg")
                else None,
                "crop_size": size,
                "fg_size": f"{FG_HW[1]}x{FG_HW[0]}",
                "bg_size": f"{BG_HW[1]}x{BG_HW[0]}",
                "n_fg": n_fg,
                "n_bg": n_bg,
                "cache_build_s": round(t_cache, 2),
                "data_build_s": round(t_make, 2),
                "quick": quick,
                "cpu_count": os.cpu_count(),
            }
            if workers > 0:
                res["loader_workers"] = workers
                res["loader_samples_per_s"] = round(
                    _loader_rate(cached, workers, 8 if quick else 30), 1
                )
    finally:
        torch.set_num_threads(threads)
    return res


def format_table(r: dict) -> str:
    rows = [
        ("(a) naive: whole-image decode + composite, then crop", "naive_"),
        ("(c) project, no cache: decode, compose the crop only", "nocache_"),
        ("(b) project, decoded cache (memory-mapped)", ""),
    ]
    lines = [
        f"data loading, {r['crop_size']}x{r['crop_size']} samples, fg {r['fg_size']}, "
        f"bg {r['bg_size']}, one process, one thread; load average {r['load_average_1min']} "
        f"on {r['cpu_count']} CPUs",
        f"| {'path':54s} | samples/s (wall) | samples/CPU-s | ms/sample (wall) |",
        f"|{'-' * 56}|------------------|---------------|------------------|",
    ]
    for name, key in rows:
        rate, cpu = r[f"{key}samples_per_s"], r[f"{key}samples_per_cpu_s"]
        lines.append(f"| {name:54s} | {rate:16.1f} | {cpu:13.1f} | {1000 / rate:16.2f} |")
    if "loader_samples_per_s" in r:
        name = f"(b) DataLoader, {r['loader_workers']} workers, batch 16"
        lines.append(f"| {name:54s} | {r['loader_samples_per_s']:16.1f} | {'':13s} | {'':16s} |")
    lines.append(
        f"speedup (b)/(a): {r['speedup_vs_naive']:.1f}x wall, {r['speedup_vs_naive_cpu']:.1f}x "
        f"CPU time (target >= {r['target_speedup']:.0f}x); (b) target >= "
        f"{r['target_samples_per_s']:.0f} samples/s: {r['samples_per_s']:.0f} wall, "
        f"{r['samples_per_cpu_s']:.0f} per CPU-second; cache build {r['cache_build_s']:.1f} s "
        f"for {r['n_fg']} fg + {r['n_bg']} bg"
    )
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m benchmarks.bench_data", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer images and samples (~20 s)")
    p.add_argument("--size", type=number(int, 32), default=320, help="output size (default 320)")
    p.add_argument(
        "--workers", type=number(int, 0), default=0, help="also time a DataLoader with N workers"
    )
    p.add_argument("--json", type=output("file"), help="write the figures to this JSON file")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    r = run(quick=args.quick, size=args.size, workers=args.workers)
    print(format_table(r))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
