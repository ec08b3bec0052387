"""Training infrastructure: kill-safe checkpoints, exactly resumable data order, per-example randomness.

* :class:`AtomicCheckpointIO` writes checkpoints to a temporary file in the target directory, fsyncs and renames
  it over the target: a SIGKILL at any moment leaves either the old or the new checkpoint, never a torn one. Each
  checkpoint gets a SHA-256 digest in ``<name>.sha256`` beside it, checked before a checkpoint is restored
  (:func:`verify_checkpoint`): a corrupt file is refused with :class:`CheckpointCorruptError`.
* :class:`StopOnNonFiniteLoss` stops training with :class:`NonFiniteLossError` at the first NaN / inf loss, before
  the optimizer step and before any checkpoint of that step is written.
* :class:`ResumableLoader` is a DataLoader whose order is a pure function of ``(seed, epoch)`` and which
  Lightning checkpoints (it implements ``state_dict`` / ``load_state_dict``): resuming mid-epoch continues with
  the next unseen batch. It shards by rank itself (set ``trainer.use_distributed_sampler: false``).
* :func:`example_generator` gives every (example, step) its own RNG, so noise and timesteps do not depend on the
  number of processes or on resumption: 1-process and N-process runs see the same randomness.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import socket
from pathlib import Path
from typing import Any, Callable

import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader, Dataset, Sampler

from seqmix.data.shards import sha256_file

logger = logging.getLogger(__name__)

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointCorruptError",
    "CheckpointFolderInUseError",
    "NonFiniteLossError",
    "ResumableLoader",
    "StopOnNonFiniteLoss",
    "data_parallel_rank",
    "example_generator",
    "load_checkpoint",
    "torch_shuffle_order",
    "trainer_progress",
    "verify_checkpoint",
]

_DIGEST_SUFFIX = ".sha256"


class CheckpointCorruptError(RuntimeError):
    """A checkpoint's bytes do not match the digest written with it."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class CheckpointFolderInUseError(RuntimeError):
    """Another live run writes checkpoints into the same folder."""


_HOST = socket.gethostname()
_LOCK_NAME = ".seqmix-run.lock"
_OWNED: set[Path] = set()  # checkpoint folders this process holds the lock of


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def _owner_alive(host: str, pid: int) -> bool:
    """Whether a lock or temporary of (host, pid) may still be in use (another host's: assumed so)."""
    return host != _HOST or _pid_alive(pid)


def claim_checkpoint_folder(folder: Path) -> None:
    """Make this process the owner of checkpoint folder ``folder`` (``.seqmix-run.lock``: host, pid), once.

    A folder owned by another live process raises :class:`CheckpointFolderInUseError` naming the owner; the lock of a
    dead process (a run that was killed) is taken over. The lock goes when this process exits."""
    folder = Path(folder).resolve()
    if folder in _OWNED:
        return
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / _LOCK_NAME
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                host, pid = lock.read_text().split()[:2]
                pid = int(pid)
            except (OSError, ValueError):  # being written, or garbage: look again
                host, pid = _HOST, -1
            if pid == os.getpid() and host == _HOST:
                break
            if pid > 0 and _owner_alive(host, pid):
                raise CheckpointFolderInUseError(
                    f"checkpoint folder {folder} is in use by another run (pid {pid} on {host}, {lock}); give this "
                    f"run its own folder (--trainer.default_root_dir or the checkpoint callback's dirpath)") from None
            logger.info("taking over %s from a run that is no longer alive (pid %s on %s)", lock, pid, host)
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{_HOST} {os.getpid()}\n")
        break
    _OWNED.add(folder)
    atexit.register(_release, lock)


def _release(lock: Path) -> None:
    try:
        host, pid = lock.read_text().split()[:2]
        if host == _HOST and int(pid) == os.getpid():
            lock.unlink(missing_ok=True)
    except (OSError, ValueError):
        pass


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + _DIGEST_SUFFIX)


def _write_tmp(path: Path, write: Callable[[Any], None]) -> Path:
    """``write(f)`` into ``.<name>.tmp-<host>-<pid>`` beside ``path`` and fsync it; returns the temporary's path."""
    tmp = path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    return tmp


def _fsync_dir(directory: Path) -> None:
    """Make renames inside ``directory`` durable."""
    try:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:  # pragma: no cover - some filesystems do not support fsync on directories
        pass


def _accepted_digests(path: Path) -> list[str] | None:
    """Digests the sidecar of ``path`` accepts (newest first), or None if there is no sidecar."""
    side = _digest_path(path)
    if not side.is_file():
        return None
    return [line.split()[0] for line in side.read_text().splitlines() if line.strip()]


def verify_checkpoint(path: str | Path) -> None:
    """Raise :class:`CheckpointCorruptError` if ``path`` does not match the digest written with it.

    A checkpoint written without a digest (by another tool, or an older seqmix) is accepted with a warning.
    """
    path = Path(path)
    real = path.resolve()  # a linked last.ckpt is checked against the digest of the file it points to
    accepted = _accepted_digests(real)
    if accepted is None:
        logger.warning("checkpoint %s has no %s digest beside it; loading it unverified", path, _DIGEST_SUFFIX)
        return
    got = sha256_file(real)
    if got in accepted:
        return
    # Suggest the furthest-trained other checkpoint of the directory that verifies: by the step in its name
    # (Lightning's `step=N` / `epoch=E-step=N`), then by time (a copy resets file times; hashing stops at the first
    # good one).
    def progress(p: Path) -> tuple[int, float]:
        m = re.search(r"step=(\d+)", p.name)
        return (int(m.group(1)) if m else -1, p.stat().st_mtime)

    others = sorted((p for p in real.parent.glob("*.ckpt") if p.is_file() and p.resolve() != real),
                    key=progress, reverse=True)
    good = next((p for p in others if (_accepted_digests(p.resolve()) or [None])[0] == sha256_file(p)), None)
    hint = f"resume from the previous checkpoint instead, e.g. --ckpt_path={good}" if good else (
        "resume from a previous checkpoint instead (none verified in the same directory)")
    raise CheckpointCorruptError(
        f"checkpoint {path} is corrupt: its SHA-256 {got[:16]}... does not match the digest written with it "
        f"({_digest_path(real).name}: {accepted[0][:16]}...); {hint}"
    )


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load`` a checkpoint after :func:`verify_checkpoint` (checkpoints hold Lightning objects, so not
    ``weights_only``: load only checkpoints you trust)."""
    verify_checkpoint(path)
    return torch.load(path, map_location=map_location, weights_only=False)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` to ``.<name>.tmp-<host>-<pid>`` next to the target, fsync, then ``os.replace`` (atomic on POSIX);
    a SHA-256 digest goes to ``<name>.sha256`` and is verified before a checkpoint is loaded.

    The digest file is replaced *before* the checkpoint and lists the new digest and the one of the checkpoint it
    replaces: a kill between the two renames leaves a checkpoint (old or new) that still verifies.

    A run owns the folder it saves into (:func:`claim_checkpoint_folder`): a second live run saving there stops with
    :class:`CheckpointFolderInUseError` naming the owner, and only temporaries of dead processes are cleaned up.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        claim_checkpoint_folder(path.parent)
        # Temporaries of a save that was killed (a dead owner on this host) are garbage: the rename never happened.
        # A live process's temporaries are never touched.
        for stale in (*path.parent.glob(f".{path.name}.tmp-*"), *path.parent.glob(f".{path.name}{_DIGEST_SUFFIX}.tmp-*")):
            host, _, pid = stale.name.rsplit(".tmp-", 1)[1].rpartition("-")
            if pid.isdigit() and not _owner_alive(host or _HOST, int(pid)):
                logger.info("removing %s left by an interrupted save", stale)
                stale.unlink(missing_ok=True)
        tmps = []
        try:
            tmps.append(_write_tmp(path, lambda f: torch.save(checkpoint, f)))
            # [:2]: a save killed between its two renames left [new, old] beside the old file
            previous = (_accepted_digests(path) or [])[:2] if path.exists() else []
            lines = "".join(f"{d}  {path.name}\n" for d in dict.fromkeys([sha256_file(tmps[0]), *previous]))
            tmps.append(_write_tmp(_digest_path(path), lambda f: f.write(lines.encode())))
            os.replace(tmps[1], _digest_path(path))  # digest first: see the class docstring
            os.replace(tmps[0], path)
        finally:
            for tmp in tmps:
                tmp.unlink(missing_ok=True)
        _fsync_dir(path.parent)

    def load_checkpoint(self, path: str | Path, map_location: Any = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if Path(path).is_file():
            verify_checkpoint(path)
        kw = {} if map_location is None else {"map_location": map_location}
        return super().load_checkpoint(path, weights_only=weights_only, **kw)

    def remove_checkpoint(self, path: str | Path) -> None:
        super().remove_checkpoint(path)
        _digest_path(Path(path)).unlink(missing_ok=True)


class StopOnNonFiniteLoss(Callback):
    """Stop training with :class:`NonFiniteLossError` at the first NaN / inf training loss.

    Checked before ``backward`` (so no optimizer step and no checkpoint sees the bad values); all processes decide
    together, so a NaN on one rank stops every rank. ``seqmix fit`` adds it;
    ``--stop_on_nonfinite_loss.enabled=false`` turns it off.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        if not self.enabled:
            return
        bad = not bool(torch.isfinite(loss.detach()).all())
        if trainer.strategy.reduce_boolean_decision(bad, all=False):
            value = float(loss.detach().float().sum()) if bad else "on another process"
            raise NonFiniteLossError(
                f"non-finite training loss ({value}) at step {trainer.global_step} (epoch {trainer.current_epoch}); "
                "training stopped. Lower the learning rate or clip gradients (trainer.gradient_clip_val), and resume "
                "from the last checkpoint written before this step; --stop_on_nonfinite_loss.enabled=false turns this "
                "check off"
            )


def example_generator(seed: int, step: int, index: int) -> torch.Generator:
    """A CPU generator unique to (seed, optimizer step, example index)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_000_033 + index)


def trainer_progress(trainer) -> tuple[int, int]:
    """``(epoch, batches trained this epoch)`` of ``trainer`` (None: ``(0, 0)``): a :class:`ResumableLoader`'s
    position, read from the trainer's counters so that a batch prefetched but not trained on is not counted."""
    if trainer is None:
        return 0, 0
    return trainer.current_epoch, trainer.fit_loop.epoch_loop.batch_progress.current.processed


def data_parallel_rank(trainer) -> tuple[int, int]:
    """``(rank, world size)`` of the data-parallel group (tensor-parallel ranks of one group read the same data)."""
    if trainer is None:
        return 0, 1
    kw = getattr(trainer.strategy, "distributed_sampler_kwargs", None)
    return (kw["rank"], kw["num_replicas"]) if kw else (trainer.global_rank, trainer.world_size)


def torch_shuffle_order(n: int, seed: int, epoch: int) -> list[int]:
    """The example order of ``DataLoader(dataset, shuffle=True, generator=torch.Generator().manual_seed(seed))`` in
    epoch ``epoch`` when every earlier epoch was read to the end: each epoch's iterator draws its base seed from the
    generator, then the sampler draws a permutation, and an exhausted sampler draws one more (its empty remainder).
    Lets a resumable loader keep the order of a plain shuffled one (tests/test_checkpoints.py holds them equal)."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(epoch):
        torch.empty((), dtype=torch.int64).random_(generator=g)
        torch.randperm(n, generator=g)
        torch.randperm(n, generator=g)
    torch.empty((), dtype=torch.int64).random_(generator=g)
    return torch.randperm(n, generator=g).tolist()


class _ResumableSampler(Sampler[int]):
    def __init__(self, n: int, seed: int, shuffle: bool, epoch_fn: Callable[[], int], rank_fn: Callable[[], tuple[int, int]],
                 batch_size: int, drop_last: bool, order_fn: Callable[[int], list[int]] | None = None):
        self.order_fn = order_fn
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.epoch_fn, self.rank_fn = epoch_fn, rank_fn
        self.batch_size, self.drop_last = batch_size, drop_last
        self.resume: tuple[int, int] | None = None  # (epoch, batches already trained in it)

    def _order(self, epoch: int) -> list[int]:
        if self.order_fn is not None:
            order = self.order_fn(epoch)
        elif self.shuffle:
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
        order_fn: ``epoch -> example order`` instead of the ``(seed, epoch)`` permutation (e.g.
            :func:`torch_shuffle_order`, the order of a plain shuffled DataLoader).
    """

    def __init__(self, dataset: Dataset, batch_size: int, *, seed: int, shuffle: bool = True,
                 progress_fn: Callable[[], tuple[int, int]], rank_fn: Callable[[], tuple[int, int]],
                 drop_last: bool = True, order_fn: Callable[[int], list[int]] | None = None, **kw):
        self._progress_fn = progress_fn
        sampler = _ResumableSampler(len(dataset), seed, shuffle, lambda: progress_fn()[0], rank_fn, batch_size, drop_last,
                                    order_fn)
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, **kw)

    def state_dict(self) -> dict:
        epoch, done = self._progress_fn()
        return {"epoch": epoch, "batches_done": done}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.resume = (int(state["epoch"]), int(state["batches_done"]))
        logger.info("resuming data order at epoch %s after %s batches", *self.sampler.resume)
