"""Training infrastructure: kill-safe checkpoints, exactly resumable data order, per-example randomness.

* :class:`AtomicCheckpointIO` writes checkpoints to a temporary file in the target directory, fsyncs and renames
  it over the target: a SIGKILL at any moment leaves either the old or the new checkpoint, never a torn one.
* :class:`ResumableLoader` is a DataLoader whose order is a pure function of ``(seed, epoch)`` and which
  Lightning checkpoints (it implements ``state_dict`` / ``load_state_dict``): resuming mid-epoch continues with
  the next unseen batch. It shards by rank itself (set ``trainer.use_distributed_sampler: false``).
* :func:`example_generator` gives every (example, step) its own RNG, so noise and timesteps do not depend on the
  number of processes or on resumption: 1-process and N-process runs see the same randomness.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, Dataset, Sampler

logger = logging.getLogger(__name__)

__all__ = ["AtomicCheckpointIO", "ResumableLoader", "example_generator"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``.<name>.tmp-<pid>`` next to the target, fsync, then ``os.replace`` (atomic on POSIX)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        try:  # make the rename itself durable
            fd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:  # pragma: no cover - some filesystems do not support fsync on directories
            pass


def example_generator(seed: int, step: int, index: int) -> torch.Generator:
    """A CPU generator unique to (seed, optimizer step, example index)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_000_033 + index)


class _ResumableSampler(Sampler[int]):
    def __init__(self, n: int, seed: int, shuffle: bool, epoch_fn: Callable[[], int], rank_fn: Callable[[], tuple[int, int]],
                 batch_size: int, drop_last: bool):
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch_fn, self.rank_fn = epoch_fn, rank_fn
        self.batch_size, self.drop_last = batch_size, drop_last
        self.resume: tuple[int, int] | None = None  # (epoch, batches already trained in it)

    def _order(self, epoch: int) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        rank, world = self.rank_fn()
        # Every rank takes a contiguous slice of each *global* batch, so the union of the ranks' batches at a step
        # is exactly the 1-process batch of size batch_size * world.
        gb = self.batch_size * world
        n_batches = len(order) // gb if self.drop_last else -(-len(order) // gb)
        out = []
        for b in range(n_batches):
            out.extend(order[b * gb + rank * self.batch_size : b * gb + (rank + 1) * self.batch_size])
        return out

    def __iter__(self):
        epoch = self.epoch_fn()
        order = self._order(epoch)
        skip = 0
        if self.resume is not None and self.resume[0] == epoch:  # a checkpoint saved at an epoch end skips nothing
            skip = self.resume[1] * self.batch_size
        self.resume = None
        return iter(order[skip:])

    def __len__(self) -> int:
        return len(self._order(0))


class ResumableLoader(DataLoader):
    """DataLoader with a deterministic, rank-sharded, checkpointable order.

    Args:
        dataset: a map-style dataset.
        batch_size: per-process batch size (the global batch is ``batch_size * world_size``).
        seed: order seed; epoch ``e`` uses permutation ``(seed, e)``.
        progress_fn: returns ``(epoch, batches already processed this epoch)`` for ``state_dict`` (the trainer's
            counters, so that a batch prefetched but not trained on is not counted).
        rank_fn: returns ``(rank, world_size)``.
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, seed: int, shuffle: bool = True,
                 progress_fn: Callable[[], tuple[int, int]], rank_fn: Callable[[], tuple[int, int]],
                 drop_last: bool = True, **kw):
        self._progress_fn = progress_fn
        sampler = _ResumableSampler(len(dataset), seed, shuffle, lambda: progress_fn()[0], rank_fn, batch_size, drop_last)
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **kw)

    def state_dict(self) -> dict:
        epoch, done = self._progress_fn()
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.resume = (int(state["epoch"]), int(state["batches_done"]))
        logger.info("resuming data order at epoch %s after %s batches", *self.sampler.resume)
