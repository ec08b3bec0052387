"""Matched-size helper: size any layer to another's state size or parameter count."""

import pytest

from seqmix import layers
from seqmix.layers.sizing import count, match_size


@pytest.mark.parametrize("name", [n for n in layers.sequence_mixers() if layers.mixer_class(n).Tooling.state_knob])
def test_match_state_of_ttt_mlp(name):
    target = layers.build("ttt_mlp", dim=64, num_heads=2).state_size()
    cfg, got = match_size(name, 64, 2, target=target, by="state", seq_len=4096)
    layer = layers.build(name, dim=64, num_heads=2, **cfg)
    assert count(layer, "state", 4096) == got
    assert abs(got - target) / target < 0.35, f"{name}: best state {got} vs target {target} with {cfg}"


def test_match_params_and_errors():
    target = sum(p.numel() for p in layers.build("ttt_mlp", dim=64, num_heads=2).parameters())
    cfg, got = match_size("ttt_linear", 64, 2, target=target, by="params")
    assert abs(got - target) / target < 0.1 and "head_dim" in cfg
    with pytest.raises(ValueError, match="no state knob"):
        match_size("identity", 64, 2, target=10, by="state")
    with pytest.raises(ValueError, match="not a config field"):
        match_size("ttt_linear", 64, 2, target=10, knob="nope")
    with pytest.raises(ValueError, match="by must be"):
        match_size("ttt_linear", 64, 2, target=10, by="flops")
