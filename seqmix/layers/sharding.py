"""How a layer splits over tensor-parallel ranks by heads: :class:`HeadShardSpec`, a plain description that a
mixer returns from :meth:`seqmix.layers.Mixer.head_shard_spec` (None: the layer runs whole on every rank).

This module only describes; :mod:`seqmix.parallel` applies the description with DTensor. Heads are independent in
the mixers that declare a spec (TTT, Gated DeltaNet, attention): a rank runs ``H / P`` heads end to end on the full
input, and the output projection sums the ranks' partial products (row parallel) or the per-head outputs are
gathered before a layer that mixes heads (TTT's post-norm over all ``H K`` features).
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
        gather_inputs: submodules that mix all heads (a norm over ``H K``): their first input, split head-major
            over the ranks, is gathered whole before they run (they and everything after them run replicated).
        head_attrs: integer attributes that count heads or head-major widths (``num_heads``, ``key_dim``); each
            is divided by P on a sharded layer and must be divisible by it.
    """

    head_params: dict[str, int] = field(default_factory=dict)
    head_local: tuple[str, ...] = ()
    rowwise: tuple[str, ...] = ()
    gather_inputs: tuple[str, ...] = ()
    head_attrs: tuple[str, ...] = ("num_heads",)
