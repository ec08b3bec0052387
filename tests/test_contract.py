"""Every registry entry obeys the layer contract (see tests/contract.py)."""

import re

import pytest
import torch

from seqmix import layers
from seqmix.utils.testing import rel_err

import contract as C

NAMES = layers.available()


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as e:
        layers.build("not_a_mixer", dim=8, num_heads=1)
    for n in NAMES:
        assert n in str(e.value)


@pytest.mark.parametrize("name", NAMES)
def test_shape_dtype(name):
    C.check_shape_dtype(C.make(name))


@pytest.mark.parametrize("name", NAMES)
def test_backward(name):
    C.check_backward(C.make(name))


@pytest.mark.parametrize("name", NAMES)
def test_reports_state_and_backend(name):
    layer = C.make(name)
    s = layer.state_size(seq_len=64)
    assert isinstance(s, int) and s >= 0
    assert layer.backend in layer.backends
    assert isinstance(layer.causal, bool)


CAUSAL = [n for n in NAMES if C.causal_overrides(n) is not None]


@pytest.mark.parametrize("name", CAUSAL)
def test_causal_form_leaks_nothing(name):
    layer = C.make(name, **C.causal_overrides(name))
    assert layer.causal
    if layer.mixes_tokens:
        C.check_causality(layer)


@pytest.mark.parametrize("name", CAUSAL)
def test_state_carry_equals_full_pass(name):
    C.check_state_carry(C.make(name, **C.causal_overrides(name)))


@pytest.mark.parametrize("name", NAMES)
def test_bidirectional_wrapper(name):
    C.check_bidirectional(C.make(name, **(C.causal_overrides(name) or {})))


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs(name):
    C.check_bad_inputs(name, C.make(name))


@pytest.mark.parametrize("name", NAMES)
def test_state_on_non_causal_layer_is_rejected(name):
    layer = C.make(name)
    if layer.causal:
        pytest.skip("layer is causal by construction: carrying state is allowed")
    with pytest.raises(ValueError, match="causal"):
        layer(C.rand_x(1, 4), state=object())


@pytest.mark.parametrize("name", NAMES)
def test_bf16_autocast(name):
    layer = C.make(name)
    x = C.rand_x(2, C.steps(layer, 12))
    ref = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    err = rel_err(y.float(), ref)  # handles an all-zero reference (identity)
    assert err < 5e-2, f"{name}: bf16 autocast output drifts by {err:.3e}"


@pytest.mark.parametrize("name", NAMES)
def test_every_layer_accepts_causal_true(name):
    assert layers.mixer_class(name).can_be_causal(), f"{name}: every registry layer has a causal form"
    assert C.make(name, causal=True).causal


@pytest.mark.parametrize("name", [n for n in NAMES if not layers.mixer_class(n).can_be_non_causal()])
def test_causal_by_construction_rejects_causal_false(name):
    with pytest.raises(ValueError, match="Bidirectional"):
        C.make(name, causal=False)
    assert C.make(name).causal  # default: causal


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", ["yes", 1, 0.0])
def test_non_bool_causal_is_rejected(name, bad):
    with pytest.raises(TypeError, match="causal must be True or False"):
        C.make(name, causal=bad)


@pytest.mark.parametrize("name", NAMES)
def test_repr_shows_requested_and_resolved_backend(name):
    layer = C.make(name)
    assert f"backend=auto->{layer.backend}" in repr(layer)
    # the contract is the backend's presence, not the formatting around it (any separator, any position)
    assert re.search(rf"backend={re.escape(layer.backend)}(?![\w>-])", repr(C.make(name, backend=layer.backend)))
