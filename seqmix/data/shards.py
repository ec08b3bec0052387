"""On-disk format for precomputed video latents and per-segment text embeddings.

A dataset is a directory::

    index.json                  {"format": "seqmix-latents/v1", "latent_shape": [F, C, H, W],
                                 "text_shape": [S*L, D], "dtype": "bfloat16", "layout": {...},
                                 "shards": [{"file": "shard-00000.safetensors", "num_examples": n,
                                             "sha256": "..."}, ...]}
    shard-00000.safetensors     tensors "latents" [n, F, C, H, W], "text" [n, S*L, D], "text_mask" [n, S*L]
    ...

Shards are independent files, written atomically (temporary file + rename) and checksummed, so a dataset can be
streamed shard by shard, copied partially, and verified. Text of segment ``s`` occupies rows ``[s L, (s+1) L)``;
``text_mask`` marks real (1) vs padding (0) tokens. The VAE / text encoder that produced the tensors are
recorded in ``index.json`` (``"encoders"``) when known.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from torch.utils.data import Dataset

logger = logging.getLogger(__name__)

__all__ = ["ShardWriter", "LatentShards", "FORMAT", "sha256_file", "atomic_write_bytes"]

FORMAT = "seqmix-latents/v1"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``.<name>.tmp-<pid>`` beside ``path``, fsync, then rename over ``path``: readers see the old
    file or the complete new one, never a partial one (the temporary file is removed if the write fails)."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


class ShardWriter:
    """Append examples and write shards of ``shard_size`` examples; ``close()`` writes ``index.json``.

    ``with ShardWriter(out_dir, shard_size=256, layout={...}) as w: w.add(latents [F,C,H,W], text [S*L,D])``
    """

    def __init__(self, out_dir: str | Path, *, shard_size: int = 256, dtype: torch.dtype = torch.bfloat16,
                 layout: dict | None = None, encoders: dict | None = None):
        from safetensors.torch import save  # noqa: F401  (fail early if safetensors is missing)

        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if (self.dir / "index.json").exists():
            raise FileExistsError(f"{self.dir} already holds a dataset (index.json); choose an empty directory")
        self.shard_size, self.dtype = shard_size, dtype
        self.layout, self.encoders = layout or {}, encoders or {}
        self._buf: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._shards: list[dict] = []
        self._shapes: tuple | None = None

    def add(self, latents: torch.Tensor, text: torch.Tensor, text_mask: torch.Tensor | None = None) -> None:
        """Add one example: ``latents [F, C, H, W]``, ``text [S*L, D]``, optional ``text_mask [S*L]``."""
        if latents.dim() != 4 or text.dim() != 2:
            raise ValueError(f"expected latents [F, C, H, W] and text [S*L, D], got {tuple(latents.shape)}, {tuple(text.shape)}")
        shapes = (tuple(latents.shape), tuple(text.shape))
        if self._shapes is None:
            self._shapes = shapes
        elif shapes != self._shapes:
            raise ValueError(f"example shapes {shapes} differ from the dataset's {self._shapes}; one layout per dataset")
        mask = torch.ones(text.shape[0], dtype=torch.bool) if text_mask is None else text_mask.bool()
        self._buf.append((latents.detach().cpu(), text.detach().cpu(), mask.cpu()))
        if len(self._buf) == self.shard_size:
            self._flush()

    def _flush(self) -> None:
        from safetensors.torch import save

        if not self._buf:
            return
        lat, txt, msk = (torch.stack(t) for t in zip(*self._buf))
        name = f"shard-{len(self._shards):05d}.safetensors"
        data = save({"latents": lat.to(self.dtype).contiguous(), "text": txt.to(self.dtype).contiguous(),
                     "text_mask": msk.contiguous()})
        atomic_write_bytes(self.dir / name, data)
        self._shards.append({"file": name, "num_examples": len(self._buf), "sha256": hashlib.sha256(data).hexdigest()})
        self._buf = []

    def close(self) -> Path:
        self._flush()
        if not self._shards:
            raise ValueError("no examples were added")
        index = {"format": FORMAT, "latent_shape": list(self._shapes[0]), "text_shape": list(self._shapes[1]),
                 "dtype": str(self.dtype).replace("torch.", ""), "layout": self.layout, "encoders": self.encoders,
                 "shards": self._shards}
        atomic_write_bytes(self.dir / "index.json", json.dumps(index, indent=1).encode())
        return self.dir / "index.json"

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


class LatentShards(Dataset):
    """Map-style view of a shard directory; loads one shard at a time (sequential access streams shards).

    Items are dicts ``{"latents": [F, C, H, W] float32, "text": [S*L, D] float32, "text_mask": [S*L] bool}``.
    ``verify=True`` checks every shard's sha256 on first open and fails on a mismatch.
    """

    def __init__(self, path: str | Path, verify: bool = True):
        self.dir = Path(path)
        index = self.dir / "index.json"
        if not index.is_file():
            raise FileNotFoundError(f"no dataset at {self.dir}: index.json is missing (write one with "
                                    "`seqmix prepare storyboards|videos` or seqmix.data.shards.ShardWriter)")
        self.index = json.loads(index.read_text())
        if self.index.get("format") != FORMAT:
            raise ValueError(f"{index}: format {self.index.get('format')!r} is not {FORMAT!r}")
        self.verify = verify
        self._starts = []
        n = 0
        for s in self.index["shards"]:
            if not (self.dir / s["file"]).is_file():
                raise FileNotFoundError(f"shard {s['file']} listed in {index} is missing")
            self._starts.append(n)
            n += s["num_examples"]
        self._len = n
        self._cache: tuple[int, dict] | None = None
        self._verified: set[int] = set()

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.index["latent_shape"])

    @property
    def text_shape(self) -> tuple[int, ...]:
        return tuple(self.index["text_shape"])

    def __len__(self) -> int:
        return self._len

    def _load(self, k: int) -> dict:
        from safetensors.torch import load_file

        if self._cache is not None and self._cache[0] == k:
            return self._cache[1]
        meta = self.index["shards"][k]
        path = self.dir / meta["file"]
        if self.verify and k not in self._verified:
            got = sha256_file(path)
            if got != meta["sha256"]:
                raise ValueError(f"checksum mismatch for {path}: index says {meta['sha256'][:12]}..., file is {got[:12]}...")
            self._verified.add(k)
        data = load_file(str(path))
        self._cache = (k, data)
        return data

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self._len:
            raise IndexError(f"index {i} out of range for {self._len} examples")
        k = max(j for j, s in enumerate(self._starts) if s <= i)
        d = self._load(k)
        o = i - self._starts[k]
        return {"latents": d["latents"][o].float(), "text": d["text"][o].float(), "text_mask": d["text_mask"][o]}
