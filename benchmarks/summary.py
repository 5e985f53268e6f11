"""The suite's summary table: one row per measurement, with its target and verdict, built from
the per-bench results (``python -m benchmarks`` and the GPU check print and store it)."""

from __future__ import annotations

from benchmarks import common

SCHEMA_VERSION = 1
TABLE_HEAD = ("bench", "measurement", "value", "target", "verdict")


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
                common.verdict(None if goal is None else r["samples_per_s"] >= goal),
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
                common.verdict(None if goal is None else r["speedup_vs_naive"] >= goal),
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
                    common.verdict(r[key] <= goal if goal and full else None),
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
                    common.verdict(r[key] >= goal if goal and full else None),
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
        rows.append([what, value, target, common.verdict(ok)])
    return rows


def export_rows(r: dict) -> list[list[str]]:
    goal = r.get("target_max_abs_diff")
    return [
        [
            f"CPU {r['size']} whole, onnxruntime vs PyTorch ({r['threads']} threads, one run)",
            f"{r['onnxruntime_ms_per_mpx']:.0f} vs {r['torch_ms_per_mpx']:.0f} ms/Mpx "
            f"({r['onnxruntime_speedup']:.2f}x), alpha max abs diff {r['alpha_max_abs_diff']:.1g}",
            f"max abs diff <= {goal:.2g} (1/255)" if goal else "",
            common.verdict(r.get("agrees")),
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
            common.verdict(loader > model),
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
