"""How a layer splits over tensor-parallel ranks by heads: :class:`HeadShardSpec`, a plain description that a
mixer returns from :meth:`seqmix.layers.Mixer.head_shard_spec` (None: the layer runs whole on every rank).

This module only describes; :mod:`seqmix.parallel` applies the description with DTensor. Heads are independent in
the mixers that declare a spec (TTT, Gated DeltaNet, attention, Mamba2): a rank runs ``H / P`` heads end to end on
the full input, and the output projection sums the ranks' partial products (row parallel) or the per-head outputs
are gathered before a layer that mixes heads (TTT's post-norm over all ``H K`` features, Mamba2's gated RMSNorm).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["HeadShardSpec"]


@dataclass(frozen=True, kw_only=True)
class HeadShardSpec:
    """Names (relative to the layer, dotted) of what splits by heads.

    Attributes:
        head_params: parameter -> dimension indexed head-major (``H x ...``): each rank holds its ``1 / P`` slice
            and the layer computes with it as a plain local tensor (Q/K/V projection weights and biases, per-head
            inner weights, per-head gates, depthwise conv kernels of head-major channels).
        head_local: replicated parameters applied to each head separately (per-head LayerNorm affines): every rank
            holds all of them; their gradients are summed over the ranks (each rank saw only its heads).
        rowwise: ``nn.Linear`` submodules that read head-major features: their input dimension is split and the
            partial outputs summed over the ranks (their bias is added once).
        segments: parameter -> ``(dim, ((size, parts), ...))`` for a fused parameter whose dimension ``dim`` is a
            concatenation of pieces (Mamba2's ``in_proj``: ``[z | x | B | C | dt]``). Piece ``i`` holds ``parts``
            equal parts (heads, or groups of heads); a rank reads its share of every piece: ``parts / P`` parts when
            P divides ``parts``, else (``parts`` divides P) the one part its heads read, shared with ``P / parts``
            ranks. The parameter itself stays whole on every rank (checkpoints keep its layout); gradients are
            summed over the ranks.
        gather_inputs: submodules that mix all heads (a norm over ``H K``): their floating-point positional inputs
            ``[B, T, ...]``, split head-major (last dim) over the ranks, are gathered whole before they run (they and
            everything after them run replicated).
        tail_end: with ``gather_inputs``, the last module of the part that runs after the gather (the output
            projection), when that part acts on each token alone. Under sequence parallelism the plan then runs
            it on each rank's token shard instead of replicated: the gather hands a rank every head of its own
            tokens, ``tail_end``'s output is all-gathered back to the whole sequence, and the tail's replicated
            parameters get their gradients summed over the ranks. None: always replicated.
        head_attrs: integer attributes that count heads or head-major widths (``num_heads``, ``key_dim``); each
            is divided by P on a sharded layer and must be divisible by it.
        group_attrs: integer attributes that count groups of heads (Mamba2's ``ngroups``): divided by P when P
            divides them; when they divide P instead, a rank's heads lie in one group and the attribute becomes 1.
    """

    head_params: dict[str, int] = field(default_factory=dict)
    head_local: tuple[str, ...] = ()
    rowwise: tuple[str, ...] = ()
    segments: dict[str, tuple[int, tuple[tuple[int, int], ...]]] = field(default_factory=dict)
    gather_inputs: tuple[str, ...] = ()
    tail_end: str | None = None
    head_attrs: tuple[str, ...] = ("num_heads",)
    group_attrs: tuple[str, ...] = ()

    def local_rows(self, name: str, rank: int, size: int) -> list[int]:
        """Indices along ``segments[name]``'s dimension that rank ``rank`` of ``size`` reads (see ``segments``)."""
        _, pieces = self.segments[name]
        rows, start = [], 0
        for n, parts in pieces:
            if n % parts:
                raise ValueError(f"segment of {name}: size {n} is not divisible into {parts} parts")
            if parts % size and size % parts:
                raise ValueError(f"segment of {name}: {parts} parts cannot be shared by {size} tensor-parallel "
                                 f"ranks (one must divide the other)")
            width = n // parts
            first, count = (rank * (parts // size), parts // size) if parts % size == 0 else (rank * parts // size, 1)
            rows.extend(range(start + first * width, start + (first + count) * width))
            start += n
        return rows

    @staticmethod
    def local_count(value: int, size: int) -> int:
        """A ``group_attrs`` value on one of ``size`` ranks (raises when neither divides the other)."""
        if value % size == 0:
            return value // size
        if size % value == 0:
            return 1
        raise ValueError(f"{value} groups of heads cannot be split over {size} tensor-parallel ranks; one must "
                         "divide the other")
