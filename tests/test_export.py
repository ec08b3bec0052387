"""torch.export and torch.compile of every registry layer: every layer exports with a symbolic sequence length
(the scans - TTT, LaCT, Gated DeltaNet, Mamba2, the block-wise world-model layers - through torch's scan op,
seqmix.ops.scan) and equals eager at other lengths; the padded arithmetic the exported scans use equals the eager
one, final states included; every layer traces to one graph without a break, and compiled forward and backward
equal eager per layer family (README, "Export and compile")."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from seqmix import layers as L
from seqmix.utils.testing import assert_close

import contract as C

#: Exported forms beyond each layer's small config: TTT's causal language-model form, LaCT's causal form.
FORMS = {"ttt_mlp@lm": ("ttt_mlp", dict(causal=True, variant="lm", mini_batch_size=4, mlp_expansion=2)),
         "ttt_linear@lm": ("ttt_linear", dict(causal=True, variant="lm", mini_batch_size=4)),
         "lact@causal": ("lact", dict(causal=True, chunk_size=4, momentum=True))}


def _layer(name: str, dtype=torch.float32) -> tuple[torch.nn.Module, int]:
    """``(layer in eval mode, tokens per frame)`` built small (frame layers get their small grid)."""
    name, given = FORMS.get(name, (name, None))
    cls = L.mixer_class(name)
    given = dict(cls.Tooling.small_config) if given is None else given
    grid = given.get("grid")
    torch.manual_seed(0)
    return L.build(name, dim=32, num_heads=2, **given).to(dtype).eval(), (grid[0] * grid[1] if grid else 1)


@pytest.mark.parametrize("name", sorted(L.available()) + [
    pytest.param(n, marks=pytest.mark.slow) if n.startswith("lact") else n for n in sorted(FORMS)])
def test_dynamic_length_export_equals_eager(name):
    """One program exported at one length runs every other length (shorter than a chunk, not a multiple of it,
    longer than the windows) and equals eager in fp64 (the contract harness's check); every registry layer declares
    it (``Tooling.symbolic_export``)."""
    assert L.mixer_class(FORMS.get(name, (name,))[0]).Tooling.symbolic_export
    C.check_dynamic_export(_layer(name)[0])


#: op modules whose exported arithmetic (padding to whole chunks, at least two of them) is switched on below
_EXPORT_PATHS = ("seqmix.ops.delta_rule", "seqmix.ops.ssd", "seqmix.ops.ttt", "seqmix.ops.lact", "seqmix.ops.conv",
                 "seqmix.layers.mamba2")


@pytest.mark.parametrize("name", ["gated_deltanet", "mamba2", "ttt_linear@lm", "ttt_mlp@lm", "lact@causal",
                                  "ttt_mlp", "lact", "blockwise_ssm", "blockwise_ttt"])
def test_exported_arithmetic_equals_eager_with_states(name, monkeypatch):
    """The ops' export arithmetic run eagerly (the chunk loop stays a Python loop): tails padded to whole chunks,
    incomplete chunks skipped in the carried state, equals the eager arithmetic in fp64 at lengths around the chunk
    size, and so do the carried states (causal layers, ``return_state=True``) and chunked calls that continue them."""
    import importlib

    layer, ft = _layer(name, torch.float64)
    for mod in _EXPORT_PATHS:
        monkeypatch.setattr(importlib.import_module(mod), "exporting", lambda: True)
    for n in ((1, 3) if ft > 1 else (1, 3, 4, 9)):
        x = torch.randn(2, n * ft, 32, dtype=torch.float64)
        with monkeypatch.context() as m:
            for mod in _EXPORT_PATHS:
                m.setattr(importlib.import_module(mod), "exporting", lambda: False)
            ref = layer(x, return_state=True) if layer.causal else (layer(x), None)
        got = layer(x, return_state=True) if layer.causal else (layer(x), None)
        assert_close(f"{name} T={n * ft}", got[0], ref[0], 1e-10)
        if ref[1] is not None:
            leaves = [[t for t in torch.utils._pytree.tree_leaves(st) if isinstance(t, torch.Tensor)]
                      for st in (got[1], ref[1])]
            assert len(leaves[0]) == len(leaves[1]) > 0
            for a, b in zip(*leaves):
                assert_close(f"{name} T={n * ft} state", a, b, 1e-10)
            x2 = torch.randn(2, 2 * ft, 32, dtype=torch.float64)
            assert_close(f"{name} continued", layer(x2, state=got[1]), layer(x2, state=ref[1]), 1e-10)


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
@pytest.mark.parametrize("name", ["ttt_linear"])
def test_dynamic_compile_of_a_scan_equals_eager_at_new_lengths(name):
    """``torch.compile(dynamic=True)`` of a scan (chunk loop unrolled, so a new chunk count compiles again: one
    compilation per count, not per call) equals eager in fp64, forward and backward, at lengths of 2 and 5 chunks."""
    import torch._dynamo as dynamo

    layer, _ = _grad_input(name, torch.float64)
    dynamo.reset()
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True, dynamic=True)
    for T in (13, 37):
        xt = torch.randn(2, T, 32, dtype=torch.float64, requires_grad=True)
        y, g = _fwd_bwd(compiled, xt)
        y_ref, g_ref = _fwd_bwd(layer, xt)
        assert_close(f"{name} dynamic compile T={T}", y, y_ref, 1e-10)
        assert_close(f"{name} dynamic compile grad T={T}", g, g_ref, 1e-10)


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
