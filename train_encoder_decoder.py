"""Train Deep Image Matting, one stage at a time.

    python train_encoder_decoder.py --stage 1            # encoder-decoder, alpha + composition loss
    python train_encoder_decoder.py --stage 2            # refine head only (encoder-decoder frozen)
    python train_encoder_decoder.py --stage 3            # everything, on the refined alpha
    torchrun --nproc_per_node=8 train_encoder_decoder.py --stage 1 --data-root /data/adobe ...

With no ``--data-root`` it trains on the built-in synthetic set (generated on first use) with a
CPU-sized preset; with one it uses the paper's settings. Each run lives in
``<runs-dir>/<run-name>/stage<N>/`` (``last.pt``, ``best.pt``, plots, panels, metrics.jsonl).

Where things are: what a stage trains and on which loss, ``models/stages.py``; the network,
``models/py_encoder_decoder.py``; the losses, ``models/py_loss.py``; the flags,
``utils/train_args.py``; signals, budgets and the run lock, ``utils/run_control.py``.
This file is the learning: build everything, ``train_step``, ``train_one_epoch``,
``evaluate``, save and resume.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from tqdm import tqdm

from data import loader as data_loader
from data.sources import DataSourceError
from data.testsets import open_testset
from data.trainval import build_train_val
from models.py_encoder_decoder import DIM, ModelConfig, VGGWeightsError
from models.stages import STAGES
from utils import distributed as dist_utils
from utils import starting_point
from utils.checkpoint import CheckpointError, CheckpointWriteError, save_checkpoint
from utils.determinism import capture_rng_state, restore_rng_state, seed_everything
from utils.device import describe_amp, prepare_training_process
from utils.evaluation import evaluate_model
from utils.image_io import ImageReadError
from utils.run_control import SIGNAL, Interrupted, RunControl, Throughput
from utils.runlock import RunLockedError
from utils.train_args import PRESETS, TrainerError, build_parser, resolve_config
from utils.visualization import run_visualizer, training_callbacks

log = logging.getLogger("train")


class NonFiniteLoss(RuntimeError):
    pass


def lr_factor(
    it: int, *, warmup: int, schedule: str, total: int, step_every: int, gamma: float
) -> float:
    """Multiplier of the base learning rate for 0-based iteration ``it``.

    A linear warm-up over the first ``warmup`` iterations (from 1/warmup to 1; Adam's first
    steps on a random-init network are the ones that blow up), then ``schedule``: "constant";
    "cosine" from 1 to 0 over the remaining ``total - warmup`` iterations; "step", times
    ``gamma`` every ``step_every`` iterations.
    """
    f = min(1.0, (it + 1) / warmup) if warmup > 0 else 1.0
    if schedule == "cosine":
        span = max(1, total - warmup)
        progress = min(1.0, max(0, it - warmup) / span)
        f *= 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "step":
        f *= gamma ** (it // max(1, step_every))
    return f


def build_optimizer(params: list, cfg: dict, iters_per_epoch: int):
    """The optimiser and its learning-rate schedule (a LambdaLR stepped once per iteration,
    whose state is just the iteration count: exact resume)."""
    kind, lr, wd = cfg["optimizer"], cfg["lr"], cfg["weight_decay"]
    # Adam's fused kernel updates every tensor in one pass (CPU and CUDA); torch's default on
    # the CPU is a Python loop over parameters, about a tenth of a CPU step here.
    fused = all(p.device.type in ("cpu", "cuda") for p in params) or None
    if kind == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=wd, fused=fused)
    else:
        opt = (torch.optim.Adam if kind == "adam" else torch.optim.AdamW)(
            params, lr=lr, weight_decay=wd, fused=fused
        )
    factor = functools.partial(
        lr_factor,
        warmup=cfg["warmup_iters"],
        schedule=cfg["scheduler"],
        total=iters_per_epoch * cfg["epochs"],
        step_every=cfg["lr_step"] * iters_per_epoch,
        gamma=cfg["lr_gamma"],
    )
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


class Trainer:
    """One stage of one run: data, model, loss, optimiser, loop, validation, checkpoints.

    ``callbacks`` maps event names to functions ``fn(trainer, **info)`` called at that event:
    "forward", "backward", "step" (inside :meth:`train_step`, before each part), "step_end",
    "log" (every ``--log-every`` iterations, with the losses), "validation" (before one),
    "example" (each scored validation image), "save" (before a checkpoint is written),
    "epoch_end" and "throughput". The visdom dashboard is attached through them too.
    """

    def __init__(self, cfg: dict, callbacks: Mapping[str, Callable] | None = None):
        self.cfg, self.stage = cfg, STAGES[cfg["stage"]]
        try:
            self.device, self.amp_dtype = prepare_training_process(
                cfg["device"], cfg["amp"], threads=cfg["threads"], workers=cfg["workers"]
            )
        except ValueError as e:
            raise TrainerError(str(e)) from e
        self.main = dist_utils.is_main()
        self.memory_format = (
            torch.channels_last if cfg["channels_last"] == "on" else torch.contiguous_format
        )
        seed_everything(cfg["seed"] + dist_utils.rank())
        self.stage_dir = Path(cfg["runs_dir"]) / cfg["run_name"] / f"stage{cfg['stage']}"
        self.control = RunControl(
            self.stage_dir,
            main=self.main,
            max_iters=cfg["max_iters"],
            max_minutes=cfg["max_minutes"],
            device=self.device,
        )
        self.epoch = self.batch_in_epoch = self.iteration = 0
        self.best_sad, self.history = math.inf, []
        self._window: dict[str, torch.Tensor] = {}  # losses summed since they were last read
        self._window_n, self._epoch_sums, self._epoch_n = 0, {}, 0
        self.callbacks: dict[str, list[Callable]] = {}
        self.add_callbacks(callbacks or {})

        self.model_config = ModelConfig.from_dict(
            {f.name: cfg[f.name] for f in ModelConfig.flags()} | {"refine": self.stage.refine_head}
        )
        self.control.check_free()  # another live training here: refuse before the data
        # Every file named on the command line is read before the data set-up.
        resume, start, vgg = starting_point.open_all(
            cfg, self.stage, self.stage_dir, self.model_config
        )
        self.build_data()
        self.build_model(start, vgg)
        self.control.claim()  # only now: a refused start leaves no folder behind
        self.viz = run_visualizer(self.stage_dir, cfg) if self.main else None
        if self.viz is not None:
            self.add_callbacks(training_callbacks(self.viz))
        if resume is not None:
            self.load_state_dict(resume[1])
            self.init_message = (
                f"resumed from {resume[0]} at epoch {self.epoch}, iteration {self.iteration}"
            )

    # ---- building ----------------------------------------------------------------------
    def build_data(self) -> None:
        cfg = self.cfg
        # Rank 0 builds the decoded cache and the validation set first; the others then reuse
        # them instead of racing to write the same files.
        if not self.main:
            dist_utils.barrier()
        self.train_set, val = build_train_val(
            cfg["data_root"] or "synthetic",
            bg_dir=cfg["bg_dir"],
            val_dir=cfg["val_dir"],
            seed=cfg["seed"],
            crop_size=cfg["crop_size"],
            cut_sizes=cfg["cut_sizes"],
            cache_dir=cfg["cache_dir"],
            cache_backgrounds=not cfg["no_bg_cache"],
            progress=self.main,
            photo_dir=cfg["photo_dir"],
        )
        if self.main:
            dist_utils.barrier()
        if val is None:
            raise TrainerError("no validation set: pass --val-dir (Composition-1k layout)")
        limit = min(cfg["val_limit"] or len(val), len(val))
        self.val_examples = [val[i] for i in range(limit)] if cfg["val_limit"] else val
        self.real_examples = None
        if cfg["real_val"] and self.main:
            self.real_examples = open_testset(cfg["real_val"], trimap=cfg["real_val_trimap"])
        full = len(self.train_set) // (cfg["batch_size"] * dist_utils.world_size())
        self.iters_per_epoch = min(full, cfg["iters_per_epoch"] or full)
        if self.iters_per_epoch == 0:
            raise TrainerError(
                f"the training set has {len(self.train_set)} samples, fewer than one batch "
                f"of {cfg['batch_size']} per process: lower --batch-size"
            )
        self.loader = data_loader.make_loader(
            self.train_set,
            batch_size=cfg["batch_size"],
            workers=cfg["workers"],
            seed=cfg["seed"],
            pin_memory=self.device.type == "cuda",
        )

    def build_model(self, start: tuple[Path, dict] | None, vgg: tuple[dict, str] | None):
        cfg = self.cfg
        model = DIM(self.model_config)
        self.init_message = starting_point.initialise(model, start, vgg)
        model.to(self.device, memory_format=self.memory_format)
        if dist_utils.is_distributed() and cfg["sync_bn"]:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.params = self.stage.freeze(model)  # what learns; everything else is frozen
        model.infer_scale = cfg["infer_scale"]  # validation runs as inference will
        self.model = self.net = model  # model: what checkpoints store; net: what steps call
        if dist_utils.is_distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.net = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if cfg["compile"]:
            self.net = torch.compile(self.net)
        try:
            self.criterion = self.stage.build_loss(w_alpha=cfg["w_alpha"], w_comp=cfg["w_comp"])
        except ValueError as e:
            raise TrainerError(f"--w-alpha/--w-comp: {e}") from e
        self.optimizer, self.scheduler = build_optimizer(self.params, cfg, self.iters_per_epoch)
        fp16 = self.amp_dtype is torch.float16
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)

    def add_callbacks(self, callbacks: Mapping[str, Callable]) -> None:
        for event, fn in callbacks.items():
            self.callbacks.setdefault(event, []).append(fn)

    def fire(self, event: str, **info) -> None:
        for fn in self.callbacks.get(event, ()):
            fn(self, **info)

    # ---- learning ----------------------------------------------------------------------
    def train_step(self, data: torch.Tensor, label: torch.Tensor):
        """One optimisation step: forward, loss, backward, optimiser step. Returns the losses
        (0-d tensors on the device: reading one would make the host wait for the device, so
        this never does), the raw and the refined alpha, and the batch on the device."""
        non_blocking = self.device.type == "cuda"
        data = data.to(self.device, non_blocking=non_blocking, memory_format=self.memory_format)
        label = label.to(self.device, non_blocking=non_blocking)
        self.fire("forward")
        autocast = (
            torch.autocast(self.device.type, dtype=self.amp_dtype)
            if self.amp_dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            raw, refined = self.net(data)
        loss, parts = self.criterion(self.stage.prediction(raw, refined).float(), label)
        self.optimizer.zero_grad(set_to_none=True)
        self.fire("backward")
        self.scaler.scale(loss).backward()
        if self.cfg["grad_clip"] > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg["grad_clip"])
        self.fire("step")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iteration += 1
        losses = {"total": loss.detach(), **{k: v.detach() for k, v in parts.items()}}
        for k, v in losses.items():
            self._window[k] = self._window[k] + v if k in self._window else v
        self._window_n += 1
        return losses, raw, refined, data, label

    def read_losses(self) -> dict[str, float] | None:
        """The mean losses since the last read, as Python numbers (one host-device sync: at
        logging points, before saves and at the epoch's end only). Raises
        :class:`NonFiniteLoss` if any step since the last read had a NaN/inf loss, so a
        non-finite model never overwrites the last good checkpoint."""
        if not self._window_n:
            return None
        n, names = self._window_n, list(self._window)
        sums = torch.stack([self._window[k].float() for k in names]).tolist()
        self._window, self._window_n = {}, 0
        if not all(math.isfinite(v) for v in sums):
            raise NonFiniteLoss(
                f"loss became {sums[0]} within iterations {self.iteration - n + 1}-"
                f"{self.iteration}; stopping without saving. Lower --lr, enable --grad-clip, "
                f"or try --amp off. The last good checkpoint in {self.stage_dir} is untouched."
            )
        for k, v in zip(names, sums, strict=True):
            self._epoch_sums[k] = self._epoch_sums.get(k, 0.0) + v
        self._epoch_n += n
        return {k: v / n for k, v in zip(names, sums, strict=True)}

    def train_one_epoch(self) -> tuple[dict, str | None]:
        """Train the rest of this epoch; return its mean losses and speed, and why it stopped
        early (None: it ran to its end)."""
        cfg, stop, n, waits = self.cfg, None, 0, []
        data_loader.start_epoch(self.loader, self.epoch, self.batch_in_epoch, self.iters_per_epoch)
        self.stage.train_mode(self.model)
        self._epoch_sums, self._epoch_n = {}, 0
        bar = tqdm(
            data_loader.batches(self.loader, waits),
            total=len(self.loader),
            desc=f"stage {cfg['stage']} epoch {self.epoch + 1}/{cfg['epochs']}",
            disable=not self.main,
            dynamic_ncols=True,
            leave=False,
        )
        t0 = time.perf_counter()
        for data, label in bar:
            _, raw, refined, data, label = self.train_step(data, label)
            self.batch_in_epoch += 1
            n += 1
            self.fire("step_end", data=data, label=label, raw=raw, refined=refined)
            if self.iteration % cfg["log_every"] == 0:
                losses = self.read_losses()
                rate = n * cfg["batch_size"] * dist_utils.world_size() / (time.perf_counter() - t0)
                lr = self.optimizer.param_groups[0]["lr"]
                bar.set_postfix(loss=f"{losses['total']:.4f}", lr=f"{lr:.1e}", sps=f"{rate:.1f}")
                self.fire("log", losses=losses, lr=lr, samples_per_s=rate)
            if cfg["save_every"] and self.iteration % cfg["save_every"] == 0:
                self.save("last.pt")
            stop = self.control.should_stop(self.iteration)
            if stop:
                break
        bar.close()
        self.read_losses()
        seconds = max(time.perf_counter() - t0, 1e-9)
        means = {k: v / max(self._epoch_n, 1) for k, v in self._epoch_sums.items()}
        means["samples"] = n * cfg["batch_size"] * dist_utils.world_size()
        means.update(
            seconds=seconds,
            samples_per_s=means["samples"] / seconds,
            data_wait_s=sum(waits),
            data_wait_fraction=min(1.0, sum(waits) / seconds),
        )
        return means, stop

    @torch.no_grad()
    def evaluate(self, examples=None, tag: str = "val") -> dict:
        """Official metrics on whole images at the model's inference scale (rank 0 only);
        default: the validation set."""
        self.fire("validation", tag=tag)
        self.model.eval()
        _, summary = evaluate_model(
            self.model,
            self.val_examples if examples is None else examples,
            device=self.device,
            amp=self.amp_dtype,
            on_result=lambda i, ex, alpha, row: self.fire(
                "example", tag=tag, index=i, example=ex, alpha_u8=alpha
            ),
        )
        return summary

    def end_epoch(self, train: dict) -> None:
        """Validate (rank 0), keep the history, write last.pt (and best.pt when improved)."""
        if self.main:
            val = self.evaluate()
            improved = val["sad"] < self.best_sad
            self.best_sad = min(self.best_sad, val["sad"])
            record = {
                "epoch": self.epoch,
                "iteration": self.iteration,
                **{f"train_{k}": v for k, v in train.items()},
                **{f"val_{k}": v for k, v in val.items() if isinstance(v, float)},
            }
            real = None
            every = self.cfg["real_val_every"]
            if self.real_examples is not None and (
                self.epoch % every == 0 or self.epoch == self.cfg["epochs"]
            ):
                real = self.evaluate(self.real_examples, tag="real")
                record.update({f"real_{k}": v for k, v in real.items() if isinstance(v, float)})
            self.history.append(record)
            self.save("last.pt")
            if improved:
                self.save("best.pt", resumable=False)
            line = (
                f"epoch {self.epoch}/{self.cfg['epochs']} it {self.iteration} | "
                f"loss {train.get('total', float('nan')):.4f} | val SAD {val['sad']:.3f} "
                f"MSE {val['mse']:.4f} Grad {val['grad']:.3f} Conn {val['conn']:.3f} "
                f"(/1000 units) | {train['samples_per_s']:.1f} samples/s, "
                f"{100 * train['data_wait_fraction']:.1f}% waiting for data"
                + (f" | real SAD {real['sad']:.3f}" if real else "")
                + (" | best" if improved else "")
            )
            log.info(line)
            self.fire("epoch_end", record=record, line=line, val=val, real=real)
        dist_utils.barrier()

    # ---- the loop ----------------------------------------------------------------------
    def fit(self, max_iters: int | None = None) -> None:
        """Run the remaining epochs (or until ``max_iters`` iterations in total)."""
        self.control.max_iters = self.cfg["max_iters"] if max_iters is None else max_iters
        if self.main:
            log.info(
                "stage %d (%s) | data: %r, %d validation images | init: %s | device %s, "
                "precision %s, %s, world size %d, %d iterations/epoch",
                self.cfg["stage"],
                self.stage.name,
                self.train_set,
                len(self.val_examples),
                self.init_message,
                self.device,
                describe_amp(self.amp_dtype, self.device),
                self.memory_format,
                dist_utils.world_size(),
                self.iters_per_epoch,
            )
        meter = Throughput()
        try:
            self.control.claim()
            with self.control.running():
                while self.epoch < self.cfg["epochs"] and not self.run_epoch(meter):
                    pass
            figures = meter.report() if self.main else None
            if figures:
                self.fire("throughput", figures=figures)
        except Interrupted as e:
            log.warning("%s; continue with --resume", e)
            raise
        except data_loader.DataFailure as e:
            path = self.save("last.pt")  # the state after the last whole iteration
            path = path or self.stage_dir / "last.pt"  # non-main ranks do not write
            raise TrainerError(e.advice(self.iteration, path, self.cfg["no_bg_cache"])) from e
        except KeyboardInterrupt:  # a second Ctrl-C: stop now, without a mid-step save
            log.warning(
                "forced stop: %s keeps the last consistent state (saves are atomic)",
                self.stage_dir / "last.pt",
            )
            raise
        finally:
            if self.viz is not None:
                self.viz.close()
            self.close()

    def run_epoch(self, meter: Throughput) -> bool:
        """The rest of this epoch, then (when it is whole) validation and checkpoints; True
        when the run stops here."""
        train, stop = self.train_one_epoch()
        meter.add(train)
        if stop and (stop == SIGNAL or self.batch_in_epoch < self.iters_per_epoch):
            self.save("last.pt")  # mid-epoch: the state after this iteration
        else:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            self.end_epoch(train)  # validation runs whole, then last.pt
            stop = self.control.should_stop(self.iteration)
        if stop == SIGNAL:
            raise self.control.interrupted(self.iteration)
        if stop:
            log.info("stopped after %d iterations (%s); resume with --resume", self.iteration, stop)
        return stop is not None

    def close(self) -> None:
        """Give the run folder back (its lock); ``fit`` takes it again if called later."""
        self.control.release()

    # ---- checkpoints -------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "model_config": self.model.config.to_dict(),
            "stage": self.cfg["stage"],
            "config": self.cfg,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "iteration": self.iteration,
            "best_sad": self.best_sad,
            "history": self.history,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": capture_rng_state(),
        }

    def save(self, name: str, resumable: bool = True) -> Path | None:
        """Write ``name`` in the stage folder (rank 0), after checking that every loss since
        the last check was finite. ``resumable=False`` leaves out the optimiser, scheduler,
        scaler and RNG state: a third of the size, enough to evaluate or to start the next
        stage (what ``best.pt`` is for); ``last.pt`` keeps everything."""
        self.read_losses()
        if not self.main:
            return None
        self.fire("save", name=name)
        state = self.state_dict()
        if not resumable:
            for key in starting_point.RESUMABLE:
                state.pop(key)
        return save_checkpoint(self.stage_dir / name, state)

    def load_state_dict(self, state: dict) -> None:
        """Continue from a ``last.pt`` (already checked by ``starting_point.open_resume``)."""
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch, self.batch_in_epoch = state["epoch"], state["batch_in_epoch"]
        self.iteration, self.best_sad = state["iteration"], state["best_sad"]
        self.history = list(state.get("history", []))
        restore_rng_state(state["rng"])


def describe_start(cfg: dict) -> str:
    """The run's first log line: the stage, the data, the preset and every value it set (a
    flag that overrode one says so)."""
    source = (f"Adobe-style data at {cfg['data_root']}" if cfg["data_root"]
              else "built-in synthetic set (no --data-root given)")  # fmt: skip
    values = ", ".join(
        f"{k}={cfg[k]}" + ("" if cfg[k] == v else f" (flag; preset {v})")
        for k, v in PRESETS[cfg["preset"]].items()
    )
    return f"training stage {cfg['stage']} on the {source} with preset {cfg['preset']}: {values}"


def main(argv: list[str] | None = None, callbacks: Mapping[str, Callable] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    args = build_parser(__doc__).parse_args(argv)
    try:
        cfg = resolve_config(args)
    except TrainerError as e:
        log.error("%s", e)
        return 2
    if dist_utils.rank() == 0 or not dist_utils.launched_by_torchrun():
        log.info("%s", describe_start(cfg))
        log.info("full configuration (stored in every checkpoint): %s",
                 json.dumps(cfg, sort_keys=True))  # fmt: skip
    try:
        Trainer(cfg, callbacks).fit()
    except NonFiniteLoss as e:
        log.error("%s", e)
        return 1
    except CheckpointWriteError as e:  # a full disk or a read-only runs folder: one line
        log.error("%s. Free space there (or pass another --runs-dir) and continue with --resume", e)
        return 1
    except TrainerError as e:
        log.error("%s", e)
        return 2
    except (DataSourceError, ImageReadError, CheckpointError, VGGWeightsError, RunLockedError) as e:
        # Bad input (data folders, images, checkpoints, weights): the message names the file
        # and what to do; a traceback would only hide it.
        log.error("%s: %s", type(e).__name__, e)
        return 2
    except Interrupted as e:
        return 128 + int(e.signum)  # 130 for SIGINT, 143 for SIGTERM, as a killed process
    except KeyboardInterrupt:
        return 130
    finally:
        dist_utils.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
