"""Where a stage's weights come from: a resumed ``last.pt``, ``--init`` or the previous
stage's ``best.pt``, ImageNet VGG16-BN weights, or random init.

Every file is read and checked before the (possibly long) data set-up, so a missing or
broken one fails at once with a :class:`utils.train_args.TrainerError` that says what to do.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from models.py_encoder_decoder import (
    DIM,
    ModelConfig,
    VGGWeightsError,
    load_vggbn,
    read_vgg_state_dict,
    vgg_hub_cache_file,
)
from models.stages import Stage
from utils.checkpoint import (
    CheckpointError,
    find_checkpoint,
    fitting_flags,
    load_checkpoint,
    misfit,
    model_shapes,
)
from utils.train_args import RESUME_FREE_KEYS, TrainerError

log = logging.getLogger("train")

RESUMABLE = ("optimizer", "scheduler", "scaler", "rng")  # what last.pt has and best.pt lacks


def open_all(
    cfg: dict, stage: Stage, stage_dir: Path, model_config: ModelConfig
) -> tuple[tuple[Path, dict] | None, tuple[Path, dict] | None, tuple[dict, str] | None]:
    """What this run starts from, read and checked: ``(resume, start, vgg)``, each None when
    not used. ``resume`` (path, last.pt state) continues a run; otherwise ``start`` (path,
    checkpoint) is ``--init`` or the previous stage's best.pt, and ``vgg`` (state dict,
    source) the ImageNet weights of a stage that starts from them."""
    path, state = open_resume(cfg["resume"], stage_dir, cfg["stage"], cfg, model_config)
    if state is not None:
        check_fits("--resume", path, state, model_config)
        return (path, state), None, None
    path, state = open_start(cfg["init"], cfg["stage"], stage, stage_dir.parent, cfg)
    if state is not None:
        flag = "--init" if cfg["init"] is not None else f"stage {stage.starts_from}'s best.pt"
        check_fits(flag, path, state, model_config, missing_ok="refine_head.")
        return None, (path, state), None
    return None, None, read_vgg(cfg["vgg_weights"]) if stage.starts_from is None else None


def open_resume(
    resume: str | None, stage_dir: Path, stage: int, cfg: dict, model_config: ModelConfig
) -> tuple[Path | None, dict | None]:
    """The ``--resume`` checkpoint, loaded and checked to be this stage's and this model's;
    (None, None) without --resume, or with ``--resume auto`` when this stage has no last.pt
    yet (a fresh start, so a requeued command line works the first time too)."""
    if not resume:
        return None, None
    path = stage_dir / "last.pt" if resume == "auto" else Path(resume)
    if resume == "auto" and not path.is_file():
        log.info("--resume auto: no %s yet, starting a new run", path)
        return None, None
    if not path.is_file():
        raise TrainerError(
            f"--resume: {path} not found (nothing to resume for run '{cfg['run_name']}' "
            f"stage {stage}); drop --resume to start afresh"
        )
    state = load_checkpoint(path)
    if state.get("stage") != stage:
        raise TrainerError(
            f"--resume {path}: it is a stage {state.get('stage')} checkpoint, not stage {stage}"
        )
    missing = [k for k in RESUMABLE if k not in state]
    if missing:
        raise TrainerError(
            f"--resume {path}: it holds weights only (no {', '.join(missing)}), as best.pt "
            "does; resume from last.pt, or start a new run from it with --init"
        )
    check_same_run(path, state, cfg, model_config)
    return path, state


def check_same_run(path: Path, state: dict, cfg: dict, model_config: ModelConfig) -> None:
    """Refuse a resume whose architecture differs from the checkpoint's (the weights would
    not be that model's); warn about the other changed settings (the continuation is then
    not what an uninterrupted run would have done)."""
    saved = ModelConfig.from_dict(state.get("model_config"))
    model = [
        f.name
        for f in ModelConfig.flags()
        if getattr(saved, f.name) != getattr(model_config, f.name)
    ]
    if model:
        diff = ", ".join(
            f"{k} {saved.flag_value(k)!r} -> {model_config.flag_value(k)!r}" for k in model
        )
        flags = " ".join(f"--{k.replace('_', '-')} {saved.flag_value(k)}" for k in model)
        raise TrainerError(
            f"--resume {path}: that run's model differs from this command's ({diff}); resume "
            f"with its settings ({flags}) or start a new run with another --run-name"
        )
    old = state.get("config") or {}
    skip = RESUME_FREE_KEYS | {f.name for f in ModelConfig.flags()}
    changed = [k for k in sorted(old.keys() & cfg.keys()) if k not in skip and old[k] != cfg[k]]
    if changed:
        log.warning(
            "--resume %s with changed settings (%s): the run continues, but not as an "
            "uninterrupted run would have",
            path,
            ", ".join(f"{k} {old[k]!r} -> {cfg[k]!r}" for k in changed),
        )


def check_fits(
    flag: str, path: Path, state: dict, model_config: ModelConfig, missing_ok: str | None = None
) -> None:
    """Refuse, in one line, a checkpoint whose weights do not fit this run's model: the first
    key that differs (with both shapes) and the flags that make the model match (what the
    checkpoint's stored model_config says, or the one flag its weights fit)."""
    weights = state.get("model")
    if not isinstance(weights, dict):
        raise TrainerError(f"{flag} {path}: it holds no model weights (state dict)")
    why = misfit(weights, model_shapes(model_config), missing_ok)
    if why is None:
        return
    fields = ModelConfig.flags()
    try:
        saved = ModelConfig.from_dict(state.get("model_config"))
        differ = [f.name for f in fields if getattr(saved, f.name) != getattr(model_config, f.name)]
        shapes = model_shapes(replace(saved, refine=model_config.refine))
        saved_fits = misfit(weights, shapes, missing_ok) is None
    except (ValueError, TypeError):
        differ, saved_fits = [], False
    if differ and saved_fits:
        flags = " ".join(f"--{k.replace('_', '-')} {saved.flag_value(k)}" for k in differ)
        advice = f"it was trained with {flags} (its model_config): pass {flags}"
    else:
        flags = fitting_flags(weights, model_config, missing_ok)
        if not flags:
            advice = "no single model flag makes them fit; check that the file is this project's"
        elif flag == "--resume":  # its model_config is this command's: the file lies
            advice = (
                f"its weights fit this model with {flags}, not the model_config stored with "
                f"them (the file was changed after training wrote it): start from it with "
                f"--init and {flags}, under another --run-name"
            )
        else:
            advice = f"its weights fit this model with {flags}: pass {flags}"
    raise TrainerError(f"{flag} {path}: its weights do not fit this model ({why}); {advice}")


def open_start(
    init: str | None, stage_number: int, stage: Stage, run_dir: Path, cfg: dict
) -> tuple[Path | None, dict | None]:
    """The checkpoint this stage starts from (``--init``, else the previous stage's best.pt
    for a stage that starts from one), loaded; (None, None) for VGG/random init."""
    if init is None and stage.starts_from is not None:
        prev = run_dir / f"stage{stage.starts_from}"
        try:
            init = find_checkpoint(prev, names=("best.pt",))
        except CheckpointError:
            raise TrainerError(
                f"stage {stage_number} starts from stage {stage.starts_from}'s best checkpoint, "
                f"but {prev / 'best.pt'} does not exist. Make it with:\n"
                f"  python train_encoder_decoder.py --stage {stage.starts_from} "
                f"--run-name {cfg['run_name']} --runs-dir {cfg['runs_dir']}\n"
                "or pass --init PATH."
            ) from None
    return (None, None) if init is None else (Path(init), load_checkpoint(init))


def read_vgg(vgg_weights: str | None) -> tuple[dict, str] | None:
    """The ImageNet VGG16-BN state dict and its source (``--vgg-weights``, else torch's hub
    cache when present); None when there is none."""
    if vgg_weights is None:
        if not vgg_hub_cache_file().is_file():
            return None
        vgg_weights = vgg_hub_cache_file()
    try:
        return read_vgg_state_dict(vgg_weights)
    except VGGWeightsError as e:
        raise TrainerError(f"--vgg-weights: {e}") from e


def initialise(model: DIM, start: tuple[Path, dict] | None, vgg: tuple[dict, str] | None) -> str:
    """Load the starting weights into ``model`` (a checkpoint, else VGG16-BN, else nothing:
    random init); return a line saying what was loaded."""
    if start is not None:
        path, state = start
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
        bad = [k for k in missing if not k.startswith("refine_head.")]
        if bad or unexpected:
            raise TrainerError(
                f"--init {path}: its weights do not fit this model (missing {bad[:5]}, "
                f"unexpected {list(unexpected)[:5]}); it was trained with "
                f"{state['model_config']}"
            )
        fresh = " (refine head freshly initialised)" if missing else ""
        return f"weights from {path} (stage {state.get('stage', '?')}){fresh}"
    if vgg is None:
        log.warning(
            "No ImageNet VGG16-BN weights (looked for --vgg-weights and %s). Training the "
            "encoder from random init: expect far slower convergence and a worse final SAD "
            "than the paper (fine for the synthetic demo).",
            vgg_hub_cache_file(),
        )
        return "random init (no VGG16-BN weights found)"
    state, source = vgg
    try:
        report = load_vggbn(model, state)
    except VGGWeightsError as e:
        raise TrainerError(f"--vgg-weights {source}: {e}") from e
    return f"ImageNet VGG16-BN encoder from {source} ({report.summary()})"
