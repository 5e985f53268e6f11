"""torchrun / DDP helpers: the only module that talks to torch.distributed.

Launch many GPUs with ``torchrun --nproc_per_node=N train_encoder_decoder.py ...``; torchrun sets
RANK, LOCAL_RANK and WORLD_SIZE, which :func:`init_distributed` reads. Without them every helper
degrades to the single-process answer, so callers never branch on "am I distributed".
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """True on the process that logs, validates and saves (rank 0)."""
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device_type: str) -> torch.device | None:
    """Join the process group torchrun describes; return this process's device or None.

    NCCL on CUDA, gloo on CPU (gloo is also what the tests use). Each CUDA process takes the GPU
    named by LOCAL_RANK among the visible ones; nothing here touches CUDA_VISIBLE_DEVICES.
    """
    if not launched_by_torchrun() or is_distributed():
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_type == "cuda":
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        backend = "nccl"
    else:
        device = torch.device(device_type)
        backend = "gloo"
    timeout = timedelta(minutes=30)
    # torchrun's agent keeps one key-value store for every restart of the group (its shared
    # rendezvous store), so keys the dead attempt wrote (each rank's address) are still there
    # and a restarted rank can read its peer's stale address and hang in the backend's set-up.
    # Each attempt gets its own key space.
    store, rank, size = next(dist.rendezvous("env://", timeout=timeout))
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = dist.PrefixStore(f"dim-attempt-{attempt}", store)
    dist.init_process_group(
        backend=backend, store=store, rank=rank, world_size=size, timeout=timeout
    )
    return device


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()
