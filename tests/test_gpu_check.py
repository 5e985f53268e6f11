"""The GPU check (python -m benchmarks --gpu-check): flags, its pieces, and the dry run end to
end, so the one command a GPU loan runs cannot rot between loans."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks import __main__ as suite
from benchmarks import gpu_check, summary

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--dry-run"], "--dry-run goes with --gpu-check"),
        (["--gpu-check", "--only", "data"], "drop --only"),
        (["--gpu-check", "--quick"], "drop --quick"),
        (["--gpu-check", "--budget-minutes", "0"], "> 0 minutes"),
        (["--gpu-check", "--train-minutes", "nan"], "> 0 minutes"),
        (["--gpu-check", "--train-minutes", "8"], "leaves nothing"),
        (["--gpu-check", "--workers", "-1"], "--workers"),
        (["--gpu-check", "--no-such-flag"], "unrecognized"),
        (["--stages", "2"], "takes 1 and/or 3"),
    ],
)
def test_bad_flags_are_refused_in_one_line(argv, says, capsys):
    with pytest.raises(SystemExit) as e:
        suite.main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_real_check_without_cuda_stops_at_once(tmp_path, capsys):
    out = tmp_path / "gpu.json"
    assert suite.main(["--gpu-check", "--json", str(out)]) == 1
    text = capsys.readouterr()
    assert "no CUDA device" in text.err and "--dry-run" in text.err
    assert "GPU check: FAIL" in text.out and not out.exists()


def test_slug_and_reports(tmp_path):
    assert gpu_check.slug("NVIDIA H200") == "nvidia-h200"
    assert gpu_check.slug("NVIDIA A100-SXM4-80GB") == "nvidia-a100-sxm4-80gb"
    xml = tmp_path / "junit.xml"
    xml.write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1">'
        '<testcase classname="tests.test_cuda" name="test_a[cuda]"><failure/></testcase>'
        '<testcase classname="tests.test_cuda" name="test_b[cuda]"/>'
        '<testcase classname="tests.test_cuda" name="test_c[cuda]"><skipped/></testcase>'
        "</testsuite></testsuites>"
    )
    counts = gpu_check.junit_counts(xml)
    assert counts["tests"] == 3 and counts["failures"] == 1 and counts["skipped"] == 1
    assert counts["failed"] == ["tests.test_cuda::test_a[cuda]"]
    metrics = tmp_path / "metrics.jsonl"
    records = [
        {"group": "loss", "step": 5, "values": {"total": 0.2}},
        {"group": "throughput", "step": 9, "values": {"samples_per_s": 7.0}},
    ]
    metrics.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert gpu_check.last_throughput(metrics) == {"iteration": 9, "samples_per_s": 7.0}
    assert gpu_check.last_throughput(tmp_path / "missing.jsonl") is None


def test_training_commands_use_the_trainers_own_flags():
    """Both training commands parse with train_encoder_decoder.py's parser."""
    import train_encoder_decoder as tr

    for dry in (True, False):
        cmd = gpu_check.training_command(dry, Path("/tmp/w"), 4, 3.0)
        cfg = tr.resolve_config(tr.build_parser().parse_args(cmd[2:]))
        assert cfg["max_minutes"] == 3.0 and cfg["stage"] == 1 and cfg["workers"] == 4
        assert cfg["crop_size"] == (64 if dry else 320)
        assert (cfg["dataset"] == "synthetic") is (not dry)  # the real check: the built-in set


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_dry_run_end_to_end_writes_the_suite_schema(tmp_path):
    """The CPU twin of every part (one CPU test twin, to stay short: the suite runs them all),
    the same JSON schema as python -m benchmarks --json plus the check's parts."""
    out = tmp_path / "dry.json"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "DIM_CACHE_DIR": str(tmp_path / "cache")}
    env.pop(gpu_check.REQUIRE_CUDA_ENV, None)
    cmd = [sys.executable, "-m", "benchmarks", "--gpu-check", "--dry-run"]
    cmd += ["--json", str(out), "--tests-filter", "loader", "--train-minutes", "0.05"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())

    assert set(res) == {
        "schema", "quick", "note", "args", "machine", "seconds", "benchmarks", "table",
        "errors", "gpu_check",
    }  # fmt: skip
    assert res["schema"] == suite.SCHEMA_VERSION and res["errors"] == []
    assert set(res["benchmarks"]) == {"train", "infer", "data"}
    assert all("error" not in b for b in res["benchmarks"].values())
    assert all(set(r) == set(summary.TABLE_HEAD) for r in res["table"])
    assert any(r["verdict"] == "pending" for r in res["table"]), "GPU rows stay pending on CPU"
    check = res["gpu_check"]
    assert check["dry_run"] is True and check["passed"] is True
    assert 0 < check["total_s"] <= check["budget_s"]
    names = [p["name"] for p in check["parts"]]
    assert names == ["device", "prepare", "tests", "bench-train", "bench-infer", "bench-data",
                     "training"]  # fmt: skip
    for part in check["parts"]:
        assert part["status"] == "pass" and part["seconds"] >= 0 and part["result"], part
        assert f"-- {part['name']}: PASS in " in proc.stdout
    tests = next(p for p in check["parts"] if p["name"] == "tests")["detail"]
    assert tests["passed"] >= 1 and tests["failed"] == []
    training = next(p for p in check["parts"] if p["name"] == "training")["detail"]
    assert training["samples_per_s"] > 0 and 0 <= training["data_wait_fraction"] <= 1
    assert "GPU check: PASS (7/7 parts passed)" in proc.stdout
