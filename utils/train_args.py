"""The command line of ``train_encoder_decoder.py``: its flags, the presets, the errors that
refuse a run, and which settings a resume may change.

Flags left unset are None after parsing; :func:`resolve_config` fills them from the preset
(:data:`PRESETS`), the model's defaults and the stage's record (``models/stages.py``); the
trainer stores the result in every checkpoint.
The model's flags are generated from :class:`models.py_encoder_decoder.ModelConfig`, one per
field, so a new architecture setting is one new field there.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from models.py_encoder_decoder import ENCODERS, ModelConfig
from models.stages import STAGES
from utils.cli import OneLineParser, int_list, number, port_arg, scale_arg


class TrainerError(RuntimeError):
    """A run cannot start or continue (bad flag, missing prerequisite, unusable checkpoint):
    the message says what to do. ``main()`` turns it into one error line and exit status 2."""


# Settings a resume may change without comment: where things are, how fast, how verbose.
RESUME_FREE_KEYS = frozenset(
    ("resume", "workers", "threads", "cache_dir", "no_visdom", "visdom_server", "visdom_port",
     "log_every", "panel_every", "save_every", "max_iters", "real_val", "real_val_every",
     "real_val_trimap", "device", "compile", "channels_last", "runs_dir", "no_bg_cache",
     "max_minutes")
)  # fmt: skip

# Named presets (--preset): every setting that differs between the paper's training on the
# Adobe data and a CPU run on the built-in set; a flag given on the command line wins.
#   paper  the paper's setting: ImageNet-initialised encoder, 320x320 crops, batch 16, Adam at
#          a constant 1e-5, no skip connections, full-resolution inference. The paper turns
#          VGG's fc6 into a conv layer without giving its kernel; this uses the single 1x1 conv
#          of the public reimplementations (mmagic).
#   cpu    a run from random init on two CPU cores that must learn within minutes; chosen by
#          measured runs on the built-in set's validation split (docs/cpu_recipes.md).
PRESETS = {
    "paper": dict(
        crop_size=320,
        batch_size=16,
        lr=1e-5,
        epochs=30,
        iters_per_epoch=None,
        scheduler="constant",
        warmup_iters=0,
        fc6="conv1x1",
        skip="none",
        infer_scale=1.0,
    ),
    "cpu": dict(
        crop_size=128,
        batch_size=8,
        lr=3e-4,
        epochs=20,
        iters_per_epoch=30,
        scheduler="cosine",
        warmup_iters=20,
        fc6="transmap",
        skip="add",
        infer_scale=0.5,
    ),
}


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The trainer's flags; a flag left unset is None, filled from the preset by the script."""
    p = OneLineParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    a = p.add_argument
    a("--stage", type=int, choices=sorted(STAGES), required=True,
      help="training stage (models/stages.py)")  # fmt: skip
    a("--preset", choices=sorted(PRESETS), default=None,
      help="the settings the other flags default to (PRESETS in utils/train_args.py): paper, "
      "the default with --data-root; cpu, the default without")  # fmt: skip
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
        "--crop-size, e.g. 64,96,128 (default: crop, 1.5x crop, 2x crop as the paper)",
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
    g = p.add_argument_group("model (models.py_encoder_decoder.ModelConfig)")
    for f in ModelConfig.flags():
        choices = tuple(ENCODERS) if f.name == "encoder" else f.metadata["choices"]
        preset = {name: values[f.name] for name, values in PRESETS.items() if f.name in values}
        default = ", ".join(f"{v} ({k})" for k, v in preset.items()) or ModelConfig().flag_value(
            f.name
        )
        g.add_argument(f"--{f.name.replace('_', '-')}", choices=choices, default=None,
                       type=f.metadata.get("type"),
                       help=f"{f.metadata['help']} (default: {default})")  # fmt: skip
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
        help="mixed precision (auto: bf16 on CUDA GPUs that support it, else fp16 with a "
        "gradient scaler; bf16 on CPUs with native bf16 instructions; float32 elsewhere)",
    )
    g.add_argument(
        "--channels-last",
        choices=("on", "off"),
        default="on",
        help="NHWC memory format (faster on GPUs and, with bf16, on AVX-512 CPUs: "
        "benchmarks/results)",
    )
    g.add_argument("--compile", action="store_true", help="torch.compile the model")
    g.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm under DDP")
    g.add_argument("--threads", type=number(int, 1), default=None, help="torch CPU threads")
    g = p.add_argument_group("visualisation")
    g.add_argument("--visdom-server", default="http://localhost")
    g.add_argument("--visdom-port", type=port_arg, default=8097)
    g.add_argument("--no-visdom", action="store_true", help="write plots to the run folder only")
    for action in p._actions:  # a preset-set flag's help shows what each preset sets
        values = [f"{v[action.dest]} ({k})" for k, v in PRESETS.items() if action.dest in v]
        if values and action.help and "(default:" not in action.help:
            m = re.search(r" \(preset(?:; ([^)]*))?\)", action.help)
            extra = f"; {m.group(1)}" if m and m.group(1) else ""
            base = action.help[: m.start()] if m else action.help
            action.help = f"{base} (preset: {', '.join(values)}{extra})"
    return p


def resolve_config(args) -> dict:
    """Fill preset-, model- and stage-dependent defaults; return a plain dict (stored in
    checkpoints)."""
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    cfg["dataset"] = "synthetic" if args.data_root is None else "adobe"
    cfg["preset"] = cfg["preset"] or ("cpu" if args.data_root is None else "paper")
    for key, value in PRESETS[cfg["preset"]].items():
        if cfg.get(key) is None:
            cfg[key] = value
    for f in ModelConfig.flags():
        if cfg.get(f.name) is None:
            cfg[f.name] = ModelConfig().flag_value(f.name)
    for key, value in STAGES[args.stage].loss_weights.items():
        if key in cfg and cfg[key] is None:  # --w-alpha/--w-comp: the stage's loss weights
            cfg[key] = value
    name = cfg["run_name"]
    if not name or name in (".", "..") or any(c in name for c in "/\\") or Path(name).is_absolute():
        raise TrainerError(
            f"--run-name {name!r}: a run name is one folder name inside --runs-dir (no path "
            "separators, no '..'); use --runs-dir to put runs elsewhere"
        )
    if Path(cfg["runs_dir"]).exists() and not Path(cfg["runs_dir"]).is_dir():
        raise TrainerError(
            f"--runs-dir {cfg['runs_dir']}: not a folder; pass a folder for the runs"
        )
    if cfg["cut_sizes"] is not None:
        cfg["cut_sizes"] = list(cfg["cut_sizes"])  # plain list: stored in checkpoints
    if cfg["crop_size"] % 32:
        raise TrainerError(f"--crop-size {cfg['crop_size']} must be a multiple of 32")
    weights = [cfg[k] for k in ("w_alpha", "w_comp") if cfg[k] is not None]
    if weights and (min(weights) < 0 or sum(weights) == 0):
        raise TrainerError("--w-alpha/--w-comp must be >= 0 and not both 0")
    return cfg
