"""Train Deep Image Matting, one stage at a time.

    python train_encoder_decoder.py --stage 1            # encoder-decoder, alpha + composition loss
    python train_encoder_decoder.py --stage 2            # refine head only (encoder-decoder frozen)
    python train_encoder_decoder.py --stage 3            # everything, on the refined alpha
    torchrun --nproc_per_node=8 train_encoder_decoder.py --stage 1 --data-root /data/adobe ...

With no ``--data-root`` it trains on the built-in synthetic set (generated on first use) with a
CPU-sized preset; with one it uses the paper's settings. Each run lives in
``<runs-dir>/<run-name>/stage<N>/`` (``last.pt``, ``best.pt``, plots, panels, metrics.jsonl).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent))

import cv2
import torch
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from data.py_adobe_data import worker_init_fn
from data.sources import DataSourceError
from data.testsets import open_testset
from data.trainval import build_train_val
from models.py_encoder_decoder import (
    DIM,
    VGGWeightsError,
    load_vggbn,
    read_vgg_state_dict,
    vgg_hub_cache_file,
)
from models.py_loss import DIMLoss
from utils import distributed as dist_utils
from utils import runlock
from utils.checkpoint import (
    CheckpointError,
    load_checkpoint,
    remove_stale_temps,
    save_checkpoint,
)
from utils.determinism import capture_rng_state, restore_rng_state, seed_everything
from utils.device import check_amp, describe_amp, pick_device
from utils.evaluation import evaluate_model
from utils.image_io import ImageReadError
from utils.tiling import scale_arg
from utils.visualization import Visualizer

log = logging.getLogger("train")

# Settings that differ between the built-in synthetic set (a CPU demo that must learn within
# ten minutes from random init; chosen by measured runs, README "CPU recipes") and real Adobe
# data (the paper: ImageNet-initialised encoder, constant lr 1e-5, no skip connections).
PRESETS = {
    "synthetic": dict(
        crop_size=128,
        batch_size=8,
        lr=3e-4,
        epochs=20,
        iters_per_epoch=30,
        scheduler="cosine",
        warmup_iters=20,
        skip="add",
        infer_scale=0.5,
    ),
    "adobe": dict(
        crop_size=320,
        batch_size=16,
        lr=1e-5,
        epochs=30,
        iters_per_epoch=None,
        scheduler="constant",
        warmup_iters=0,
        skip="none",
        infer_scale=1.0,
    ),
}


@dataclass(frozen=True)
class Stage:
    """What one stage of the paper's schedule means. The Trainer reads nothing else about
    stages: change the schedule here."""

    refine_head: bool  # the model has the refine head
    trains: tuple[str, ...]  # DIM children that train; the others are frozen (no gradients,
    # BatchNorm statistics fixed, absent from the optimiser)
    loss_on: str  # "raw" or "refined": the alpha the loss sees
    weights: tuple[float, float]  # (w_alpha, w_comp), before --w-alpha/--w-comp
    starts_from: int | None  # the stage whose best.pt it starts from (None: VGG/random init)


STAGES = {
    # encoder-decoder, both losses, from ImageNet VGG16-BN (or random init)
    1: Stage(False, ("encoder", "decoder"), "raw", (0.5, 0.5), None),
    # the refine head alone on the alpha loss, on top of a fixed stage-1 network
    2: Stage(True, ("refine_head",), "refined", (1.0, 0.0), 1),
    # everything, fine-tuned with both losses on the refined alpha
    3: Stage(True, ("encoder", "decoder", "refine_head"), "refined", (0.5, 0.5), 2),
}


class TrainerError(RuntimeError):
    """A run cannot start or continue (bad flag, missing prerequisite, unusable checkpoint):
    the message says what to do. ``main()`` turns it into one error line and exit status 2."""


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def number(kind: type, low: float, *, strict: bool = False):
    """argparse type: an int/float ``>= low`` (``> low`` when ``strict``), finite; a bad value
    is refused where it is parsed, with the allowed range."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        if not math.isfinite(value) or (value <= low if strict else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {text}")
        return value

    return parse


def int_list(text: str) -> tuple[int, ...]:
    """argparse type: comma-separated positive integers, e.g. ``64,96,128``."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"every value must be >= 1, got {text!r}")
    return values


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line naming the flag (exit status 2), not the whole usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--stage", type=int, choices=(1, 2, 3), required=True, help="training stage")
    g = p.add_argument_group("data")
    g.add_argument(
        "--data-root",
        type=Path,
        default=None,
        help="Adobe-style training folder; absent: the built-in synthetic set",
    )
    g.add_argument(
        "--bg-dir",
        type=Path,
        default=None,
        help="backgrounds folder (default: <data-root>/bg, COCO train2014 for Adobe)",
    )
    g.add_argument(
        "--val-dir",
        type=Path,
        default=None,
        help="validation set in Composition-1k layout (default: built from held-out "
        "foregrounds, or the synthetic set's val split)",
    )
    g.add_argument(
        "--val-limit", type=number(int, 1), default=None, help="validate on the first N images"
    )
    g.add_argument(
        "--real-val",
        type=Path,
        default=None,
        help="also score real photographs with ground truth (any evaluate.py test set, e.g. "
        "an alphamatting.com folder) every --real-val-every epochs; logged beside the "
        "validation curves, never used to pick best.pt",
    )
    g.add_argument(
        "--real-val-every", type=number(int, 1), default=1, help="epochs between real-photo scores"
    )
    g.add_argument(
        "--real-val-trimap", default="Trimap1", help="trimap set of an alphamatting.com folder"
    )
    g.add_argument(
        "--crop-size", type=number(int, 32), default=None, help="training crop side (preset)"
    )
    g.add_argument(
        "--infer-scale",
        type=scale_arg,
        default=None,
        help="the image scale in (0, 1] the model runs at in validation and, stored in its "
        "checkpoints, in evaluate.py/predict.py/demo.py (preset; 1 = full resolution)",
    )
    g.add_argument(
        "--cut-sizes",
        type=int_list,
        default=None,
        help="sides of the windows cut around an unknown pixel before they are resized to "
        "--crop-size, e.g. 64,96,128 (preset; default: crop, 1.5x crop, 2x crop as the paper)",
    )
    g.add_argument(
        "--photo-dir",
        default="auto",
        help="built-in set only: photographs mixed into its training backgrounds and textures "
        "(a folder; 'auto': the ones scikit-image ships; 'none')",
    )
    g.add_argument("--workers", type=number(int, 0), default=2, help="DataLoader worker processes")
    g.add_argument(
        "--no-bg-cache",
        action="store_true",
        help="decode background JPEGs per sample instead of caching them decoded "
        "(COCO train2014 decoded is ~40 GB of disk)",
    )
    g.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="decoded-image cache for fast loading (default: .cache/decoded, or $DIM_CACHE_DIR)",
    )
    g = p.add_argument_group("model")
    g.add_argument("--fc6", choices=("transmap", "conv1x1"), default="transmap")
    g.add_argument("--upsample", choices=("unpool", "bilinear", "deconv"), default="unpool")
    g.add_argument(
        "--skip",
        choices=("none", "add", "concat"),
        default=None,
        help="skip connections from the encoder to the decoder (preset: add on the built-in "
        "set, none - the paper - on real data)",
    )
    g.add_argument("--refine-add", choices=("logit", "clip"), default="logit")
    g.add_argument(
        "--vgg-weights",
        type=str,
        default=None,
        help="torchvision vgg16_bn ImageNet state dict (.pth) for stage 1; "
        "default: torch's hub cache when present, else random init",
    )
    g.add_argument(
        "--init",
        type=Path,
        default=None,
        help="checkpoint to start from (default: previous stage's best.pt)",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=number(int, 1), default=None)
    g.add_argument(
        "--iters-per-epoch",
        type=number(int, 1),
        default=None,
        help="cap an epoch at N iterations (online compositing makes epochs arbitrary)",
    )
    g.add_argument(
        "--max-iters",
        type=number(int, 1),
        default=None,
        help="stop (and save last.pt) after N iterations in total",
    )
    g.add_argument(
        "--max-minutes",
        type=number(float, 0, strict=True),
        default=None,
        help="stop (and save last.pt) after the step or validation during which M minutes of "
        "training have passed (the data set-up before the first step is not counted)",
    )
    g.add_argument("--batch-size", type=number(int, 1), default=None, help="per process (preset)")
    g.add_argument(
        "--lr", type=number(float, 0, strict=True), default=None, help="learning rate (preset)"
    )
    g.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default="adam")
    g.add_argument("--weight-decay", type=number(float, 0), default=0.0)
    g.add_argument("--scheduler", choices=("constant", "cosine", "step"), default=None,
                   help="learning-rate schedule after the warm-up (preset)")  # fmt: skip
    g.add_argument(
        "--warmup-iters",
        type=number(int, 0),
        default=None,
        help="linear learning-rate warm-up from lr/warmup to lr over N iterations (preset)",
    )
    g.add_argument(
        "--lr-step", type=number(int, 1), default=10, help="epochs between decays (step)"
    )
    g.add_argument(
        "--lr-gamma", type=number(float, 0, strict=True), default=0.1, help="decay factor (step)"
    )
    g.add_argument(
        "--grad-clip", type=number(float, 0), default=0.0, help="max grad norm; 0 disables"
    )
    g.add_argument(
        "--w-alpha", type=number(float, 0), default=None, help="alpha-loss weight (per stage)"
    )
    g.add_argument("--w-comp", type=number(float, 0), default=None, help="composition-loss weight")
    g = p.add_argument_group("run")
    g.add_argument("--run-name", default="dim")
    g.add_argument("--runs-dir", type=Path, default=Path("runs"))
    g.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default=None,
        help="continue from this run/stage's last.pt when it exists, else start afresh "
        "(auto, the default of a bare --resume: a requeued job repeats its command line), "
        "or from the given last.pt",
    )
    g.add_argument(
        "--save-every",
        type=number(int, 0),
        default=0,
        help="also write last.pt every N iterations (0: once per epoch)",
    )
    g.add_argument("--seed", type=number(int, 0), default=0)
    g.add_argument(
        "--log-every", type=number(int, 1), default=10, help="iterations between plot points"
    )
    g.add_argument(
        "--panel-every", type=number(int, 1), default=100, help="iterations between panels"
    )
    g = p.add_argument_group("device")
    g.add_argument("--device", choices=("auto", "cuda", "cpu", "mps"), default="auto")
    g.add_argument(
        "--amp",
        choices=("auto", "bf16", "fp16", "off"),
        default="auto",
        help="mixed precision (auto: bf16 on CUDA where supported, else off)",
    )
    g.add_argument(
        "--channels-last",
        choices=("on", "off"),
        default="on",
        help="NHWC memory format (faster on GPUs and on this CPU)",
    )
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under DDP")
    g.add_argument("--threads", type=number(int, 1), default=None, help="torch CPU threads")
    g = p.add_argument_group("visualisation")
    g.add_argument("--visdom-server", default="http://localhost")
    g.add_argument("--visdom-port", type=number(int, 1), default=8097)
    g.add_argument("--no-visdom", action="store_true", help="write plots to the run folder only")
    return p


def resolve_config(args: argparse.Namespace) -> dict:
    """Fill preset- and stage-dependent defaults; return a plain dict (stored in checkpoints)."""
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    cfg["dataset"] = "synthetic" if args.data_root is None else "adobe"
    for key, value in PRESETS[cfg["dataset"]].items():
        if cfg.get(key) is None:
            cfg[key] = value
    w_alpha, w_comp = STAGES[args.stage].weights
    cfg["w_alpha"] = w_alpha if cfg["w_alpha"] is None else cfg["w_alpha"]
    cfg["w_comp"] = w_comp if cfg["w_comp"] is None else cfg["w_comp"]
    if cfg["cut_sizes"] is not None:
        cfg["cut_sizes"] = list(cfg["cut_sizes"])  # plain list: stored in checkpoints
    if cfg["crop_size"] % 32:
        raise TrainerError(f"--crop-size {cfg['crop_size']} must be a multiple of 32")
    if cfg["w_alpha"] < 0 or cfg["w_comp"] < 0 or cfg["w_alpha"] + cfg["w_comp"] == 0:
        raise TrainerError("--w-alpha/--w-comp must be >= 0 and not both 0")
    return cfg


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


class ResumableSampler(DistributedSampler):
    """DistributedSampler (per-epoch shuffle, one shard per rank) that can skip the batches a
    resumed run has already trained on in the current epoch, so a resume is exact."""

    def __init__(self, dataset, num_replicas: int, rank: int, seed: int, batch_size: int):
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.batch_size = batch_size
        self.skip_batches = 0
        self.max_batches: int | None = None

    def __iter__(self):
        indices = list(super().__iter__())
        stop = len(indices) if self.max_batches is None else self.max_batches * self.batch_size
        return iter(indices[self.skip_batches * self.batch_size : stop])

    def __len__(self) -> int:
        n = super().__len__()
        if self.max_batches is not None:
            n = min(n, self.max_batches * self.batch_size)
        return max(0, n - self.skip_batches * self.batch_size)


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------
class NonFiniteLoss(RuntimeError):
    pass


class DataFailure(Exception):
    """A training sample could not be made mid-run (a file that passed the start-up header
    check fails to decode). ``message`` is the original one line naming the file, also when
    the failure happened in a DataLoader worker."""

    def __init__(self, error: Exception):
        text = str(error)
        # A worker's error comes back re-raised with its whole traceback in the message;
        # its last line is the original "SomeError: what and which file".
        if "Original Traceback" in text:
            last = [line for line in text.splitlines() if line.strip()][-1]
            text = last.split(": ", 1)[1] if ": " in last else last
        self.message = text
        super().__init__(text)


def loader_batches(loader, waits: list[float] | None = None):
    """Iterate ``loader``, turning a data error into :class:`DataFailure` (the state is still
    "after the previous iteration": batches are fetched before a step starts).

    ``waits`` (optional) gets, per batch, the seconds the loop stood blocked on the loader
    (starting the iterator included): near 0 when the workers keep up with the model. Two
    clock reads per batch, so it is always on.
    """
    t0 = time.perf_counter()
    batches = iter(loader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except (ImageReadError, DataSourceError) as e:
            raise DataFailure(e) from e
        if waits is not None:
            waits.append(time.perf_counter() - t0)
        yield batch
        t0 = time.perf_counter()


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM at a consistent point, after ``last.pt`` was saved
    (the state after a whole iteration, or after a whole validation)."""

    def __init__(self, signum: int, iteration: int, path: Path | None):
        self.signum, self.iteration, self.path = signum, iteration, path
        name = signal.Signals(signum).name
        super().__init__(f"{name}: stopped after iteration {iteration}, saved {path}")


# Test-only fault injection: DIM_FAULT_INJECT="phase:iteration[:signal[:rank]]" sends this
# process a signal (INT, the default; TERM, as a scheduler's preemption; KILL, a crash) at that
# phase (forward, backward, step, validation, save) of that (1-based) iteration, on every rank or
# only the given one, and only in torchrun's first attempt (TORCHELASTIC_RESTART_COUNT), so the
# interrupt, requeue and elastic-restart tests are reproducible instead of timing-dependent.
FAULT_ENV = "DIM_FAULT_INJECT"

# Settings that define the network (the model is built from exactly these, plus the stage's
# refine head): resuming under others cannot continue the same model.
MODEL_KEYS = ("fc6", "upsample", "skip", "refine_add")
# Settings a resume may change without comment: where things are, how fast, how verbose.
RESUME_FREE_KEYS = frozenset(
    ("resume", "workers", "threads", "cache_dir", "no_visdom", "visdom_server", "visdom_port",
     "log_every", "panel_every", "save_every", "max_iters", "real_val", "real_val_every",
     "real_val_trimap", "device", "compile", "channels_last", "runs_dir", "no_bg_cache",
     "max_minutes")
)  # fmt: skip


class Trainer:
    """Owns one stage of one run: data, model, loss, optimiser, loop, validation, checkpoints."""

    def __init__(self, cfg: dict):
        self.cfg = cfg
        self.stage = cfg["stage"]
        self.spec = STAGES[self.stage]
        try:
            self.device = pick_device(cfg["device"])
            self.amp_dtype = check_amp(cfg["amp"], self.device)
        except ValueError as e:
            raise TrainerError(str(e)) from e
        ddp_device = dist_utils.init_distributed(self.device.type)
        if ddp_device is not None:
            self.device = ddp_device
        self.main = dist_utils.is_main()
        if cfg["threads"]:
            torch.set_num_threads(cfg["threads"])
        if cfg["workers"] > 0:
            # The workers are the data parallelism: one OpenCV thread each. Set here, in the
            # parent, before they fork (setting it inside a forked worker can deadlock).
            cv2.setNumThreads(1)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed crop sizes: let cuDNN pick kernels
        self.channels_last = cfg["channels_last"] == "on"
        seed_everything(cfg["seed"] + dist_utils.rank())

        self.stage_dir = Path(cfg["runs_dir"]) / cfg["run_name"] / f"stage{self.stage}"
        self.run_dir = self.stage_dir.parent
        self.epoch = 0  # next epoch to run
        self.batch_in_epoch = 0  # batches of `epoch` already trained (mid-epoch resume)
        self.iteration = 0
        self.best_sad = math.inf
        self.history: list[dict] = []

        # Read every file named on the command line (--init / previous stage, --resume,
        # --vgg-weights) before the (possibly long) data set-up, so a missing or broken one
        # fails at once.
        if self.main and self.stage_dir.is_dir():
            self._check_lock()  # another live training here: refuse before the data set-up
        self.resume_path, self.resume_state = self._resume_checkpoint()
        self.start_path, self.start_state = self._start_checkpoint()
        self.vgg_state = self._read_vgg_weights()
        self._setup_data()
        self._setup_model()
        self._setup_optim()
        self._locked = False
        if self.main:  # only now: a refused start leaves no folder behind
            self.stage_dir.mkdir(parents=True, exist_ok=True)
            self._take_lock()
            for stale in remove_stale_temps(self.stage_dir):
                log.info("removed %s, left by a writer that no longer runs", stale.name)
        self._stop_signal: int | None = None
        self._fault_fired = False  # test-only hook (FAULT_ENV) fires once
        self._deadline: float | None = None  # perf_counter() at which --max-minutes runs out
        self._setup_visualizer()
        if self.resume_state is not None:
            self._resume()

    # ---- setup --------------------------------------------------------------------------
    def _setup_data(self) -> None:
        cfg = self.cfg
        # Rank 0 builds the decoded cache and the validation set first; the others then reuse
        # them instead of racing to write the same files.
        if not self.main:
            dist_utils.barrier()
        train_set, val_examples = build_train_val(
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
        if val_examples is None:
            raise TrainerError("no validation set: pass --val-dir (Composition-1k layout)")
        if cfg["val_limit"]:
            val_examples = [
                val_examples[i] for i in range(min(cfg["val_limit"], len(val_examples)))
            ]
        self.train_set, self.val_examples = train_set, val_examples
        self.data_description = f"{train_set!r}, {len(val_examples)} validation images"
        self.real_examples = None
        if cfg["real_val"] and self.main:
            self.real_examples = open_testset(cfg["real_val"], trimap=cfg["real_val_trimap"])
            self.data_description += f", {len(self.real_examples)} real photographs"
        self.sampler = ResumableSampler(
            train_set, dist_utils.world_size(), dist_utils.rank(), cfg["seed"], cfg["batch_size"]
        )
        if self.iters_per_epoch == 0:
            raise TrainerError(
                f"the training set has {len(train_set)} samples, fewer than one batch of "
                f"{cfg['batch_size']} per process: lower --batch-size"
            )
        workers = cfg["workers"]
        # One loader for the whole run: the sampler is re-read every epoch, and the dataset's
        # epoch counter lives in shared memory, so persistent workers see set_epoch().
        self.loader = DataLoader(
            train_set,
            batch_size=cfg["batch_size"],
            sampler=self.sampler,
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            worker_init_fn=worker_init_fn,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )

    def _setup_model(self) -> None:
        cfg = self.cfg
        model = DIM(refine=self.spec.refine_head, **{k: cfg[k] for k in MODEL_KEYS})
        self.init_message = self._initialise(model)
        # Frozen parts are truly frozen: no gradients, BN statistics fixed (eval mode in
        # train_mode()), and absent from the optimiser.
        for name, child in model.named_children():
            child.requires_grad_(name in self.spec.trains)
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if dist_utils.is_distributed() and cfg["sync_bn"]:
            model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.infer_scale = cfg["infer_scale"]  # validation runs as inference will
        self.model = model  # the plain module: what checkpoints store
        net = model
        if dist_utils.is_distributed():
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)
        if cfg["compile"]:
            net = torch.compile(net)
        self.net = net  # what the training step calls
        self.criterion = DIMLoss(w_alpha=cfg["w_alpha"], w_comp=cfg["w_comp"])

    def _start_checkpoint(self) -> tuple[Path | None, dict | None]:
        """The checkpoint this stage starts from (``--init``, else the previous stage's best.pt
        for stages 2-3), loaded; (None, None) for stage 1 from VGG/random init or a resume."""
        cfg = self.cfg
        if self.resume_state is not None:
            return None, None
        init, prev_stage = cfg["init"], self.spec.starts_from
        if init is None and prev_stage is not None:
            prev = self.run_dir / f"stage{prev_stage}" / "best.pt"
            if not prev.is_file():
                raise TrainerError(
                    f"stage {self.stage} starts from stage {prev_stage}'s best checkpoint, "
                    f"but {prev} does not exist. Make it with:\n"
                    f"  python train_encoder_decoder.py --stage {prev_stage} "
                    f"--run-name {cfg['run_name']} --runs-dir {cfg['runs_dir']}\n"
                    "or pass --init PATH."
                )
            init = prev
        return (None, None) if init is None else (Path(init), load_checkpoint(init))

    def _resume_checkpoint(self) -> tuple[Path | None, dict | None]:
        """The ``--resume`` checkpoint, loaded and checked to be this stage's and this model's;
        (None, None) without --resume, or with ``--resume auto`` when this stage has no
        last.pt yet (a fresh start, so a requeued command line works the first time too)."""
        path = self.cfg["resume"]
        if not path:
            return None, None
        if path == "auto":
            path = self.stage_dir / "last.pt"
            if not path.is_file():
                if self.main:
                    log.info("--resume auto: no %s yet, starting a new run", path)
                return None, None
        path = Path(path)
        if not path.is_file():
            raise TrainerError(
                f"--resume: {path} not found (nothing to resume for run "
                f"'{self.cfg['run_name']}' stage {self.stage}); drop --resume to start afresh"
            )
        state = load_checkpoint(path)
        if state.get("stage") != self.stage:
            raise TrainerError(
                f"--resume {path}: it is a stage {state.get('stage')} checkpoint, "
                f"not stage {self.stage}"
            )
        missing = [k for k in ("optimizer", "scheduler", "scaler", "rng") if k not in state]
        if missing:
            raise TrainerError(
                f"--resume {path}: it holds weights only (no {', '.join(missing)}), as best.pt "
                "does; resume from last.pt, or start a new run from it with --init"
            )
        self._check_same_run(path, state.get("config") or {})
        return path, state

    def _check_same_run(self, path: Path, saved: dict) -> None:
        """Refuse a resume whose model settings differ from the checkpoint's (the weights
        would not be that model's); name the other changed settings (the continuation is then
        not what an uninterrupted run would have done)."""
        cfg = self.cfg
        changed = {
            k: (saved[k], cfg[k])
            for k in sorted(saved.keys() & cfg.keys())
            if k not in RESUME_FREE_KEYS and saved[k] != cfg[k]
        }

        def diff(keys) -> str:
            return ", ".join(f"{k} {changed[k][0]!r} -> {changed[k][1]!r}" for k in keys)

        model = [k for k in MODEL_KEYS if k in changed]
        if model:
            flags = " ".join(f"--{k.replace('_', '-')} {changed[k][0]}" for k in model)
            raise TrainerError(
                f"--resume {path}: that run's model differs from this command's "
                f"({diff(model)}); resume with its settings ({flags}) or start a new run "
                "with another --run-name"
            )
        if changed and self.main:
            log.warning(
                "--resume %s with changed settings (%s): the run continues, but not as an "
                "uninterrupted run would have",
                path,
                diff(changed),
            )

    def _check_lock(self) -> None:
        try:
            runlock.check_unlocked(self.stage_dir)
        except runlock.RunLockedError as e:
            raise TrainerError(str(e)) from e

    def _take_lock(self) -> None:
        """Own the stage folder while this Trainer may write in it (rank 0)."""
        try:
            note = runlock.acquire(self.stage_dir)
        except runlock.RunLockedError as e:
            raise TrainerError(str(e)) from e
        if note:
            log.warning("%s", note)
        self._locked = True

    def close(self) -> None:
        """Give the run folder back (the lock); ``fit`` takes it again if called later."""
        if self._locked:
            runlock.release(self.stage_dir)
            self._locked = False

    def _read_vgg_weights(self):
        """The ImageNet VGG16-BN state dict for a stage-1 start (``--vgg-weights``, else
        torch's hub cache when present), read now; None when not needed or not found."""
        cfg = self.cfg
        if (
            self.resume_state is not None
            or self.start_state is not None
            or self.spec.starts_from is not None
        ):
            return None
        weights = cfg["vgg_weights"]
        if weights is None:
            if not vgg_hub_cache_file().is_file():
                return None
            weights = vgg_hub_cache_file()
        try:
            return read_vgg_state_dict(weights)
        except VGGWeightsError as e:
            raise TrainerError(f"--vgg-weights: {e}") from e

    def _initialise(self, model: DIM) -> str:
        """Load starting weights for this stage; return a line saying what was loaded."""
        if self.resume_state is not None:
            return "weights from the resumed checkpoint"
        init, state = self.start_path, self.start_state
        self.start_state = None  # the weights live in the model from here on
        if state is not None:
            missing, unexpected = model.load_state_dict(state["model"], strict=False)
            bad = [k for k in missing if not k.startswith("refine_head.")]
            if bad or unexpected:
                raise TrainerError(
                    f"--init {init}: its weights do not fit this model "
                    f"(missing {bad[:5]}, unexpected {list(unexpected)[:5]}); "
                    f"it was trained with {state['model_config']}"
                )
            fresh = " (refine head freshly initialised)" if missing else ""
            return f"weights from {init} (stage {state.get('stage', '?')}){fresh}"
        if self.spec.starts_from is None:  # the ImageNet-initialised stage
            if self.vgg_state is None:
                log.warning(
                    "No ImageNet VGG16-BN weights (looked for --vgg-weights and %s). "
                    "Training the encoder from random init: expect far slower convergence "
                    "and a worse final SAD than the paper (fine for the synthetic demo).",
                    vgg_hub_cache_file(),
                )
                return "random init (no VGG16-BN weights found)"
            state, source = self.vgg_state
            self.vgg_state = None
            try:
                report = load_vggbn(model, state)
            except VGGWeightsError as e:
                raise TrainerError(f"--vgg-weights {source}: {e}") from e
            return f"ImageNet VGG16-BN encoder from {source} ({report.summary()})"
        return "random init"

    def _setup_optim(self) -> None:
        cfg = self.cfg
        params = [p for p in self.model.parameters() if p.requires_grad]
        if cfg["optimizer"] == "adam":
            opt = torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        elif cfg["optimizer"] == "adamw":
            opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        else:
            opt = torch.optim.SGD(
                params, lr=cfg["lr"], momentum=0.9, weight_decay=cfg["weight_decay"]
            )
        self.optimizer = opt
        # One LambdaLR for every schedule: it steps once per iteration, after
        # optimizer.step(), and its state is just the iteration count (exact resume).
        factor = functools.partial(
            lr_factor,
            warmup=cfg["warmup_iters"],
            schedule=cfg["scheduler"],
            total=self.iters_per_epoch * cfg["epochs"],
            step_every=cfg["lr_step"] * self.iters_per_epoch,
            gamma=cfg["lr_gamma"],
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        self.scaler = torch.amp.GradScaler(
            self.device.type, enabled=self.amp_dtype is torch.float16
        )

    def _setup_visualizer(self) -> None:
        self.viz = None
        if self.main:
            self.viz = Visualizer(
                self.stage_dir,
                env=f"{self.cfg['run_name']}-stage{self.stage}",
                server=self.cfg["visdom_server"],
                port=self.cfg["visdom_port"],
                enabled=not self.cfg["no_visdom"],
                panel_every=self.cfg["panel_every"],
            )
            self.viz.text("config", json.dumps(self.cfg, indent=1, sort_keys=True))

    @property
    def iters_per_epoch(self) -> int:
        full = len(self.train_set) // (self.cfg["batch_size"] * dist_utils.world_size())
        cap = self.cfg["iters_per_epoch"]
        return full if cap is None else min(full, cap)

    # ---- checkpoints --------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "model_config": self.model.config.to_dict(),
            "stage": self.stage,
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
        """Write ``name`` in the stage folder (rank 0). ``resumable=False`` leaves out the
        optimiser/scheduler/scaler/RNG state: a third of the size, enough to evaluate or to
        start the next stage (what ``best.pt`` is for); ``last.pt`` keeps everything."""
        if not self.main:
            return None
        self._fault_point("save")
        state = self.state_dict()
        if not resumable:
            for key in ("optimizer", "scheduler", "scaler", "rng"):
                state.pop(key)
        return save_checkpoint(self.stage_dir / name, state)

    def _resume(self) -> None:
        path, state = self.resume_path, self.resume_state
        self.resume_state = None
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.epoch = state["epoch"]
        self.batch_in_epoch = state["batch_in_epoch"]
        self.iteration = state["iteration"]
        self.best_sad = state["best_sad"]
        self.history = list(state.get("history", []))
        restore_rng_state(state["rng"])
        self.init_message = f"resumed from {path} at epoch {self.epoch}, iteration {self.iteration}"

    # ---- training -----------------------------------------------------------------------
    def train_mode(self) -> None:
        self.model.train()
        # Frozen BN layers must not update their running statistics either.
        for name, module in self.model.named_children():
            if name not in self.spec.trains:
                module.eval()

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def train_step(self, data: torch.Tensor, label: torch.Tensor) -> tuple:
        non_blocking = self.device.type == "cuda"
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        data = data.to(self.device, non_blocking=non_blocking, memory_format=fmt)
        label = label.to(self.device, non_blocking=non_blocking)
        self._fault_point("forward")
        with self._autocast():
            raw, refined = self.net(data)
        pred = raw if self.spec.loss_on == "raw" else refined
        loss, parts = self.criterion(pred.float(), label)
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLoss(
                f"loss became {value} at iteration {self.iteration + 1}; stopping without "
                "saving. Lower --lr, enable --grad-clip, or try --amp off. The last good "
                f"checkpoint in {self.stage_dir} is untouched."
            )
        self.optimizer.zero_grad(set_to_none=True)
        self._fault_point("backward")
        self.scaler.scale(loss).backward()
        if self.cfg["grad_clip"] > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], self.cfg["grad_clip"]
            )
        self._fault_point("step")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iteration += 1
        out = {"total": value, **{k: float(v.detach()) for k, v in parts.items()}}
        return out, raw, refined, data, label

    def train_epoch(self, max_iters: int | None = None) -> dict:
        """Train one epoch (or its remainder after a resume, or until a budget stop); return
        the mean losses and the epoch's speed: ``samples``, ``seconds``, ``samples_per_s``,
        ``data_wait_s`` (time blocked on the loader) and ``data_wait_fraction``."""
        cfg = self.cfg
        self.sampler.set_epoch(self.epoch)
        self.sampler.skip_batches = self.batch_in_epoch
        self.sampler.max_batches = self.iters_per_epoch
        self.train_set.set_epoch(self.epoch)
        loader = self.loader
        self.train_mode()
        sums: dict[str, float] = {}
        n = 0
        waits: list[float] = []
        t0 = time.perf_counter()
        bar = tqdm(
            loader_batches(loader, waits),
            desc=f"stage {self.stage} epoch {self.epoch + 1}/{cfg['epochs']}",
            total=len(loader),
            disable=not self.main,
            dynamic_ncols=True,
            leave=False,
        )
        for data, label in bar:
            losses, raw, refined, data, label = self.train_step(data, label)
            self.batch_in_epoch += 1
            n += 1
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v
            elapsed = time.perf_counter() - t0
            rate = n * cfg["batch_size"] * dist_utils.world_size() / max(elapsed, 1e-9)
            lr = self.optimizer.param_groups[0]["lr"]
            bar.set_postfix(loss=f"{losses['total']:.4f}", lr=f"{lr:.1e}", sps=f"{rate:.1f}")
            if self.viz is not None:
                if self.iteration % cfg["log_every"] == 0:
                    self.viz.scalars(self.iteration, losses, "loss")
                    self.viz.scalars(self.iteration, {"lr": lr}, "lr")
                    self.viz.scalars(self.iteration, {"samples_per_s": rate}, "speed")
                if self.viz.panel_due(self.iteration, "train"):
                    self.viz.matting_panel(
                        self.iteration,
                        "train",
                        # device tensors: the Visualizer copies only the samples it shows
                        data,
                        label,
                        raw,
                        refined,
                    )
            if cfg["save_every"] and self.iteration % cfg["save_every"] == 0:
                self.save("last.pt")
            self._stop_if_requested()
            if max_iters is not None and self.iteration >= max_iters:
                break
            if self._out_of_time():
                break
        bar.close()
        seconds = max(time.perf_counter() - t0, 1e-9)
        means = {k: v / max(n, 1) for k, v in sums.items()}
        means["samples"] = n * cfg["batch_size"] * dist_utils.world_size()
        means["seconds"] = seconds
        means["samples_per_s"] = means["samples"] / seconds
        means["data_wait_s"] = sum(waits)
        means["data_wait_fraction"] = min(1.0, sum(waits) / seconds)
        return means

    @torch.no_grad()
    def validate(self, examples=None, tag: str = "val") -> dict:
        """Official metrics on a fixed set (default: the validation set), full-image inference
        (rank 0 only); panels of the first two images are tagged ``tag``."""

        def panel(i, example, alpha_u8, row):
            if self.viz is not None and i < 2:
                self.viz.example_panel(
                    self.iteration, f"{tag} {i}", example, alpha_u8, self.spec.refine_head
                )

        self._fault_point("validation")
        self.model.eval()
        _, summary = evaluate_model(
            self.model,
            self.val_examples if examples is None else examples,
            device=self.device,
            amp=self.amp_dtype,
            progress=False,
            on_result=panel,
        )
        return summary

    def fit(self, max_iters: int | None = None) -> dict | None:
        """Run the remaining epochs; return the last validation summary (rank 0)."""
        cfg = self.cfg
        max_iters = max_iters if max_iters is not None else cfg["max_iters"]
        if self.main:
            log.info(
                "stage %d | data: %s | init: %s",
                self.stage,
                self.data_description,
                self.init_message,
            )
            log.info(
                "device %s, precision %s, channels_last %s, world size %d, %d iterations/epoch",
                self.device,
                describe_amp(self.amp_dtype, self.device),
                self.channels_last,
                dist_utils.world_size(),
                self.iters_per_epoch,
            )
        summary = None
        if self.main and not self._locked:
            self._take_lock()
        started = time.perf_counter()
        if cfg.get("max_minutes"):
            self._deadline = started + 60.0 * cfg["max_minutes"]
        totals = {"samples": 0, "seconds": 0.0, "data_wait_s": 0.0}
        previous = self._install_stop_handlers()
        try:
            while self.epoch < cfg["epochs"]:
                train = self.train_epoch(max_iters)
                for key in totals:
                    totals[key] += train[key]
                if self.batch_in_epoch < self.iters_per_epoch:  # a budget stop mid-epoch
                    self.save("last.pt")
                    log.info(
                        "stopped after %d iterations (%s); resume with --resume",
                        self.iteration,
                        self._budget_reason(max_iters),
                    )
                    break
                self.epoch += 1
                self.batch_in_epoch = 0
                summary = self._end_epoch(train)  # validation runs whole, then last.pt
                self._stop_if_requested(saved=True)
                if max_iters is not None and self.iteration >= max_iters:
                    break
                if self._out_of_time():
                    log.info("stopped after %d iterations (--max-minutes)", self.iteration)
                    break
            self._report_throughput(totals, time.perf_counter() - started)
        except Interrupted as e:
            log.warning("%s; continue with --resume", e)
            raise
        except DataFailure as e:
            path = self.save("last.pt")  # the state after the last whole iteration
            flag = (
                "drop --no-bg-cache to have every image decoded (and checked) at start"
                if self.cfg["no_bg_cache"]
                else "images are decoded (and checked) at start unless --no-bg-cache is given"
            )
            raise TrainerError(
                f"training data failed after iteration {self.iteration}: {e.message} | saved "
                f"{path or self.stage_dir / 'last.pt'} (iteration {self.iteration}); replace "
                f"or remove that file and continue with --resume ({flag})"
            ) from e
        except KeyboardInterrupt:
            # A second Ctrl-C: stop now, without saving a state that may be mid-step.
            log.warning(
                "forced stop: %s keeps the last consistent state (saves are atomic)",
                self.stage_dir / "last.pt",
            )
            raise
        finally:
            self._restore_stop_handlers(previous)
            if self.viz is not None:
                self.viz.close()
            self.close()
        return summary

    # ---- budgets and throughput ---------------------------------------------------------
    def _out_of_time(self) -> bool:
        """True once --max-minutes of training have passed. Under DDP the ranks agree (one
        tiny all-reduce per step), so they all stop after the same iteration."""
        if self._deadline is None:
            return False
        late = time.perf_counter() >= self._deadline
        if dist_utils.is_distributed():
            flag = torch.tensor([1.0 if late else 0.0], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            late = bool(flag.item())
        return late

    def _budget_reason(self, max_iters: int | None) -> str:
        if max_iters is not None and self.iteration >= max_iters:
            return f"--max-iters {max_iters}"
        return f"--max-minutes {self.cfg.get('max_minutes'):g}"

    def _report_throughput(self, totals: dict, wall_s: float) -> None:
        """One line and one ``throughput`` record in metrics.jsonl for this fit(): samples/s
        in the training loop, overall (validation and checkpoints included) and the share of
        the loop spent waiting for data."""
        if not self.main or totals["samples"] == 0:
            return
        figures = {
            "samples_per_s": totals["samples"] / max(totals["seconds"], 1e-9),
            "samples_per_s_overall": totals["samples"] / max(wall_s, 1e-9),
            "data_wait_fraction": min(1.0, totals["data_wait_s"] / max(totals["seconds"], 1e-9)),
        }
        log.info(
            "trained %d samples in %.0f s: %.1f samples/s in the training loop, %.1f overall "
            "(validation and checkpoints included), %.1f%% of the loop waiting for data",
            totals["samples"],
            wall_s,
            figures["samples_per_s"],
            figures["samples_per_s_overall"],
            100 * figures["data_wait_fraction"],
        )
        if self.viz is not None:
            self.viz.scalars(self.iteration, figures, "throughput")

    # ---- stopping on signals ------------------------------------------------------------
    def _install_stop_handlers(self) -> dict:
        """SIGINT/SIGTERM only set a flag (the loop stops at the next consistent point); a
        second signal raises KeyboardInterrupt at once. Main thread only (signal rules)."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handler(signum, frame):
            if self._stop_signal is not None:
                raise KeyboardInterrupt
            self._stop_signal = signum
            if self.main:
                log.warning(
                    "%s: stopping after the current step (or validation) and saving last.pt; "
                    "send it again to stop at once",
                    signal.Signals(signum).name,
                )

        return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    @staticmethod
    def _restore_stop_handlers(previous: dict) -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    def _stop_if_requested(self, saved: bool = False) -> None:
        """Stop here if any rank got a signal: save last.pt (unless ``saved``: the state was
        just written) and raise :class:`Interrupted`."""
        requested = self._stop_signal is not None
        if dist_utils.is_distributed():  # every rank stops after the same iteration
            flag = torch.tensor([1.0 if requested else 0.0], device=self.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            requested = bool(flag.item())
        if not requested:
            return
        path = self.stage_dir / "last.pt"
        if not saved:
            self.save("last.pt")
        dist_utils.barrier()
        raise Interrupted(self._stop_signal or signal.SIGINT, self.iteration, path)

    def _fault_point(self, phase: str) -> None:
        """Test-only (:data:`FAULT_ENV`): SIGINT at ``phase`` of iteration N: the iteration
        being computed for forward/backward/step, the last one completed for
        validation/save."""
        spec = os.environ.get(FAULT_ENV)
        if (
            not spec
            or self._fault_fired
            or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0"
        ):
            return
        where, _, rest = spec.partition(":")
        n = self.iteration + (1 if phase in ("forward", "backward", "step") else 0)
        it, _, rest = rest.partition(":")
        sig, _, rank = rest.partition(":")
        if where != phase or it != str(n) or (rank and rank != str(dist_utils.rank())):
            return
        self._fault_fired = True  # once: a real user presses Ctrl-C once
        os.kill(os.getpid(), getattr(signal, f"SIG{sig or 'INT'}"))

    def _end_epoch(self, train: dict) -> dict | None:
        summary = None
        if self.main:
            summary = self.validate()
            improved = summary["sad"] < self.best_sad
            if improved:
                self.best_sad = summary["sad"]
            record = {
                "epoch": self.epoch,
                "iteration": self.iteration,
                **{f"train_{k}": v for k, v in train.items()},
                **{f"val_{k}": v for k, v in summary.items() if isinstance(v, float)},
            }
            real = None
            every = self.cfg["real_val_every"]
            if self.real_examples is not None and (
                self.epoch % every == 0 or self.epoch == self.cfg["epochs"]
            ):
                real = self.validate(self.real_examples, tag="real")
                record.update({f"real_{k}": v for k, v in real.items() if isinstance(v, float)})
            self.history.append(record)
            self.save("last.pt")
            if improved:
                self.save("best.pt", resumable=False)
            line = (
                f"epoch {self.epoch}/{self.cfg['epochs']} it {self.iteration} | "
                f"loss {train.get('total', float('nan')):.4f} | "
                f"val SAD {summary['sad']:.3f} MSE {summary['mse']:.4f} "
                f"Grad {summary['grad']:.3f} Conn {summary['conn']:.3f} (/1000 units) | "
                f"{train['samples_per_s']:.1f} samples/s, "
                f"{100 * train['data_wait_fraction']:.1f}% waiting for data"
                + (f" | real SAD {real['sad']:.3f}" if real else "")
                + (" | best" if improved else "")
            )
            log.info(line)
            self.viz.scalars(
                self.iteration, {k: summary[k] for k in ("sad", "mse", "grad", "conn")}, "val"
            )
            if real is not None:
                self.viz.scalars(
                    self.iteration, {k: real[k] for k in ("sad", "mse", "grad", "conn")}, "real"
                )
            self.viz.text("epochs", line)
        dist_utils.barrier()
        return summary


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    args = build_parser().parse_args(argv)
    try:
        cfg = resolve_config(args)
    except TrainerError as e:
        log.error("%s", e)
        return 2
    if dist_utils.rank() == 0 or not dist_utils.launched_by_torchrun():
        source = (
            "built-in synthetic set (no --data-root given)"
            if cfg["dataset"] == "synthetic"
            else f"Adobe data at {cfg['data_root']}"
        )
        log.info(
            "training stage %d on the %s with %s",
            cfg["stage"],
            source,
            ", ".join(
                f"{k}={cfg[k]}"
                for k in ("crop_size", "batch_size", "lr", "epochs", "iters_per_epoch")
            ),
        )
        log.info("full configuration (stored in every checkpoint): %s",
                 json.dumps(cfg, sort_keys=True))  # fmt: skip
    try:
        trainer = Trainer(cfg)
        trainer.fit()
    except NonFiniteLoss as e:
        log.error("%s", e)
        return 1
    except TrainerError as e:
        log.error("%s", e)
        return 2
    except (DataSourceError, ImageReadError, CheckpointError, VGGWeightsError) as e:
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
