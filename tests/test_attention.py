"""Attention family (swa, full_attn, local_attn, identity): block-wise SDPA vs the dense naive twin, torch's own
dense SDPA as an oracle, FlexAttention's CPU forward, KV-cache state carry, state sizes, backend fallback, errors."""

import logging
import sys
import warnings

import pytest
import torch
import torch.nn.functional as F

from seqmix import layers
from seqmix.layers import base
from seqmix.layers import attention as attention_layers
from seqmix.layers.attention import KVCache
from seqmix.ops import attention as ops
from seqmix.ops import external
from seqmix.utils.testing import assert_close

DIM, HEADS = 32, 2
TOL = {torch.float32: 1e-4, torch.float64: 1e-10}
DT_IDS = {torch.float32: "fp32", torch.float64: "fp64"}

# (kind, window) cases: window 1, small, odd, >= T and > T for the windowed kinds. T = 37 is ragged for all.
CASES = [
    ("swa", 1), ("swa", 3), ("swa", 8), ("swa", 37), ("swa", 50),
    ("local", 1), ("local", 5), ("local", 8), ("local", 40),
    ("full", None),
]
CASE_IDS = [f"{k}-w{w}" for k, w in CASES]
LAYER_NAME = {"swa": "swa", "local": "local_attn", "full": "full_attn"}


def _qkv(B=2, H=2, Tq=37, Tk=None, K=16, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    Tk = Tq if Tk is None else Tk
    q = torch.randn(B, H, Tq, K, generator=g, dtype=dtype)
    k = torch.randn(B, H, Tk, K, generator=g, dtype=dtype)
    v = torch.randn(B, H, Tk, K, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (q, k, v)]


def _grads(fn, leaves, seed=3, **kw):
    out = fn(*leaves, **kw)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return out, torch.autograd.grad((out * w).sum(), leaves)


def _compare_grads(label, g, g_ref, tol, window):
    for n, a, b in zip("qkv", g, g_ref):
        if window == 1 and n in "qk":
            # Each query sees only itself: softmax over one key is 1, so q/k grads are exactly 0 analytically and
            # the computed ones are rounding noise (a relative error is meaningless there).
            assert a.abs().max() <= tol * 0.1 and b.abs().max() <= tol * 0.1, f"{label}: grad {n} not ~0"
        else:
            assert_close(f"{label}: grad {n}", a, b, tol)


def _oracle_mask(kind, window, causal, Tq, Tk, k_start=0):
    """Independent [Tq, Tk] mask (diagonal bands / block-diagonal), for torch's dense SDPA."""
    full = torch.ones(Tk, Tk, dtype=torch.bool)
    if kind == "full":
        m = full.tril() if causal else full
    elif kind == "swa":
        m = full.tril(0).triu(-(window - 1)) if causal else full.tril(window - 1).triu(-(window - 1))
    else:
        # block diagonal over absolute positions k_start ... k_start + Tk - 1
        m = torch.zeros(Tk, Tk, dtype=torch.bool)
        a = 0
        while a < Tk:
            b = min(Tk, ((k_start + a) // window + 1) * window - k_start)
            m[a:b, a:b] = True
            a = b
        m = m.tril() if causal else m
    return m[Tk - Tq :]


# --------------------------------------------------------------------------------------------------- ops level
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=DT_IDS.get)
@pytest.mark.parametrize("causal", [False, True], ids=["sym", "causal"])
@pytest.mark.parametrize(
    "kind,window,block_size",
    # the query-block size only matters for swa: default (one block at T = 37) and 4 (many ragged blocks)
    [(k, w, None) for k, w in CASES] + [(k, w, 4) for k, w in CASES if k == "swa"],
    ids=[f"{i}" for i in CASE_IDS] + [f"{i}-bs4" for i, (k, _) in zip(CASE_IDS, CASES) if k == "swa"],
)
def test_sdpa_matches_naive_and_torch_dense(kind, window, causal, dtype, block_size):
    """Block-wise SDPA == dense naive == torch's dense SDPA with an explicit mask: outputs and q/k/v grads."""
    leaves = _qkv(dtype=dtype)
    kw = dict(kind=kind, window=window, causal=causal)
    o, g = _grads(ops.attention_sdpa, leaves, block_size=block_size, **kw)
    o0, g0 = _grads(ops.attention_naive, leaves, **kw)
    mask = _oracle_mask(kind, window, causal, 37, 37)
    o1, g1 = _grads(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), leaves)
    for ref_name, (ro, rg) in {"naive": (o0, g0), "torch-dense": (o1, g1)}.items():
        assert_close(f"out vs {ref_name}", o, ro, TOL[dtype])
        _compare_grads(f"vs {ref_name}", g, rg, TOL[dtype], window)


@pytest.mark.parametrize("kind,window", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("Tq,Tk,k_start", [(1, 20, 0), (1, 9, 31), (6, 19, 5), (11, 11, 3)],
                         ids=["decode", "decode-offset", "chunk", "no-cache-offset"])
def test_sdpa_with_kv_cache_matches_naive(kind, window, Tq, Tk, k_start):
    """Causal queries that are the last Tq of Tk keys (KV cache), keys starting at absolute position k_start."""
    leaves = _qkv(Tq=Tq, Tk=Tk)
    kw = dict(kind=kind, window=window, causal=True, k_start=k_start)
    o, g = _grads(ops.attention_sdpa, leaves, block_size=2, **kw)
    o0, g0 = _grads(ops.attention_naive, leaves, **kw)
    mask = _oracle_mask(kind, window, True, Tq, Tk, k_start)
    o1 = F.scaled_dot_product_attention(*leaves, attn_mask=mask)
    assert_close("out", o, o0, 1e-10)
    assert_close("out vs torch-dense", o, o1, 1e-10)
    _compare_grads("vs naive", g, g0, 1e-10, window)


def test_sdpa_never_builds_a_dense_mask(monkeypatch):
    """Windowed / local attention: every SDPA call gets a small key range and mask, never T x T."""
    calls = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        calls.append((q.shape[-2], k.shape[-2], None if attn_mask is None else tuple(attn_mask.shape)))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(ops.F, "scaled_dot_product_attention", spy)
    T = 700
    q, k, v = (t.detach() for t in _qkv(B=1, H=1, Tq=T, K=8, dtype=torch.float32))
    for kind, causal in [("swa", False), ("swa", True), ("local", False), ("local", True)]:
        calls.clear()
        ops.attention_sdpa(q, k, v, kind=kind, window=8, causal=causal)
        assert calls
        assert max(kk for _, kk, _ in calls) <= 128 + 2 * 7, (kind, causal, calls)
        assert all(m is None or m[0] * m[1] <= 128 * 142 for _, _, m in calls), (kind, causal, calls)
        assert len(calls) <= 8, f"{kind}: {len(calls)} SDPA calls for T={T}: the Python loop is too fine"


@pytest.mark.parametrize("causal", [False, True], ids=["sym", "causal"])
@pytest.mark.parametrize("kind,window", [("swa", 1), ("swa", 5), ("swa", 64), ("local", 7), ("full", None)],
                         ids=["swa-w1", "swa-w5", "swa-w64", "local-w7", "full"])
def test_flex_forward_on_cpu_matches_sdpa(kind, window, causal):
    """FlexAttention's eager forward (CPU, explicit device; it has no CPU backward) against block-wise SDPA."""
    if external.flex_unavailable():
        pytest.skip(external.flex_unavailable())
    q, k, v = (t.detach() for t in _qkv(Tq=45, K=16, dtype=torch.float32))
    kw = dict(kind=kind, window=window, causal=causal)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()": expected here
        o = ops.attention_flex(q, k, v, compiled=False, **kw)
        o_dec = ops.attention_flex(q[:, :, -3:], k, v, compiled=False, k_start=2, **{**kw, "causal": True})
    assert_close("flex vs sdpa", o, ops.attention_sdpa(q, k, v, **kw), 1e-5)
    ref_dec = ops.attention_sdpa(q[:, :, -3:], k, v, k_start=2, **{**kw, "causal": True})
    assert_close("flex vs sdpa (KV cache)", o_dec, ref_dec, 1e-5)


def test_backend_records_and_bad_op_inputs():
    layer = layers.build("swa", dim=DIM, num_heads=HEADS, window=4)
    assert layer.backends == ("flash_attn", "flex", "sdpa", "naive")
    assert layer.select_backend("cpu").fn is ops.attention_sdpa
    with pytest.raises(ValueError, match="flash_attn, flex, sdpa, naive"):
        layers.build("swa", dim=DIM, num_heads=HEADS, window=4, backend="xformers")
    q, k, v = (t.detach() for t in _qkv(Tq=5, Tk=8))
    with pytest.raises(ValueError, match="non-causal"):
        ops.attention_sdpa(q, k, v, kind="swa", window=2, causal=False)
    with pytest.raises(ValueError, match="more queries"):
        ops.attention_naive(k, q, q, kind="full", causal=True)
    with pytest.raises(ValueError, match="window >= 1"):
        ops.attention_sdpa(q, k, v, kind="local", window=0, causal=True)
    with pytest.raises(ValueError, match="valid: swa, local, full"):
        ops.attention_naive(q, k, v, kind="dilated", window=2, causal=True)
    with pytest.raises(ValueError, match=r"\[B, H, T, K\]"):
        ops.attention_sdpa(q[0], k[0], v[0], kind="full", causal=True)


# ------------------------------------------------------------------------------------------------- layer level
def _layer(name, dtype=torch.float64, seed=0, **cfg):
    torch.manual_seed(seed)
    layer = layers.build(name, dim=DIM, num_heads=HEADS, **cfg).to(dtype)
    with torch.no_grad():  # larger weights than the 0.02 init: peaked attention makes the comparison meaningful
        for p in layer.parameters():
            p.normal_(0.0, 0.3)
    return layer


def _x(B=2, T=37, dtype=torch.float64, seed=1):
    return torch.randn(B, T, DIM, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=DT_IDS.get)
@pytest.mark.parametrize("causal", [False, True], ids=["sym", "causal"])
@pytest.mark.parametrize("kind,window", [("swa", 1), ("swa", 6), ("swa", 40), ("local", 6), ("full", None)],
                         ids=["swa-w1", "swa-w6", "swa-w40", "local-w6", "full"])
def test_layer_sdpa_matches_naive_incl_parameter_grads(kind, window, causal, dtype):
    """Whole layer (projections, qk-norm, RoPE): outputs and gradients w.r.t. x and every parameter."""
    name = LAYER_NAME[kind]
    cfg = dict(causal=causal, qk_norm=True) | ({} if window is None else {"window": window})
    if kind == "swa":
        cfg["block_size"] = 5
    res = []
    for backend in ("sdpa", "naive"):
        layer = _layer(name, dtype, backend=backend, **cfg)
        x = _x(dtype=dtype).requires_grad_()
        y = layer(x, positions=torch.arange(37))
        assert layer.last_backend == backend
        w = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
        params = dict(layer.named_parameters())
        grads = torch.autograd.grad((y * w).sum(), [x, *params.values()])
        res.append((y, dict(zip(["x", *params], grads))))
    (y, g), (y0, g0) = res
    assert_close("y", y, y0, TOL[dtype])
    assert g.keys() == g0.keys() and len(g) == 1 + 12  # x + Q/K/V/O weight, bias + q/k norm weight, bias
    for n in g:
        if window == 1 and n.split(".")[0] in ("wq", "wk", "q_norm", "k_norm"):
            # one visible key: Q/K do not influence the output, their grads are 0 up to rounding
            tiny = TOL[dtype] * g0["x"].abs().max()
            assert g[n].abs().max() <= tiny and g0[n].abs().max() <= tiny, n
        else:
            assert_close(f"grad {n}", g[n], g0[n], TOL[dtype])


SPLITS = [(5, 1, 7, 1, 1, 4), (1,) * 9 + (10,), (19,)]


@pytest.mark.parametrize("splits", SPLITS, ids=["mixed", "decode", "one-call"])
@pytest.mark.parametrize("name,window", [("swa", 1), ("swa", 4), ("swa", 30), ("local_attn", 1),
                                         ("local_attn", 4), ("local_attn", 7), ("full_attn", None)],
                         ids=["swa-w1", "swa-w4", "swa-w30", "local-w1", "local-w4", "local-w7", "full"])
def test_state_carry_equals_full_pass(name, window, splits):
    """Chunked calls (incl. single-token decode) with a KV cache == one full pass, RoPE positions per chunk."""
    cfg = {"causal": True, "backend": "sdpa"} | ({} if window is None else {"window": window})
    layer = _layer(name, **cfg)
    T = sum(splits)
    x, pos = _x(T=T), torch.arange(T)
    full = layer(x, positions=pos)
    outs, state, t0 = [], None, 0
    for n in splits:
        y, state = layer(x[:, t0 : t0 + n], positions=pos[t0 : t0 + n], state=state, return_state=True)
        outs.append(y)
        t0 += n
        kept = {"swa": min(t0, (window or 1) - 1), "local_attn": t0 % (window or 1), "full_attn": t0}[name]
        assert isinstance(state, KVCache) and state.pos == t0 and state.k.shape == (2, HEADS, kept, DIM // HEADS)
    assert_close(f"{name} chunked vs full", torch.cat(outs, 1), full, 1e-10)


def test_rope_makes_attention_depend_on_relative_positions_only():
    layer = _layer("swa", window=5, causal=True)
    x = _x(T=12)
    y0 = layer(x)
    y = layer(x, positions=torch.arange(12))
    y_shift = layer(x, positions=torch.arange(12)[None].expand(2, -1) + 100)
    assert_close("shifted positions", y_shift, y, 1e-10)
    assert not torch.allclose(y, y0)


def test_state_size():
    H, K = HEADS, DIM // HEADS
    swa = layers.build("swa", dim=DIM, num_heads=HEADS, window=8)
    assert swa.state_size(3) == 2 * H * K * 3
    assert swa.state_size(100) == swa.state_size() == 2 * H * K * 8
    full = layers.build("full_attn", dim=DIM, num_heads=HEADS, head_dim=8)
    assert full.state_size(100) == 2 * H * 8 * 100
    with pytest.raises(ValueError, match="seq_len"):
        full.state_size()
    local = layers.build("local_attn", dim=DIM, num_heads=HEADS, window=16)
    assert local.state_size(100) == local.state_size() == 2 * H * K * 16 and local.state_size(5) == 2 * H * K * 5
    assert layers.build("identity", dim=DIM).state_size(100) == 0
    assert swa.Tooling.state_knob == local.Tooling.state_knob == "window" and swa.Tooling.param_knob == "head_dim"
    with pytest.raises(ValueError, match="seq_len"):
        swa.state_size(-1)


def test_parameter_count():
    D, H, K = DIM, HEADS, 24
    layer = layers.build("swa", dim=D, num_heads=H, head_dim=K, window=4)
    assert sum(p.numel() for p in layer.parameters()) == 4 * D * H * K + 3 * H * K + D
    assert sum(p.numel() for p in layers.build("identity", dim=D).parameters()) == 0


# ----------------------------------------------------------------------------------------------------- backends
def test_auto_picks_sdpa_on_cpu():
    for name in ("swa", "full_attn", "local_attn"):
        layer = layers.build(name, dim=DIM, num_heads=HEADS, **({} if name == "full_attn" else {"window": 4}))
        assert layer.backend == "sdpa"
        layer(_x(T=5, dtype=torch.float32))
        assert layer.last_backend == "sdpa"


@pytest.mark.parametrize("requested", ["flash_attn", "flex"])
def test_unavailable_backend_degrades_with_one_warning(requested, caplog):
    base._WARNED.discard(("swa", requested))  # other tests in this process may have triggered it already
    layer = layers.build("swa", dim=DIM, num_heads=HEADS, window=4, backend=requested)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            layer(_x(T=6, dtype=torch.float32))
        assert layer.backend == "sdpa" and layer.last_backend == "sdpa"
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and requested in r.getMessage()]
    assert len(warned) == 1, [r.getMessage() for r in caplog.records]
    assert "sdpa" in warned[0].getMessage()


def test_flash_attn_is_never_imported_on_cpu():
    """The optional library is imported lazily, and only where it could run (CUDA)."""
    if "flash_attn" in sys.modules:
        pytest.skip("flash_attn was imported by something else in this process")
    layer = layers.build("full_attn", dim=DIM, num_heads=HEADS, backend="flash_attn")
    layer(_x(T=3, dtype=torch.float32))
    assert "flash_attn" not in sys.modules


def _fake_flash_attn_func(q, k, v, softmax_scale=None, causal=False, window_size=(-1, -1)):
    """flash-attn's documented semantics on [B, T, H, K]: query i sees key j iff
    i + Tk - Tq - left <= j <= i + Tk - Tq + right (-1 = unbounded; causal sets right = 0)."""
    Tq, Tk = q.shape[1], k.shape[1]
    left, right = window_size
    right = 0 if causal else right
    i = torch.arange(Tq)[:, None] + Tk - Tq
    j = torch.arange(Tk)[None, :]
    ok = torch.ones(Tq, Tk, dtype=torch.bool)
    if left >= 0:
        ok &= j >= i - left
    if right >= 0:
        ok &= j <= i + right
    o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=ok,
                                       scale=softmax_scale)
    return o.transpose(1, 2)


@pytest.mark.parametrize("kind,window", [("swa", 1), ("swa", 6), ("swa", 50), ("local", 5), ("full", None)],
                         ids=["swa-w1", "swa-w6", "swa-w50", "local-w5", "full"])
def test_flash_attn_mapping_with_a_stand_in(kind, window, monkeypatch):
    """Window / causal / KV-cache mapping of the flash_attn path, with a pure-torch stand-in for flash_attn_func
    (the real library needs CUDA): it must equal the naive twin."""
    import types

    monkeypatch.setitem(sys.modules, "flash_attn", types.SimpleNamespace(flash_attn_func=_fake_flash_attn_func))
    for causal, (Tq, Tk, k_start) in [(False, (23, 23, 0)), (True, (23, 23, 0)), (True, (4, 19, 7))]:
        q, k, v = (t.detach() for t in _qkv(Tq=Tq, Tk=Tk))
        kw = dict(kind=kind, window=window, causal=causal, k_start=k_start)
        assert_close(f"flash {kind} causal={causal} Tq={Tq}", ops.attention_flash(q, k, v, **kw),
                     ops.attention_naive(q, k, v, **kw), 1e-10)


def test_per_call_fallback_when_the_fast_path_cannot_take_the_call(monkeypatch, caplog):
    """Pretend the device runs every backend: an fp32 call skips flash_attn (fp16/bf16 only) for flex, a call with
    a KV cache or in fp64 skips flex for sdpa; the explicit request warns once, ``last_backend`` says what ran."""
    layer = layers.build("swa", dim=DIM, num_heads=HEADS, window=4, causal=True, backend="flash_attn")
    monkeypatch.setattr(attention_layers, "_device_reason", lambda backend, device: None)
    x = _x(T=9, dtype=torch.float32)
    with caplog.at_level(logging.WARNING), warnings.catch_warnings(), torch.no_grad():  # flex: no CPU backward
        warnings.simplefilter("ignore")  # eager flex on CPU warns that it is unfused
        assert layer.backend == "flex"  # fp32 parameters: flash-attn (fp16/bf16 only) cannot take their calls
        y = layer(x)
        assert layer.last_backend == "flex"
        layer(x)
        _, st = layer(x[:, :5], return_state=True)
        y2, _ = layer(x[:, 5:], state=st, return_state=True)
        assert layer.last_backend == "sdpa"
        layer.double()(x.double())
        assert layer.last_backend == "sdpa"
    assert_close("flex vs cached sdpa", y2, y[:, 5:], 1e-5)
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 2 and all("flash_attn" in m for m in warned), warned  # fp32 once, fp64 once


# ------------------------------------------------------------------------------------------------------ identity
def test_identity_returns_zeros_and_carries_trivial_state():
    layer = layers.build("identity", dim=DIM)
    assert layer.causal and not layer.mixes_tokens and layer.backend == "torch"
    x = _x(T=7, dtype=torch.float32).requires_grad_()
    y, st = layer(x, state=None, return_state=True)
    assert st is None and y.shape == x.shape and (y == 0).all()
    y.sum().backward()
    assert (x.grad == 0).all()
    layer = layer.double()
    assert (layer(_x(T=3)) == 0).all()
    x_bad = _x(T=3).clone()
    x_bad[0, 0, 0] = float("nan")
    assert (layer(x_bad) == 0).all()  # exact zeros even for non-finite input
    with pytest.raises(TypeError, match="dtype"):
        layer(_x(T=3, dtype=torch.float32))
    with pytest.raises(TypeError, match="no state"):
        layer(_x(T=3), state=KVCache(torch.zeros(0), torch.zeros(0), 0))
    gated = layers.TanhGate(DIM)
    x = _x(T=4)
    assert torch.equal(gated.double()(x, layer(x)), x)


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", ["swa", "local_attn"])
def test_bad_window(name):
    with pytest.raises(ValueError, match=">= 1"):
        layers.build(name, dim=DIM, num_heads=HEADS, window=0)
    with pytest.raises(ValueError, match=">= 1"):
        layers.build(name, dim=DIM, num_heads=HEADS, window=-3)
    with pytest.raises(ValueError, match=r"2\*\*20"):
        layers.build(name, dim=DIM, num_heads=HEADS, window=2**20 + 1)
    with pytest.raises(TypeError, match="int"):
        layers.build(name, dim=DIM, num_heads=HEADS, window=8.0)


def test_bad_layer_inputs():
    with pytest.raises(ValueError, match="block_size"):
        layers.build("swa", dim=DIM, num_heads=HEADS, window=4, block_size=0)
    with pytest.raises(ValueError, match="head_dim"):
        layers.build("full_attn", dim=DIM, num_heads=HEADS, head_dim=0)
    with pytest.raises(ValueError, match="divisible"):
        layers.build("full_attn", dim=DIM, num_heads=3)
    sym = layers.build("swa", dim=DIM, num_heads=HEADS, window=4)
    x = _x(T=6, dtype=torch.float32)
    with pytest.raises(TypeError, match="layout"):
        sym(x, layout={"frames": 2})
    with pytest.raises(ValueError, match="causal"):
        sym(x, return_state=True)
    with pytest.raises(ValueError, match="positions"):
        sym(x, positions=torch.arange(5))
    causal = layers.build("local_attn", dim=DIM, num_heads=HEADS, window=4, causal=True)
    _, st = causal(x, return_state=True)
    with pytest.raises(TypeError, match="KVCache"):
        causal(x, state=(st.k, st.v))
    with pytest.raises(ValueError, match="does not fit"):
        causal(x[:1], state=st)  # batch 1 vs a cache of batch 2
    with pytest.raises(ValueError, match="inconsistent"):
        causal(x, state=KVCache(st.k, st.v, st.pos + 1))  # 2 cached tokens cannot be the block of position 7
    full = layers.build("full_attn", dim=DIM, num_heads=HEADS, causal=True)
    _, st = full(x, return_state=True)
    with pytest.raises(ValueError, match="inconsistent"):
        full(x, state=KVCache(st.k[:, :, 1:], st.v[:, :, 1:], st.pos))  # full attention keeps every token


# ------------------------------------------------------------------------------------- block_align (local_attn)
def _spans(frames, segments):
    from seqmix.layers.spans import TokenSpans

    return TokenSpans(tuple(frames), tuple(segments))


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("unit", ["frame", "segment"])
def test_block_align_is_full_attention_inside_each_span(unit, causal):
    """Aligned blocks: each span of the layout is attended on its own, as a full_attn layer with the same weights
    would on that span alone (positions included), in fp64; ragged spans (13 / 12 frames, text slots)."""
    spans = _spans((0, 7, 11, 16, 20, 29, 33), (0, 11, 20, 33))
    layer = layers.build("local_attn", dim=DIM, num_heads=HEADS, block_align=unit, causal=causal).double()
    full = layers.build("full_attn", dim=DIM, num_heads=HEADS, causal=causal).double()
    full.load_state_dict(layer.state_dict())
    x = _x(T=33, dtype=torch.float64).requires_grad_()
    pos = torch.arange(33) * 3
    y = layer(x, layout=spans, positions=pos)
    b = spans.bounds(unit)
    want = torch.cat([full(x[:, s:e], positions=pos[s:e]) for s, e in zip(b, b[1:])], dim=1)
    assert_close(f"block_align={unit}", y, want, 1e-12)
    g, g_want = (torch.autograd.grad(t.square().sum(), x)[0] for t in (y, want))
    assert_close(f"block_align={unit}: grad x", g, g_want, 1e-12)


def test_block_align_on_uniform_spans_equals_token_blocks():
    """Spans of ``w`` tokens each are the token blocks of ``window=w``: both forms agree (naive and sdpa)."""
    spans = _spans(range(0, 37, 6), range(0, 37, 12))
    x = _x(T=36, dtype=torch.float64)
    for backend in ("sdpa", "naive"):
        aligned = layers.build("local_attn", dim=DIM, num_heads=HEADS, block_align="segment", backend=backend).double()
        blocks = layers.build("local_attn", dim=DIM, num_heads=HEADS, window=12, backend=backend).double()
        blocks.load_state_dict(aligned.state_dict())
        assert_close(f"{backend}: segments of 12 = window 12", aligned(x, layout=spans), blocks(x), 1e-12)


def test_block_align_errors_and_layout_use():
    spans = _spans((0, 4, 8), (0, 8))
    with pytest.raises(ValueError, match="block_align must be one of tokens, frame, segment"):
        layers.build("local_attn", dim=DIM, num_heads=HEADS, block_align="frames")
    aligned = layers.build("local_attn", dim=DIM, num_heads=HEADS, block_align="segment", causal=True)
    with pytest.raises(ValueError, match="pass layout=TokenSpans"):
        aligned(_x(T=8, dtype=torch.float32))
    with pytest.raises(ValueError, match="the layout spans 8 tokens, the input has 9"):
        aligned(_x(T=9, dtype=torch.float32), layout=spans)
    with pytest.raises(ValueError, match="carried state"):
        aligned(_x(T=8, dtype=torch.float32), layout=spans, return_state=True)
    with pytest.raises(TypeError, match="TokenSpans"):
        aligned(_x(T=8, dtype=torch.float32), layout=(0, 8))
    # token blocks ignore a layout (the DiT passes one to every local_attn); other attention kinds refuse it
    tokens = layers.build("local_attn", dim=DIM, num_heads=HEADS, window=4)
    x = _x(T=8, dtype=torch.float32)
    assert torch.equal(tokens(x, layout=spans), tokens(x))
    with pytest.raises(TypeError, match="takes no layout"):
        layers.build("swa", dim=DIM, num_heads=HEADS, window=4)(x, layout=spans)
    assert "block_align=segment" in repr(aligned)



def test_block_align_cost_counts_the_spans_pairs():
    """Cost of aligned blocks: the (query, key) pairs inside each span of the layout (without it, blocks of window)."""
    from seqmix.layers.cost import attention_pairs

    spans = _spans((0, 7, 11, 16, 20, 29, 33), (0, 11, 20, 33))
    layer = layers.build("local_attn", dim=DIM, num_heads=HEADS, block_align="segment")
    H, K = HEADS, DIM // HEADS
    assert layer.core_cost(33, 0, 1, 4, layout=spans).flops == 4 * H * K * (11 ** 2 + 9 ** 2 + 13 ** 2)
    causal = layers.build("local_attn", dim=DIM, num_heads=HEADS, block_align="frame", causal=True)
    sizes = (7, 4, 5, 4, 9, 4)
    assert causal.core_cost(33, 0, 1, 4, layout=spans).flops == 4 * H * K * sum(s * (s + 1) // 2 for s in sizes)
    # the whole layer's cost passes the layout on; mixers that do not take one ignore it
    assert layer.cost(33, layout=spans).flops - layer.cost(33).flops == pytest.approx(
        4 * H * K * (11 ** 2 + 9 ** 2 + 13 ** 2 - attention_pairs("local", 18048, False, 33)))
    swa = layers.build("swa", dim=DIM, num_heads=HEADS, window=4)
    assert swa.cost(33, layout=spans).flops == swa.cost(33).flops


@pytest.mark.slow
def test_compiled_flex_does_not_recompile_per_length():
    """Compiled FlexAttention (the CUDA default for windowed attention) compiles a bounded set of graphs over many
    sequence lengths and offsets (chunked inference), instead of one per length until the recompile limit and then
    eager T x T scores; every output equals SDPA. Run here with inductor's CPU backend (forward only)."""
    from torch._dynamo.utils import counters

    from seqmix.ops import attention as A

    torch.manual_seed(0)
    before = counters["stats"]["unique_graphs"]
    for Tq, Tk in ((200, 200), (16, 300), (16, 316), (300, 300), (777, 777), (16, 500), (1000, 1000), (16, 1016)):
        q = torch.randn(1, 2, Tq, 16)
        k, v = torch.randn(1, 2, Tk, 16), torch.randn(1, 2, Tk, 16)
        out = A.attention_flex(q, k, v, kind="swa", window=32, causal=True, compiled=True)
        ref = A.attention_sdpa(q, k, v, kind="swa", window=32, causal=True)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    graphs = counters["stats"]["unique_graphs"] - before
    assert graphs <= 3, f"{graphs} graphs for 8 shapes: compiled flex recompiles per length"
