"""Did a change make training slower? The same short training run from two git revisions,
interleaved on the same machine, one JSON.

    python -m benchmarks.compare_commits --base d1cfeba [--head HEAD] [--rounds 3] [--iters 12]
        [--json benchmarks/results/compare.json] [-- extra train_encoder_decoder.py flags]

Each revision is checked out into a temporary git worktree and runs
``train_encoder_decoder.py --stage 1 --max-iters N`` on the built-in synthetic set (one
process, the CPU preset's crop and batch unless overridden, no visdom), alternating base, head,
base, head ... so that load from other jobs hits both alike. From each run's ``metrics.jsonl``
the steady time per iteration is read (from the loss record of iteration 2 to the last: no
start-up, no set generation, which both revisions share through one cache). The report gives the
median per revision and the speed ratio head / base (1.0 = same speed; below 1 = the head is
slower).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common
from utils.cli import OneLineParser, number, output


class CompareError(RuntimeError):
    """A revision that cannot be checked out or trained; the message says which and why."""


def git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=common.ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise CompareError(f"git {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


def checkout(rev: str, where: Path) -> str:
    """A worktree of ``rev`` at ``where``; returns the full commit hash."""
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    git("worktree", "add", "--detach", str(where), commit)
    return commit


def seconds_per_iteration(run_dir: Path, skip: int = 2) -> float:
    """Steady training time per iteration of a finished run: the time between the loss
    records of iteration ``skip`` and of the last one (``--log-every 1``), which leaves out
    start-up and the first, slower steps."""
    points = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec.get("group") == "loss":
            points.append((rec["step"], rec["time"]))
    points = [(step, t) for step, t in points if step >= skip]
    if len(points) < 2:
        raise CompareError(f"{run_dir}/metrics.jsonl: too few loss records (raise --iters)")
    (s0, t0), (s1, t1) = points[0], points[-1]
    return (t1 - t0) / (s1 - s0)


def train_once(tree: Path, runs: Path, name: str, cache: Path, iters: int, extra: list[str]):
    cmd = [sys.executable, str(tree / "train_encoder_decoder.py"), "--stage", "1",
           "--run-name", name, "--runs-dir", str(runs), "--cache-dir", str(cache),
           "--max-iters", str(iters), "--no-visdom", "--log-every", "1", *extra]  # fmt: skip
    env = {**os.environ, "DIM_CACHE_DIR": str(cache)}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise CompareError(
            f"{tree.name}: training failed ({out.returncode}):\n{out.stderr[-2000:]}"
        )
    return seconds_per_iteration(runs / name / "stage1"), wall


def compare(base: str, head: str, rounds: int, iters: int, extra: list[str]) -> dict:
    work = Path(tempfile.mkdtemp(prefix="dim-compare-"))
    trees = {}
    try:
        for label, rev in (("base", base), ("head", head)):
            trees[label] = (work / label, checkout(rev, work / label))
        cache = work / "cache"
        results = {label: {"commit": c, "s_per_it": [], "wall_s": []}
                   for label, (_, c) in trees.items()}  # fmt: skip
        for r in range(rounds):
            for label, (tree, _) in trees.items():
                spi, wall = train_once(tree, work / "runs", f"{label}{r}", cache, iters, extra)
                results[label]["s_per_it"].append(spi)
                results[label]["wall_s"].append(wall)
                print(f"round {r + 1}/{rounds} {label}: {spi:.3f} s/iteration ({wall:.0f} s)")
        for res in results.values():
            res["median_s_per_it"] = statistics.median(res["s_per_it"])
        # speed ratio: > 1 means the head is faster
        ratio = results["base"]["median_s_per_it"] / results["head"]["median_s_per_it"]
        return {
            "machine": common.machine_info(),
            "what": f"train_encoder_decoder.py --stage 1 --max-iters {iters} {' '.join(extra)}",
            "rounds": rounds,
            "revisions": results,
            "head_over_base": ratio,
        }
    finally:
        for tree, _ in trees.values():
            subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=common.ROOT,
                           capture_output=True)  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)


def build_parser() -> OneLineParser:
    """The flags before ``--`` (after it: more trainer flags for both runs)."""
    p = OneLineParser(
        prog="python -m benchmarks.compare_commits", description=__doc__.splitlines()[0]
    )
    p.add_argument("--base", required=True, help="revision to compare against (git)")
    p.add_argument("--head", default="HEAD", help="revision to time against --base (git)")
    p.add_argument("--rounds", type=number(int, 1), default=3, help="alternating runs of each")
    p.add_argument("--iters", type=number(int, 2), default=12, help="iterations per run")
    p.add_argument("--json", type=output("file", Path), help="write the report here")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    args = build_parser().parse_args(argv)
    try:
        report = compare(args.base, args.head, args.rounds, args.iters, extra)
    except CompareError as e:
        print(f"compare_commits: error: {e}", file=sys.stderr)
        return 2
    revs = report["revisions"]
    print(common.markdown_table(
        ("revision", "commit", "s/iteration (median)", "runs"),
        [(k, v["commit"][:10], f"{v['median_s_per_it']:.3f}",
          ", ".join(f"{x:.3f}" for x in v["s_per_it"])) for k, v in revs.items()],
    ))  # fmt: skip
    print(f"speed head / base: {report['head_over_base']:.3f} (1 = same, < 1 = head slower)")
    if args.json:
        common.write_json(args.json, report)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
