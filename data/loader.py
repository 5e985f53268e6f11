"""The training DataLoader: per-epoch shuffling sharded over DDP ranks, exact mid-epoch
resume, and data errors that name the file.

:func:`make_loader` builds one loader for the whole run (persistent workers, each seeded by
:func:`data.py_adobe_data.worker_init_fn`); before each epoch :func:`start_epoch` tells the
sampler and the dataset which epoch it is and how many of its batches were already trained
(a resumed run skips exactly those). :func:`batches` iterates it, turning a file that fails
to decode into :class:`DataFailure`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, DistributedSampler

from data.py_adobe_data import AdobeDataset, worker_init_fn
from data.sources import DataSourceError
from utils import distributed as dist_utils
from utils.image_io import ImageReadError


class ResumableSampler(DistributedSampler):
    """DistributedSampler (per-epoch shuffle, one shard per rank) that can skip the batches a
    resumed run has already trained on in the current epoch, so a resume is exact, and can
    stop an epoch after ``max_batches`` (``--iters-per-epoch``)."""

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


def make_loader(
    train_set: AdobeDataset, *, batch_size: int, workers: int, seed: int, pin_memory: bool
) -> DataLoader:
    """One loader for the whole run, its sampler sharded over the DDP ranks. The sampler is
    re-read every epoch, and the dataset's epoch counter lives in shared memory, so
    persistent workers see :func:`start_epoch`."""
    sampler = ResumableSampler(
        train_set, dist_utils.world_size(), dist_utils.rank(), seed, batch_size
    )
    # Workers are forked once for the whole run, not at every epoch.
    ahead = {"persistent_workers": True, "prefetch_factor": 4} if workers > 0 else {}
    return DataLoader(train_set, batch_size, sampler=sampler, num_workers=workers,
                      pin_memory=pin_memory, drop_last=True, worker_init_fn=worker_init_fn,
                      **ahead)  # fmt: skip


def start_epoch(loader: DataLoader, epoch: int, done_batches: int, max_batches: int | None) -> None:
    """Prepare ``loader`` for ``epoch``: its shuffle and compositing, the first
    ``done_batches`` skipped (a resume), at most ``max_batches`` in all (None: no cap)."""
    loader.sampler.set_epoch(epoch)
    loader.sampler.skip_batches = done_batches
    loader.sampler.max_batches = max_batches
    loader.dataset.set_epoch(epoch)


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

    def advice(self, iteration: int, saved, no_bg_cache: bool) -> str:
        """One line for the user: what failed, what was saved, what to do."""
        flag = (
            "drop --no-bg-cache to have every image decoded (and checked) at start"
            if no_bg_cache
            else "images are decoded (and checked) at start unless --no-bg-cache is given"
        )
        return (
            f"training data failed after iteration {iteration}: {self.message} | saved "
            f"{saved} (iteration {iteration}); replace or remove that file and continue "
            f"with --resume ({flag})"
        )


def batches(loader, waits: list[float] | None = None) -> Iterator[tuple[torch.Tensor, ...]]:
    """Iterate ``loader``, turning a data error into :class:`DataFailure` (the state is still
    "after the previous iteration": batches are fetched before a step starts).

    ``waits`` (optional) gets, per batch, the seconds the loop stood blocked on the loader
    (starting the iterator included): near 0 when the workers keep up with the model.
    """
    t0 = time.perf_counter()
    it = iter(loader)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except (ImageReadError, DataSourceError) as e:
            raise DataFailure(e) from e
        if waits is not None:
            waits.append(time.perf_counter() - t0)
        yield batch
        t0 = time.perf_counter()
