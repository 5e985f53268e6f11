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


def cpu_has_native_bf16() -> bool:
    """True when this CPU executes bf16 matrix arithmetic natively (x86 AVX512-BF16 or AMX-BF16,
    Arm BF16): there bf16 autocast roughly halves a training step; elsewhere oneDNN emulates
    bf16 and it is slower than float32. Read from the kernel's CPU flags (Linux); False when
    they cannot be read."""
    try:
        text = open("/proc/cpuinfo", encoding="utf-8", errors="replace").read()
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags = set(value.split())
            return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})
    return False


def check_amp(amp: str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """Resolve ``--amp`` (None/"off", "auto", "bf16", "fp16", or an already chosen dtype) for
    ``device`` to an autocast dtype (None = float32), checking the pair is supported.

    ``auto``: bf16 on CUDA devices that support it, fp16 (with a GradScaler) on older ones; bf16
    on CPUs with native bf16 instructions (:func:`cpu_has_native_bf16`); off elsewhere. ``bf16``
    is allowed on CUDA and CPU; ``fp16`` is CUDA-only (CPU fp16 autocast is slower than fp32).
    """
    if isinstance(amp, torch.dtype):  # already resolved (the trainer passes its dtype on)
        if amp is torch.float32:
            return None
        amp = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(amp, str(amp))
    if amp in (None, "off", "none", "fp32"):
        return None
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        if device.type == "cpu" and cpu_has_native_bf16():
            return torch.bfloat16
        return None
    if amp not in AMP_DTYPES:
        raise ValueError(f"--amp {amp!r}: expected one of off, auto, bf16, fp16")
    if device.type == "cpu" and amp == "bf16":
        return torch.bfloat16
    if device.type != "cuda":
        where = "a CUDA device or the CPU" if amp == "bf16" else "a CUDA device"
        raise ValueError(
            f"--amp {amp} needs {where} (got {device.type}); on CPU use --amp bf16 or --amp off"
        )
    return AMP_DTYPES[amp]


def describe_amp(dtype: torch.dtype | None, device: torch.device) -> str:
    """One line saying which precision a run uses (printed at start)."""
    if dtype is not None:
        name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
        return f"{name} autocast on {device.type} (losses, metrics and weights in float32)"
    if device.type == "cpu" and not cpu_has_native_bf16():
        return "float32 (this CPU has no native bf16 instructions, so --amp auto stays float32)"
    return "float32"


def prepare_training_process(
    device: str, amp: str, *, threads: int | None, workers: int
) -> tuple[torch.device, torch.dtype | None]:
    """Set this training process up: its device (under torchrun, the GPU of its LOCAL_RANK,
    after joining the process group), its autocast dtype, torch's CPU threads, OpenCV's
    threads and cuDNN's kernel search. ValueError names a bad ``--device``/``--amp``."""
    import cv2

    from utils import distributed as dist_utils

    dev = pick_device(device)
    amp_dtype = check_amp(amp, dev)
    dev = dist_utils.init_distributed(dev.type) or dev
    if threads:
        torch.set_num_threads(threads)
    if workers > 0:
        # The workers are the data parallelism: one OpenCV thread each. Set here, in the
        # parent, before they fork (setting it inside a forked worker can deadlock).
        cv2.setNumThreads(1)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed crop sizes: let cuDNN pick kernels
    return dev, amp_dtype
