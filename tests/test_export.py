"""torch.export of every registry layer: the attention family (and the identity) export with a symbolic sequence
length and equal eager at other lengths; the scans (TTT, LaCT, Gated DeltaNet, Mamba2, the block-wise world-model
layers) loop over their chunks in Python, which fixes the chunk count, so they export one program per length and
equal eager there (README, "Export")."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch.export import Dim, export

from seqmix import layers as L
from seqmix.utils.testing import assert_close

#: Layers whose exported program keeps the length symbolic (the README's list).
DYNAMIC = ("full_attn", "swa", "local_attn", "frame_local_attn", "identity")


def _layer(name: str) -> tuple[torch.nn.Module, int]:
    """``(layer in eval mode, tokens per frame)`` built small (frame layers get their small grid)."""
    cls = L.mixer_class(name)
    given = dict(cls.Tooling.small_config)
    grid = given.get("grid")
    torch.manual_seed(0)
    return L.build(name, dim=32, num_heads=2, **given).eval(), (grid[0] * grid[1] if grid else 1)


def test_dynamic_list_names_registry_layers():
    assert set(DYNAMIC) <= set(L.available())


@pytest.mark.parametrize("name", DYNAMIC)
def test_dynamic_length_export_equals_eager(name):
    layer, ft = _layer(name)
    x = torch.randn(2, 16 * ft, 32)
    dim = Dim("frames", min=1, max=1024) * ft if ft > 1 else Dim("T", min=2, max=4096)
    prog = export(layer, (x,), dynamic_shapes=({1: dim},)).module()
    for n in (5, 24):  # other lengths than the traced one, shorter and longer than the windows
        y = torch.randn(2, n * ft, 32)
        assert_close(f"{name} exported at T={n * ft}", prog(y), layer(y), 1e-5)


@pytest.mark.parametrize("name", [n for n in L.available() if n not in DYNAMIC])
def test_fixed_length_export_equals_eager(name):
    layer, ft = _layer(name)
    x = torch.randn(2, 24 * ft if ft > 1 else 80, 32)
    prog = export(layer, (x,)).module()
    assert_close(f"{name} exported", prog(x), layer(x), 1e-5)
