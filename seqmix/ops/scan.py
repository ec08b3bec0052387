"""The one sequential piece of the chunked recurrences: hand a carried state from chunk to chunk.

:func:`chunk_scan` runs ``carry, outs = step(carry, slices)`` over the chunk axis. Eagerly and under
``torch.compile`` it is a Python loop: fastest eagerly (no overhead; autograd saves one ``unbind``), and a compiled
graph unrolls it, which inductor turns into fused code; the chunk count is then part of the graph (a new count
compiles again). Under ``torch.export`` it is torch's ``scan`` higher-order op instead, so the chunk count, and with
it the sequence length, stays symbolic: one exported program serves every length. (torch 2.13's inductor cannot
lower that op yet, and Dynamo's automatic dynamic shapes would send every second length through it, so compiling
keeps the loop.) Both paths compute the same operations in the same order (tests/test_export.py).

:func:`exporting` tells the ops when they are being exported, so they also keep shapes free of length-dependent
Python branches there (a chunk size clipped to ``min(chunk_size, T)`` would specialise the program to one side).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

__all__ = ["chunk_scan", "exporting", "num_chunks", "padded_chunks"]

Tensors = tuple[torch.Tensor, ...]


def exporting() -> bool:
    """True while ``torch.export`` traces the caller (then the sequence length may be symbolic)."""
    return torch.compiler.is_exporting()


def num_chunks(T: int, C: int) -> int:
    """Chunks of ``C`` tokens that cover ``T``: ``ceil(T / C)``; exported, ``T // C + 2``: torch's scan op
    specialises a program to one chunk or to several, so the exported count is at least 2 for every T (the one or
    two extra chunks are padding, which the recurrences pass through unchanged)."""
    return T // C + 2 if exporting() else -(-T // C)


def padded_chunks(tensors: Sequence[torch.Tensor], C: int, dim: int = 2) -> tuple[Tensors, torch.Tensor]:
    """Tensors with T tokens along ``dim`` -> the same tensors zero-padded to :func:`num_chunks` whole chunks of
    ``C``, chunk index first (``[n, ..., C, ...]``: ``dim`` split into ``(n, C)``, ``n`` moved to the front, as
    :func:`chunk_scan` takes them), and ``count [n]``: the real tokens of each chunk (``C``, a partial tail, then
    0 for padding chunks)."""
    T = tensors[0].shape[dim]
    n = num_chunks(T, C)
    pad = n * C - T
    out = []
    for t in tensors:
        d = dim % t.dim()
        t = torch.nn.functional.pad(t, (0, 0) * (t.dim() - d - 1) + (0, pad))
        out.append(t.unflatten(d, (n, C)).movedim(d, 0))
    count = (T - torch.arange(n, device=tensors[0].device) * C).clamp(0, C)
    return tuple(out), count


def chunk_scan(step: Callable[[Tensors, Tensors], tuple[Tensors, Tensors]], init: Sequence[torch.Tensor],
               xs: Sequence[torch.Tensor]) -> tuple[Tensors, Tensors]:
    """Scan ``step`` over the leading (chunk) axis of ``xs``.

    Args:
        step: ``(carry, x) -> (carry, out)``, each a tuple of tensors; ``x`` holds one slice ``xs[i][n]`` per input.
            It must be pure (no in-place updates of its inputs, no side effects) and keep the carry's shapes and
            dtypes; it may close over tensors (parameters).
        init: the carry before chunk 0.
        xs: tensors ``[N, ...]`` with the same chunk count N.

    Returns:
        ``(final carry, outs)``: every ``out`` stacked along a new leading axis ``[N, ...]``.
    """
    init, xs = tuple(init), tuple(xs)
    if exporting():
        from torch._higher_order_ops.scan import scan

        def pure(carry, x):
            # the op refuses outputs that alias its inputs (a step may return a carry slot unchanged)
            c, o = step(tuple(carry), tuple(x))
            return tuple(t.clone() for t in c), tuple(t.clone() for t in o)

        # the op wants the carry's layout fixed: a broadcast (stride-0) initial state becomes a dense one
        carry, outs = scan(pure, tuple(t.contiguous() for t in init), xs)
        return tuple(carry), tuple(outs)
    carry, outs = init, []
    for x in zip(*(t.unbind(0) for t in xs)):  # one unbind per input: its backward is a single stack
        carry, o = step(carry, x)
        outs.append(o)
    if not outs:
        raise ValueError("chunk_scan needs at least one chunk; got inputs with a leading axis of 0")
    return tuple(carry), tuple(torch.stack(t, dim=0) for t in zip(*outs))
