"""Loading a diffusers-format CogVideoX transformer into :class:`~seqmix.backbones.dit.SegmentedDiT` (the global
layers, absent from the checkpoint, are initialised fresh). Nothing is downloaded; diffusers is not imported."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import DiTConfig

logger = logging.getLogger(__name__)

__all__ = ["LoadReport", "load_cogvideox"]


@dataclass
class LoadReport:
    """What :meth:`SegmentedDiT.from_cogvideox` did: parameters initialised fresh (the global layers), checkpoint
    keys the model lacks (``unexpected``), model keys the checkpoint lacks (``missing``), files read."""

    fresh_keys: list[str]
    missing_keys: list[str]
    unexpected_keys: list[str]
    files: list[str]


def _names(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_cogvideox(cls, path: str | os.PathLike, mixer: str | None = None, *, strict: bool = True,
                   dtype: torch.dtype | None = None, device: torch.device | str | None = None, **cfg: Any):
    """:meth:`SegmentedDiT.from_cogvideox` (see there) for model class ``cls``."""
    try:
        from safetensors import safe_open
    except ImportError as e:  # pragma: no cover - safetensors is a test / loading dependency
        raise ImportError("from_cogvideox needs the 'safetensors' package (pip install safetensors)") from e
    root = Path(path)
    if not (root / "config.json").is_file() and (root / "transformer" / "config.json").is_file():
        root = root / "transformer"
    if not (root / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {str(path)!r} (expected a diffusers transformer directory)")
    with open(root / "config.json") as f:
        config = DiTConfig.from_diffusers_config(json.load(f), mixer=mixer, **cfg)
    files = _weight_files(root)

    model = cls(config)
    if dtype is not None or device is not None:
        model = model.to(device=device, dtype=dtype)
    params = {k: v for k, v in model.state_dict().items() if not cls.is_global_key(k)}
    seen: set[str] = set()
    unexpected: list[str] = []
    mismatched: list[str] = []
    with torch.no_grad():
        for file in files:
            with safe_open(str(file), framework="pt", device="cpu") as sf:
                for key in sf.keys():
                    target = params.get(key)
                    if target is None:
                        unexpected.append(key)
                        continue
                    tensor = sf.get_tensor(key)
                    if tuple(tensor.shape) != tuple(target.shape):
                        mismatched.append(f"{key}: checkpoint {tuple(tensor.shape)} vs model {tuple(target.shape)}")
                        continue
                    target.copy_(tensor)  # casts to the model's dtype / device
                    seen.add(key)
    if mismatched:
        raise ValueError(f"shape mismatch between {root} and the model config: {_names(mismatched)}")
    missing = sorted(set(params) - seen)
    unexpected = sorted(unexpected)
    if (missing or unexpected) and strict:
        msg = []
        if missing:
            msg.append(f"missing from the checkpoint ({len(missing)}): {_names(missing)}")
        if unexpected:
            msg.append(f"unexpected in the checkpoint ({len(unexpected)}): {_names(unexpected)}")
        raise ValueError(f"cannot load {root} strictly: " + "; ".join(msg) + " (strict=False loads the rest)")
    if missing or unexpected:
        logger.warning("loaded %s non-strictly: %d missing key(s) [%s], %d unexpected key(s) [%s]", root,
                       len(missing), _names(missing), len(unexpected), _names(unexpected))
    fresh = [k for k in model.state_dict() if cls.is_global_key(k)]
    logger.info("loaded %s (%d tensors from %d file(s)); %d global-layer tensors initialised fresh", root,
                len(seen), len(files), len(fresh))
    model.load_report = LoadReport(fresh, missing, unexpected, [str(f) for f in files])
    return model


def _weight_files(root: Path) -> list[Path]:
    index = root / "diffusion_pytorch_model.safetensors.index.json"
    single = root / "diffusion_pytorch_model.safetensors"
    if index.is_file():
        with open(index) as f:
            weight_map = json.load(f).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index} has no weight_map")
        files = [root / name for name in sorted(set(weight_map.values()))]
        absent = [str(p.name) for p in files if not p.is_file()]
        if absent:
            raise FileNotFoundError(f"shards listed in {index.name} are missing from {root}: {_names(absent)}")
        return files
    if single.is_file():
        return [single]
    found = sorted(p.name for p in root.iterdir())
    raise FileNotFoundError(
        f"no diffusion_pytorch_model.safetensors (or its .index.json for shards) in {root}; found: {_names(found)}"
    )
