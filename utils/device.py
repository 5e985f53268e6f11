"""Devices and mixed precision: the one place that turns --device / --amp into torch objects."""

from __future__ import annotations

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def pick_device(name: str | None = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else MPS, else CPU; ``cuda``/``cuda:1``/``mps``/``cpu``
    are checked against what this machine has (ValueError naming the flag otherwise)."""
    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ValueError(
            f"--device {name}: not a device name (auto, cpu, cuda, cuda:N, mps)"
        ) from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name}: no CUDA device is visible (check the driver and "
            "CUDA_VISIBLE_DEVICES); use --device cpu"
        )
    if dev.type == "mps" and not mps_available():
        raise ValueError(f"--device {name}: MPS is not available on this machine")
    return dev


def check_amp(amp: str | None, device: torch.device) -> torch.dtype | None:
    """Resolve ``--amp`` (None/"off", "auto", "bf16", "fp16") for ``device`` to an autocast dtype.

    ``auto`` is bf16 on CUDA devices that support it, fp16 on older ones, and off elsewhere.
    bf16/fp16 are CUDA-only here: on CPU the project runs float32.
    """
    if amp in (None, "off", "none", "fp32"):
        return None
    if amp == "auto":
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp not in AMP_DTYPES:
        raise ValueError(f"--amp {amp!r}: expected one of off, auto, bf16, fp16")
    if device.type != "cuda":
        raise ValueError(
            f"--amp {amp} needs a CUDA device (got {device.type}); on CPU the project runs in "
            "float32 - use --amp off"
        )
    return AMP_DTYPES[amp]
