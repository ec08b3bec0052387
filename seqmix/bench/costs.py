"""Analytic FLOP and byte counts per layer and mode: the cost model behind the roofline fractions.

These are ESTIMATES, written to show how cost grows with T and to put measured times next to the machine's ceilings;
they are not operation counts of any one implementation.

The formulas live on the mixer classes (``Mixer.core_cost``, one per algorithm, each with its docstring) and
:meth:`seqmix.layers.Mixer.cost` adds what every layer has: matrix-product FLOPs (2 per multiply-add) of every
``nn.Linear`` / ``nn.Conv1d`` plus the mixer core; bytes of the parameters read once, the layer input and output,
the projections' inputs and outputs, the core's tensors and states (see :mod:`seqmix.layers.cost`). A mixer that
declares no core formula is counted by its projections only.

Modes: ``fwd`` = one forward over T tokens; ``fwd+bwd`` = 3x the forward FLOPs and bytes (backward ~ 2x forward);
``decode`` = one token after a context of T (mean over the timed steps); ``decode-frame`` = one call of
``frame_tokens`` tokens after a context of T (mean over the timed frames).
"""

from __future__ import annotations

from torch import nn

from seqmix.layers.cost import Cost, attention_pairs, projections_cost

__all__ = ["Cost", "layer_cost", "mode_cost", "attention_pairs", "dit_cost"]


def layer_cost(layer, n: int, ctx: int = 0, batch: int = 1, layout=None) -> Cost:
    """Cost of one call of mixer ``layer`` on ``n`` new tokens per sequence after ``ctx`` tokens of carried context
    (:meth:`seqmix.layers.Mixer.cost`; ``layout``: the call's token spans, for mixers that chunk by them)."""
    return layer.cost(n, ctx, batch, layout=layout)


def mode_cost(layer: nn.Module, mode: str, T: int, batch: int = 1, *, steps: int = 1, frame_tokens: int = 1) -> Cost:
    """Cost of one timed unit of ``mode`` (see the module docstring): a call (fwd, fwd+bwd), a decode token after
    a context of ``T`` (mean over ``steps`` steps) or a decode frame of ``frame_tokens`` (mean over ``steps`` frames)."""
    if mode == "fwd":
        return layer_cost(layer, T, 0, batch)
    if mode == "fwd+bwd":
        return layer_cost(layer, T, 0, batch).scale(3.0)
    if mode in ("decode", "decode-frame"):
        n = 1 if mode == "decode" else frame_tokens
        costs = [layer_cost(layer, n, T + i * n, batch) for i in range(max(1, steps))]
        return Cost(sum(c.flops for c in costs) / len(costs), sum(c.bytes for c in costs) / len(costs),
                    costs[0].model)
    raise ValueError(f"unknown mode {mode!r}; valid: fwd, fwd+bwd, decode, decode-frame")


def dit_cost(model: nn.Module, layout, mode: str = "fwd", batch: int = 1) -> Cost:
    """Cost of one SegmentedDiT call over ``layout`` (``mode`` ``fwd`` or ``fwd+bwd`` = 3x): per block the window
    attention (Q/K/V/O projections on every token, ``4 H K`` per pair inside each of the S windows of
    ``L + 13 N`` tokens), the MLP on every token and the global layer (both directions: 2x the mixer's
    :func:`layer_cost` over all T tokens). Embeddings, adaLN modulation and the output head are left out (small)."""
    T = layout.total_tokens
    W = layout.window_tokens
    total = Cost(0.0, 0.0, "dit")
    for block in model.transformer_blocks:
        attn = block.attn1
        p = next(attn.parameters())
        elem = p.element_size()
        total = total + projections_cost(attn, T, batch, elem) + projections_cost(block.ff, T, batch, elem)
        pairs = layout.num_segments * W * W
        total = total + Cost(4.0 * attn.heads * attn.head_dim * pairs * batch,
                             elem * batch * attn.heads * attn.head_dim * 4 * layout.num_segments * W)
        if block.global_layer is not None:
            # both passes read spans with the same boundaries (VideoLayout.token_spans)
            total = total + layer_cost(block.global_layer.mixer, T, 0, batch, layout.token_spans()).scale(2.0)
    if mode == "fwd+bwd":
        total = total.scale(3.0)
    elif mode != "fwd":
        raise ValueError(f"unknown DiT mode {mode!r}; valid: fwd, fwd+bwd")
    return Cost(total.flops, total.bytes, "dit: window attention + MLP + 2 x global layer per block")
