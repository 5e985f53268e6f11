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
from benchmarks.summary import SCHEMA_VERSION, TABLE_HEAD, build_table
from utils.cli import OneLineParser, name_list, number, output

BENCHES: dict[str, str] = {
    "data": "benchmarks.bench_data",
    "metrics": "benchmarks.bench_metrics",
    "train": "benchmarks.bench_train",
    "infer": "benchmarks.bench_infer",
    "export": "benchmarks.bench_export",
}


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


def build_parser() -> argparse.ArgumentParser:
    """The suite's flags and the GPU check's (benchmarks/gpu_check.py)."""
    from benchmarks import gpu_check

    p = OneLineParser(
        prog="python -m benchmarks",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="CI smoke test: small and fast")
    p.add_argument(
        "--json", type=output("file", Path), default=None, help="write every figure to this file"
    )
    p.add_argument(
        "--only",
        type=name_list(BENCHES),
        default=",".join(BENCHES),
        help=f"comma-separated subset of {','.join(BENCHES)}",
    )
    p.add_argument("--workers", type=number(int, 0), default=None, help="DataLoader workers")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument(
        "--peak-tflops",
        type=number(float, 0, strict=True),
        default=None,
        help="dense bf16 peak of the GPU (TFLOP/s)",
    )
    p.add_argument("--note", default=None, help="free text stored in the JSON (e.g. the load)")
    p.add_argument(
        "--stages",
        type=common.parse_stages,
        default=(1, 3),
        help="training stages timed (1 and/or 3)",
    )
    gpu_check.add_arguments(p)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from benchmarks import gpu_check

    p = build_parser()
    args = p.parse_args(argv)
    if args.gpu_check or args.dry_run:
        gpu_check.check_arguments(p, args, argv if argv is not None else sys.argv[1:])
        return args
    args.only = [name for name in BENCHES if name in args.only]  # the suite's order
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
