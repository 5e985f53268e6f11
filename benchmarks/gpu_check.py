"""The GPU check: everything a short GPU loan should verify, in one command.

    python -m benchmarks --gpu-check [--json PATH] [--peak-tflops T] [--workers N]
        [--budget-minutes 8] [--train-minutes 3] [--tests-filter EXPR] [--note TEXT]
    python -m benchmarks --gpu-check --dry-run [--json PATH]     # its CPU twin (CI)

Parts, in this order; each is timed and passes or fails, and the check goes on after a
failure (but stops at once when there is no CUDA device: nothing else could pass):

    device       GPU model, memory, compute capability, torch / CUDA / driver versions
    prepare      the built-in synthetic set generated with every core, in the background
                 while the tests run (the training part needs it; a fresh machine has none)
    tests        DIM_REQUIRE_CUDA=1 python -m pytest -m cuda tests/test_cuda.py
    bench-train  python -m benchmarks --only train --device cuda --stages 1: fp32, fp32 +
                 channels_last, bf16, bf16 + channels_last, + torch.compile samples/s at
                 320x320, % of the dense bf16 peak, the DataLoader-fed step (all cores)
    bench-infer  ... --only infer: ms per megapixel and peak GPU memory, whole and tiled
    bench-data   ... --only data: the data loader, one process and all cores
    training     train_encoder_decoder.py --stage 1 on the built-in set, 320x320, batch 16,
                 all cores as workers, --max-minutes 3: samples/s in the loop and overall

The benchmarks run one module per process, so a part that hangs or runs out of time loses
only its own rows. ``--budget-minutes`` (default 8) bounds the whole check: each part gets at
most its share (PLAN), and the training gets what is left up to ``--train-minutes`` (shorter,
and said so, when earlier parts ran long). The result is one JSON file of the same schema as
``python -m benchmarks --json`` (machine, benchmarks, table, errors) plus ``gpu_check``:
the device, every part's status, seconds and figures. Default path:
``benchmarks/results/<gpu-name-slug>.json``; ``--dry-run``: ``runs/gpu-check-dry-run.json``.

``--dry-run`` runs the CPU twin of every part with tiny sizes: the CPU half of
tests/test_cuda.py (not slow), the ``--quick`` benchmarks on CPU, a tiny synthetic set and a
few seconds of training; it exercises the same plumbing in ~2 minutes on 2 cores, so the check
cannot rot between loans (tests/test_gpu_check.py runs it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import common
from benchmarks import summary as suite
from utils.cli import declare

ROOT = common.ROOT
REQUIRE_CUDA_ENV = "DIM_REQUIRE_CUDA"  # tests/conftest.py: cuda tests fail instead of skipping
BENCH_PARTS = ("train", "infer", "data")
TABLE_HEAD = (
    "bench",
    "measurement",
    "value",
    "target",
    "verdict",
)  # as python -m benchmarks  # the order they run in: the GPU figures first
# Longest each part may take, seconds (the training: set-up before its --max-minutes). With
# the default 8-minute budget the training gets its 3 minutes when the parts before it stay
# within about 4 minutes together.
PLAN = {
    "full": {"device": 60, "tests": 120, "train": 150, "infer": 75, "data": 45, "setup": 60},
    "dry": {"device": 60, "tests": 120, "train": 120, "infer": 60, "data": 45, "setup": 60},
}
MIN_TRAIN_MINUTES = 0.05  # below this a training run measures nothing
# The dry run's synthetic set: 4 foregrounds x 2 backgrounds, generated in a second or two.
DRY_SET = {
    "--n-train-fg": "4", "--n-bg": "5", "--bg-per-fg": "2", "--n-val-fg": "1",
    "--val-per-fg": "1", "--n-test-fg": "0", "--test-per-fg": "0", "--fg-size": "96,128",
    "--bg-size": "112,144", "--val-size": "96,80", "--test-size": "64,64",
}  # fmt: skip


class CheckError(RuntimeError):
    """The check cannot go on (no CUDA device on a real run)."""


@dataclass
class Part:
    """One part of the check: what ran, how it went, how long it took."""

    name: str
    what: str
    status: str = "not run"  # "pass" | "fail" | "not run"
    seconds: float = 0.0
    result: str = ""  # one line for the summary
    detail: dict[str, Any] = field(default_factory=dict)

    def begin(self) -> None:
        print(f"\n== {self.name}: {self.what} ==", flush=True)

    def done(self, ok: bool, result: str, seconds: float, **detail: Any) -> Part:
        self.status = "pass" if ok else "fail"
        self.result, self.seconds = result, seconds
        self.detail.update(detail)
        print(f"-- {self.name}: {self.status.upper()} in {seconds:.0f} s: {result}", flush=True)
        return self


# --- arguments ---------------------------------------------------------------------------------
@declare("minutes", "0", "-1", "nan", "inf", "x")
def positive_minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected minutes, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0 minutes, got {text}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The check's flags on ``python -m benchmarks``'s parser (--json, --workers,
    --peak-tflops and --note are shared with the suite)."""
    g = p.add_argument_group("GPU check (benchmarks/gpu_check.py)")
    g.add_argument("--gpu-check", action="store_true", help="the one-command GPU check")
    g.add_argument(
        "--dry-run", action="store_true", help="with --gpu-check: its CPU twin, tiny sizes"
    )
    g.add_argument(
        "--budget-minutes", type=positive_minutes, default=8.0, help="the whole check (8)"
    )
    g.add_argument(
        "--train-minutes",
        type=positive_minutes,
        default=None,
        help="the training part's --max-minutes (3; dry run 0.1)",
    )
    g.add_argument(
        "--tests-filter", default=None, help="pytest -k expression for the tests (free text)"
    )


# Suite flags that mean nothing to the check (it picks its own benchmarks and device).
SUITE_ONLY = ("--quick", "--only", "--device", "--stages")


def check_arguments(p: argparse.ArgumentParser, args: argparse.Namespace, argv: list[str]):
    """Refuse flag combinations that cannot mean what they say (one line, exit 2)."""
    given = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    if args.dry_run and not args.gpu_check:
        p.error("--dry-run goes with --gpu-check")
    if not args.gpu_check:
        return
    clash = sorted(given & set(SUITE_ONLY))
    if clash:
        p.error(f"--gpu-check chooses its own benchmarks and device; drop {', '.join(clash)}")
    if args.workers is not None and args.workers < 0:
        p.error("--workers must be >= 0")
    train = args.train_minutes or (0.1 if args.dry_run else 3.0)
    if train >= args.budget_minutes:
        p.error(
            f"--train-minutes {train:g} leaves nothing of --budget-minutes "
            f"{args.budget_minutes:g} for the other parts"
        )


# --- running commands -----------------------------------------------------------------------
def python_cmd(*args: str) -> list[str]:
    return [sys.executable, *args]


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the command's process group (the trainer then saves and exits), SIGKILL if it
    is still there 15 s later."""
    for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 15)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def run_command(
    cmd: list[str], timeout: float, env: dict | None = None, log: Path | None = None
) -> tuple[int | None, float]:
    """Run ``cmd`` in the repository root, its output to ours (or to ``log``); stop it after
    ``timeout`` seconds. Returns (exit status, None after a timeout; seconds)."""
    print(f"$ {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    out = open(log, "w") if log is not None else None  # closed below
    try:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=out, stderr=out, start_new_session=True
        )
        try:
            rc: int | None = proc.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            _stop(proc)
            rc = None
        except BaseException:  # Ctrl-C: do not leave the command running
            _stop(proc)
            raise
    finally:
        if out is not None:
            out.close()
    return rc, time.perf_counter() - t0


class Background:
    """A command running while other parts do (the data set generation)."""

    def __init__(self, cmd: list[str], log: Path, env: dict):
        print(f"$ {shlex.join(cmd)} > {log} &", flush=True)
        self.log = log
        self.t0 = time.perf_counter()
        self.seconds: float | None = None
        self._out = open(log, "w")  # closed when the command ends
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self._out, stderr=self._out, start_new_session=True
        )
        self._waiter = threading.Thread(target=self._wait, daemon=True)
        self._waiter.start()

    def _wait(self) -> None:
        self.proc.wait()
        self.seconds = time.perf_counter() - self.t0
        self._out.close()

    def join(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` s; the exit status, or None (then it is stopped)."""
        self._waiter.join(max(0.0, timeout))
        if self._waiter.is_alive():
            _stop(self.proc)
            self._waiter.join(30)
            return None
        return self.proc.returncode

    def tail(self, n: int = 5) -> str:
        try:
            lines = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(lines[-n:])


# --- the parts ------------------------------------------------------------------------------
# Run in a child process, so the check itself never holds a CUDA context.
DEVICE_PROBE = """
import json, os, torch
from benchmarks import common
info = {"cuda": torch.cuda.is_available(), "torch": torch.__version__,
        "cuda_version": torch.version.cuda, "cpu_model": common.cpu_model(),
        "cpus": len(os.sched_getaffinity(0))}
if info["cuda"]:
    p = torch.cuda.get_device_properties(0)
    info.update(name=p.name, memory_gb=round(p.total_memory / 2**30, 1),
                count=torch.cuda.device_count(), capability=f"sm_{p.major}{p.minor}",
                bf16=torch.cuda.is_bf16_supported())
print(json.dumps(info))
"""


def part_device(part: Part, dry: bool, timeout: float, env: dict) -> dict:
    """What the check runs on; raises CheckError on a real run without CUDA."""
    part.begin()
    t0 = time.perf_counter()
    proc = subprocess.run(
        python_cmd("-c", DEVICE_PROBE),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
        part.done(False, f"torch does not start: {tail}", seconds)
        raise CheckError(f"torch does not start: {tail}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    info["nvidia_smi"] = nvidia_smi()
    if info["cuda"]:
        line = (
            f"{info['name']} ({info['count']}x), {info['memory_gb']} GB, {info['capability']}, "
            f"bf16 {'yes' if info['bf16'] else 'no'}, torch {info['torch']}, CUDA "
            f"{info['cuda_version']}, {info['cpus']} CPU cores"
        )
        if info["nvidia_smi"]:
            line += f"; nvidia-smi: {info['nvidia_smi']}"
    else:
        line = f"no CUDA device; {info['cpu_model']}, {info['cpus']} cores, torch {info['torch']}"
    print(f"GPU model: {info.get('name', 'none')}{' (dry run on CPU)' if dry else ''}", flush=True)
    ok = dry or info["cuda"]
    part.done(ok, ("dry run on CPU: " if dry else "") + line, seconds, **info)
    if not ok:
        raise CheckError(
            "no CUDA device is visible (driver, CUDA_VISIBLE_DEVICES?); on a CPU machine "
            "use --gpu-check --dry-run"
        )
    return info


def nvidia_smi() -> str | None:
    """Driver version, power limit and max SM clock (they bound the peak), when available."""
    query = "name,driver_version,power.limit,clocks.max.sm"
    try:
        out = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=15,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout else None


def prepare_command(dry: bool, work: Path, workers: int) -> list[str]:
    """Generate the training part's data: the built-in set where the trainer finds it, or
    (dry run) a tiny set in the work folder."""
    cmd = python_cmd("-m", "data.synthetic", "--workers", str(max(1, workers)))
    if dry:
        cmd += ["--out", str(work / "synthetic")]
        for flag, value in DRY_SET.items():
            cmd += [flag, value]
    return cmd


def junit_counts(path: Path) -> dict[str, Any]:
    """Test counts and failed test names from pytest's JUnit XML."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors")}
    counts["skipped"] = sum(int(s.get("skipped", 0)) for s in suites)
    counts["failed"] = [
        f"{case.get('classname', '')}::{case.get('name')}"
        for case in root.iter("testcase")
        if case.find("failure") is not None or case.find("error") is not None
    ]
    return counts


def part_tests(part: Part, dry: bool, work: Path, timeout: float, env: dict, k: str | None):
    part.begin()
    xml = work / "junit.xml"
    marks = "not cuda and not slow" if dry else "cuda"
    cmd = python_cmd("-m", "pytest", "tests/test_cuda.py", "-m", marks, "-q", "-rfE")
    cmd += ["-p", "no:cacheprovider", f"--junitxml={xml}"] + (["-k", k] if k else [])
    env = dict(env)
    if dry:
        env.pop(REQUIRE_CUDA_ENV, None)
    else:
        env[REQUIRE_CUDA_ENV] = "1"
    rc, seconds = run_command(cmd, timeout, env)
    if rc is None:
        return part.done(False, f"timed out after {timeout:.0f} s", seconds)
    try:
        counts = junit_counts(xml)
    except (OSError, ET.ParseError) as e:
        return part.done(False, f"pytest exit {rc}, no report ({e})", seconds, exit=rc)
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    bad = counts["failures"] + counts["errors"]
    ok = rc == 0 and bad == 0 and passed > 0
    line = f"{passed} passed, {bad} failed, {counts['skipped']} skipped"
    if counts["failed"]:
        line += f" ({', '.join(counts['failed'][:4])})"
    return part.done(ok, line, seconds, exit=rc, passed=passed, **counts)


def part_bench(part: Part, name: str, dry: bool, work: Path, timeout: float, env: dict,
               args: argparse.Namespace, workers: int) -> dict | None:  # fmt: skip
    """One benchmark module through ``python -m benchmarks``; returns its JSON (or None)."""
    part.begin()
    out = work / f"bench-{name}.json"
    cmd = python_cmd("-m", "benchmarks", "--only", name, "--stages", "1")
    cmd += ["--device", "cpu" if dry else "cuda", "--workers", str(workers), "--json", str(out)]
    cmd += ["--quick"] if dry else []
    cmd += ["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else []
    rc, seconds = run_command(cmd, timeout, env)
    if rc is None:
        part.done(False, f"timed out after {timeout:.0f} s: no figures", seconds)
        return None
    try:
        res = json.loads(out.read_text())
    except (OSError, ValueError) as e:
        part.done(False, f"exit {rc}, no JSON ({e})", seconds, exit=rc)
        return None
    bench = res["benchmarks"].get(name, {})
    problems = list(res.get("errors", []))
    if name == "train" and not dry and bench.get("device") != "cuda":
        problems.append("the training rows did not run on CUDA")
    rows = [r for r in res.get("table", []) if r.get("bench") == name]
    first = next((f"{r['measurement']}: {r['value']}" for r in rows), "no rows")
    ok = rc == 0 and not problems
    line = first if ok else f"exit {rc}; {'; '.join(problems) or 'see above'}"
    part.done(ok, line, seconds, exit=rc, rows=len(rows))
    return res


def last_throughput(metrics: Path) -> dict | None:
    """The trainer's last ``throughput`` record in metrics.jsonl (samples/s, data wait)."""
    try:
        lines = metrics.read_text().splitlines()
    except OSError:
        return None
    records = [json.loads(x) for x in lines if '"throughput"' in x]
    records = [r for r in records if r.get("group") == "throughput"]
    return {"iteration": records[-1]["step"], **records[-1]["values"]} if records else None


def training_command(dry: bool, work: Path, workers: int, minutes: float) -> list[str]:
    cmd = python_cmd("train_encoder_decoder.py", "--stage", "1", "--run-name", "gpu-check")
    cmd += ["--runs-dir", str(work / "runs"), "--workers", str(workers), "--no-visdom"]
    cmd += ["--max-minutes", f"{minutes:.3g}", "--epochs", "1000"]  # the minutes end it
    if dry:
        cmd += ["--data-root", str(work / "synthetic"), "--crop-size", "64", "--batch-size", "2"]
        cmd += ["--iters-per-epoch", "2", "--val-limit", "1", "--device", "cpu"]
    else:  # the paper's crop and batch on the built-in set, bf16 (--amp auto)
        cmd += ["--crop-size", "320", "--batch-size", "16", "--device", "cuda"]
    return cmd


def part_training(part: Part, dry: bool, work: Path, minutes: float, timeout: float,
                  env: dict, workers: int):  # fmt: skip
    part.begin()
    cmd = training_command(dry, work, workers, minutes)
    rc, seconds = run_command(cmd, timeout, env)
    figures = last_throughput(work / "runs" / "gpu-check" / "stage1" / "metrics.jsonl")
    crop, batch = ("64", "2") if dry else ("320", "16")
    detail = {"exit": rc, "minutes": minutes, "crop_size": int(crop), "batch_size": int(batch)}
    detail["workers"] = workers
    if figures is None:
        why = f"timed out after {timeout:.0f} s" if rc is None else f"exit {rc}"
        return part.done(False, f"{why}, no throughput record", seconds, **detail)
    line = (
        f"{figures['samples_per_s']:.1f} samples/s in the loop, "
        f"{figures['samples_per_s_overall']:.1f} overall, "
        f"{100 * figures['data_wait_fraction']:.1f}% waiting for data, "
        f"{figures['iteration']} iterations in {minutes:.3g} min"
    )
    return part.done(rc == 0, line, seconds, **detail, **figures)


# --- the result -------------------------------------------------------------------------------
def slug(name: str) -> str:
    """ "NVIDIA H200" -> "nvidia-h200"."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def merge_benchmarks(results: dict[str, dict | None], args, dry: bool) -> dict:
    """One object of ``python -m benchmarks --json``'s schema from the per-module runs."""
    done = {name: res for name, res in results.items() if res is not None}
    benches = {}
    for name in BENCH_PARTS:
        res = done.get(name)
        benches[name] = res["benchmarks"][name] if res else {"error": f"{name}: no result"}
    first = next(iter(done.values()), None)
    machine = first["machine"] if first else common.machine_info()
    seconds = {name: res["seconds"].get(name) for name, res in done.items()}
    cuda = not dry
    return {
        "schema": suite.SCHEMA_VERSION,
        "quick": dry,
        "note": args.note,
        "args": {
            "only": list(BENCH_PARTS),
            "workers": args.workers,
            "device": "cpu" if dry else "cuda",
            "peak_tflops": args.peak_tflops,
            "stages": [1],
        },
        "machine": machine,
        "seconds": seconds,
        "benchmarks": benches,
        "table": [
            dict(zip(suite.TABLE_HEAD, row, strict=True))
            for row in suite.build_table(benches, cuda)
        ],
        "errors": [name for name, res in benches.items() if "error" in res],
    }


def check_rows(parts: dict[str, Part], dry: bool) -> list[dict]:
    """The check's own rows for the JSON table."""
    tests, training = parts["tests"], parts["training"]
    what = "CPU twins, dry run" if dry else f"pytest -m cuda, {REQUIRE_CUDA_ENV}=1"
    rows = [["gpu-check", f"GPU tests ({what})", tests.result or tests.status, "all pass"]]
    rows[-1].append(common.verdict(None if tests.status == "not run" else tests.status == "pass"))
    d = training.detail
    rows.append(
        [
            "gpu-check",
            f"stage-1 training, built-in set, {d.get('crop_size')}px, batch "
            f"{d.get('batch_size')}, {d.get('workers')} workers, {d.get('minutes', 0):.3g} min",
            training.result or training.status,
            "",
            "-",
        ]
    )
    return [dict(zip(TABLE_HEAD, r, strict=True)) for r in rows]


def summary(parts: dict[str, Part], total: float, budget: float, title: str) -> str:
    rows = [[p.name, p.status, f"{p.seconds:.0f}", p.result[:110]] for p in parts.values()]
    table = common.markdown_table(("part", "status", "seconds", "result"), rows)
    passed = sum(p.status == "pass" for p in parts.values())
    verdict = "PASS" if passed == len(parts) else "FAIL"
    return (
        f"\n{title}: {total:.0f} s of the {budget:.0f} s budget\n{table}\n"
        f"GPU check: {verdict} ({passed}/{len(parts)} parts passed)"
    )


# --- the check --------------------------------------------------------------------------------
def run_check(args: argparse.Namespace) -> int:
    """Run every part; print the summary; write the JSON. 0 when every part passed."""
    dry = args.dry_run
    plan = PLAN["dry" if dry else "full"]
    budget = 60.0 * args.budget_minutes
    train_minutes = args.train_minutes or (0.1 if dry else 3.0)
    workers = (
        args.workers if args.workers is not None else (2 if dry else min(16, os.cpu_count() or 1))
    )
    args.workers = workers
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()

    def left() -> float:
        return budget - (time.perf_counter() - t0)

    parts = {
        "device": Part("device", "GPU model, memory, versions"),
        "prepare": Part("prepare", "the training part's synthetic set, in the background"),
        "tests": Part("tests", "tests/test_cuda.py, " + ("CPU twins" if dry else "-m cuda")),
        **{
            f"bench-{n}": Part(f"bench-{n}", f"python -m benchmarks --only {n}")
            for n in BENCH_PARTS
        },
        "training": Part("training", "train_encoder_decoder.py --stage 1 --max-minutes"),
    }
    with tempfile.TemporaryDirectory(prefix="dim_gpu_check_") as tmp:
        work = Path(tmp)
        try:
            info = part_device(parts["device"], dry, plan["device"], env)
        except CheckError as e:
            print(summary(parts, time.perf_counter() - t0, budget, "GPU check"))
            print(f"GPU check stopped: {e}", file=sys.stderr)
            return 1
        parts["prepare"].begin()
        prepare = Background(prepare_command(dry, work, workers), work / "prepare.log", env)

        part_tests(parts["tests"], dry, work, min(plan["tests"], left()), env, args.tests_filter)
        bench: dict[str, dict | None] = {}
        for name in BENCH_PARTS:
            part = parts[f"bench-{name}"]
            timeout = min(plan[name], left() - plan["setup"] - 60 * MIN_TRAIN_MINUTES)
            if timeout < 10:
                part.done(False, "no time left in the budget", 0.0)
                bench[name] = None
                continue
            bench[name] = part_bench(part, name, dry, work, timeout, env, args, workers)

        rc = prepare.join(left() - plan["setup"])
        waited = (
            prepare.seconds if prepare.seconds is not None else time.perf_counter() - prepare.t0
        )
        ready = "tiny set generated" if dry else "built-in set ready"
        parts["prepare"].done(
            rc == 0, ready if rc == 0 else f"exit {rc}: {prepare.tail()}", waited, exit=rc
        )
        minutes = min(train_minutes, (left() - plan["setup"]) / 60.0)
        if minutes < MIN_TRAIN_MINUTES:
            parts["training"].done(False, "no time left in the budget", 0.0)
        else:
            if minutes < train_minutes:
                print(f"training shortened to {minutes:.2f} min to stay within the budget")
            timeout = 60.0 * minutes + plan["setup"]
            part_training(parts["training"], dry, work, minutes, timeout, env, workers)

        total = time.perf_counter() - t0
        out = merge_benchmarks(bench, args, dry)
        out["table"] += check_rows(parts, dry)
        out["gpu_check"] = {
            "dry_run": dry,
            "passed": all(p.status == "pass" for p in parts.values()),
            "budget_s": budget,
            "total_s": total,
            "train_minutes": train_minutes,
            "workers": workers,
            "device": info,
            "parts": [asdict(p) for p in parts.values()],
        }
    name = info.get("name") if info.get("cuda") else None
    path = args.json or (
        ROOT / "runs" / "gpu-check-dry-run.json"
        if dry
        else ROOT / "benchmarks" / "results" / f"{slug(name or 'gpu')}.json"
    )
    print(common.markdown_table(TABLE_HEAD, [[r[k] for k in TABLE_HEAD] for r in out["table"]]))
    print(
        summary(parts, total, budget, f"GPU check{' (dry run)' if dry else ''} on {name or 'CPU'}")
    )
    common.write_json(path, out)
    print(f"wrote {path}")
    return 0 if out["gpu_check"]["passed"] else 1
