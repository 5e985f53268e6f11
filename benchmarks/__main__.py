"""Run the benchmark suite and print one table: ``python -m benchmarks``.

    python -m benchmarks [--quick] [--json PATH] [--only data,metrics,train,infer,export]
        [--workers N] [--device auto|cpu|cuda] [--stages 1,3] [--peak-tflops T] [--note TEXT]
    python -m benchmarks --gpu-check [--dry-run] [--json PATH] ...   (benchmarks/gpu_check.py)

Runs, in this order, each module's ``run(quick=...) -> dict``:

    data     benchmarks/bench_data.py     data loading: samples/s per process, vs a naive loader
    metrics  benchmarks/bench_metrics.py  SAD/MSE/Grad/Conn speed vs the literal reference
    train    benchmarks/bench_train.py    training step: samples/s, memory, FLOPs, end-to-end
    infer    benchmarks/bench_infer.py    inference: ms per megapixel and peak memory
    export   benchmarks/bench_export.py   ONNX export: onnxruntime vs PyTorch, CPU ms per megapixel

then prints one Markdown table with the targets beside the measurements, and with ``--json``
writes one JSON object: ``machine`` (CPU model, cores, memory, load, versions, CUDA device,
date), ``benchmarks`` (each module's full result, nested), ``table`` (the printed rows) and
``errors``. A module that is missing or fails becomes an error row (its traceback on stderr)
and the others still run; the exit status is then 1. GPU rows run wherever CUDA is present;
elsewhere the table says they are pending.

``--quick`` is the CI smoke test (< ~2 minutes on 2 cores): small sizes and few steps, for
checking that everything runs and the JSON has its shape, not for the speed.
``--workers`` sets the DataLoader workers of the data and end-to-end training rows
(default: min(16, cores) with CUDA, else 2 -- train_encoder_decoder.py's default).
``--stages`` the training stages timed (default 1,3).

``--gpu-check`` is the one command for a short GPU loan (GPU tests, these benchmarks on CUDA,
a timed training run; see benchmarks/gpu_check.py); ``--gpu-check --dry-run`` runs its CPU
twin in a few minutes.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # repo root

from benchmarks import common

BENCHES: dict[str, str] = {
    "data": "benchmarks.bench_data",
    "metrics": "benchmarks.bench_metrics",
    "train": "benchmarks.bench_train",
    "infer": "benchmarks.bench_infer",
    "export": "benchmarks.bench_export",
}
SCHEMA_VERSION = 1
TABLE_HEAD = ("bench", "measurement", "value", "target", "verdict")


# --- running ---------------------------------------------------------------------------------
def run_one(name: str, module: str, kwargs: dict[str, Any]) -> tuple[dict, float]:
    """Import ``module`` and call its ``run`` with the ``kwargs`` it accepts.

    Returns (result, seconds). Never raises (but Ctrl-C): an import failure, a missing
    ``run`` or an exception inside it gives ``{"error": "..."}`` and the traceback on stderr.
    """
    t0 = time.perf_counter()
    try:
        mod = importlib.import_module(module)
        fn = getattr(mod, "run", None)
        if not callable(fn):
            raise AttributeError(f"{module} has no run(quick=...) function")
        accepted = inspect.signature(fn).parameters
        res = fn(**{k: v for k, v in kwargs.items() if k in accepted})
        if not isinstance(res, dict):
            raise TypeError(f"{module}.run returned {type(res).__name__}, not a dict")
    except KeyboardInterrupt:
        raise
    except ModuleNotFoundError as e:
        what = "is missing" if e.name == module else f"cannot import {e.name!r}"
        res = {"error": f"{module} {what}: {e}"}
    except BaseException as e:  # SystemExit too: one bench must not end the suite
        print(f"[benchmarks] {name} failed:\n{traceback.format_exc()}", file=sys.stderr)
        res = {"error": f"{type(e).__name__}: {e}"}
    return res, time.perf_counter() - t0


def default_workers(device: str) -> int:
    import torch

    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    return min(16, os.cpu_count() or 1) if cuda else 2


def bench_kwargs(name: str, args: argparse.Namespace, results: dict[str, dict]) -> dict:
    """Keyword arguments for one bench's ``run`` (unknown ones are dropped by run_one)."""
    kw: dict[str, Any] = {"quick": args.quick}
    if name == "data":
        kw["workers"] = args.workers
    elif name == "train":
        kw.update(
            device=None if args.device == "auto" else args.device,
            workers=args.workers,
            peak_tflops=args.peak_tflops,
            stages=args.stages,
        )
        data = results.get("data")
        if data and "error" not in data:
            kw["data_bench"] = data
    elif name == "infer" and args.device != "auto":
        kw["devices"] = [args.device]
    return kw


# --- the table -------------------------------------------------------------------------------
_verdict = common.verdict


def data_rows(r: dict) -> list[list[str]]:
    size = r.get("crop_size", "?")
    rows = []
    if "samples_per_s" in r:
        goal = r.get("target_samples_per_s")
        rows.append(
            [
                f"loader, one process, {size}x{size} samples (decoded cache)",
                f"{r['samples_per_s']:.0f} samples/s",
                f">= {goal:g}" if goal else "",
                _verdict(None if goal is None else r["samples_per_s"] >= goal),
            ]
        )
    if "naive_samples_per_s" in r:
        naive = f"{r['naive_samples_per_s']:.1f} samples/s"
        rows.append(["naive loader (whole-image composite)", naive, "", ""])
    if "speedup_vs_naive" in r:
        goal = r.get("target_speedup")
        rows.append(
            [
                "loader speed-up over the naive one",
                f"{r['speedup_vs_naive']:.1f}x",
                f">= {goal:g}x" if goal else "",
                _verdict(None if goal is None else r["speedup_vs_naive"] >= goal),
            ]
        )
    if "loader_samples_per_s" in r:
        rows.append(
            [
                f"DataLoader, {r.get('loader_workers', '?')} workers, batch 16",
                f"{r['loader_samples_per_s']:.0f} samples/s",
                "",
                "",
            ]
        )
    return rows


def metrics_rows(r: dict) -> list[list[str]]:
    size = r.get("size")
    full = size == 2000  # the targets are stated for a 2000x2000 matte
    rows = []
    for suffix, kind in (("", "float32"), ("_uint8", "uint8")):
        key = f"cpu_seconds_all_four{suffix}"
        if key in r:
            goal = r.get("target_seconds_all_four")
            rows.append(
                [
                    f"SAD+MSE+Grad+Conn, {size}x{size} {kind}, 1 thread (CPU time)",
                    f"{r[key]:.3f} s",
                    f"<= {goal:g} s at 2000x2000" if goal else "",
                    _verdict(r[key] <= goal if goal and full else None),
                ]
            )
        key = f"cpu_speedup_vs_reference{suffix}"
        if key in r:
            goal = r.get("target_speedup")
            rows.append(
                [
                    f"metrics speed-up vs literal reference, {kind}",
                    f"{r[key]:.1f}x",
                    f">= {goal:g}x" if goal else "",
                    _verdict(r[key] >= goal if goal and full else None),
                ]
            )
    return rows


def infer_rows(r: dict) -> list[list[str]]:
    rows = []
    for row in r.get("rows", []):
        what = f"{row.get('device')} {row.get('size')} {row.get('mode')}"
        if row.get("mode") == "tiled" and row.get("tile"):
            what += f" {row['tile']}px"
        if "skipped" in row:
            rows.append([what, f"skipped: {row['skipped']}", "", ""])
            continue
        if "error" in row:
            rows.append([what, f"ERROR {row['error'][:80]}", "", ""])
            continue
        if "cuda_peak_mb" in row:
            mem = f"GPU {row['cuda_peak_mb'] / 1024:.2f} GB"
        else:
            mem = f"RSS {row.get('peak_rss_mb', 0.0) / 1024:.2f} GB"
        value = f"{row['ms_per_mpx']:.0f} ms/Mpx, peak {mem}"
        if row.get("extrapolated"):
            value += f" (time from {row.get('windows_run')}/{row.get('windows')} windows)"
        target, ok = "", None
        if row.get("size") == "4000x3000" and row.get("mode") == "tiled":
            target = "<= 8 GB"
            ok = r.get(f"{row.get('device')}_4000x3000_tiled_within_8gb")
        rows.append([what, value, target, _verdict(ok)])
    return rows


def export_rows(r: dict) -> list[list[str]]:
    goal = r.get("target_max_abs_diff")
    return [
        [
            f"CPU {r['size']} whole, onnxruntime vs PyTorch ({r['threads']} threads, one run)",
            f"{r['onnxruntime_ms_per_mpx']:.0f} vs {r['torch_ms_per_mpx']:.0f} ms/Mpx "
            f"({r['onnxruntime_speedup']:.2f}x), alpha max abs diff {r['alpha_max_abs_diff']:.1g}",
            f"max abs diff <= {goal:.2g} (1/255)" if goal else "",
            _verdict(r.get("agrees")),
        ]
    ]


def train_rows(res: dict) -> list[list[str]]:
    """Rows of bench_train's results (what, measured, target, verdict)."""
    from benchmarks import bench_train  # torch and torchvision: only when a train row is due

    kind = res["device"]
    out: list[list[str]] = []
    targets = res.get("targets", {})

    def verdict(key: str) -> str:
        return common.verdict(targets[key]["met"] if key in targets else None)

    size = f"{res['size']}x{res['size']}"
    for stage in (1, 3):
        r = bench_train._find(res, stage, "ours", res["default_variant"])
        if r is not None:
            mem = "GPU" if kind == "cuda" else "RSS"
            out.append(
                [
                    f"train stage {stage} {size} b{r['batch']} {kind} {r['variant']}",
                    f"{r['samples_per_s']:.2f} samples/s, peak {mem} {r['peak_mb']:.0f} MB",
                    "",
                    "",
                ]
            )
    if "channels_last_speedup_fp32" in res:
        out.append(
            [
                f"train {kind} channels_last vs default format (stage 1, fp32)",
                f"{res['channels_last_speedup_fp32']:.2f}x",
                "",
                "",
            ]
        )
    if "reference_ratio" in res:
        out.append(
            [
                f"train vs torchvision VGG16-BN reference ({res['reference_ratio_variant']})",
                f"{res['reference_ratio']:.2f}x",
                f">= {bench_train.TARGET_REFERENCE_RATIO:g}x",
                verdict("reference_ratio"),
            ]
        )
    if "cpu_bf16_speedup_vs_fp32_cl" in res:
        out.append(
            [
                "train CPU bf16 vs fp32 (stage 1, channels_last, same run)",
                f"{res['cpu_bf16_speedup_vs_fp32_cl']:.2f}x"
                + ("" if res.get("cpu_native_bf16") else " (no native bf16 on this CPU)"),
                "",
                "",
            ]
        )
    fl = res["flops_per_sample"].get("stage1")
    if fl:
        out.append(["model FLOPs / sample (fwd+bwd, stage 1)", f"{fl / 1e9:.1f} GFLOP", "", ""])
    if kind == "cuda":
        if "bf16_cl_speedup_stage1" in res:
            out.append(
                [
                    "train bf16 + channels_last vs fp32 (stage 1)",
                    f"{res['bf16_cl_speedup_stage1']:.2f}x",
                    f">= {bench_train.TARGET_BF16_SPEEDUP}x",
                    verdict("bf16_cl_speedup_stage1"),
                ]
            )
        if "fraction_of_peak_stage1" in res:
            out.append(
                [
                    f"train share of dense bf16 peak ({res['peak_bf16_tflops']:g} TFLOP/s)",
                    f"{100 * res['fraction_of_peak_stage1']:.1f}%",
                    f">= {100 * bench_train.TARGET_MFU:.0f}%",
                    verdict("fraction_of_peak_stage1"),
                ]
            )
        elif not res.get("peak_bf16_tflops"):  # never a guessed peak: say what is missing
            out.append(
                [
                    "train share of dense bf16 peak",
                    f"pending: dense bf16 peak of {res.get('device_name')} unknown "
                    "(--peak-tflops T)",
                    f">= {100 * bench_train.TARGET_MFU:.0f}%",
                    "pending",
                ]
            )
    e2e = res.get("end_to_end")
    if e2e and "samples_per_s" in e2e:
        out.append(
            [
                f"train end-to-end, DataLoader {e2e['workers']} workers",
                f"{e2e['samples_per_s']:.2f} samples/s ({e2e['ratio_to_model_only']:.2f}x "
                f"model-only), {100 * e2e['data_wait_fraction']:.1f}% waiting for data",
                f"<= {100 * bench_train.LOADER_MAX_WAIT:.0f}% waiting",
                verdict("loader_keeps_up"),
            ]
        )
        out.append(
            [
                "data workers needed to feed the model",
                f"{e2e['workers_needed']} ({e2e['workers_needed_exact']:.3f} at "
                f"{e2e['per_worker_samples_per_s_used']:.0f} samples/s per worker)",
                "",
                "",
            ]
        )
    errors = [r for r in res["rows"] if "error" in r]
    for r in errors:
        out.append([f"train stage {r['stage']} {r['model']} {r['variant']}", "ERROR", "", ""])
    return out


SUMMARISERS = {
    "data": data_rows,
    "metrics": metrics_rows,
    "train": train_rows,
    "infer": infer_rows,
    "export": export_rows,
}


def cross_rows(results: dict[str, dict]) -> list[list[str]]:
    """Rows that need two benches: does the data loader outrun the training step?"""
    data, train = results.get("data") or {}, results.get("train") or {}
    loader, model = data.get("loader_samples_per_s"), train.get("stage1_samples_per_s")
    if not (loader and model) or "error" in data or "error" in train:
        return []
    return [
        [
            f"DataLoader ({data.get('loader_workers')} workers) vs stage-1 training step",
            f"{loader:.0f} vs {model:.2f} samples/s ({loader / model:.0f}x)",
            "loader > model",
            _verdict(loader > model),
        ]
    ]


def pending_rows(results: dict[str, dict], cuda: bool) -> list[list[str]]:
    """GPU rows that could not run here, so the table says they are pending."""
    if cuda:
        return []
    rows = []
    if "train" in results:
        rows += [
            [
                "train",
                "CUDA stage 1/3: fp32, bf16, channels_last, torch.compile",
                "pending: no CUDA device here",
                ">= 1.8x fp32 (bf16+channels_last); >= 35% of dense bf16 peak",
                "pending",
            ],
            [
                "train",
                "CUDA end-to-end, 16 DataLoader workers",
                "pending: no CUDA device here",
                "loader >= model",
                "pending",
            ],
        ]
    if "infer" in results:
        rows.append(
            [
                "infer",
                "CUDA 800x600 / 2000x2000 / 4000x3000, whole and tiled",
                "pending: no CUDA device here",
                "4000x3000 tiled <= 8 GB GPU",
                "pending",
            ]
        )
    return rows


def build_table(results: dict[str, dict], cuda: bool) -> list[list[str]]:
    """All rows (bench, measurement, value, target, verdict), error rows included."""
    table: list[list[str]] = []
    for name, res in results.items():
        if "error" in res:
            table.append([name, "ERROR", res["error"][:200], "", "error"])
            continue
        try:
            rows = SUMMARISERS.get(name, lambda _: [])(res)
        except Exception as e:  # a changed result format must not hide the other rows
            rows = [["summary failed", f"{type(e).__name__}: {e}", "", "error"]]
        table += [[name, *[*r, "", "", ""][:4]] for r in rows]
    table += [["data+train", *r] for r in cross_rows(results)]
    table += pending_rows(results, cuda)
    return table


# --- main ------------------------------------------------------------------------------------
def parse_stages(text: str) -> tuple[int, ...]:
    """``--stages``: "1", "3" or "1,3"."""
    try:
        stages = tuple(sorted({int(x) for x in text.split(",") if x.strip()}))
    except ValueError:
        stages = ()
    if not stages or set(stages) - {1, 3}:
        raise argparse.ArgumentTypeError(f"takes 1 and/or 3 (e.g. 1,3), got {text!r}")
    return stages


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from benchmarks import gpu_check

    p = common.OneLineParser(
        prog="python -m benchmarks",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="CI smoke test: small and fast")
    p.add_argument("--json", type=Path, default=None, help="write every figure to this file")
    p.add_argument(
        "--only",
        default=",".join(BENCHES),
        help=f"comma-separated subset of {','.join(BENCHES)}",
    )
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="dense bf16 peak of the GPU (TFLOP/s)"
    )
    p.add_argument("--note", default=None, help="free text stored in the JSON (e.g. the load)")
    p.add_argument(
        "--stages", type=parse_stages, default=(1, 3), help="training stages timed (1 and/or 3)"
    )
    gpu_check.add_arguments(p)
    args = p.parse_args(argv)
    if args.gpu_check or args.dry_run:
        gpu_check.check_arguments(p, args, argv if argv is not None else sys.argv[1:])
        return args
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in BENCHES]
    if unknown or not only:
        p.error(f"--only: unknown bench(es) {unknown}; choose from {','.join(BENCHES)}")
    args.only = [name for name in BENCHES if name in only]  # the suite's order
    if args.workers is None:
        args.workers = default_workers(args.device)
    if args.workers < 0:
        p.error("--workers must be >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.gpu_check:
        from benchmarks import gpu_check

        return gpu_check.run_check(args)
    import torch

    machine = common.machine_info()
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    results: dict[str, dict] = {}
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    for name in args.only:
        print(f"[benchmarks] running {name} ...", file=sys.stderr, flush=True)
        results[name], seconds[name] = run_one(
            name, BENCHES[name], bench_kwargs(name, args, results)
        )
        status = "ERROR" if "error" in results[name] else "done"
        print(f"[benchmarks] {name}: {status} in {seconds[name]:.0f} s", file=sys.stderr)
    total = time.perf_counter() - t0
    machine["load_average_1m_end"] = round(os.getloadavg()[0], 2)
    table = build_table(results, cuda)
    errors = [name for name, res in results.items() if "error" in res]

    where = machine.get("cuda_device_name") or "no CUDA device"
    print(
        f"\nDeep Image Matting benchmarks{' (--quick)' if args.quick else ''}: "
        f"{machine['cpu_model']}, {machine['cpus_usable']} cores, {where}, torch "
        f"{machine['torch']}, load {machine['load_average_1m']} -> "
        f"{machine['load_average_1m_end']}, {total:.0f} s"
    )
    print(common.markdown_table(TABLE_HEAD, table))
    if args.json is not None:
        out = {
            "schema": SCHEMA_VERSION,
            "quick": args.quick,
            "note": args.note,
            "args": {
                "only": args.only,
                "workers": args.workers,
                "device": args.device,
                "peak_tflops": args.peak_tflops,
                "stages": list(args.stages),
            },
            "machine": machine,
            "seconds": {**seconds, "total": total},
            "benchmarks": results,
            "table": [dict(zip(TABLE_HEAD, row, strict=True)) for row in table],
            "errors": errors,
        }
        common.write_json(args.json, out)
        print(f"wrote {args.json}")
    if errors:
        print(f"errors in: {', '.join(errors)} (see above)", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
