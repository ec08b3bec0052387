"""torch.export and torch.compile of every registry layer: the attention family (and the identity) export with a
symbolic sequence length and equal eager at other lengths; the scans (TTT, LaCT, Gated DeltaNet, Mamba2, the
block-wise world-model layers) loop over their chunks in Python, which fixes the chunk count, so they export one
program per length and equal eager there; every layer traces to one graph without a break, and compiled forward and
backward equal eager per layer family (README, "Export and compile")."""

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


# ------------------------------------------------------------------------------------------- torch.compile
#: One layer per family: attention, TTT, LaCT, Gated DeltaNet, Mamba2 and the world-model layers.
FAMILIES = ("swa", "ttt_mlp", "lact", "gated_deltanet", "mamba2", "blockwise_ssm", "blockwise_ttt", "frame_local_attn")


def _grad_input(name: str, dtype=torch.float32) -> tuple[torch.nn.Module, torch.Tensor]:
    layer, ft = _layer(name)
    return layer.to(dtype), torch.randn(2, 16 * ft, 32, dtype=dtype, requires_grad=True)


def _fwd_bwd(fn, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x.grad = None
    y = fn(x)
    y.square().sum().backward()
    return y.detach(), x.grad.clone()


@pytest.mark.parametrize("name", sorted(L.available()))
def test_every_layer_traces_to_one_graph(name):
    """Dynamo captures forward and backward (autograd Functions included) of every layer as one graph: no graph
    break (the README's compile section says so; a break would silently fall back to eager between graphs)."""
    import torch._dynamo as dynamo

    layer, x = _grad_input(name)
    dynamo.reset()
    info = dynamo.explain(layer)(x)
    assert info.graph_break_count == 0, f"{name}: {[str(b.reason) for b in info.break_reasons]}"


_AOT_GDN = pytest.mark.xfail(
    raises=RuntimeError, strict=True,
    reason="aot_eager only: the eager softplus_backward kernel returns the layout of its transposed gradient while AOT "
           "traced a contiguous one, so a view in the replayed backward fails; inductor plans its own layouts and "
           "equals eager (test_inductor_compile_equals_eager)")


@pytest.mark.parametrize("name", [pytest.param(n, marks=_AOT_GDN) if n == "gated_deltanet" else n for n in FAMILIES])
def test_compiled_forward_and_backward_equal_eager(name):
    """``torch.compile(fullgraph=True)`` through AOT autograd (the ``aot_eager`` backend: Dynamo + AOT autograd's
    forward and backward graphs, run by eager kernels, no code generation) equals eager in fp64: outputs and input
    gradients."""
    import torch._dynamo as dynamo

    layer, x = _grad_input(name, torch.float64)
    dynamo.reset()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True, dynamic=False)
    y, g = _fwd_bwd(compiled, x)
    y_ref, g_ref = _fwd_bwd(layer, x)
    assert_close(f"{name} compiled output", y, y_ref, 1e-10)
    assert_close(f"{name} compiled input grad", g, g_ref, 1e-10)


@pytest.mark.slow
@pytest.mark.parametrize("name,dynamic", [("gated_deltanet", False), ("swa", True)])
def test_inductor_compile_equals_eager(name, dynamic):
    """The default backend (inductor, C++ code generation on CPU), forward and backward: Gated DeltaNet (which
    aot_eager cannot replay) and sliding-window attention with a dynamic length (one compilation serves two
    lengths)."""
    import torch._dynamo as dynamo

    layer, x = _grad_input(name, torch.float64)
    dynamo.reset()
    compiled = torch.compile(layer, dynamic=dynamic)
    for T in ((x.shape[1], 24) if dynamic else (x.shape[1],)):
        xt = torch.randn(2, T, 32, dtype=torch.float64, requires_grad=True)
        y, g = _fwd_bwd(compiled, xt)
        y_ref, g_ref = _fwd_bwd(layer, xt)
        assert_close(f"{name} inductor output T={T}", y, y_ref, 1e-10)
        assert_close(f"{name} inductor input grad T={T}", g, g_ref, 1e-10)
