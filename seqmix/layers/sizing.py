"""Size a layer to a matched parameter count or a matched state size, as fair comparisons need.

Every mixer class names, in its ``Tooling``, the config field that grows its state (``state_knob``: TTT head dim,
Mamba2 d_state, sliding window, ...) and its parameters (``param_knob``). :func:`match_size` scans that field's
candidate values, builds each candidate on the meta device (no memory) and returns the config closest to the target.

>>> cfg, got = match_size("mamba2", dim=512, num_heads=8, target=layer.state_size(), by="state")
>>> seqmix.build("mamba2", dim=512, num_heads=8, **cfg)
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from .base import _lookup, build

__all__ = ["match_size", "count"]


def count(layer: torch.nn.Module, by: Literal["params", "state"], seq_len: int | None = None) -> int:
    """Parameter count or state size of a built layer."""
    if by == "params":
        return sum(p.numel() for p in layer.parameters())
    if by == "state":
        return int(layer.state_size(seq_len))
    raise ValueError(f"by must be 'params' or 'state', got {by!r}")


def _default_candidates(kind: type) -> list:
    if kind is float:
        return [x / 4 for x in range(1, 33)]  # 0.25 .. 8.0
    ints = set(range(1, 17)) | {2**k for k in range(5, 21)} | set(range(8, 1025, 8))
    return sorted(ints)


def match_size(
    name: str,
    dim: int,
    num_heads: int,
    *,
    target: int,
    by: Literal["params", "state"] = "state",
    seq_len: int | None = None,
    knob: str | None = None,
    candidates: list | None = None,
    **cfg,
) -> tuple[dict, int]:
    """Config for ``build(name, dim, num_heads, **cfg)`` whose ``by`` count is closest to ``target``.

    Args:
        name: registry name. dim, num_heads: as for ``build``.
        target: the count to match (e.g. another layer's ``state_size()`` or parameter count).
        by: ``"state"`` (state_size at ``seq_len``) or ``"params"``.
        knob: config field to vary (default: the class's ``state_knob`` / ``param_knob``).
        candidates: values to try for ``knob`` (default: a grid by the field's type).
        **cfg: other fixed config fields.

    Returns:
        ``(config dict including the knob, achieved count)``.
    """
    if by not in ("params", "state"):
        raise ValueError(f"by must be 'params' or 'state', got {by!r}")
    if target <= 0:
        raise ValueError(f"target must be a positive count, got {target}")
    cls = _lookup(name)
    knob = knob or (cls.Tooling.state_knob if by == "state" else cls.Tooling.param_knob)
    if knob is None:
        raise ValueError(f"mixer {name!r} has no {by} knob to vary; pass knob= (a config field) explicitly")
    fields = {f.name: f for f in dataclasses.fields(cls.Config)}
    if knob not in fields:
        raise ValueError(f"{knob!r} is not a config field of {name!r}; fields: {', '.join(sorted(fields))}")
    default = fields[knob].default
    kind = float if isinstance(default, float) or "float" in str(fields[knob].type) else int
    best: tuple[float, dict, int] | None = None
    for v in candidates or _default_candidates(kind):
        trial = {**cfg, knob: v}
        try:
            with torch.device("meta"):
                layer = build(name, dim=dim, num_heads=num_heads, **trial)
            n = count(layer, by, seq_len)
        except (ValueError, TypeError):
            continue  # candidate violates a constraint (e.g. divisibility): skip it
        err = abs(n - target) / target
        if best is None or err < best[0]:
            best = (err, trial, n)
    if best is None:
        raise ValueError(f"no candidate value of {knob!r} builds a valid {name!r} layer at dim={dim}, heads={num_heads}")
    return best[1], best[2]
