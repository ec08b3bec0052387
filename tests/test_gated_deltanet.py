"""Gated DeltaNet: chunked op vs naive twin vs fla's naive reference; fla's Triton kernels (interpreter on CPU)
vs our op; the layer on backend fla vs torch; fla's own layer as a peer (state dict + outputs); state carry
across calls and backends; errors."""

import contextlib
import logging
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from seqmix import layers
from seqmix.layers.gated_deltanet import GatedDeltaNet, GatedDeltaNetState
from seqmix.utils.triton_compat import patch_triton_interpreter
from seqmix.ops import delta_rule as ops
from seqmix.utils.testing import assert_close

DIM, HEADS = 32, 2


def _op_inputs(B=2, T=21, H=2, HV=None, K=8, V=12, dtype=torch.float64, seed=0, h0=True):
    """Well-conditioned delta-rule inputs (as the layer makes them): unit-norm k, beta in (0, 1), g < 0."""
    g_ = torch.Generator().manual_seed(seed)
    HV = HV or H
    rn = lambda *s: torch.randn(*s, generator=g_, dtype=dtype)
    q = rn(B, T, H, K)
    k = F.normalize(rn(B, T, H, K), dim=-1)
    v = rn(B, T, HV, V)
    g = F.logsigmoid(rn(B, T, HV) + 2.0)
    beta = torch.rand(B, T, HV, generator=g_, dtype=dtype)
    s0 = rn(B, HV, K, V) if h0 else None
    return [t.requires_grad_() if t is not None else None for t in (q, k, v, g, beta, s0)]


def _run(fn, leaves, **kw):
    """Output, final state and gradients of a fixed random loss wrt q, k, v, g, beta (and h0)."""
    q, k, v, g, beta, s0 = leaves
    o, s = fn(q, k, v, g, beta, initial_state=s0, output_final_state=True, **kw)
    w = torch.randn(o.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    ws = torch.randn(s.shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    loss = (o * w.to(o.dtype)).sum() + (s * ws.to(s.dtype)).sum()
    wrt = [t for t in leaves if t is not None]
    return o, s, torch.autograd.grad(loss, wrt)


def _compare(tag, a, b, tol):
    (o, s, gr), (o0, s0, gr0) = a, b
    assert_close(f"{tag} o", o, o0, tol)
    assert_close(f"{tag} final state", s, s0, tol)
    for name, x, y in zip(["q", "k", "v", "g", "beta", "h0"], gr, gr0):
        assert_close(f"{tag} grad {name}", x, y, tol)


def _fla_naive(q, k, v, g, beta, initial_state=None, output_final_state=False):
    from fla.ops.gated_delta_rule.naive import naive_recurrent_gated_delta_rule

    return naive_recurrent_gated_delta_rule(q, k, v, beta=beta, g=g, initial_state=initial_state,
                                            output_final_state=output_final_state)


# ---------------------------------------------------------------------------------------------------- ops
@pytest.mark.parametrize("T", [1, 16, 37], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("chunk", [16, 5, 64], ids=lambda c: f"C{c}")
@pytest.mark.parametrize("heads", [(2, 2), (1, 3)], ids=["H2", "gva_H1_HV3"])
def test_chunk_matches_naive_fp64(T, chunk, heads):
    """Chunked WY form == per-token loop in fp64 (outputs, final state, all gradients), ragged T, GVA."""
    leaves = _op_inputs(T=T, H=heads[0], HV=heads[1])
    _compare("chunk vs naive", _run(ops.chunk_gated_delta_rule, leaves, chunk_size=chunk),
             _run(ops.naive_recurrent_gated_delta_rule, leaves), 1e-10)


@pytest.mark.parametrize("fn", ["chunk", "naive"])
@pytest.mark.parametrize("T", [1, 37], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("h0", [True, False], ids=["h0", "no_h0"])
def test_ops_match_fla_naive_fp32(fn, T, h0):
    """Both our forms vs fla's own naive recurrence (an oracle written elsewhere), in fp32."""
    pytest.importorskip("fla.ops.gated_delta_rule.naive")
    leaves = _op_inputs(T=T, dtype=torch.float32, h0=h0)
    if not h0:  # fla's naive returns a zero state without the graph: give both sides a zero leaf instead
        leaves[-1] = torch.zeros(2, 2, 8, 12, requires_grad=True)
    ours = ops.chunk_gated_delta_rule if fn == "chunk" else ops.naive_recurrent_gated_delta_rule
    kw = {"chunk_size": 16} if fn == "chunk" else {}
    _compare(f"{fn} vs fla naive", _run(ours, leaves, **kw), _run(_fla_naive, leaves), 1e-4)


def test_op_dtypes_and_errors():
    q, k, v, g, beta, s0 = (t.detach() if t is not None else None for t in _op_inputs(dtype=torch.float32, T=5))
    o, s = ops.chunk_gated_delta_rule(q.half(), k.half(), v.half(), g, beta, initial_state=s0,
                                      output_final_state=True)
    assert o.dtype == torch.float16 and s.dtype == torch.float32  # fp32 accumulation, state kept in fp32
    o, s = ops.chunk_gated_delta_rule(q, k, v, g, beta)
    assert s is None and o.shape == (2, 5, 2, 12)
    with pytest.raises(ValueError, match=r"v must be \[B, T, HV, V\]"):
        ops.chunk_gated_delta_rule(q, k, v[:, :4], g, beta)
    with pytest.raises(ValueError, match="multiple of query/key heads"):
        ops.naive_recurrent_gated_delta_rule(q, k, torch.randn(2, 5, 3, 12), torch.zeros(2, 5, 3), torch.zeros(2, 5, 3))
    with pytest.raises(ValueError, match=r"beta must be \[B, T, HV\]"):
        ops.chunk_gated_delta_rule(q, k, v, g, beta[..., :1])
    with pytest.raises(ValueError, match="initial_state must be"):
        ops.chunk_gated_delta_rule(q, k, v, g, beta, initial_state=s0[:1])
    with pytest.raises(ValueError, match="chunk_size"):
        ops.chunk_gated_delta_rule(q, k, v, g, beta, chunk_size=0)
    with pytest.raises(TypeError, match="floating point"):
        ops.chunk_gated_delta_rule(q, k, v, g, beta.long())


# ------------------------------------------------------------------------------- fla kernels (interpreter)
@pytest.fixture
def fla_device():
    """Where fla's Triton kernels run: CUDA, else CPU under TRITON_INTERPRET=1 (conftest sets it)."""
    if torch.cuda.is_available():
        dev = "cuda"
    elif os.environ.get("TRITON_INTERPRET") == "1":
        dev = "cpu"
    else:
        pytest.skip("fla's kernels need CUDA or TRITON_INTERPRET=1")
    pytest.importorskip("fla.ops.gated_delta_rule")
    patch_triton_interpreter()
    return dev


def _tol(dev):
    # The interpreter computes in exact fp32; on GPU fla's tl.dot may use TF32.
    return 1e-4 if dev == "cpu" else 5e-3


@pytest.mark.gpu  # fla kernel: CUDA when present, else the interpreter; the GPU kit enrols it
def test_fla_chunk_kernel_matches_torch_op(fla_device):
    """fla's chunk_gated_delta_rule (fwd + bwd, with initial / final state) vs our chunked op, T not a multiple
    of fla's chunk (64)."""
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule as fla_chunk

    leaves = [t.detach().to(fla_device).requires_grad_() for t in _op_inputs(B=1, T=50, H=2, K=32, V=32,
                                                                             dtype=torch.float32)]
    _compare("fla chunk vs torch chunk", _run(fla_chunk, leaves), _run(ops.chunk_gated_delta_rule, leaves),
             _tol(fla_device))


@pytest.mark.gpu
def test_fla_fused_recurrent_kernel_matches_naive(fla_device):
    """fla's decode kernel (forward only: it has no backward) vs our naive loop, with a carried state."""
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule as fla_rec

    q, k, v, g, beta, s0 = (t.detach().to(fla_device) for t in _op_inputs(B=1, T=7, K=16, V=32, dtype=torch.float32))
    o, s = fla_rec(q, k, v, g=g, beta=beta, initial_state=s0, output_final_state=True)
    o0, s0_ = ops.naive_recurrent_gated_delta_rule(q, k, v, g, beta, initial_state=s0, output_final_state=True)
    assert_close("fused_recurrent o", o, o0, _tol(fla_device))
    assert_close("fused_recurrent state", s, s0_, _tol(fla_device))


def _pair(fla_device, **cfg):
    """The same weights on backend torch (reference) and fla."""
    torch.manual_seed(0)
    ref = layers.build("gated_deltanet", dim=DIM, num_heads=HEADS, backend="torch", **cfg).to(fla_device)
    fast = layers.build("gated_deltanet", dim=DIM, num_heads=HEADS, backend="fla", **cfg).to(fla_device)
    fast.load_state_dict(ref.state_dict())
    assert (ref.backend, fast.backend) == ("torch", "fla")
    return ref, fast


@pytest.mark.parametrize(
    "cfg",
    [dict(head_dim=16), dict(head_dim=16, expand_v=1.0, num_v_heads=4, allow_neg_eigval=True, conv_bias=True,
                             output_gate_activation="sigmoid")],
    ids=["default", "gva_negeig_bias_sigmoid"],
)
@pytest.mark.gpu
def test_layer_fla_matches_torch(fla_device, cfg):
    """Whole layer (fla's fused conv, chunk kernel with in-kernel gate / l2norm / sigmoid, gated norm) vs the
    torch backend: outputs, input gradient and every parameter gradient."""
    ref, fast = _pair(fla_device, **cfg)
    x = torch.randn(1, 40, DIM, generator=torch.Generator().manual_seed(1)).to(fla_device)
    res = []
    for layer in (fast, ref):
        xi = x.clone().requires_grad_()
        y = layer(xi)
        y.square().sum().backward()
        res.append((y, xi.grad, {n: p.grad for n, p in layer.named_parameters()}))
    tol = _tol(fla_device)
    assert_close("layer fla vs torch: y", res[0][0], res[1][0], tol)
    assert_close("layer fla vs torch: dx", res[0][1], res[1][1], tol)
    for n, gref in res[1][2].items():
        assert_close(f"layer fla vs torch: grad {n}", res[0][2][n], gref, tol)


@pytest.mark.gpu
def test_state_carry_fla_and_across_backends(fla_device):
    """Chunked inference (incl. single tokens; fla's fused recurrent kernel) equals one full pass; states move
    between the fla and torch backends; gradients flow through a carried state on fla (chunk kernel)."""
    ref, fast = _pair(fla_device, head_dim=16, expand_v=1.0)
    x = torch.randn(1, 20, DIM, generator=torch.Generator().manual_seed(2)).to(fla_device)
    tol = _tol(fla_device)
    with torch.no_grad():
        full = ref(x)
        for name, order in (("fla", (fast,) * 4), ("torch/fla alternating", (ref, fast) * 2)):
            outs, st, t0 = [], None, 0
            for layer, n in zip(order, (5, 1, 7, 7)):
                y, st = layer(x[:, t0 : t0 + n], state=st, return_state=True)
                assert isinstance(st, GatedDeltaNetState) and st.recurrent.dtype == torch.float32
                outs.append(y)
                t0 += n
            assert_close(f"state carry {name}", torch.cat(outs, 1), full, tol)
    # with gradients: two calls on fla vs one full pass on torch
    res = []
    for layer, splits in ((fast, (12, 8)), (ref, (20,))):
        xi = x.clone().requires_grad_()
        outs, st, t0 = [], None, 0
        for n in splits:
            y, st = layer(xi[:, t0 : t0 + n], state=st, return_state=True)
            outs.append(y)
            t0 += n
        y = torch.cat(outs, 1)
        (y.square().sum() + st.recurrent.sum()).backward()
        res.append((y, xi.grad))
    assert_close("carry with grad: y", res[0][0], res[1][0], tol)
    assert_close("carry with grad: dx", res[0][1], res[1][1], tol)


# -------------------------------------------------------------------------------------- fla's layer (peer)
@pytest.mark.parametrize(
    "cfg",
    [dict(), dict(use_gate=False), dict(num_v_heads=4, conv_bias=True), dict(use_short_conv=False)],
    ids=["default", "no_gate", "gva_bias", "no_conv"],
)
def test_state_dict_matches_fla_layer(cfg):
    """Same parameter names and shapes as fla.layers.GatedDeltaNet, both ways, strict."""
    fla_layers = pytest.importorskip("fla.layers")
    torch.manual_seed(0)
    with pytest.warns(UserWarning) if not cfg.get("use_short_conv", True) else contextlib.nullcontext():
        peer = fla_layers.GatedDeltaNet(hidden_size=DIM, head_dim=16, num_heads=HEADS, expand_v=2.0, **cfg)
    ours = layers.build("gated_deltanet", dim=DIM, num_heads=HEADS, head_dim=16, expand_v=2.0, **cfg)
    theirs = peer.state_dict()
    mine = ours.state_dict()
    assert {n: tuple(t.shape) for n, t in mine.items()} == {n: tuple(t.shape) for n, t in theirs.items()}
    assert {n: t.dtype for n, t in mine.items()} == {n: t.dtype for n, t in theirs.items()}
    ours.load_state_dict(theirs, strict=True)
    peer.load_state_dict(mine, strict=True)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in peer.parameters())


@pytest.mark.gpu
def test_outputs_match_fla_layer(fla_device):
    """fla's own layer (its kernels; fused recurrent in eval / no-grad) vs ours on the torch backend after
    loading its weights: an oracle no one here wrote."""
    from fla.layers import GatedDeltaNet as FlaGDN

    torch.manual_seed(3)
    peer = FlaGDN(hidden_size=DIM, head_dim=16, num_heads=HEADS, expand_v=2.0).to(fla_device).eval()
    ours = layers.build("gated_deltanet", dim=DIM, num_heads=HEADS, head_dim=16, expand_v=2.0, backend="torch")
    ours.load_state_dict(peer.state_dict(), strict=True)
    ours.to(fla_device)
    x = torch.randn(2, 24, DIM, generator=torch.Generator().manual_seed(4)).to(fla_device)
    with torch.no_grad():
        y_peer, _, _ = peer(x)
        assert_close("ours (torch) vs fla layer", ours(x), y_peer, _tol(fla_device))


# ---------------------------------------------------------------------------------------- layer (torch)
def test_layer_naive_backend_matches_torch_fp64():
    torch.manual_seed(0)
    a = layers.build("gated_deltanet", dim=DIM, num_heads=HEADS, head_dim=8, chunk_size=4, backend="torch").double()
    b = layers.build("gated_deltanet", dim=DIM, num_heads=HEADS, head_dim=8, backend="naive").double()
    b.load_state_dict(a.state_dict())
    assert (a.backend, b.backend) == ("torch", "naive")
    x = torch.randn(2, 11, DIM, dtype=torch.float64)
    assert_close("layer torch vs naive", a(x), b(x), 1e-12)


def test_state_and_param_count():
    D, H, K, ev, HV, W = 48, 2, 12, 2.0, 4, 3
    layer = layers.build("gated_deltanet", dim=D, num_heads=H, head_dim=K, expand_v=ev, num_v_heads=HV, conv_size=W)
    V = int(K * ev)
    C = 2 * H * K + HV * V
    assert layer.state_size() == layer.state_size(seq_len=1000) == HV * K * V + (W - 1) * C
    n = D * (2 * H * K + 2 * HV * V + 2 * HV) + HV * V * D + 2 * HV + W * C + V
    assert sum(p.numel() for p in layer.parameters()) == n
    # the sizing knob grows both monotonically
    small = layers.build("gated_deltanet", dim=D, num_heads=H, head_dim=8)
    big = layers.build("gated_deltanet", dim=D, num_heads=H, head_dim=16)
    assert GatedDeltaNet.Tooling.state_knob == GatedDeltaNet.Tooling.param_knob == "head_dim"
    assert small.state_size() < big.state_size()
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in big.parameters())
    nc = layers.build("gated_deltanet", dim=D, num_heads=H, head_dim=K, expand_v=ev, use_short_conv=False)
    assert nc.state_size() == H * K * V


def test_init_matches_fla():
    """A = exp(A_log) in (0, 16); dt = softplus(dt_bias) in [1e-3, 0.1]; norm weight ones."""
    layer = layers.build("gated_deltanet", dim=64, num_heads=16, head_dim=4, expand_v=1.0)
    A, dt = layer.A_log.exp(), F.softplus(layer.dt_bias)
    assert ((A > 0) & (A < 16)).all() and ((dt > 0.99e-3) & (dt < 0.101)).all()
    assert torch.equal(layer.o_norm.weight, torch.ones(4))
    assert layer.A_log._no_weight_decay and layer.dt_bias._no_weight_decay


# ------------------------------------------------------------------------------------ backends and errors
def test_backend_selection(monkeypatch, caplog):
    layer = layers.build("gated_deltanet", dim=DIM, num_heads=HEADS)
    assert layer.backend_for("cpu") == "torch"  # auto never picks the interpreter, even when it is on
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert layer.backend_for("cpu") == "torch"
    fla_layer = layers.build("gated_deltanet", dim=DIM, num_heads=HEADS, backend="fla")
    assert "explicitly" in layer.backend_supports("fla", "cpu")
    if _has_fla():
        assert fla_layer.backend_for("cpu") == "fla"
    # fp64 has no fla kernel: an explicit request degrades to torch (one warning)
    reason = fla_layer.double().backend_supports("fla", "cpu")
    assert reason is not None and "float64" in reason
    with caplog.at_level(logging.WARNING):
        assert fla_layer.backend_for("cpu") == "torch"
    fla_layer.float()
    assert fla_layer.bfloat16().backend_supports("fla", "cpu") is not None  # interpreter bf16 is wrong
    monkeypatch.delenv("TRITON_INTERPRET")
    reason = fla_layer.float().backend_supports("fla", "cpu")
    assert reason is not None and "CUDA" in reason
    assert fla_layer.backend_for("cpu") == "torch"
    assert layers.build("gated_deltanet", dim=DIM, num_heads=HEADS, backend="naive").backend == "naive"


def _has_fla() -> bool:
    try:
        import fla.ops.gated_delta_rule  # noqa: F401
    except Exception:
        return False
    return True


@pytest.mark.parametrize(
    "cfg, exc, match",
    [
        (dict(head_dim=0), ValueError, "head_dim must be a positive int"),
        (dict(head_dim=16.0), ValueError, "head_dim must be a positive int"),
        (dict(head_dim=10, expand_v=0.25), ValueError, "must be an integer"),
        (dict(expand_v=-1.0), ValueError, "expand_v must be a positive number"),
        (dict(num_v_heads=3), ValueError, "num_v_heads must be a positive multiple of num_heads=2"),
        (dict(conv_size=1), ValueError, "conv_size must be an int >= 2"),
        (dict(output_gate_activation="relu"), ValueError, "swish"),
        (dict(chunk_size=0), ValueError, "chunk_size must be a positive int"),
        (dict(norm_eps=0.0), ValueError, "norm_eps must be > 0"),
        (dict(backend="triton"), ValueError, "valid: auto, fla, torch, naive"),
        (dict(causal=False), ValueError, "causal by construction.*Bidirectional"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_bad_configs(cfg, exc, match):
    with pytest.raises(exc, match=match):
        layers.build("gated_deltanet", dim=DIM, num_heads=HEADS, **cfg)


def test_bad_head_split():
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        layers.build("gated_deltanet", dim=30, num_heads=4)
    assert layers.build("gated_deltanet", dim=30, num_heads=4, head_dim=8).head_k_dim == 8


def test_bad_state_and_layout():
    layer = layers.build("gated_deltanet", dim=DIM, num_heads=HEADS, head_dim=8)
    x = torch.randn(2, 5, DIM)
    _, st = layer(x, return_state=True)
    assert st.conv.shape == (2, 3, 2 * 2 * 8 + 2 * 16) and st.recurrent.shape == (2, 2, 8, 16)
    with pytest.raises(TypeError, match="GatedDeltaNetState"):
        layer(x, state=tuple(st))
    with pytest.raises(ValueError, match=r"recurrent state must be \[B, HV, K, V\]"):
        layer(x[:1], state=st)
    with pytest.raises(ValueError, match=r"conv state must be \[B, W - 1, C\]"):
        layer(x, state=st._replace(conv=None))
    with pytest.raises(TypeError, match="takes no layout"):
        layer(x, layout=object())
    y, _ = layer(x, state=st, return_state=True)  # a valid state still works
    assert y.shape == x.shape
    assert layer.causal and "head_k_dim=8" in repr(layer)


def test_import_and_run_without_fla():
    """`import seqmix` never imports fla; without fla an explicit fla request degrades to torch with a warning."""
    code = (
        "import os, sys, logging\n"
        "sys.modules['fla'] = None  # any `import fla...` now raises ImportError\n"
        "os.environ['TRITON_INTERPRET'] = '1'\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        "import torch, seqmix\n"
        "assert not any(m == 'fla' or m.startswith('fla.') for m in sys.modules if sys.modules[m] is not None)\n"
        "layer = seqmix.build('gated_deltanet', dim=16, num_heads=2, backend='fla')\n"
        "assert layer.backend == 'torch', layer.backend\n"
        "assert layer(torch.randn(1, 3, 16)).shape == (1, 3, 16)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "unavailable" in r.stderr and "fla" in r.stderr
