"""The shared layer-contract harness: every registry entry must pass these checks.

A mixer declares on its class what the harness needs: ``small_config`` (a small, fast configuration at width 32
with 2 heads) and ``causal_modes`` (whether a causal form exists); ``test_contract.py`` then runs every check below
on it, and :func:`check_all` runs them on one name. Keep configurations tiny: the whole harness runs on a 2-core
CPU in CI.

Lengths are counted in causal steps (``layer.step_tokens`` tokens each: 1 for token-causal mixers, a frame or a
chunk of frames for mixers that read frames of a grid), so every check runs unchanged on frame-causal layers.
"""

from __future__ import annotations

import torch

from seqmix import layers
from seqmix.utils.testing import assert_close

DIM, HEADS = 32, 2


def causal_overrides(name: str) -> dict | None:
    """Config overrides that make ``name`` causal, or None if it has no causal form."""
    return {"causal": True} if layers.mixer_class(name).can_be_causal() else None


def make(name: str, dtype=torch.float32, seed: int = 0, **over) -> layers.Mixer:
    torch.manual_seed(seed)
    cfg = {**layers.mixer_class(name).Tooling.small_config, **over}
    return layers.build(name, dim=DIM, num_heads=HEADS, **cfg).to(dtype)


def steps(layer: layers.Mixer, n: int) -> int:
    """Tokens in ``n`` causal steps of ``layer`` (see ``Mixer.step_tokens``)."""
    return n * layer.step_tokens


def rand_x(B: int, T: int, dtype=torch.float32, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, DIM, generator=g, dtype=dtype)


def check_shape_dtype(layer: layers.Mixer, T: int = 11) -> None:
    for dtype in (torch.float32, torch.float64):
        layer = layer.to(dtype)
        x = rand_x(2, steps(layer, T), dtype)
        y = layer(x)
        assert y.shape == x.shape, f"{layer.name}: output {tuple(y.shape)} != input {tuple(x.shape)}"
        assert y.dtype == dtype, f"{layer.name}: output dtype {y.dtype} != input dtype {dtype}"
        assert torch.isfinite(y).all(), f"{layer.name}: non-finite output"
    layer.float()


def check_backward(layer: layers.Mixer, T: int = 9) -> None:
    x = rand_x(2, steps(layer, T)).requires_grad_()
    layer(x).square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all(), f"{layer.name}: bad input gradient"
    for n, p in layer.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), f"{layer.name}: non-finite grad for {n}"


def check_causality(layer: layers.Mixer, T: int = 13, t: int = 6) -> None:
    """Causal layers: perturbing (the first token of) step t leaves every output of earlier steps unchanged."""
    layer = layer.double()
    T, t = steps(layer, T), steps(layer, t)
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
    T, splits = steps(layer, T), [steps(layer, n) for n in splits]
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
    u = layer.step_tokens
    T = steps(layer, T)
    x = rand_x(2, T)
    y = bi(x)
    assert y.shape == x.shape
    # Non-causal: the first step's outputs must see the last step (a token; for frame mixers a frame, whose tokens
    # reach every block of a block-wise scan).
    if layer.mixes_tokens:  # a layer that mixes no tokens (identity) has nothing to look back at
        x2 = x.clone()
        x2[:, -u:] += 1.0
        assert not torch.allclose(bi(x2)[:, :u], y[:, :u]), f"{layer.name}: bidirectional wrapper did not look back"
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
        # on top of the small config: a mixer may have required fields (e.g. a frame grid)
        layers.build(name, dim=DIM, num_heads=HEADS, **{**layers.mixer_class(name).Tooling.small_config,
                                                         "backend": "no-such-backend"})


def check_dynamic_export(layer: layers.Mixer, traced_steps: int = 16, lengths=(1, 7, 37)) -> None:
    """``torch.export`` with a symbolic length (in causal steps; frame layers need 2 frames or more): one program
    traced at ``traced_steps`` equals eager in fp64 at every length in ``lengths`` (README, "Export and compile")."""
    from torch.export import Dim, export

    layer = layer.double().eval()
    st = layer.step_tokens
    dim = Dim("steps", min=2, max=1024) * st if st > 1 else Dim.DYNAMIC
    prog = export(layer, (rand_x(2, steps(layer, traced_steps), torch.float64),), dynamic_shapes=({1: dim},))
    assert any(not isinstance(r.lower, int) or r.upper > steps(layer, traced_steps)
               for r in prog.range_constraints.values()), f"{layer.name}: length not symbolic {prog.range_constraints}"
    mod = prog.module()
    for n in (max(n, 2) if st > 1 else n for n in lengths):
        x = rand_x(2, steps(layer, n), torch.float64, seed=n)
        assert_close(f"{layer.name} exported, T={steps(layer, n)}", mod(x), layer(x), 1e-10)
    layer.float().train()


def check_fixed_export(layer: layers.Mixer, n: int = 9) -> None:
    """``torch.export`` at one length equals eager in fp64 (a mixer whose ``Tooling.symbolic_export`` is False)."""
    from torch.export import export

    layer = layer.double().eval()
    x = rand_x(2, steps(layer, n), torch.float64)
    assert_close(f"{layer.name} exported", export(layer, (x,)).module()(x), layer(x), 1e-10)
    layer.float().train()


def check_all(name: str) -> None:
    """Every check of the harness on mixer ``name`` (what ``test_contract.py`` runs, parametrised, per name)."""
    for check in (check_shape_dtype, check_backward):
        check(make(name))
    layer = make(name)
    assert layer.backend in layer.backends and isinstance(layer.causal, bool)
    assert isinstance(layer.state_size(seq_len=64), int)
    check_bad_inputs(name, layer)
    over = causal_overrides(name)
    if over is not None:
        causal = make(name, **over)
        assert causal.causal
        if causal.mixes_tokens:
            check_causality(causal)
        check_state_carry(causal)
    check_bidirectional(make(name, **(over or {})))
    if layers.mixer_class(name).Tooling.symbolic_export:
        check_dynamic_export(make(name), lengths=(1, 7))
    else:
        check_fixed_export(make(name))
