"""The benchmark suite: its pieces, and `python -m benchmarks --quick` writing well-formed JSON.

Nothing here checks a speed: only that every figure is there, has its type and is positive.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks import __main__ as suite
from benchmarks import bench_train, common, summary
from models.py_encoder_decoder import DIM

ROOT = Path(__file__).resolve().parents[1]


def is_positive(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def layer_shapes(model: nn.Module) -> list[tuple]:
    """Every conv and BN layer as (kind, in, out, kernel), in a canonical order."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            out.append(("conv", m.in_channels, m.out_channels, m.kernel_size))
        elif isinstance(m, nn.BatchNorm2d):
            out.append(("bn", m.num_features, m.num_features, ()))
    return sorted(out)


def test_reference_model_has_our_layer_sizes():
    with torch.device("meta"):  # structure only
        ours, ref = DIM(refine=False), bench_train.ReferenceEncoderDecoder()
    assert layer_shapes(ours) == layer_shapes(ref)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())


def test_reference_forward_shape_and_range():
    ref = bench_train.ReferenceEncoderDecoder().eval()
    with torch.no_grad():
        out = ref(torch.randn(1, 4, 64, 96))
    assert out.shape == (1, 1, 64, 96)
    assert 0 <= out.min() and out.max() <= 1


def test_flop_counter_counts_forward_and_backward_alike_for_both_models():
    x = torch.randn(1, 4, 64, 64)
    ref, ours = bench_train.ReferenceEncoderDecoder(), DIM(refine=False)
    fwd = bench_train.count_flops(lambda: ref(x))
    both = bench_train.count_flops(lambda: ref(x).mean().backward())
    ours_both = bench_train.count_flops(lambda: ours(x)[0].mean().backward())
    # backward = grads of inputs and weights ~ 2x forward (none for the data input)
    assert 2.5 * fwd < both <= 3.0 * fwd
    assert ours_both == pytest.approx(both, rel=1e-6)


@pytest.mark.parametrize(
    "name, expected",
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA L40S", 362.1),
        ("NVIDIA L4", 121.0),
        ("NVIDIA GeForce RTX 4090", 165.2),
        ("Some Future GPU", None),
    ],
)
def test_peak_bf16_lookup(name, expected):
    assert bench_train.peak_bf16_tflops(name) == expected


def test_unknown_gpu_peak_is_a_pending_row_never_a_guess():
    res = {"device": "cuda", "device_name": "Some Future GPU", "size": 320, "rows": []}
    res.update(default_variant="bf16_cl", flops_per_sample={}, peak_bf16_tflops=None)
    rows = summary.train_rows(res)
    assert any("dense bf16 peak" in r[0] and r[-1] == "pending" for r in rows), rows
    assert any("--peak-tflops" in r[1] for r in rows)


def test_run_one_turns_failures_into_error_rows(tmp_path, monkeypatch):
    (tmp_path / "bench_boom.py").write_text(
        "def run(quick=False):\n    raise RuntimeError('boom')\n"
    )
    (tmp_path / "bench_ok.py").write_text("def run(quick=False):\n    return {'quick': quick}\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    missing, _ = suite.run_one("x", "benchmarks.bench_no_such_thing", {"quick": True})
    assert "missing" in missing["error"]
    boom, _ = suite.run_one("boom", "bench_boom", {"quick": True})
    assert boom == {"error": "RuntimeError: boom"}
    ok, seconds = suite.run_one("ok", "bench_ok", {"quick": True, "workers": 3})
    assert ok == {"quick": True} and seconds >= 0  # unknown keyword arguments are dropped


def test_table_has_error_and_pending_rows():
    table = summary.build_table({"data": {"error": "boom"}, "train": {"rows": "bad"}}, cuda=False)
    assert ["data", "ERROR", "boom", "", "error"] in table
    assert any(r[0] == "train" and r[-1] == "error" for r in table)  # unreadable result
    assert any(r[0] == "train" and r[-1] == "pending" for r in table)
    assert all(len(r) == len(summary.TABLE_HEAD) for r in table)
    text = common.markdown_table(summary.TABLE_HEAD, table)
    assert text.count("\n") == len(table) + 1


def test_write_json_is_strict(tmp_path):
    path = common.write_json(
        tmp_path / "a" / "r.json", {"x": float("nan"), "y": np.float32(1.5), "p": tmp_path}
    )
    assert json.loads(path.read_text()) == {"x": None, "y": 1.5, "p": str(tmp_path)}


def test_peak_memory_sees_an_allocation():
    with common.PeakMemory("cpu") as mem:
        # fresh pages from the kernel (malloc could reuse memory that is already resident)
        block = mmap.mmap(-1, 64 * 2**20)
        np.frombuffer(block, np.uint8)[:] = 1  # touch all 64 MB
        block.close()
    assert mem.rss_peak_mb >= mem.rss_before_mb
    if mem.rss_exact:
        assert mem.rss_added_mb > 40


@pytest.mark.slow
def test_quick_suite_writes_the_json_schema(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, "OMP_NUM_THREADS": "2", "DIM_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert "| bench" in proc.stdout  # the table was printed

    assert res["schema"] == 1 and res["quick"] is True and res["errors"] == []
    m = res["machine"]
    assert isinstance(m["cpu_model"], str) and m["cpu_model"]
    assert isinstance(m["cpu_count"], int) and m["cpu_count"] > 0
    assert isinstance(m["torch"], str) and isinstance(m["cuda_available"], bool)
    datetime.fromisoformat(m["date"])
    assert is_positive(res["seconds"]["total"])
    assert set(res["benchmarks"]) == {"data", "metrics", "train", "infer", "export"}
    assert res["table"] and all(set(r) == set(summary.TABLE_HEAD) for r in res["table"])
    assert all(isinstance(v, str) for r in res["table"] for v in r.values())

    b = res["benchmarks"]
    for bench in b.values():
        assert "error" not in bench
    assert is_positive(b["data"]["samples_per_s"]) and is_positive(b["data"]["speedup_vs_naive"])
    assert is_positive(b["metrics"]["cpu_seconds_all_four"])
    assert is_positive(b["metrics"]["cpu_speedup_vs_reference"])

    t = b["train"]
    assert t["device"] in ("cpu", "cuda") and t["quick"] is True
    assert {(r["stage"], r["model"]) for r in t["rows"]} == {
        (1, "ours"),
        (1, "reference"),
        (3, "ours"),
    }
    for r in t["rows"]:
        assert "error" not in r, r
        assert isinstance(r["batch"], int) and r["batch"] > 0
        for key in ("step_s", "step_s_median", "samples_per_s", "peak_mb", "achieved_tflops"):
            assert is_positive(r[key]), (key, r)
        assert all(is_positive(x) for x in r["step_s_all"])
    assert {"stage1", "stage3", "reference"} <= set(t["flops_per_sample"])
    assert all(is_positive(v) for v in t["flops_per_sample"].values())
    for key in ("stage1_samples_per_s", "stage3_samples_per_s", "reference_ratio"):
        assert is_positive(t[key]), key
    e2e = t["end_to_end"]
    for key in ("samples_per_s", "model_only_samples_per_s", "data_per_worker_samples_per_s"):
        assert is_positive(e2e[key]), key
    assert isinstance(e2e["workers_needed"], int) and e2e["workers_needed"] >= 1
    if t["device"] == "cpu":  # model-only steps interleaved with the loader-fed ones
        assert is_positive(e2e["model_only_interleaved_samples_per_s"])
    assert 0 <= e2e["data_wait_fraction"] <= 1 and len(e2e["data_wait_s"]) == e2e["timed_steps"]
    assert {"reference_ratio", "loader_keeps_up"} <= set(t["targets"])
    for target in t["targets"].values():
        assert isinstance(target["target"], str) and isinstance(target["met"], bool)
        assert isinstance(target["value"], float) and target["value"] >= 0

    rows = b["infer"]["rows"]
    assert rows
    for r in rows:
        assert "error" not in r, r
        if "skipped" not in r:
            assert is_positive(r["ms_per_mpx"]) and is_positive(r["peak_rss_mb"])

    e = b["export"]
    assert e["quick"] is True and e["agrees"] is True
    for key in ("torch_ms_per_mpx", "onnxruntime_ms_per_mpx", "onnxruntime_speedup", "onnx_mb"):
        assert is_positive(e[key]), key
    assert 0 <= e["alpha_max_abs_diff"] <= e["target_max_abs_diff"] == 1 / 255
    row = [r for r in res["table"] if r["bench"] == "export"]
    assert len(row) == 1 and "onnxruntime vs PyTorch" in row[0]["measurement"]
    assert row[0]["verdict"] == "met"


def test_recipe_table_and_curves(tmp_path):
    """bench_recipes: the table has SAD/MSE/Grad/Conn per test set (a dash where a set was
    not scored), and the curves of several stages share one iteration axis."""
    from benchmarks import bench_recipes as br
    from utils.checkpoint import save_checkpoint

    m = {"n": 2, "sad": 12.345, "mse": 0.01234, "grad": 3.0, "conn": 4.0}
    md = br.table([("closed-form", "–", {"real Trimap1": m}), ("stage 1", "30", {})],
                  ["real Trimap1"])  # fmt: skip
    assert "real Trimap1 SAD" in md and "12.35" in md and "0.0123" in md
    assert md.splitlines()[-1].count("–") == 4
    for stage, best_it in ((1, 20), (2, 10)):
        folder = tmp_path / f"stage{stage}"
        folder.mkdir()
        lines = [
            {"group": "loss", "step": 10, "values": {"total": 0.3 / stage}},
            {"group": "val", "step": 10, "values": {"sad": 9.0 / stage}},
            {"group": "real", "step": 10, "values": {"sad": 20.0 / stage}},
        ]
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        save_checkpoint(folder / "best.pt", {"model": {}, "model_config": {}, "iteration": best_it})
    curves = br.recipe_curves(tmp_path, [1, 2])
    assert curves["training loss"]["stage 1"] == [(10, 0.3)]
    assert curves["training loss"]["stage 2"] == [(30, 0.15)], "stage 2 starts at stage 1's best"
    assert curves["real-photo SAD"]["stage 2"] == [(30, 10.0)]
    assert set(br.RECIPES) == {"main", "long"} and all(r for r in br.RECIPES.values())


def test_recipe_baselines_are_cached_per_test_set_content(tmp_path, monkeypatch):
    """A test set that changed (a new built-in set version) is scored again, not read from the
    cache under its old label; an unchanged one is read back."""
    from benchmarks import bench_recipes as br
    from data.testsets import MattingExample

    def example(value: int) -> MattingExample:
        trimap = np.full((8, 8), 128, np.uint8)
        trimap[0] = value
        return MattingExample("a", np.zeros((8, 8, 3), np.uint8), trimap, np.zeros((8, 8)))

    calls = []

    def fake_score(examples, predict, **kw):
        calls.append(predict.__name__)
        return [], {"n": 1, "sad": float(len(calls)), "mse": 0.0, "grad": 0.0, "conn": 0.0}

    monkeypatch.setattr(br, "score", fake_score)
    cache = tmp_path / "baselines.json"
    first = br.baselines([("synthetic test", [example(0)])], cache)
    assert calls == ["trimap_only", "closed_form"]
    again = br.baselines([("synthetic test", [example(0)])], cache)
    assert len(calls) == 2 and again == first  # read back
    changed = br.baselines([("synthetic test", [example(255)])], cache)
    assert len(calls) == 4 and changed["trimap-only"]["synthetic test"]["sad"] == 3.0


def test_recipe_panels_one_row_per_photo_one_tile_per_stage(tmp_path):
    from benchmarks import bench_recipes as br
    from data.testsets import MattingExample
    from utils.checkpoint import save_checkpoint

    class Examples(list):
        names = property(lambda self: [e.name for e in self])

    rng = np.random.default_rng(0)
    trimap = np.full((64, 96), 128, np.uint8)
    trimap[:, :20], trimap[:, -20:] = 0, 255
    examples = Examples(
        MattingExample(n, rng.integers(0, 256, (64, 96, 3), dtype=np.uint8), trimap,
                       rng.random((64, 96)).astype(np.float32))
        for n in ("GT01", "GT02")
    )  # fmt: skip
    model = DIM(fc6="conv1x1")
    state = {"model": model.state_dict(), "model_config": model.config.to_dict(), "stage": 1}
    ckpt = save_checkpoint(tmp_path / "s1.pt", {**state, "config": {"infer_scale": 0.5}})
    img = br.panels({"stage 1": ckpt, "again": ckpt}, examples, ["GT02"], height=50)
    assert img.dtype == np.uint8 and img.shape == (50, 5 * 75, 3)  # image, trimap, gt, 2 models
    assert br.panels({"stage 1": ckpt}, examples, ["GT01", "GT02"], height=50).shape[0] == 100


def test_compare_commits_reads_steady_time_and_refuses_bad_input(tmp_path, capsys):
    from benchmarks import compare_commits as cc

    run = tmp_path / "stage1"
    run.mkdir()
    records = [{"group": "loss", "step": s, "time": 100.0 + (5.0 if s == 1 else 0) + 2.0 * s}
               for s in range(1, 7)] + [{"group": "speed", "step": 6, "time": 200.0}]  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert cc.seconds_per_iteration(run) == pytest.approx(2.0)  # the slow first step left out
    assert cc.main(["--base", "no-such-revision-xyz", "--iters", "3", "--rounds", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-revision-xyz" in err[0], err
    with pytest.raises(SystemExit) as e:
        cc.main(["--base", "HEAD", "--rounds", "0"])
    assert e.value.code == 2
