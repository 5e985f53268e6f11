"""Checkpoints: the only module that writes them.

A checkpoint is a plain dict of tensors and builtins, so it loads with
``torch.load(..., weights_only=True)`` and a downloaded file cannot run code:

    model         model state dict (no DDP/compile prefixes)
    model_config  the architecture, models.py_encoder_decoder.ModelConfig.to_dict()
    stage         1, 2 or 3
    config        the full training configuration (argparse namespace as a dict)
    epoch, iteration, best_sad
    optimizer, scheduler, scaler   state dicts (training resume)
    rng           RNG states (python, numpy, torch, cuda) for exact resume

Writes go to a temporary file in the same folder, are fsync'ed, then renamed over the target,
so a crash or Ctrl-C mid-write leaves the previous file intact.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not one of this project's."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` to ``path`` (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The writer's pid is in the name, so a later start can tell a dead writer's leftover
    # (kill -9 mid-save) from a live writer's file (remove_stale_temps).
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600 files; give the checkpoint the permissions of any new file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete temporary checkpoint files in ``folder`` whose writer is gone (a process killed
    mid-save); a live writer's file is left alone. Returns the files removed."""
    removed = []
    for tmp in Path(folder).glob(".*.tmp"):
        parts = tmp.name.split(".")  # "", NAME..., PID, RANDOM, "tmp"
        pid = int(parts[-3]) if len(parts) >= 5 and parts[-3].isdigit() else None
        if pid is not None and pid != os.getpid() and _pid_alive(pid):
            continue
        if pid == os.getpid():
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint dict safely (``weights_only=True``); clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" not in str(e):  # garbage or truncated, not a code-running pickle
            raise CheckpointError(
                f"cannot load checkpoint {path}: {type(e).__name__}: {e}. "
                "Is it a file written by train_encoder_decoder.py (and not truncated)?"
            ) from None
        # torch's own message advises weights_only=False: for a file from elsewhere that is
        # exactly what must not be done (unpickling can run arbitrary code).
        raise CheckpointError(
            f"refused to load {path}: it holds Python objects other than tensors and plain "
            "containers, and unpickling those can run arbitrary code. This project's "
            "checkpoints never do. If the file comes from code you trust, re-save its tensors "
            "from that code as a plain dict (torch.save({'model': model.state_dict(), ...}))."
        ) from None
    except Exception as e:  # truncated files, foreign formats
        raise CheckpointError(
            f"cannot load checkpoint {path}: {type(e).__name__}: {e}. "
            "Is it a file written by train_encoder_decoder.py (and not truncated)?"
        ) from e
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise CheckpointError(
            f"{path} is not a Deep Image Matting checkpoint of this project "
            "(expected a dict with 'model' and 'model_config')"
        )
    return state


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Build the model a checkpoint describes and load its weights.

    Returns ``(model, state)``; the model is in eval mode on ``map_location``, with
    ``model.infer_scale`` the inference scale its run chose (1 when the checkpoint has none;
    see :mod:`utils.inference`).
    """
    from models.py_encoder_decoder import build_model

    state = load_checkpoint(path, map_location)
    model = build_model(state["model_config"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"{path}: weights do not fit the model they claim to be ({state['model_config']}): {e}"
        ) from e
    model.infer_scale = float((state.get("config") or {}).get("infer_scale") or 1.0)
    return model.to(map_location).eval(), state


def find_checkpoint(
    path: str | os.PathLike | None,
    runs_dir: str | os.PathLike = "runs",
    names: tuple[str, ...] = ("best.pt", "last.pt"),
) -> Path:
    """The checkpoint file a path names: what ``--checkpoint`` means in evaluate.py,
    predict.py, export.py and the page, and where a stage finds the previous stage's.

    * a file: itself;
    * a stage folder (``runs/<name>/stage2``): the first of ``names`` it holds (``best.pt``,
      else ``last.pt``);
    * a run folder (``runs/<name>``): the highest stage that has a checkpoint, as above;
    * None: the run folder under ``runs_dir`` when there is exactly one.

    Raises :class:`utils.checkpoint.CheckpointError` naming what was looked for.
    """
    if path is None:
        runs = Path(runs_dir)
        found = sorted({p.parents[1] for p in runs.glob("*/stage*/*.pt")}) if runs.is_dir() else []
        if len(found) != 1:
            what = (
                "no run folders"
                if not found
                else f"{len(found)} runs ({', '.join(map(str, found))})"
            )
            raise CheckpointError(
                f"no --checkpoint given and {runs}/ has {what}: pass --checkpoint with a .pt "
                "file or a run folder (e.g. runs/<name> or runs/<name>/stage3)"
            )
        path = found[0]
    path = Path(path)
    if path.is_file():
        return path
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    stages = (
        [path]
        if path.name.startswith("stage")
        else sorted(path.glob("stage*"), key=lambda p: (len(p.name), p.name), reverse=True)
    )
    for stage_dir in stages:
        for name in names:
            if (stage_dir / name).is_file():
                return stage_dir / name
    raise CheckpointError(
        f"{path} is a folder without a checkpoint (looked for {' and '.join(names)}); "
        "train one with `python train_encoder_decoder.py --stage 1` or pass a .pt file"
    )


def load_model_for_inference(
    checkpoint: str | os.PathLike | None,
    device: str | torch.device = "cpu",
    stage: int | None = None,
) -> tuple[torch.nn.Module, dict, Path]:
    """Load a project checkpoint (any stage) for inference: ``(model in eval mode, state, path)``.

    ``checkpoint`` goes through :func:`utils.checkpoint.find_checkpoint`. ``stage``, when
    given, must match the checkpoint's ``state["stage"]``. Every failure - missing file, a file
    that is not a checkpoint of this project, weights that do not fit the architecture it
    declares, a stage mismatch - raises :class:`utils.checkpoint.CheckpointError` naming the file.
    """
    path = find_checkpoint(checkpoint)
    try:
        model, state = load_model(path, map_location=device)
    except CheckpointError:
        raise
    except (ValueError, TypeError, KeyError) as e:  # e.g. a model_config of another project
        raise CheckpointError(
            f"{path} is not a Deep Image Matting checkpoint of this project: "
            f"{type(e).__name__}: {e}"
        ) from e
    got = state.get("stage")
    if stage is not None and got != stage:
        raise CheckpointError(
            f"{path} is a stage-{got} checkpoint but stage {stage} was asked for; pass the "
            f"stage-{stage} checkpoint (runs/<name>/stage{stage}/best.pt) or drop --stage"
        )
    return model, state, path
