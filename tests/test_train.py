"""The Trainer: three stages end to end, freezing, exact resume, safe stops, DDP over gloo."""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import train_encoder_decoder as tr
from data.loader import batches
from models.stages import STAGES, Stage
from tests.faults import fault_callbacks
from utils.checkpoint import load_checkpoint
from utils.train_args import PRESETS

ROOT = Path(__file__).resolve().parents[1]


def argv(root: Path, runs: Path, stage: int, *extra: str) -> list[str]:
    return [
        "--stage", str(stage), "--data-root", str(root), "--runs-dir", str(runs),
        "--cache-dir", str(runs.parent / "cache"), "--crop-size", "64", "--batch-size", "2",
        "--epochs", "1", "--iters-per-epoch", "2", "--workers", "0", "--no-visdom",
        "--threads", "2", "--val-limit", "2", "--lr", "1e-4", *extra,
    ]  # fmt: skip


def make_trainer(args: list[str], callbacks=None) -> tr.Trainer:
    return tr.Trainer(tr.resolve_config(tr.build_parser().parse_args(args)), callbacks)


def state(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


@pytest.mark.slow
def test_three_stages_end_to_end_and_stage2_frozen(tiny_root, tmp_path):
    runs = tmp_path / "runs"
    assert tr.main(argv(tiny_root, runs, 1)) == 0
    s1 = runs / "dim" / "stage1"
    assert (s1 / "last.pt").is_file() and (s1 / "best.pt").is_file()
    ck = load_checkpoint(s1 / "best.pt")
    assert ck["stage"] == 1 and ck["config"]["crop_size"] == 64 and ck["iteration"] == 2
    assert "optimizer" not in ck, "best.pt holds the weights only (resume uses last.pt)"
    ck = load_checkpoint(s1 / "last.pt")
    assert {"optimizer", "scheduler", "scaler", "rng", "history"} <= set(ck)
    assert (s1 / "last.pt").stat().st_mode & 0o044, "checkpoints are readable like any file"
    assert set(ck["history"][0]) >= {"val_sad", "val_mse", "val_grad", "val_conn"}

    t2 = make_trainer(argv(tiny_root, runs, 2))
    trainable = {n for n, p in t2.model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("refine_head.") for n in trainable)
    opt_params = {id(p) for g in t2.optimizer.param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in t2.model.refine_head.parameters()}
    t2.fit()
    before, after = state(s1 / "best.pt"), state(runs / "dim" / "stage2" / "last.pt")
    frozen = [k for k in after if not k.startswith("refine_head.")]
    assert frozen and set(frozen) == set(before)
    for k in frozen:  # weights AND BatchNorm running statistics
        assert torch.equal(before[k], after[k]), f"stage 2 changed frozen {k}"
    head = [k for k in after if k.startswith("refine_head.") and k.endswith("weight")]
    assert head

    assert tr.main(argv(tiny_root, runs, 3)) == 0
    s3 = state(runs / "dim" / "stage3" / "last.pt")
    assert any(not torch.equal(s3[k], after[k]) for k in frozen), "stage 3 trains everything"


def test_stage_without_prerequisite_names_the_command(tiny_root, tmp_path):
    with pytest.raises(tr.TrainerError) as e:
        make_trainer(argv(tiny_root, tmp_path / "runs", 2))
    msg = str(e.value)
    assert "stage1/best.pt" in msg and "--stage 1" in msg and "--init" in msg


@pytest.mark.slow
def test_resume_is_exact(tiny_root, tmp_path):
    runs = tmp_path / "runs"
    common = ["--iters-per-epoch", "4", "--save-every", "0"]
    # 2 iterations, stop, resume for the remaining 2 ...
    assert tr.main([*argv(tiny_root, runs, 1), *common, "--run-name", "a", "--max-iters", "2"]) == 0
    mid = load_checkpoint(runs / "a" / "stage1" / "last.pt")
    assert mid["iteration"] == 2 and mid["batch_in_epoch"] == 2 and mid["epoch"] == 0
    assert tr.main([*argv(tiny_root, runs, 1), *common, "--run-name", "a", "--resume"]) == 0
    # ... equals 4 uninterrupted iterations, bit for bit.
    assert tr.main([*argv(tiny_root, runs, 1), *common, "--run-name", "b"]) == 0
    a, b = state(runs / "a" / "stage1" / "last.pt"), state(runs / "b" / "stage1" / "last.pt")
    assert load_checkpoint(runs / "a" / "stage1" / "last.pt")["iteration"] == 4
    for k in b:
        assert torch.equal(a[k], b[k]), f"resumed run differs in {k}"
    oa = load_checkpoint(runs / "a" / "stage1" / "last.pt")["optimizer"]["state"]
    ob = load_checkpoint(runs / "b" / "stage1" / "last.pt")["optimizer"]["state"]
    assert all(torch.equal(oa[i]["exp_avg"], ob[i]["exp_avg"]) for i in ob)


def test_nonfinite_loss_stops_and_keeps_last_good_checkpoint(tiny_root, tmp_path, monkeypatch):
    runs = tmp_path / "runs"
    t = make_trainer(argv(tiny_root, runs, 1, "--save-every", "1"))
    real = t.criterion.forward
    calls = {"n": 0}  # the loss turns NaN at the 2nd step; it is read before the 2nd save

    def poisoned(pred, label):
        calls["n"] += 1
        loss, parts = real(pred, label)
        return (loss * float("nan"), parts) if calls["n"] == 2 else (loss, parts)

    monkeypatch.setattr(t.criterion, "forward", poisoned)
    with pytest.raises(tr.NonFiniteLoss, match="untouched"):
        t.fit()
    last = runs / "dim" / "stage1" / "last.pt"
    ck = load_checkpoint(last)
    assert ck["iteration"] == 1  # written after the good step, not after the NaN
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


def test_ctrl_c_stops_after_the_step_and_saves_it(tiny_root, tmp_path):
    """SIGINT in the middle of iteration 2's optimiser step: the step completes, last.pt is
    exactly "after iteration 2", fit raises Interrupted, no temp file is left."""
    runs = tmp_path / "runs"
    args = argv(tiny_root, runs, 1, "--iters-per-epoch", "3")
    t = make_trainer(args, fault_callbacks("step:2"))
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a background job, else Python's
    with pytest.raises(tr.Interrupted) as e:
        t.fit()
    assert e.value.iteration == 2
    ck = load_checkpoint(runs / "dim" / "stage1" / "last.pt")
    assert ck["iteration"] == 2 and ck["batch_in_epoch"] == 2
    assert ck["optimizer"]["state"][0]["step"] == 2, "Adam state is that of iteration 2"
    assert not list((runs / "dim" / "stage1").glob("*.tmp")), "no temp file left behind"
    assert signal.getsignal(signal.SIGINT) == before, "handlers restored"


def test_losses_are_read_back_only_at_logging_points_and_saves(tiny_root, tmp_path):
    """train_step leaves its losses on the device; they become Python numbers every
    --log-every iterations (the "log" event gets their means) and before saves, not per step."""
    runs = tmp_path / "runs"
    logged, reads = [], []
    on_log = {"log": lambda trainer, losses, **_: logged.append((trainer.iteration, losses))}
    args = argv(tiny_root, runs, 1, "--iters-per-epoch", "3", "--epochs", "2", "--log-every", "3")
    t = make_trainer(args, on_log)
    read = t.read_losses
    t.read_losses = lambda: reads.append((t.iteration, t._window_n)) or read()
    t.fit()
    assert [it for it, _ in logged] == [3, 6]
    assert all(isinstance(v, float) for _, m in logged for v in m.values())
    # 2 logging points of 3 steps each; each epoch end and its saves find nothing left
    assert [r for r in reads if r[1]] == [(3, 3), (6, 3)], reads


# Fault points over every phase: (phase, iteration) of a 2-epoch x 3-iteration run.
FAULTS = [("forward", 1), ("backward", 2), ("step", 3), ("forward", 4), ("step", 5),
          ("backward", 6), ("validation", 3), ("validation", 6), ("save", 3), ("save", 6),
          ("forward", 6)]  # fmt: skip


@pytest.mark.slow
def test_interrupt_anywhere_then_resume_is_bit_exact(tiny_root, tmp_path):
    """SIGINT at 11 reproducible points (forward, backward, optimiser step, validation,
    saving), each followed by --resume: final weights, BatchNorm statistics and Adam state are
    bit-identical to an uninterrupted run."""
    common = ["--iters-per-epoch", "3", "--epochs", "2", "--val-limit", "1"]
    runs = tmp_path / "runs"
    assert tr.main([*argv(tiny_root, runs, 1), *common, "--run-name", "ref"]) == 0
    ref = load_checkpoint(runs / "ref" / "stage1" / "last.pt")
    for i, (phase, it) in enumerate(FAULTS):
        name = f"f{i}"
        args = [*argv(tiny_root, runs, 1), *common, "--run-name", name]
        code = tr.main(args, callbacks=fault_callbacks(f"{phase}:{it}"))
        assert code == 130, (phase, it, code)
        assert tr.main([*argv(tiny_root, runs, 1), *common, "--run-name", name, "--resume"]) == 0
        got = load_checkpoint(runs / name / "stage1" / "last.pt")
        assert got["iteration"] == ref["iteration"] == 6
        for k, v in ref["model"].items():
            assert torch.equal(v, got["model"][k]), (phase, it, k)
        for pid, st in ref["optimizer"]["state"].items():
            for key in ("exp_avg", "exp_avg_sq", "step"):
                assert torch.equal(st[key], got["optimizer"]["state"][pid][key]), (phase, it)
        assert [h["epoch"] for h in got["history"]] == [1, 2], "no validation lost or repeated"
        assert not list((runs / name / "stage1").glob("*.tmp"))


def _save_forever(path: str) -> None:
    from utils.checkpoint import save_checkpoint

    state = {"model": {"w": torch.zeros(4_000_000)}, "model_config": {}}
    while True:
        save_checkpoint(path, state)


@pytest.mark.slow
def test_kill_9_while_saving_leaves_a_loadable_checkpoint_and_no_temp(tiny_root, tmp_path):
    """A writer killed with SIGKILL mid-save: the checkpoint still loads, and the next start in
    that folder removes the dead writer's temp file (never a live writer's)."""
    from utils.checkpoint import remove_stale_temps

    folder = tmp_path / "runs" / "dim" / "stage1"
    folder.mkdir(parents=True)
    target = folder / "last.pt"
    ctx = mp.get_context("spawn")
    leftovers: set[str] = set()
    for delay in (1.5, 2.0, 2.5):
        proc = ctx.Process(target=_save_forever, args=(str(target),))
        proc.start()
        deadline = time.time() + 60
        while not target.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        load_checkpoint(target)  # whatever the moment, the file is whole
        leftovers |= {p.name for p in folder.glob(".*.tmp")}
    live = folder / f".last.pt.{os.getppid()}.abcdefgh.tmp"  # the pytest runner's parent
    live.write_bytes(b"x")
    removed = remove_stale_temps(folder)
    assert {p.name for p in removed} == leftovers and live.exists(), (removed, leftovers)
    live.unlink()
    # and the Trainer does it at start
    (folder / ".last.pt.999999999.deadbeef.tmp").write_bytes(b"x")
    make_trainer(argv(tiny_root, tmp_path / "runs", 1))
    assert not list(folder.glob(".*.tmp"))


def test_refused_start_leaves_no_folder(tiny_root, tmp_path):
    runs = tmp_path / "runs"
    with pytest.raises(tr.TrainerError):
        make_trainer(argv(tiny_root, runs, 2))  # no stage-1 checkpoint
    assert not (runs / "dim" / "stage2").exists()


def test_bad_flags_get_clear_errors(tiny_root, tmp_path):
    with pytest.raises(tr.TrainerError, match="multiple of 32"):
        make_trainer(argv(tiny_root, tmp_path, 1, "--crop-size", "70"))
    with pytest.raises(tr.TrainerError, match="nothing to resume"):
        make_trainer(argv(tiny_root, tmp_path, 1, "--resume", str(tmp_path / "gone.pt")))
    if not torch.cuda.is_available():
        with pytest.raises(tr.TrainerError, match="CUDA"):
            make_trainer(argv(tiny_root, tmp_path, 1, "--device", "cuda"))


def test_trainer_from_python_raises_typed_errors(tmp_path, caplog):
    """The Trainer is a library: a bad data root is an exception to catch, not an exit; the
    command line turns the same problems into one error line and status 2."""
    cfg = tr.resolve_config(tr.build_parser().parse_args(["--stage", "1", "--data-root",
                                                          str(tmp_path / "nowhere")]))  # fmt: skip
    with pytest.raises(tr.DataSourceError, match="nowhere"):
        tr.Trainer(cfg)
    cfg2 = dict(cfg, stage=2, runs_dir=str(tmp_path))
    with pytest.raises(tr.TrainerError, match="stage 1's best checkpoint"):
        tr.Trainer(cfg2)
    assert tr.main(["--stage", "1", "--crop-size", "70", "--runs-dir", str(tmp_path)]) == 2
    assert "multiple of 32" in caplog.text


def test_stage_table_drives_freezing_and_loss():
    assert [STAGES[s].loss_on for s in (1, 2, 3)] == ["raw", "refined", "refined"]
    assert STAGES[2].trains == ("refine_head",)
    assert dict(STAGES[2].loss_weights) == {"w_alpha": 1.0, "w_comp": 0.0}
    assert dict(STAGES[3].loss_weights) == dict(STAGES[1].loss_weights)
    stage2 = tr.resolve_config(tr.build_parser().parse_args(["--stage", "2"]))
    assert (stage2["w_alpha"], stage2["w_comp"]) == (1.0, 0.0)  # flags default to the record
    assert STAGES[3].starts_from == 2 and STAGES[1].starts_from is None


class _L1(torch.nn.Module):
    """A loss no built-in stage uses: mean |pred - alpha| over the unknown region."""

    def __init__(self, scale: float = 1.0):
        super().__init__()
        self.scale = scale

    def forward(self, pred, label):
        from data import layout

        mask = layout.mask(label)
        l1 = ((pred - layout.alpha(label)).abs() * mask).sum() / mask.sum().clamp_min(1)
        return self.scale * l1, {"l1": l1}


def test_a_stage_is_its_record_alone(tiny_root, tmp_path, monkeypatch):
    """A fourth stage, one new record: --stage 4 exists, only what the record names learns
    (weights and BatchNorm statistics of the rest stay put), and its own loss is used."""
    decoder_only = Stage(name="decoder on L1", refine_head=False, trains=("decoder",),
                         loss_on="raw", loss=_L1, loss_weights={"scale": 2.0})  # fmt: skip
    monkeypatch.setitem(STAGES, 4, decoder_only)
    with pytest.raises(tr.TrainerError, match="takes \\['scale'\\], not w_alpha"):
        make_trainer(argv(tiny_root, tmp_path / "runs", 4, "--w-alpha", "1"))
    t = make_trainer(argv(tiny_root, tmp_path / "runs", 4))
    assert isinstance(t.criterion, _L1) and t.criterion.scale == 2.0
    assert t.model.refine_head is None
    learn = {n for n, p in t.model.named_parameters() if p.requires_grad}
    assert learn and all(n.startswith("decoder.") for n in learn)
    assert {id(p) for g in t.optimizer.param_groups for p in g["params"]} == {
        id(p) for p in t.model.decoder.parameters()
    }
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.fit()
    after = t.model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("decoder.") for k in changed), sorted(changed)[:5]
    ck = load_checkpoint(tmp_path / "runs" / "dim" / "stage4" / "last.pt")
    assert {"total", "l1"} <= {k.removeprefix("train_") for k in ck["history"][0]}


def test_cpu_bf16_step_trains_and_stays_close_to_float32(tiny_root, tmp_path):
    """--amp bf16 on CPU (what --amp auto picks on CPUs with native bf16): on a tiny fixed
    batch the loss falls, each step's loss stays within 5 % of the float32 run's, weights and
    losses stay float32. Also the CPU twin of the CUDA AMP + channels_last path."""
    runs = []
    for amp in ("off", "bf16"):
        torch.manual_seed(0)
        t = make_trainer(argv(tiny_root, tmp_path / amp, 1, "--amp", amp, "--batch-size", "4"))
        assert t.amp_dtype is (torch.bfloat16 if amp == "bf16" else None)
        if amp == "off":
            data, label = next(iter(t.loader))
        losses = [t.train_step(data, label)[0]["total"].item() for _ in range(6)]
        assert all(p.dtype == torch.float32 for p in t.model.parameters())
        runs.append(losses)
    fp32, bf16 = runs
    assert bf16[-1] < bf16[0] * 0.9, f"bf16 loss did not fall: {bf16}"
    for a, b in zip(fp32, bf16, strict=True):
        assert abs(a - b) <= 0.05 * a, f"bf16 {bf16} drifted from float32 {fp32}"


def test_lr_factor_warmup_then_schedule():
    f = functools.partial(tr.lr_factor, total=100, step_every=10, gamma=0.5)
    assert f(0, warmup=10, schedule="constant") == pytest.approx(0.1)
    assert f(4, warmup=10, schedule="constant") == pytest.approx(0.5)
    assert f(9, warmup=10, schedule="constant") == 1.0 == f(50, warmup=10, schedule="constant")
    # cosine starts after the warm-up and reaches 0 at the last iteration
    assert f(10, warmup=10, schedule="cosine") == pytest.approx(1.0)
    assert f(55, warmup=10, schedule="cosine") == pytest.approx(0.5)
    assert f(100, warmup=10, schedule="cosine") == pytest.approx(0.0, abs=1e-12)
    assert f(25, warmup=0, schedule="step") == pytest.approx(0.25)


def test_presets_differ_only_where_documented():
    syn = tr.resolve_config(tr.build_parser().parse_args(["--stage", "1"]))
    ada = tr.resolve_config(tr.build_parser().parse_args(["--stage", "1", "--data-root", "x"]))
    assert (syn["preset"], ada["preset"]) == ("cpu", "paper")
    assert ada["lr"] == 1e-5 and ada["scheduler"] == "constant" and ada["warmup_iters"] == 0
    assert ada["crop_size"] == 320 and ada["batch_size"] == 16 and ada["skip"] == "none"
    assert ada["fc6"] == "conv1x1"  # one 1x1 conv: the paper's fc6 as reimplemented publicly
    for key, value in PRESETS["cpu"].items():
        assert syn[key] == value
    over = tr.resolve_config(tr.build_parser().parse_args(["--stage", "1", "--lr", "0.5"]))
    assert over["lr"] == 0.5, "a flag overrides the preset"
    named = tr.resolve_config(tr.build_parser().parse_args(["--stage", "1", "--data-root", "x",
                                                            "--preset", "cpu"]))  # fmt: skip
    assert named["preset"] == "cpu" and named["crop_size"] == 128


def test_first_log_line_names_the_preset_and_every_value_it_sets(tiny_root, tmp_path, caplog):
    caplog.set_level("INFO", logger="train")
    args = [*argv(tiny_root, tmp_path / "runs", 1, "--max-iters", "1"), "--preset", "cpu"]
    assert tr.main(args) == 0
    first = next(r.getMessage() for r in caplog.records if r.name == "train")
    assert first.startswith(f"training stage 1 on the Adobe-style data at {tiny_root}")
    assert "with preset cpu:" in first
    for key in PRESETS["cpu"]:
        assert f"{key}=" in first, key
    # argv() sets these flags: the line says the flag overrode the preset, and with what
    assert "crop_size=64 (flag; preset 128)" in first and "lr=0.0001 (flag; preset 0.0003)" in first
    assert "skip=add," in first and "infer_scale=0.5" in first


def test_real_photo_scores_are_logged_not_used_for_best(tiny_root, tmp_path):
    """--real-val scores a second set at the end of the epoch: in the history and the metrics
    file, while best.pt still follows the validation split."""
    runs = tmp_path / "runs"
    real = str(tiny_root / "test")
    assert tr.main(argv(tiny_root, runs, 1, "--real-val", real, "--epochs", "2")) == 0
    ck = load_checkpoint(runs / "dim" / "stage1" / "last.pt")
    assert all({"real_sad", "real_grad", "val_sad"} <= set(h) for h in ck["history"])
    best = load_checkpoint(runs / "dim" / "stage1" / "best.pt")
    assert best["best_sad"] == min(h["val_sad"] for h in ck["history"])
    metrics = (runs / "dim" / "stage1" / "metrics.jsonl").read_text()
    assert '"group": "real"' in metrics


class _SlowLoader:
    """Three batches, each 30 ms in coming: a loader the model outruns."""

    def __iter__(self):
        for i in range(3):
            time.sleep(0.03)
            yield i


def test_time_blocked_on_the_loader_is_measured():
    waits: list[float] = []
    assert list(batches(_SlowLoader(), waits)) == [0, 1, 2]
    assert len(waits) == 3 and all(0.025 <= w < 1.0 for w in waits), waits


def test_max_minutes_stops_cleanly_and_reports_throughput(tiny_root, tmp_path, caplog):
    """--max-minutes: the run stops after the step during which the budget ran out, writes
    last.pt (resumable) and reports samples/s and the share of time waiting for data."""
    runs = tmp_path / "runs"
    caplog.set_level("INFO", logger="train")
    # 0.6 ms: out of time after the first step, long before the 3 epochs of 2 iterations
    assert tr.main(argv(tiny_root, runs, 1, "--epochs", "3", "--max-minutes", "0.00001")) == 0
    ck = load_checkpoint(runs / "dim" / "stage1" / "last.pt")
    assert ck["iteration"] == 1 and ck["batch_in_epoch"] == 1 and {"optimizer", "rng"} <= set(ck)
    assert "stopped after 1 iterations (--max-minutes 1e-05)" in caplog.text
    assert "samples/s in the training loop" in caplog.text
    records = (runs / "dim" / "stage1" / "metrics.jsonl").read_text().splitlines()
    throughput = [r for r in map(json.loads, records) if r["group"] == "throughput"]
    assert len(throughput) == 1 and throughput[0]["step"] == 1
    figures = throughput[0]["values"]
    assert figures["samples_per_s"] > 0 and figures["samples_per_s_overall"] > 0
    assert 0 <= figures["data_wait_fraction"] <= 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, args: list[str], out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      LOCAL_RANK=str(rank), WORLD_SIZE=str(world))  # fmt: skip
    torch.set_num_threads(1)
    t = make_trainer(args)
    t.fit()
    torch.save({k: v.detach().clone() for k, v in t.model.named_parameters()},
               f"{out}/rank{rank}.pt")  # fmt: skip
    tr.dist_utils.cleanup()


@pytest.mark.slow
def test_ddp_two_processes_gloo_stay_identical(tiny_root, tmp_path):
    args = argv(tiny_root, tmp_path / "runs", 1, "--threads", "1")
    # Build the decoded cache once, before two processes want it.
    make_trainer(args).close()  # give the run folder (its lock) to the spawned rank 0
    mp.spawn(_ddp_worker, args=(2, _free_port(), args, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0.keys() == r1.keys()
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"ranks diverged in {k}"
    ck = load_checkpoint(tmp_path / "runs" / "dim" / "stage1" / "last.pt")
    assert ck["iteration"] == 2
    assert not any(k.startswith("module.") for k in ck["model"]), "checkpoints hold plain keys"


def test_cli_help_runs_by_path():
    out = subprocess.run([sys.executable, str(ROOT / "train_encoder_decoder.py"), "--help"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert out.returncode == 0 and "--stage" in out.stdout and "--data-root" in out.stdout


@pytest.mark.parametrize(
    "flags",
    [
        ["--optimizer", "sgd", "--scheduler", "cosine", "--grad-clip", "1.0"],
        ["--optimizer", "adamw", "--scheduler", "step", "--lr-step", "1", "--weight-decay", "0.01"],
        ["--w-comp", "0", "--upsample", "bilinear", "--skip", "add", "--fc6", "conv1x1"],
    ],
)
def test_optimiser_schedule_and_model_flags_train(tiny_root, tmp_path, flags):
    t = make_trainer(argv(tiny_root, tmp_path / "runs", 1, *flags))
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    data, label = next(iter(t.loader))
    losses, *_ = t.train_step(data, label)
    assert all(torch.isfinite(v) for v in losses.values())
    changed = [k for k, v in t.model.state_dict().items() if not torch.equal(before[k], v)]
    assert changed, "one step changed no weight"
    if "cosine" in flags:  # T_max = 2 iterations: half-way after one step
        assert t.optimizer.param_groups[0]["lr"] == pytest.approx(t.cfg["lr"] / 2)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_loader_workers_start_after_the_main_process_used_opencv(tmp_path):
    """Regression: an Adobe folder without val/ makes the trainer composite its validation set
    in the main process (OpenCV's thread pool running) before DataLoader workers fork; a
    cv2.setNumThreads call inside the workers then deadlocked the first batch."""
    from data.demo import make_demo_folder

    root = make_demo_folder(tmp_path / "adobe", n_fg=6, n_bg=6, fg_hw=(120, 160), bg_hw=(96, 128))
    t = make_trainer([*argv(root, tmp_path / "runs", 1, "--workers", "2"), "--val-limit", "1"])
    t.fit(max_iters=1)
    assert load_checkpoint(tmp_path / "runs" / "dim" / "stage1" / "last.pt")["iteration"] == 1


def test_bad_data_root_and_init_file_are_clean_errors(tmp_path, caplog):
    missing = tmp_path / "nowhere"
    assert tr.main(["--stage", "1", "--data-root", str(missing), "--runs-dir", str(tmp_path)]) == 2
    assert str(missing) in caplog.text and "DataSourceError" in caplog.text
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    assert tr.main(["--stage", "2", "--init", str(junk), "--runs-dir", str(tmp_path)]) == 2
    assert str(junk) in caplog.text and "CheckpointError" in caplog.text


def test_bad_photo_dir_is_a_clean_error(tmp_path, caplog):
    missing = tmp_path / "no_photos"
    argv_ = ["--stage", "1", "--photo-dir", str(missing), "--runs-dir", str(tmp_path)]
    assert tr.main(argv_) == 2
    assert "--photo-dir" in caplog.text and str(missing) in caplog.text


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--batch-size", "0", ">= 1"),
        ("--lr", "-1", "> 0"),
        ("--lr", "nan", "> 0"),
        ("--workers", "-1", ">= 0"),
        ("--epochs", "0", ">= 1"),
        ("--iters-per-epoch", "0", ">= 1"),
        ("--crop-size", "16", ">= 32"),
        ("--warmup-iters", "-5", ">= 0"),
        ("--grad-clip", "-0.1", ">= 0"),
        ("--threads", "two", "an integer"),
        ("--max-minutes", "0", "> 0"),
        ("--cut-sizes", "64,x", "comma-separated integers"),
        ("--cut-sizes", "0,96", ">= 1"),
        ("--infer-scale", "0", "in (0, 1]"),
        ("--infer-scale", "1.5", "in (0, 1]"),
    ],
)
def test_bad_numeric_flags_are_refused_in_one_line(flag, value, says, capsys):
    """Every numeric flag is checked where it is parsed: exit 2, one line naming the flag and
    the allowed range (no traceback from inside torch, no silent zero-epoch run)."""
    with pytest.raises(SystemExit) as e:
        tr.main(["--stage", "1", flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and flag in err[0] and says in err[0], err


@pytest.mark.parametrize("flag", ["--resume", "--vgg-weights", "--init"])
def test_files_on_the_command_line_are_checked_before_the_data(flag, tmp_path, caplog):
    """A bad --resume/--vgg-weights/--init file is reported before the data set-up (here the
    data root does not even exist, so a data-first check would name the folder instead)."""
    junk = tmp_path / "junk.pt"
    junk.write_text("not a checkpoint")
    args = ["--stage", "1", "--data-root", str(tmp_path / "nowhere"), "--runs-dir", str(tmp_path)]
    assert tr.main([*args, flag, str(junk)]) == 2
    assert str(junk) in caplog.text and "nowhere" not in caplog.text, caplog.text
    assert not (tmp_path / "dim").exists()


@pytest.mark.parametrize("name", ["../../escaped", "/tmp/absolute", "a/b", "..", "a\\b", ""])
def test_run_names_stay_inside_the_runs_dir(name, tmp_path, caplog):
    runs = tmp_path / "runs"
    assert tr.main(["--stage", "1", "--runs-dir", str(runs), "--run-name", name]) == 2
    assert "--run-name" in caplog.text and "inside --runs-dir" in caplog.text
    assert not runs.exists() and not (tmp_path / "escaped").exists()


def test_runs_dir_that_is_a_file_is_one_line(tmp_path, caplog):
    afile = tmp_path / "file"
    afile.write_text("x")
    assert tr.main(["--stage", "1", "--runs-dir", str(afile)]) == 2
    assert f"--runs-dir {afile}: not a folder" in caplog.text


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_unsafe_vgg_weights_are_refused_without_advice_to_bypass(tmp_path, caplog, capsys):
    evil = tmp_path / "vgg16_bn-evil.pth"
    torch.save({"features.0.weight": _RunsCode()}, evil)
    args = ["--stage", "1", "--runs-dir", str(tmp_path), "--vgg-weights", str(evil)]
    assert tr.main(args) == 2
    assert "refused to load" in caplog.text and "arbitrary code" in caplog.text
    assert "weights_only" not in caplog.text and "likely succeed" not in caplog.text
    assert "this must never run" not in capsys.readouterr().out


def test_resume_from_a_weights_only_checkpoint_says_what_to_do(tiny_root, tmp_path, caplog):
    runs = tmp_path / "runs"
    assert tr.main(argv(tiny_root, runs, 1)) == 0
    best = runs / "dim" / "stage1" / "best.pt"
    assert tr.main([*argv(tiny_root, runs, 1, "--epochs", "2"), "--resume", str(best)]) == 2
    assert "weights only" in caplog.text and "last.pt" in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("workers", ["0", "2"])
def test_data_failing_mid_run_saves_last_pt_and_resumes(workers, tmp_path):
    """A background that passes the start-up checks but fails to decode mid-run
    (--no-bg-cache decodes per sample): last.pt is written as "after iteration k", the error is
    one line naming the file (also from a DataLoader worker), and after the file is replaced
    --resume completes the run."""
    from data.demo import make_demo_folder

    root = make_demo_folder(tmp_path / "adobe", n_fg=4, n_bg=4, fg_hw=(96, 128), bg_hw=(96, 128))
    runs = tmp_path / "runs"
    args = [
        *argv(root, runs, 1, "--no-bg-cache", "--workers", workers),
        "--iters-per-epoch",
        "4",
        "--val-limit",
        "1",
    ]
    trainer = make_trainer(args)  # start-up checks and the validation set: all files fine
    trainer.fit(max_iters=1)
    backgrounds = sorted((root / "bg").glob("*.jpg"))
    good = {p: p.read_bytes() for p in backgrounds}
    for p in backgrounds:  # a valid JPEG header, garbage after it
        p.write_bytes(good[p][:300] + b"\0" * 50)
    with pytest.raises(tr.TrainerError) as e:
        trainer.fit()
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    assert "after iteration 1" in msg and "bg_00" in msg and "--no-bg-cache" in msg, msg
    last = load_checkpoint(runs / "dim" / "stage1" / "last.pt")
    assert last["iteration"] == 1 and last["batch_in_epoch"] == 1
    for p, data in good.items():
        p.write_bytes(data)
    assert tr.main([*args, "--resume", "auto"]) == 0
    assert load_checkpoint(runs / "dim" / "stage1" / "last.pt")["iteration"] == 4


def test_cut_sizes_reach_the_dataset_and_the_checkpoint(tiny_root, tmp_path):
    runs = tmp_path / "runs"
    t = make_trainer(argv(tiny_root, runs, 1, "--cut-sizes", "32,64"))
    assert t.train_set.cut_sizes == (32, 64)
    assert t.cfg["cut_sizes"] == [32, 64]
    default = make_trainer(argv(tiny_root, tmp_path / "runs2", 1))
    assert default.train_set.cut_sizes == (64, 96, 128)  # crop, 1.5x, 2x for crop 64


def test_infer_scale_preset_validation_and_checkpoint(tiny_root, tmp_path):
    synthetic = tr.resolve_config(tr.build_parser().parse_args(["--stage", "1"]))
    assert synthetic["infer_scale"] == 0.5  # the CPU preset's, chosen on the validation split
    runs = tmp_path / "runs"
    t = make_trainer(argv(tiny_root, runs, 1))  # a data root: the paper's full resolution
    assert t.cfg["infer_scale"] == 1.0 and t.model.infer_scale == 1.0
    assert tr.main(argv(tiny_root, runs, 1, "--infer-scale", "0.5")) == 0
    ck = load_checkpoint(next(runs.glob("*/stage1/last.pt")))
    assert ck["config"]["infer_scale"] == 0.5
