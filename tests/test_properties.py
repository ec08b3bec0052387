"""Property-based contract check: for every registry layer, hypothesis draws a small config, dtype, batch, length
(1 and lengths that are not multiples of the chunk / mini-batch size included), causal or not and a split point,
and checks the contract invariants: shape, dtype, finite outputs and gradients, state carry equal to one pass,
and causality. Derandomized and bounded (a few examples per layer) so that CI stays fast and reproducible.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from seqmix import layers
from seqmix.utils.testing import assert_close

import contract as C

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is a dev dependency (pip install -e '.[dev]')")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

# Knobs whose size decides the chunking (mini-batches, scan chunks, attention windows / blocks): drawn small so that
# the drawn lengths are often ragged with respect to them.
_CHUNK_KNOBS = ("mini_batch_size", "chunk_size", "window")
_TOL = {torch.float32: 1e-4, torch.float64: 1e-10}

PROFILE = settings(max_examples=15, deadline=None, derandomize=True, database=None, print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@st.composite
def cases(draw, name: str) -> dict:
    cfg = dict(layers.mixer_class(name).Tooling.small_config)
    defaults = {f.name: f.default for f in dataclasses.fields(layers.config_class(name))}
    causal_over = C.causal_overrides(name)
    causal = causal_over is not None and draw(st.booleans(), label="causal")
    for knob in _CHUNK_KNOBS:
        if knob in defaults:
            if knob == "window" and defaults[knob] == 0 and not causal:
                continue  # an optional window (0: off; LaCT's LM layer) exists in the causal form only
            cfg[knob] = draw(st.sampled_from(sorted({1, 3, cfg.get(knob, defaults[knob])})), label=knob)
    if causal:
        cfg.update(causal_over)
    elif layers.mixer_class(name).can_be_non_causal():
        cfg["causal"] = False
    T = draw(st.one_of(st.just(1), st.integers(2, 19)), label="T")
    return dict(
        name=name,
        cfg=cfg,
        dtype=draw(st.sampled_from([torch.float32, torch.float64]), label="dtype"),
        B=draw(st.integers(1, 3), label="B"),
        T=T,
        split=draw(st.integers(0, T), label="split"),
        seed=draw(st.integers(0, 2**16), label="seed"),
    )


def _check(case: dict) -> None:
    name, dtype, B, T, split = case["name"], case["dtype"], case["B"], case["T"], case["split"]
    layer = C.make(name, dtype=dtype, seed=case["seed"], **case["cfg"])
    T, split = C.steps(layer, T), C.steps(layer, split)  # drawn in causal steps (a frame for frame-input layers)
    x = C.rand_x(B, T, dtype, seed=case["seed"] + 1).requires_grad_()

    # shape, dtype, finite output and gradients
    y = layer(x)
    assert y.shape == x.shape and y.dtype == dtype, f"{name}: {tuple(y.shape)} {y.dtype} for {tuple(x.shape)} {dtype}"
    assert torch.isfinite(y).all(), f"{name}: non-finite output"
    (y.double() * torch.linspace(-1, 1, y.numel(), dtype=torch.float64).view(y.shape)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all(), f"{name}: bad input gradient"
    for n, p in layer.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), f"{name}: non-finite gradient of {n}"
    if not layer.causal:
        return

    x = x.detach()
    with torch.no_grad():
        # state carry: two calls (split anywhere, empty halves skipped) equal one pass
        outs, state = [], None
        for part in (x[:, :split], x[:, split:]):
            if part.shape[1]:
                out, state = layer(part, state=state, return_state=True)
                outs.append(out)
        assert_close(f"{name} carried state", torch.cat(outs, 1), y.detach(), _TOL[dtype])
        # causality: changing token `split` leaves every earlier output as it was
        if split < T:
            x2 = x.clone()
            x2[:, split] += 1.0
            y2 = layer(x2)
            scale = y.detach()[:, :split].abs().max() if split else 0.0
            assert torch.allclose(y2[:, :split], y.detach()[:, :split], atol=float(scale) * _TOL[dtype], rtol=0), (
                f"{name}: outputs before t={split} changed"
            )


@pytest.mark.parametrize("name", layers.available())
def test_contract_properties(name):
    @PROFILE
    @given(case=cases(name))
    def run(case):
        _check(case)

    run()
