"""Checks of a parallel layout that run before any process starts: strategy name, world / tensor-parallel sizes
and whether every head-split module divides by the tensor-parallel size (on a meta-device model: no memory)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from seqmix.layers.sharding import HeadShardSpec

__all__ = ["DP", "STRATEGIES", "TP", "Layout", "blocks_of", "check_layout", "check_model", "shardable"]

#: Mesh dimension names (Lightning's ModelParallelStrategy names).
DP, TP = "data_parallel", "tensor_parallel"
#: ``ddp``: replicas; ``fsdp``: FSDP2 over all ranks; ``tp``: tensor parallel over all ranks; ``fsdp+tp``: FSDP2
#: over ``world / tp`` groups of ``tp`` tensor-parallel ranks.
STRATEGIES = ("ddp", "fsdp", "tp", "fsdp+tp")


@dataclass(frozen=True)
class Layout:
    """Checked sizes: ``data_parallel x tensor_parallel = world_size``."""

    strategy: str
    world_size: int
    data_parallel: int
    tensor_parallel: int


def _positive_int(name: str, v) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")
    return v


def check_layout(strategy: str, world_size: int, tp: int | None = None) -> Layout:
    """Validate a strategy and sizes; ``tp`` defaults to the world size for ``tp`` and must be given for
    ``fsdp+tp``. Raises ValueError saying what was wrong and what is allowed."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown parallel strategy {strategy!r}; valid: {', '.join(STRATEGIES)}")
    world = _positive_int("world size (GPUs)", world_size)
    if strategy in ("ddp", "fsdp"):
        if tp not in (None, 1):
            raise ValueError(f"strategy {strategy!r} has no tensor parallelism (tp={tp}); use fsdp+tp or tp")
        return Layout(strategy, world, world, 1)
    if strategy == "tp":
        tp = world if tp is None else _positive_int("tp", tp)
        if tp != world:
            raise ValueError(f"strategy 'tp' runs every rank in one tensor-parallel group: tp={tp} must equal the "
                             f"world size {world} (use fsdp+tp to combine it with data parallelism)")
        return Layout(strategy, world, 1, tp)
    if tp is None:
        raise ValueError("strategy 'fsdp+tp' needs the tensor-parallel size (tp)")
    tp = _positive_int("tp", tp)
    if tp < 2:
        raise ValueError(f"strategy 'fsdp+tp' needs tp >= 2, got {tp} (use fsdp for tp=1)")
    if world % tp:
        raise ValueError(f"world size {world} is not divisible by tp={tp}; allowed tp: "
                         f"{', '.join(str(d) for d in range(2, world + 1) if world % d == 0) or 'none'}")
    return Layout(strategy, world, world // tp, tp)


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The repeated blocks (FSDP2 units, activation-checkpointing units) of a seqmix backbone."""
    for name in ("transformer_blocks", "layers", "blocks"):
        blocks = getattr(model, name, None)
        if isinstance(blocks, nn.ModuleList):
            return list(blocks)
    raise TypeError(f"{type(model).__name__} has no transformer_blocks / layers / blocks ModuleList to shard")


def shardable(model: nn.Module) -> list[tuple[str, nn.Module, HeadShardSpec | None]]:
    """``(path, module, spec)`` of the outermost modules that declare ``head_shard_spec``; a wrapper whose spec is
    None but that names an inner layer (``head_shard_inner``, e.g. the bidirectional wrapper) is replaced by that
    layer. ``spec`` None: the module runs whole on every tensor-parallel rank."""
    out: list[tuple[str, nn.Module, HeadShardSpec | None]] = []

    def visit(path: str, m: nn.Module) -> None:
        if callable(getattr(m, "head_shard_spec", None)):
            spec = m.head_shard_spec()
            inner = m.head_shard_inner() if spec is None and callable(getattr(m, "head_shard_inner", None)) else None
            if inner is None:
                out.append((path, m, spec))
                return
            name = next(n for n, c in m.named_children() if c is inner)
            visit(f"{path}.{name}" if path else name, inner)
            return
        for n, c in m.named_children():
            visit(f"{path}.{n}" if path else n, c)

    visit("", model)
    return out


def check_model(model: nn.Module, tp: int) -> None:
    """Every head-split module of ``model`` divides by ``tp`` (raises ValueError naming the first that does not)."""
    if tp == 1:
        return
    for path, m, spec in shardable(model):
        if spec is None:
            continue
        for a in spec.head_attrs:
            v = getattr(m, a)
            if v % tp:
                raise ValueError(
                    f"{path} ({type(m).__name__}): {a}={v} is not divisible by the tensor-parallel size {tp}; "
                    f"allowed tp: {', '.join(str(d) for d in range(1, v + 1) if v % d == 0)}")
        for a in spec.group_attrs:
            v = getattr(m, a)
            try:
                spec.local_count(v, tp)
            except ValueError:
                raise ValueError(
                    f"{path} ({type(m).__name__}): {a}={v} groups of heads cannot be split over tp={tp} ranks (one "
                    f"must divide the other); with {a}={v}, tp must be a divisor or a multiple of {v}") from None


def meta_model(build) -> nn.Module:
    """``build()`` on the meta device (shapes only, no memory, no initialisation cost)."""
    with torch.device("meta"):
        return build()
