"""On-disk format of maze trajectories (:mod:`seqmix.data.maze_data`) and a clip dataset over it.

A dataset is a directory::

    index.json   {"format": "seqmix-mazes/v1", "source": ..., "frames": F, "explore_frames": E,
                  "frame_shape": [H, W, 3], "num_actions": A, "action_names": [...], "revisit_tolerance": {...},
                  "config": {...}, "shards": [{"file", "num_examples", "sha256"}, ...]}
    shard-00000.safetensors   TENSOR_KEYS, each [n, ...] for n trajectories (per-trajectory shapes and dtypes:
                              seqmix.data.maze_data)

Shards are written atomically (temporary file + fsync + rename, :func:`seqmix.data.shards.atomic_write_bytes`) and
verified against their sha256 when first read.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .shards import atomic_write_bytes, sha256_file

__all__ = ["FORMAT", "TENSOR_KEYS", "MazeShardWriter", "MazeClips"]

FORMAT = "seqmix-mazes/v1"
# Per-trajectory tensors (shapes in seqmix.data.maze_data), stored with a leading trajectory axis.
TENSOR_KEYS = ("frames", "actions", "poses", "prev_index", "distance", "phase")


class MazeShardWriter:
    """Append trajectories of one shape; writes a shard every ``shard_size`` and ``index.json`` on ``close()``.

    Files are written atomically (temporary file + fsync + rename) with their sha256 in the index.
    """

    def __init__(self, out_dir: str | Path, *, shard_size: int = 64, meta: dict | None = None):
        from safetensors.torch import save  # noqa: F401  (fail early if safetensors is missing)

        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if (self.dir / "index.json").exists():
            raise FileExistsError(f"{self.dir} already holds a dataset (index.json); choose an empty directory")
        self.shard_size, self.meta = shard_size, dict(meta or {})
        self._buf: list[dict[str, torch.Tensor]] = []
        self._shards: list[dict] = []
        self._shape: tuple | None = None

    def add(self, t: dict[str, torch.Tensor]) -> None:
        """Add one trajectory: a dict of the :data:`TENSOR_KEYS` tensors (``Trajectory.tensors()``)."""
        missing = [k for k in TENSOR_KEYS if k not in t]
        if missing:
            raise ValueError(f"trajectory lacks {missing}; expected the tensors {TENSOR_KEYS}")
        shape = tuple(t["frames"].shape)
        if t["frames"].dim() != 4 or shape[-1] != 3 or t["frames"].dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 [F, H, W, 3], got {t['frames'].dtype} {shape}")
        bad = [k for k in TENSOR_KEYS[1:] if t[k].shape[0] != shape[0]]
        if bad:
            raise ValueError(f"{bad} do not have one entry per frame ({shape[0]} frames)")
        if self._shape is None:
            self._shape = shape
        elif shape != self._shape:
            raise ValueError(f"trajectory frames {shape} differ from the dataset's {self._shape}; one shape per dataset")
        self._buf.append(t)
        if len(self._buf) == self.shard_size:
            self._flush()

    def _flush(self) -> None:
        from safetensors.torch import save

        if not self._buf:
            return
        name = f"shard-{len(self._shards):05d}.safetensors"
        data = save({k: torch.stack([b[k] for b in self._buf]).contiguous() for k in TENSOR_KEYS})
        atomic_write_bytes(self.dir / name, data)
        self._shards.append({"file": name, "num_examples": len(self._buf), "sha256": hashlib.sha256(data).hexdigest()})
        self._buf = []

    def close(self) -> Path:
        self._flush()
        if not self._shards:
            raise ValueError("no trajectories were added")
        index = {"format": FORMAT, **self.meta, "frames": self._shape[0], "frame_shape": list(self._shape[1:]),
                 "num_trajectories": sum(s["num_examples"] for s in self._shards), "shards": self._shards}
        atomic_write_bytes(self.dir / "index.json", json.dumps(index, indent=1).encode())
        return self.dir / "index.json"

    def __enter__(self) -> "MazeShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


class MazeClips(Dataset):
    """Clips of the trajectories in a maze dataset directory.

    ``clip_frames=None``: one item per trajectory (all frames). Otherwise windows of ``clip_frames`` frames: at
    offsets ``0, stride, 2 stride, ...`` (``stride`` defaults to ``clip_frames``; every window that fits), or with
    ``random_offset=True`` one window per trajectory at an offset drawn from torch's global generator (seeded per
    worker by the DataLoader / Lightning).

    Items: ``frames [L, 3, H, W]`` float32 in [-1, 1], ``actions [L]`` int64, ``poses [L, 3]`` float32,
    ``prev_index [L]`` int64 (clip-relative: -1 where the place was not seen earlier in the clip), ``distance
    [L]`` int64 (-1 likewise), ``phase [L]`` int64, ``trajectory`` and ``offset`` (ints: where the clip comes from).
    Shards are verified against their sha256 on first read (``verify=True``); one shard is open at a time and
    only the clip's frames are read.
    """

    def __init__(self, path: str | Path, clip_frames: int | None = None, stride: int | None = None,
                 random_offset: bool = False, verify: bool = True):
        self.dir = Path(path)
        index = self.dir / "index.json"
        if not index.is_file():
            raise FileNotFoundError(f"no maze dataset at {self.dir}: index.json is missing (write one with "
                                    "`seqmix prepare mazes`)")
        self.index = json.loads(index.read_text())
        if self.index.get("format") != FORMAT:
            raise ValueError(f"{index}: format {self.index.get('format')!r} is not {FORMAT!r}")
        f = self.num_frames
        if clip_frames is not None and not 1 <= clip_frames <= f:
            raise ValueError(f"clip_frames must be in [1, {f}] (the trajectories' length), got {clip_frames}")
        if stride is not None and stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.clip = clip_frames or f
        self.random_offset = random_offset
        self.offsets = [0] if random_offset else list(range(0, f - self.clip + 1, stride or self.clip))
        self.verify = verify
        self._starts, n = [], 0
        for s in self.index["shards"]:
            if not (self.dir / s["file"]).is_file():
                raise FileNotFoundError(f"shard {s['file']} listed in {index} is missing")
            self._starts.append(n)
            n += s["num_examples"]
        self.num_trajectories = n
        self._cache: tuple | None = None  # (shard, safe_open handle)
        self._verified: set[int] = set()

    @property
    def num_frames(self) -> int:
        return int(self.index["frames"])

    @property
    def explore_frames(self) -> int:
        return int(self.index["explore_frames"])

    def __len__(self) -> int:
        return self.num_trajectories * len(self.offsets)

    def _open(self, k: int):
        """A lazy reader of shard ``k`` (verified on first use): tensors are read slice by slice, so a clip of a
        long trajectory reads only its frames."""
        from safetensors import safe_open

        if self._cache is not None and self._cache[0] == k:
            return self._cache[1]
        meta = self.index["shards"][k]
        path = self.dir / meta["file"]
        if self.verify and k not in self._verified:
            got = sha256_file(path)
            if got != meta["sha256"]:
                raise ValueError(f"checksum mismatch for {path}: index says {meta['sha256'][:12]}..., file is "
                                 f"{got[:12]}... (the file is corrupt or was changed; write the dataset again)")
            self._verified.add(k)
        handle = safe_open(str(path), framework="pt")
        self._cache = (k, handle)
        return handle

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": None}  # open file handles stay in the process (DataLoader workers)

    def trajectory(self, i: int, frames: slice = slice(None)) -> dict[str, torch.Tensor]:
        """The stored tensors of trajectory ``i``, restricted to ``frames`` (uint8 frames ``[L, H, W, 3]``,
        absolute ``prev_index``)."""
        if not 0 <= i < self.num_trajectories:
            raise IndexError(f"trajectory {i} out of range for {self.num_trajectories} trajectories")
        k = max(j for j, s in enumerate(self._starts) if s <= i)
        h, o = self._open(k), i - self._starts[k]
        return {key: h.get_slice(key)[o:o + 1, frames][0] for key in TENSOR_KEYS}

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} clips")
        traj, w = divmod(i, len(self.offsets))
        off = (int(torch.randint(0, self.num_frames - self.clip + 1, ())) if self.random_offset
               else self.offsets[w])
        t = self.trajectory(traj, slice(off, off + self.clip))
        prev = t["prev_index"] - off
        seen = prev >= 0
        return {"frames": t["frames"].permute(0, 3, 1, 2).float() / 127.5 - 1.0,
                "actions": t["actions"].long(), "poses": t["poses"].float(),
                "prev_index": torch.where(seen, prev, -1).long(),
                "distance": torch.where(seen, t["distance"], -1).long(),
                "phase": t["phase"].long(), "trajectory": traj, "offset": off}
