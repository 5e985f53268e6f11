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
so a crash or Ctrl-C mid-write leaves the previous file intact. Before writing, the free space
of the folder is compared with the size the file will have (the tensors' bytes); a full disk,
a read-only folder or one without write permission stops the save with
:class:`CheckpointWriteError`, whose one line names the folder, the space needed and free, and
the checkpoint beside it that is still whole.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import torch


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable or not one of this project's."""


# errno values that mean "this folder cannot take the file" (not a bug in the writer)
WRITE_ERRNOS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exceeded",
    errno.EFBIG: "the file is larger than this file system allows",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}
OVERHEAD = 1 << 20  # bytes a checkpoint takes beyond its tensors' (zip headers, pickles)


class CheckpointWriteError(RuntimeError):
    """A checkpoint (or export) could not be written: the disk is full, the folder is
    read-only or not writable. The message is one line naming the folder, the space needed
    and free, and the file beside it that is still whole; nothing partial is left behind."""

    def __init__(
        self,
        path: Path,
        reason: str,
        needed: int,
        free: int | None,
        code: int | None = None,
        last_good: Path | None = None,
    ):
        self.path, self.folder, self.reason = path, path.parent, reason
        self.needed, self.free, self.errno, self.last_good = needed, free, code, last_good
        space = f"needs about {_mb(needed)}, {'?' if free is None else _mb(free)} free"
        whole = (
            f"the last whole checkpoint there is {last_good}"
            if last_good is not None
            else "no earlier checkpoint there"
        )
        super().__init__(
            f"cannot write {path.name} in {self.folder}: {reason} ({space}); nothing partial "
            f"was left, {whole}"
        )


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def state_nbytes(state: Any, _seen: set | None = None) -> int:
    """The bytes of every tensor storage in a (nested) checkpoint dict, each storage once:
    what ``torch.save`` writes, less a little overhead (:data:`OVERHEAD`)."""
    seen = set() if _seen is None else _seen
    if isinstance(state, torch.Tensor):
        storage = state.untyped_storage()
        key = (storage.data_ptr(), str(state.device))
        if key in seen:
            return 0
        seen.add(key)
        return storage.nbytes()
    if isinstance(state, dict):
        return sum(state_nbytes(v, seen) for v in state.values())
    if isinstance(state, list | tuple):
        return sum(state_nbytes(v, seen) for v in state)
    return 0


def free_bytes(folder: Path) -> int | None:
    """Free space of the file system holding ``folder`` (None when it cannot be asked)."""
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def last_whole(path: Path) -> Path | None:
    """The checkpoint that is still whole beside ``path``: ``path`` itself when it exists (the
    write is atomic, so a failed one leaves it untouched), else the newest ``*.pt`` there."""
    if path.is_file():
        return path
    try:
        others = [p for p in path.parent.glob("*.pt") if p.is_file()]
    except OSError:
        return None
    return max(others, key=lambda p: p.stat().st_mtime, default=None)


def _write_error(path: Path, e: BaseException, needed: int) -> CheckpointWriteError | None:
    """The :class:`CheckpointWriteError` an exception during a write means, or None (a bug:
    re-raised as it is). torch's zip writer reports a full disk as a RuntimeError."""
    folder = path.parent if path.parent.is_dir() else None
    free = free_bytes(folder) if folder is not None else None
    code = getattr(e, "errno", None)
    if code in WRITE_ERRNOS:
        reason = WRITE_ERRNOS[code]
    elif isinstance(e, NotADirectoryError | FileExistsError):
        reason = f"a file is in the way ({e.filename or path.parent})"
    elif isinstance(e, RuntimeError) and free is not None and free < needed:
        code, reason = errno.ENOSPC, "the disk is full"
    else:
        return None
    return CheckpointWriteError(path, reason, needed, free, code, last_whole(path))


@contextlib.contextmanager
def _as_write_error(path: Path, needed: int) -> Iterator[None]:
    """Turn a full disk or a folder that cannot be written, raised inside, into
    :class:`CheckpointWriteError`; anything else passes through as it is."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        err = _write_error(path, e, needed)
        if err is None:
            raise
        raise err from e


def write_atomically(
    path: str | os.PathLike, write: Callable[[IO[bytes]], None], needed: int
) -> Path:
    """Write a file through ``write(f)`` to a temporary file beside ``path``, fsync it and
    rename it over ``path`` (parent folders are created). ``needed``: its expected size in
    bytes, compared with the free space first. A full disk or a folder that cannot be written
    raises :class:`CheckpointWriteError`; the temporary file is always removed on failure."""
    path = Path(path)
    with _as_write_error(path, needed):
        path.parent.mkdir(parents=True, exist_ok=True)
    free = free_bytes(path.parent)
    if free is not None and free < needed:
        raise CheckpointWriteError(
            path, "not enough free space", needed, free, errno.ENOSPC, last_whole(path)
        )
    with _as_write_error(path, needed):
        # The writer's pid is in the name, so a later start can tell a dead writer's leftover
        # (kill -9 mid-save) from a live writer's file (remove_stale_temps).
        fd, tmp = tempfile.mkstemp(
            prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
        )
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            # mkstemp creates 0600 files; give the file the permissions of any new file.
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` to ``path`` (parent folders are created); a full disk or a
    folder that cannot be written raises :class:`CheckpointWriteError`, checked against the
    free space before anything is written."""
    return write_atomically(path, lambda f: torch.save(state, f), state_nbytes(state) + OVERHEAD)


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


# --- do the weights fit the model? -----------------------------------------------------------
def model_shapes(config) -> dict[str, tuple[int, ...]]:
    """Every state-dict key of the model ``config`` (a ModelConfig or its dict) describes, with
    its shape; built on the meta device (no memory, ~50 ms)."""
    from models.py_encoder_decoder import DIM, ModelConfig

    if not isinstance(config, ModelConfig):
        config = ModelConfig.from_dict(config)
    with torch.device("meta"):
        model = DIM(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def misfit(
    weights: dict[str, Any], shapes: dict[str, tuple[int, ...]], missing_ok: str | None = None
) -> str | None:
    """The first way ``weights`` do not fit a model with state-dict ``shapes``, as a phrase
    naming the key (and both shapes), or None when they fit. Keys starting with
    ``missing_ok`` may be absent from the weights (a refine head a stage adds)."""
    for key, shape in shapes.items():
        if key not in weights:
            if missing_ok and key.startswith(missing_ok):
                continue
            return f"the model has {key} {list(shape)}, the file has no such tensor"
        got = tuple(getattr(weights[key], "shape", ()))
        if got != shape:
            return f"{key} is {list(got)} in the file but {list(shape)} in the model"
    extra = next((k for k in weights if k not in shapes), None)
    if extra is not None:
        shape = list(getattr(weights[extra], "shape", ()))
        return f"the file has {extra} {shape}, the model has no such tensor"
    return None


def fitting_flags(weights: dict[str, Any], config, missing_ok: str | None = None) -> str | None:
    """The trainer flags (e.g. ``--fc6 conv1x1``) that, changed from ``config`` one at a time,
    give a model ``weights`` fit; None when no single flag does."""
    from dataclasses import replace

    from models.py_encoder_decoder import ModelConfig

    if not isinstance(config, ModelConfig):
        config = ModelConfig.from_dict(config)
    for f in ModelConfig.flags():
        for value in f.metadata.get("choices") or ():
            if value == config.flag_value(f.name) or value == getattr(config, f.name):
                continue
            try:
                other = replace(config, **{f.name: value})
                fits = misfit(weights, model_shapes(other), missing_ok) is None
            except (ValueError, TypeError, RuntimeError):
                continue
            if fits:
                return f"--{f.name.replace('_', '-')} {other.flag_value(f.name)}"
    return None


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu"):
    """Build the model a checkpoint describes and load its weights.

    Returns ``(model, state)``; the model is in eval mode on ``map_location``, with
    ``model.infer_scale`` the inference scale its run chose (1 when the checkpoint has none;
    see :mod:`utils.inference`).
    """
    from models.py_encoder_decoder import build_model

    state = load_checkpoint(path, map_location)
    model = build_model(state["model_config"])
    weights = state["model"]
    if not isinstance(weights, dict):
        why, flags = "no state dict", None
    else:
        why = misfit(weights, model_shapes(model.config))
        flags = fitting_flags(weights, model.config) if why else None
    if why is not None:
        hint = f"; they fit that model with {flags}" if flags else ""
        raise CheckpointError(
            f"{path}: its weights do not fit the model its model_config describes "
            f"({why}){hint}: the file was changed after training wrote it, or written by other "
            "code"
        )
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:  # a fit by shapes that still fails: one line of torch's reason
        reason = " ".join(str(e).split())
        raise CheckpointError(f"{path}: its weights do not load into its model: {reason}") from e
    check_stored_settings(path, state)
    model.infer_scale = float((state.get("config") or {}).get("infer_scale") or 1.0)
    return model.to(map_location).eval(), state


def check_stored_settings(path: str | os.PathLike, state: Mapping) -> None:
    """The settings inference reads from a checkpoint (``stage``, ``config["infer_scale"]``,
    ``config["crop_size"]``) are in range: a bad value stored in a file is refused when the file
    is loaded (:class:`CheckpointError` naming the file, key and value), not at the first
    matte."""
    from models.stages import STAGES

    config = state.get("config") or {}
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{path}: its config is a {type(config).__name__}, not a mapping")
    checks = (
        ("stage", state.get("stage"), lambda v: v in STAGES, f"one of {sorted(STAGES)}"),
        ("config.infer_scale", config.get("infer_scale"),
         lambda v: isinstance(v, (int, float)) and 0 < v <= 1, "a number in (0, 1]"),
        ("config.crop_size", config.get("crop_size"),
         lambda v: type(v) is int and v >= 32, "a whole number >= 32"),
    )  # fmt: skip
    for key, value, ok, allowed in checks:
        if value is not None and not ok(value):
            raise CheckpointError(
                f"{path}: stored {key} = {value!r} is not {allowed}; the file was changed after "
                "training wrote it, or written by other code"
            )


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
