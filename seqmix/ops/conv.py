"""Causal depthwise convolution over time in the time-major ``[B, T, C]`` layout of the projections that feed it
(Mamba2's ``xBC`` conv, Gated DeltaNet's q/k/v short convolutions).

``y[:, t, c] = bias[c] + sum_k weight[c, k] * xp[:, t + k, c]`` with ``xp = [history; x]``: the ``K - 1`` inputs
before the call (zeros at the start of a sequence, or a carried tail) then the call's own ``T``; this is
``nn.Conv1d(C, C, K, groups=C)`` (a cross-correlation) applied to ``xp`` without padding.

CUDA uses cuDNN's kernel (``F.conv1d``). On CPU, PyTorch's depthwise ``conv1d`` is ~100x slower at these shapes
(channel-first, thin kernels), and K shifted multiply-adds through autograd allocate and zero a full-size gradient
per shift in backward; :class:`_DepthwiseConvTime` writes forward and backward as K in-place multiply-adds into one
buffer each (about half the memory passes of the autograd form, which matters because this op is memory-bound).
Its twin is ``F.conv1d`` (tests compare values and gradients in fp64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .scan import exporting


def causal_depthwise_conv1d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, history: torch.Tensor | None = None
) -> torch.Tensor:
    """Causal depthwise conv over time.

    Args:
        x: [B, T, C] inputs, time-major. weight: [C, K] per-channel kernels (``nn.Conv1d``'s ``[C, 1, K]`` squeezed).
        bias: [C] or None. history: [B, K-1, C] inputs before ``x`` (a carried conv state), or None for zeros.

    Returns:
        [B, T, C] in x's dtype.
    """
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[-1]:
        raise ValueError(f"causal_depthwise_conv1d: want x [B, T, C] and weight [C, K]; got x {tuple(x.shape)}, "
                         f"weight {tuple(weight.shape)}")
    K = weight.shape[1]
    if history is not None and tuple(history.shape) != (x.shape[0], K - 1, x.shape[2]):
        raise ValueError(f"causal_depthwise_conv1d: history must be [B, K-1, C] = "
                         f"{(x.shape[0], K - 1, x.shape[2])}, got {tuple(history.shape)}")
    w = weight.to(x.dtype)
    b = None if bias is None else bias.to(x.dtype)
    if x.is_cuda or exporting():
        xp = torch.cat([history.to(x.dtype) if history is not None else x.new_zeros(x.shape[0], K - 1, x.shape[2]),
                        x], dim=1)
        if x.is_cuda:
            return F.conv1d(xp.transpose(1, 2), w[:, None], b, groups=w.shape[0]).transpose(1, 2)
        # exported on CPU: K shifted multiply-adds as plain ops (the Function's loops would branch on a symbolic T)
        T = x.shape[1]
        y = sum(xp[:, k : k + T] * w[:, k] for k in range(K))
        return y if b is None else y + b
    if history is None:
        return _DepthwiseConvTime.apply(x, w, b)
    # With a carried tail: the zero-history conv of [history; x], whose first K-1 outputs (which would see the
    # zeros before the history) are dropped; every kept output sees only real inputs.
    return _DepthwiseConvTime.apply(torch.cat([history.to(x.dtype), x], dim=1), w, b)[:, K - 1:]


def conv_tail(x: torch.Tensor, history: torch.Tensor | None, K: int) -> torch.Tensor:
    """The conv state after a call: the last ``K - 1`` inputs of ``[history; x]`` (reaching back into ``history``,
    or zeros without one, when ``T < K - 1``). x: [B, T, C]; history: [B, K-1, C] or None -> [B, K-1, C]."""
    if history is None:
        history = x.new_zeros(x.shape[0], K - 1, x.shape[2])
    recent = torch.cat([history.to(x.dtype), x[:, max(x.shape[1] - (K - 1), 0):]], dim=1)  # <= 2(K-1) rows
    return recent[:, recent.shape[1] - (K - 1):]


class _DepthwiseConvTime(torch.autograd.Function):
    """Zero-history causal depthwise conv, x [B, T, C] -> [B, T, C]: output t reads x[t - s] with weight[:, K-1-s]
    for shifts s = 0..K-1 (s <= t)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        K, T = w.shape[1], x.shape[1]
        y = x * w[:, K - 1]
        for s in range(1, min(K, T)):
            y[:, s:].addcmul_(x[:, : T - s], w[:, K - 1 - s])
        if bias is not None:
            y += bias
        ctx.save_for_backward(x, w)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, g: torch.Tensor):
        x, w = ctx.saved_tensors
        K, T = w.shape[1], x.shape[1]
        g = g.contiguous()
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx = g * w[:, K - 1]
            for s in range(1, min(K, T)):
                gx[:, : T - s].addcmul_(g[:, s:], w[:, K - 1 - s])
        if ctx.needs_input_grad[1]:
            gw = torch.zeros_like(w)
            # Eager reuses one buffer for the K products; a compiled graph fuses each product into its sum
            # instead (and Dynamo cannot trace `out=` into a non-contiguous view: it would break the graph).
            buf = None if torch.compiler.is_compiling() else torch.empty_like(g)
            for s in range(min(K, T)):
                prod = (g[:, s:] * x[:, : T - s] if buf is None
                        else torch.mul(g[:, s:], x[:, : T - s], out=buf[:, : T - s]))
                gw[:, K - 1 - s] = prod.sum((0, 1))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g.sum((0, 1))
        return gx, gw, gb
