"""One contract for every layer: edge cases a new user hits (empty batch, inference mode, autocast dtype, head count,
states handed to the wrong layer type, repr) and the project files a release needs."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import pytest
import torch

from seqmix import layers

import contract as C

NAMES = layers.available()
ROOT = Path(__file__).resolve().parents[1]


def _causal(name: str) -> dict:
    over = C.causal_overrides(name)
    assert over is not None, f"{name}: no causal form"
    return over


# ------------------------------------------------------------------------------------------------ head count
# Config fields that set a per-head width; with them unset, num_heads alone decides the head count.
_HEAD_WIDTH_KNOBS = ("head_dim", "headdim")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("heads", [1, 2, 4])
def test_num_heads_is_the_head_count(name, heads):
    """Every layer honours ``num_heads`` (its own head-width knob, if any, follows from it unless given)."""
    cfg = {k: v for k, v in layers.mixer_class(name).Tooling.small_config.items() if k not in _HEAD_WIDTH_KNOBS}
    layer = layers.build(name, dim=C.DIM, num_heads=heads, **cfg)
    assert layer.num_heads == heads
    for attr in ("nheads",):
        if hasattr(layer, attr):
            assert getattr(layer, attr) == heads


# ------------------------------------------------------------------------------------------------ batch of 0
@pytest.mark.parametrize("name", NAMES)
def test_empty_batch_gives_empty_output(name):
    for over in ({}, _causal(name)):
        layer = C.make(name, **over)
        n5, n3 = C.steps(layer, 5), C.steps(layer, 3)  # lengths in causal steps (a frame for frame-input layers)
        y = layer(C.rand_x(0, n5))
        assert y.shape == (0, n5, C.DIM) and y.dtype == torch.float32
        if layer.causal:
            y, st = layer(C.rand_x(0, n5), return_state=True)
            y, _ = layer(C.rand_x(0, n3), state=st, return_state=True)
            assert y.shape == (0, n3, C.DIM)


# ------------------------------------------------------------------------------------------- inference modes
def _backend_names(name: str) -> list[str]:
    layer = C.make(name)
    # Triton-interpreter backends (tests only, ~1 ms per program) are covered by their own test files.
    return [b for b in type(layer).backends
            if b not in ("triton", "fla") and layer.backend_supports(b, "cpu") is None]


@pytest.mark.parametrize("name", NAMES)
def test_every_cpu_backend_runs_without_grad(name):
    """no_grad and inference_mode give the grad-mode output on every backend that runs on this CPU."""
    for backend in _backend_names(name):
        for over in ({}, _causal(name)):
            layer = C.make(name, backend=backend, **over)
            x = C.rand_x(2, C.steps(layer, 9))
            ref = layer(x)
            with torch.no_grad():
                y = layer(x)
            with torch.inference_mode():
                y2 = layer(x)
            assert torch.allclose(y, ref, atol=1e-6), f"{name}/{backend}: no_grad output differs"
            assert torch.allclose(y2, ref, atol=1e-6), f"{name}/{backend}: inference_mode output differs"
            assert not y.requires_grad


# -------------------------------------------------------------------------------------------------- autocast
@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast_output_dtype(name):
    """Under bf16 autocast every layer returns bf16 (the dtype its output projection produces)."""
    layer = C.make(name)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(C.rand_x(2, C.steps(layer, 6)))
    assert y.dtype == torch.bfloat16, f"{name}: {y.dtype} under bf16 autocast"


# ------------------------------------------------------------------------------------- state of another layer
def _causal_names() -> list[str]:
    return [n for n in NAMES if C.causal_overrides(n) is not None]


@pytest.mark.parametrize("producer", ["swa", "ttt_linear", "mamba2", "gated_deltanet", "local_attn"])
def test_state_from_another_layer_type_names_it(producer):
    x = C.rand_x(2, 5)
    _, st = C.make(producer, **_causal(producer))(x, return_state=True)
    assert st.layer == producer
    for consumer in _causal_names():
        if consumer == producer:
            continue
        layer = C.make(consumer, **_causal(consumer))
        with pytest.raises(TypeError, match=f"belongs to a '{producer}' layer"):
            layer(x, state=st)


def test_issue_cases_kv_cache_and_ttt_state():
    x = C.rand_x(1, 4)
    _, kv = C.make("swa", causal=True)(x, return_state=True)
    with pytest.raises(TypeError, match="full_attn: the carried state belongs to a 'swa' layer"):
        C.make("full_attn", causal=True)(x, state=kv)
    _, tt = C.make("ttt_linear", causal=True)(x, return_state=True)
    with pytest.raises(TypeError, match="ttt_mlp: the carried state belongs to a 'ttt_linear' layer"):
        C.make("ttt_mlp", causal=True)(x, state=tt)


# ------------------------------------------------------------------------------------------------------ repr
def test_repr_shows_requested_and_resolved_backend():
    layer = C.make("ttt_linear")
    assert layer.config.backend == "auto" and layer.backend == "torch"
    assert "backend=auto->torch" in repr(layer)
    assert "backend=naive," in repr(C.make("ttt_linear", backend="naive")) + ","


# ------------------------------------------------------------------------------------------- project hygiene
def test_license_typed_marker_and_changelog_ship():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == "MIT" and meta["project"]["license-files"] == ["LICENSE"]  # SPDX
    lic = (ROOT / "LICENSE").read_text()
    assert lic.startswith("MIT License") and "seqmix authors" in lic
    assert (ROOT / "seqmix" / "py.typed").is_file()
    assert "py.typed" in meta["tool"]["setuptools"]["package-data"]["seqmix"]
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert f"## {meta['project']['version']}" in changelog


def test_head_width_knob_names_exist():  # guards the knob list used above against renames
    fields = {f.name for n in NAMES for f in dataclasses.fields(layers.config_class(n))}
    assert set(_HEAD_WIDTH_KNOBS) <= fields


@pytest.mark.parametrize("configured", [False, True], ids=["no-logging-setup", "basicConfig"])
def test_library_warnings_reach_the_user_once(configured):
    """A backend that falls back warns on stderr with default settings (no logging configured: seqmix's own
    handler prints it) and exactly once when the application configured logging (propagation; no duplicate)."""
    import subprocess
    import sys

    code = ("import logging, torch, seqmix\n"
            + ("logging.basicConfig()\n" if configured else "")
            + "for name, backend in (('ttt_mlp', 'triton'), ('mamba2', 'mamba_ssm')):\n"
              "    layer = seqmix.build(name, dim=32, num_heads=2, backend=backend)\n"
              "    for _ in range(2):\n"
              "        layer(torch.randn(1, 8, 32))\n")
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    for what in ("backend 'triton' unavailable", "backend 'mamba_ssm' unavailable"):
        assert r.stderr.count(what) == 1, r.stderr


def test_a_call_far_beyond_a_cpu_budget_warns_with_the_estimate_first(caplog):
    """Full attention on 400k tokens: one warning with the cost model's estimate (minutes); a linear-time layer on
    the same length, or a short call, none. (Checked on the shape alone: nothing is computed.)"""
    import logging

    from seqmix import layers
    from seqmix.layers import base

    x = torch.empty(1, 400_000, 64, device="meta")
    attn = layers.build("full_attn", dim=64, num_heads=2, causal=True)
    base._WARNED.discard(("full_attn", 6))
    with caplog.at_level(logging.WARNING, logger="seqmix.layers.base"):
        attn._warn_if_long(x)
        attn._warn_if_long(x)
        layers.build("gated_deltanet", dim=64, num_heads=2)._warn_if_long(x)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and "full_attn" in warned[0] and "TFLOP" in warned[0] and "minutes" in warned[0], warned
