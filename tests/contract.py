"""The shared layer-contract harness: every registry entry must pass these checks.

A new mixer adds one line to ``SMALL_CONFIGS`` (a small, fast configuration); ``test_contract.py`` then runs
every check below on it. Keep configurations tiny: the whole harness runs on a 2-core CPU in CI.
"""

from __future__ import annotations

import dataclasses

import torch

from seqmix import layers
from seqmix.utils.testing import assert_close

DIM, HEADS = 32, 2

# name -> config for the contract tests (small and fast; causal variants are derived where meaningful).
SMALL_CONFIGS: dict[str, dict] = {
    "ttt_linear": dict(mini_batch_size=4),
    "ttt_mlp": dict(mini_batch_size=4, mlp_expansion=2),
    "gated_deltanet": dict(head_dim=16, expand_v=1.0),
    "mamba2": dict(d_state=8, expand=2, chunk_size=4),  # HEADS heads of width expand * DIM / HEADS
    "swa": dict(window=10),  # >= 10: the bidirectional check (causal form, T=10) needs token 0 to see token 9
    "full_attn": dict(),
    "local_attn": dict(window=16),
    "identity": dict(),
}


def has_causal_option(name: str) -> bool:
    return "causal" in {f.name for f in dataclasses.fields(layers.config_class(name))}


def causal_overrides(name: str) -> dict | None:
    """Config overrides that make ``name`` causal ({} if it is causal by construction), or None if it cannot be."""
    if has_causal_option(name):
        return {"causal": True}
    return {} if make(name).causal else None


def make(name: str, dtype=torch.float32, seed: int = 0, **over) -> layers.Mixer:
    torch.manual_seed(seed)
    cfg = {**SMALL_CONFIGS[name], **over}
    return layers.build(name, dim=DIM, num_heads=HEADS, **cfg).to(dtype)


def rand_x(B: int, T: int, dtype=torch.float32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, DIM, generator=g, dtype=dtype)


def check_shape_dtype(layer: layers.Mixer, T: int = 11) -> None:
    for dtype in (torch.float32, torch.float64):
        layer = layer.to(dtype)
        x = rand_x(2, T, dtype)
        y = layer(x)
        assert y.shape == x.shape, f"{layer.name}: output {tuple(y.shape)} != input {tuple(x.shape)}"
        assert y.dtype == dtype, f"{layer.name}: output dtype {y.dtype} != input dtype {dtype}"
        assert torch.isfinite(y).all(), f"{layer.name}: non-finite output"
    layer.float()


def check_backward(layer: layers.Mixer, T: int = 9) -> None:
    x = rand_x(2, T).requires_grad_()
    layer(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all(), f"{layer.name}: bad input gradient"
    for n, p in layer.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), f"{layer.name}: non-finite grad for {n}"


def check_causality(layer: layers.Mixer, T: int = 13, t: int = 6) -> None:
    """Causal layers: perturbing token t leaves every output < t unchanged."""
    layer = layer.double()
    x = rand_x(1, T, torch.float64)
    x2 = x.clone()
    x2[:, t] += 1.0
    y, y2 = layer(x), layer(x2)
    assert torch.allclose(y[:, :t], y2[:, :t], atol=1e-12, rtol=0), f"{layer.name}: output before t={t} changed"
    assert not torch.allclose(y[:, t:], y2[:, t:]), f"{layer.name}: output at/after t={t} did not react"
    layer.float()


def check_state_carry(layer: layers.Mixer, T: int = 17, splits=(5, 1, 7)) -> None:
    """Causal layers: calls over consecutive chunks (incl. single tokens) equal one full pass."""
    layer = layer.double()
    x = rand_x(2, T, torch.float64)
    full = layer(x)
    outs, state, t0 = [], None, 0
    for n in (*splits, T - sum(splits)):
        y, state = layer(x[:, t0 : t0 + n], state=state, return_state=True)
        outs.append(y)
        t0 += n
    assert_close(f"{layer.name} chunked vs full", torch.cat(outs, 1), full, 1e-10)
    layer.float()


def check_bidirectional(layer: layers.Mixer, T: int = 10) -> None:
    bi = layers.Bidirectional(layer)
    assert not bi.causal
    x = rand_x(2, T)
    y = bi(x)
    assert y.shape == x.shape
    # Non-causal: the first output must see the last token.
    if layer.mixes_tokens:  # a layer that mixes no tokens (identity) has nothing to look back at
        x2 = x.clone()
        x2[:, -1] += 1.0
        assert not torch.allclose(bi(x2)[:, 0], y[:, 0]), f"{layer.name}: bidirectional wrapper did not look back"
    assert bi.state_size(seq_len=T) == 2 * layer.state_size(seq_len=T)


def check_bad_inputs(name: str, layer: layers.Mixer) -> None:
    import pytest

    with pytest.raises(ValueError, match="last dim"):
        layer(torch.randn(1, 4, DIM + 1))
    with pytest.raises(TypeError, match="floating"):
        layer(torch.ones(1, 4, DIM, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        layer(torch.randn(1, 0, DIM))
    with pytest.raises(ValueError, match=r"\[B, T, D\]"):
        layer(torch.randn(4, DIM))
    with pytest.raises(TypeError, match="dtype"):
        layer(torch.randn(1, 4, DIM, dtype=torch.float64))
    with pytest.raises(TypeError, match="unknown config key"):
        layers.build(name, dim=DIM, num_heads=HEADS, not_a_key=1)
    with pytest.raises(ValueError, match="backend"):
        layers.build(name, dim=DIM, num_heads=HEADS, backend="no-such-backend")
