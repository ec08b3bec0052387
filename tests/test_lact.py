"""The `lact` layer: backends against each other, carried state, precision, bad input."""

import pytest
import torch

from seqmix import layers
from seqmix.layers.lact import LaCTState
from seqmix.utils.testing import assert_close

D, H = 16, 2


def _pair(**cfg):
    torch.manual_seed(0)
    a = layers.build("lact", dim=D, num_heads=H, backend="torch", **cfg).double()
    b = layers.build("lact", dim=D, num_heads=H, backend="naive", **cfg).double()
    b.load_state_dict(a.state_dict())
    return a, b


@pytest.mark.parametrize("causal", [False, True, "lm"], ids=["video", "causal", "lm-layer"])
@pytest.mark.parametrize("muon", [False, True], ids=["sgd", "muon"])
def test_chunked_backend_equals_naive_twin(causal, muon):
    lm = dict(window=4, ttt_scale=True) if causal == "lm" else {}
    a, b = _pair(chunk_size=3, causal=bool(causal), muon=muon, momentum=bool(causal), inter_multi=2.0, **lm)
    x = torch.randn(2, 8, D, dtype=torch.float64, requires_grad=True)
    ya, yb = a(x), b(x)
    assert_close("y", ya, yb, 1e-10)
    ga = torch.autograd.grad(ya.square().sum(), [x, *a.parameters()])
    gb = torch.autograd.grad(yb.square().sum(), [x, *b.parameters()])
    for (n, _), u, w in zip([("x", None), *a.named_parameters()], ga, gb):
        assert_close(f"grad {n}", u, w, 1e-9)


@pytest.mark.parametrize("prenorm", [False, True])
def test_state_carry_with_momentum_and_pending_tokens(prenorm):
    a, _ = _pair(chunk_size=4, causal=True, momentum=True, prenorm=prenorm)
    x = torch.randn(1, 15, D, dtype=torch.float64)
    full = a(x)
    ys, st = [], None
    for s, e in [(0, 3), (3, 9), (9, 10), (10, 15)]:  # splits inside chunks: pending tokens are re-fed
        y, st = a(x[:, s:e], state=st, return_state=True)
        ys.append(y)
    assert_close("chunked", torch.cat(ys, 1), full, 1e-12)
    assert isinstance(st, LaCTState) and st.pending[0].shape[2] == 15 % 4
    assert a.state_size() == (3 if prenorm else 2) * 3 * H * a.hidden * a.head_dim
    assert sum(t.numel() for t in st.weights) == a.state_size()  # what is carried is what is reported


@pytest.mark.parametrize("cfg", [{}, dict(causal=True, window=4, ttt_scale=True, momentum=True)],
                         ids=["video", "lm-layer"])
def test_fp32_fast_weights_under_bf16_autocast(cfg):
    layer = layers.build("lact", dim=D, num_heads=H, chunk_size=4, **cfg)
    x = torch.randn(2, 10, D)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    assert_close("bf16 vs fp32", y.float(), layer(x), 3e-2)


def test_non_causal_chunks_see_their_own_tokens_causal_chunks_do_not():
    torch.manual_seed(0)
    for causal, reacts in [(False, True), (True, False)]:
        layer = layers.build("lact", dim=D, num_heads=H, chunk_size=4, causal=causal).double()
        x = torch.randn(1, 8, D, dtype=torch.float64)
        x2 = x.clone()
        x2[:, 5] += 1.0  # inside chunk [4, 8)
        y, y2 = layer(x), layer(x2)
        assert torch.equal(y[:, :4], y2[:, :4])
        changed = not torch.allclose(y[:, 4], y2[:, 4])  # token 4 only sees token 5 in the non-causal form
        assert changed == reacts


@pytest.mark.parametrize("kw, msg", [
    (dict(chunk_size=0), "chunk_size"),
    (dict(inter_multi=0.01), "fast-weight width"),
    (dict(base_lr=0.0), "base_lr"),
    (dict(muon_steps=0), "muon_steps"),
    (dict(head_dim=-1), "head_dim"),
    (dict(window=-1), "window must be an int >= 0"),
    (dict(window=4), "the public LM layer's, which is causal"),
    (dict(window=4, causal=True, window_heads=3), "window_heads must be a positive int dividing"),
    (dict(rope=True, causal=True), "rope=True is the public LM layer's rotary embedding: it needs window > 0"),
    (dict(window=4, causal=True, ttt_nope=True), "ttt_nope=True .* needs rope=True"),
    (dict(window=4, causal=True, rope=True, rope_theta=0.0), "rope_theta must be a positive number"),
    (dict(window=4, causal=True, rope=True, window_heads=16), "even attention head width"),
])
def test_bad_config(kw, msg):
    with pytest.raises(ValueError, match=msg):
        layers.build("lact", dim=D, num_heads=H, **kw)


def test_bad_state_and_inputs():
    layer = layers.build("lact", dim=D, num_heads=H, chunk_size=4, causal=True)
    x = torch.randn(1, 5, D)
    with pytest.raises(TypeError, match="LaCTState"):
        layer(x, state=(torch.zeros(1),))
    _, st = layer(x, return_state=True)
    with pytest.raises(ValueError, match="carried state shapes"):
        layer(torch.randn(2, 5, D), state=st)
    # positions are the LM form's rotary embedding: the other forms ignore them (the DiT passes them alike)
    assert torch.equal(layer(x, positions=torch.arange(5)), layer(x))
    with pytest.raises(ValueError, match="return_state needs causal"):
        layers.build("lact", dim=D, num_heads=H)(x, return_state=True)


# ------------------------------------------------------------------------------------------ the public LM layer
def _fla_rotary(t, theta, offset=0):
    """fla's ``RotaryEmbedding`` (non-interleaved: the halves of a head rotate together) on ``t [b, s, h, d]`` at
    positions ``offset .. offset + s - 1``, through fla's own reference op, with the angles in fp64."""
    from fla.modules.rotary.ops import rotary_embedding_ref

    d = t.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = torch.arange(offset, offset + t.shape[1], dtype=torch.float64)[:, None] * inv_freq  # [s, d / 2]
    return rotary_embedding_ref(t, ang.cos(), ang.sin(), interleaved=False)


def _public_lact_lm_layer(x, p, *, heads, attn_heads, window, chunk_size, base_lr, muon, momentum, ttt_scale,
                          rope_theta=None, ttt_nope=False):
    """TEST-ONLY transcription of the public LaCT LM layer's forward (``LaCTSWIGLULayer`` of the public LaCT code,
    ``attn_qk_norm=False`` as its released configs, full-rank fast weights) in fp64; ``rope_theta`` None: without
    its rotary embedding, else with it (fla's, on the window's q, k and, unless ``ttt_nope``, on the fast weights'
    q, k after their L2 norm, in the attention heads' layout). ``p``: its parameters in the public layout
    (``qkv [3d, d]``, ``lr_proj`` rows head-major ``(head, 3)``, ``qk_scale / qk_offset [d, 2]``,
    ``w0, w2 [nh, dh, din]``, ``w1 [nh, dout, dh]``, ...)."""
    import torch.nn.functional as F
    from einops import rearrange

    from tests.test_lact_ops import _public_block_causal_lact

    b, s, d = x.shape
    q, k, v = F.linear(x, p["qkv"]).chunk(3, dim=-1)
    fast_q = q * p["qk_scale"][:, 0] + p["qk_offset"][:, 0]
    fast_k = k * p["qk_scale"][:, 1] + p["qk_offset"][:, 1]
    fast_v = v
    if rope_theta is not None:
        q, k = (rearrange(_fla_rotary(rearrange(t, "b s (h d) -> b s h d", h=attn_heads), rope_theta),
                          "b s h d -> b s (h d)") for t in (q, k))
    # window attention: flash_attn_func(q, k, v, causal=True, window_size=(window - 1, 0)), scale 1/sqrt(head dim)
    qa, ka, va = (t.view(b, s, attn_heads, -1).transpose(1, 2) for t in (q, k, v))
    i = torch.arange(s)
    allowed = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)
    scores = (qa @ ka.transpose(-1, -2)) / qa.shape[-1] ** 0.5
    o = scores.masked_fill(~allowed, float("-inf")).softmax(-1) @ va
    o = o.transpose(1, 2).reshape(b, s, d)
    fast_q, fast_k, fast_v = (F.silu(rearrange(t, "b s (n_h d) -> (b n_h) s d", n_h=heads))
                              for t in (fast_q, fast_k, fast_v))
    fast_q, fast_k = F.normalize(fast_q, dim=-1), F.normalize(fast_k, dim=-1)
    if rope_theta is not None and not ttt_nope:  # the public layer's "(b n_h) s d -> b s (n_h d)" round trip
        fast_q, fast_k = (rearrange(_fla_rotary(rearrange(t, "(b n_h) s d -> b s (n_h d)", n_h=heads)
                                                .unflatten(-1, (attn_heads, -1)), rope_theta).flatten(-2),
                                    "b s (n_h d) -> (b n_h) s d", n_h=heads) for t in (fast_q, fast_k))
    ws = (p["w0"].repeat(b, 1, 1), p["w1"].repeat(b, 1, 1), p["w2"].repeat(b, 1, 1))
    inv = base_lr + torch.log(-torch.expm1(torch.tensor(-base_lr, dtype=torch.float64)))  # inv_softplus
    lr = F.softplus(F.linear(x, p["lr_proj.weight"], p["lr_proj.bias"]) + inv)
    lr1, lr2, lr3 = rearrange(lr, "b s (n_h lr_dim) -> (b n_h) s lr_dim", n_h=heads).chunk(3, dim=-1)
    mom = None
    if momentum:
        mom = torch.sigmoid(F.linear(x, p["momentum_proj.weight"], p["momentum_proj.bias"]))
        mom = rearrange(mom, "b s (n_h d) -> (b n_h) s d", n_h=heads)
    fw_x = _public_block_causal_lact(*ws, fast_q, fast_k, fast_v, lr1, lr2, lr3, chunk_size=chunk_size,
                                     use_muon=muon, momentum=mom)
    ttt = F.rms_norm(fw_x, (fw_x.shape[-1],), p["ttt_norm"], eps=1e-5)  # fla's RMSNorm default eps
    if ttt_scale:
        sc = F.silu(F.linear(x, p["ttt_scale_proj.weight"], p["ttt_scale_proj.bias"]))
        ttt = ttt * rearrange(sc, "b s (n_h d) -> (b n_h) s d", n_h=heads)
    ttt = rearrange(ttt, "(b n_h) s d -> b s (n_h d)", n_h=heads)
    return F.linear(o + ttt, p["o_proj"])


def _public_layout(layer) -> dict:
    """seqmix's LaCT parameters in the public LM layer's layout (its rate projection rows are head-major)."""
    H = layer.num_heads
    head_major = lambda t: t.view(3, H, *t.shape[1:]).transpose(0, 1).reshape(t.shape)  # noqa: E731
    p = {"qkv": layer.qkv.weight, "qk_scale": layer.qk_scale, "qk_offset": layer.qk_offset, "w0": layer.w0,
         "w1": layer.w1, "w2": layer.w2, "lr_proj.weight": head_major(layer.lr_proj.weight),
         "lr_proj.bias": head_major(layer.lr_proj.bias), "ttt_norm": layer.o_norm.weight, "o_proj": layer.o_proj.weight}
    for ours, theirs in (("momentum_proj", "momentum_proj"), ("scale_proj", "ttt_scale_proj")):
        m = getattr(layer, ours)
        if m is not None:
            p[f"{theirs}.weight"], p[f"{theirs}.bias"] = m.weight, m.bias
    return p


@pytest.mark.parametrize("backend", ["torch", "naive"])
@pytest.mark.parametrize("cfg", [
    dict(muon=False, momentum=True, ttt_scale=True, window=4, window_heads=4),  # the released LM configs' options
    dict(muon=True, momentum=False, ttt_scale=False, window=3),
    dict(muon=False, momentum=True, ttt_scale=True, window=4, window_heads=2, rope=True, rope_theta=20.0),
    dict(muon=False, momentum=True, ttt_scale=False, window=4, rope=True, rope_theta=20.0, ttt_nope=True),
], ids=["released", "muon", "rope", "ttt_nope"])
def test_lm_layer_equals_the_public_lact_lm_layer(cfg, backend):
    """With ``window`` set LaCT is the public LM layer: window attention over the shared projection plus the fast
    weights' read-out; it equals a transcription of the public layer in fp64 on the same weights (random scale /
    offset / biases / norm so that every parameter matters), T = 11 with chunks of 4 (a partial last chunk); with
    ``rope`` against fla's own rotary reference (a small base, so that every frequency turns visibly)."""
    torch.manual_seed(3)
    layer = layers.build("lact", dim=D, num_heads=H, causal=True, chunk_size=4, base_lr=1e-3, backend=backend,
                         **cfg).double()
    with torch.no_grad():
        for n, t in layer.named_parameters():
            if n in ("qk_scale", "qk_offset", "o_norm.weight") or n.endswith("bias"):
                t.copy_(torch.randn_like(t) * 0.5 + (1.0 if n in ("qk_scale", "o_norm.weight") else 0.0))
    x = torch.randn(2, 11, D, dtype=torch.float64)
    ref = _public_lact_lm_layer(x, _public_layout(layer), heads=H, attn_heads=cfg.get("window_heads", H),
                                window=cfg["window"], chunk_size=4, base_lr=1e-3, muon=cfg["muon"],
                                momentum=cfg["momentum"], ttt_scale=cfg["ttt_scale"],
                                rope_theta=cfg.get("rope_theta") if cfg.get("rope") else None,
                                ttt_nope=cfg.get("ttt_nope", False))
    kw = {"positions": torch.arange(11)} if cfg.get("rope") else {}
    assert_close("y", layer(x, **kw), ref, 1e-12)
    if cfg.get("rope"):  # absolute positions matter to the fast weights (the window sees relative ones only);
        # batched positions [B, T] are the same positions
        shifted = layer(x, positions=torch.arange(11) + 3)
        assert torch.allclose(shifted, ref, atol=1e-12) == cfg.get("ttt_nope", False)
        assert_close("y[B, T]", layer(x, positions=torch.arange(11).expand(2, 11)), ref, 1e-12)


def test_lm_layer_state_carry_and_bad_state():
    """The LM layer carries the window's last keys and values beside the fast weights: calls split anywhere equal
    one pass; its state size counts both; a state that does not fit is refused."""
    torch.manual_seed(0)
    layer = layers.build("lact", dim=D, num_heads=H, causal=True, chunk_size=4, window=5, momentum=True,
                         ttt_scale=True).double()
    x = torch.randn(2, 15, D, dtype=torch.float64)
    full = layer(x)
    ys, st = [], None
    for s, e in [(0, 3), (3, 9), (9, 10), (10, 15)]:
        y, st = layer(x[:, s:e], state=st, return_state=True)
        ys.append(y)
    assert_close("chunked", torch.cat(ys, 1), full, 1e-12)
    assert [tuple(t.shape) for t in st.window_kv] == [(2, H, 4, D // H)] * 2
    fw = 2 * 3 * H * layer.hidden * layer.head_dim  # fast weights + momentum
    assert layer.state_size(15) == fw + 2 * H * layer.head_dim * 5 and layer.state_size(3) == fw + 2 * D * 3
    with pytest.raises(ValueError, match="carried window keys / values"):
        layer(x[:, :2], state=st._replace(window_kv=(st.window_kv[0],)))
    bare = layers.build("lact", dim=D, num_heads=H, causal=True, chunk_size=4, momentum=True).double()
    with pytest.raises(ValueError, match="has window=0"):
        bare(x[:, :2], state=st._replace(weights=bare._initial_state(2, torch.float64)))


def test_lm_layer_with_rope_carries_state_and_needs_positions():
    """With its rotary embedding the LM layer continues from a carried state at the next positions exactly as one
    pass (the window's carried keys are rotated already); calls without positions, or with ones that do not fit,
    are refused; MixerLM passes its positions."""
    from seqmix.backbones import LMConfig, MixerLM

    torch.manual_seed(0)
    layer = layers.build("lact", dim=D, num_heads=H, causal=True, chunk_size=4, window=5, momentum=True,
                         rope=True, rope_theta=30.0).double()
    x = torch.randn(2, 15, D, dtype=torch.float64)
    full = layer(x, positions=torch.arange(15))
    ys, st = [], None
    for s, e in [(0, 3), (3, 9), (9, 10), (10, 15)]:
        y, st = layer(x[:, s:e], state=st, return_state=True, positions=torch.arange(s, e))
        ys.append(y)
    assert_close("chunked", torch.cat(ys, 1), full, 1e-12)
    with pytest.raises(ValueError, match="rope=True needs token positions"):
        layer(x)
    with pytest.raises(ValueError, match="positions must be an integer tensor"):
        layer(x, positions=torch.arange(14))
    lm = MixerLM(LMConfig(vocab_size=20, dim=D, num_heads=H, mixer="lact", max_len=0,
                          mixer_config={"causal": True, "window": 4, "chunk_size": 4, "rope": True})).double()
    tokens = torch.randint(0, 20, (2, 9))
    a, st = lm(tokens[:, :5], return_state=True)
    assert_close("lm chunked", torch.cat([a, lm(tokens[:, 5:], state=st, offset=5)], 1), lm(tokens), 1e-12)
    with pytest.raises(ValueError, match="rope=True needs token positions"):
        MixerLM(LMConfig(vocab_size=20, dim=D, num_heads=H, mixer="lact", rope=False,
                         mixer_config={"causal": True, "window": 4, "chunk_size": 4, "rope": True}))(tokens)


def test_lm_layer_cost_counts_the_window_branch():
    """The LM layer's cost adds its window attention: 4 H K flops per visible (query, key) pair (8 queries and a
    4-key window: 1 + 2 + 3 + 5 x 4 = 26 pairs from the start, 32 after 20 tokens of context) and its keys / values
    read."""
    kw = dict(dim=D, num_heads=H, causal=True, chunk_size=4, muon=False)
    bare, lm = layers.build("lact", **kw), layers.build("lact", window=4, **kw)
    for ctx, pairs in ((0, 26), (20, 32)):
        a, b = bare.core_cost(8, ctx, 1, 4), lm.core_cost(8, ctx, 1, 4)
        assert b.flops - a.flops == 4 * H * (D // H) * pairs
        assert b.bytes > a.bytes and "window attention of 4" in b.model


def test_lm_layer_is_causal():
    """Changing token t leaves every output before t unchanged (window branch and fast weights alike)."""
    torch.manual_seed(1)
    layer = layers.build("lact", dim=D, num_heads=H, causal=True, chunk_size=4, window=3, momentum=True,
                         ttt_scale=True).double()
    x = torch.randn(1, 13, D, dtype=torch.float64)
    y = layer(x)
    for t in (0, 5, 8, 12):
        x2 = x.clone()
        x2[:, t] += 1.0
        y2 = layer(x2)
        assert_close(f"outputs before {t}", y2[:, :t], y[:, :t], 1e-13)
        assert (y2[:, t] - y[:, t]).abs().max() > 1e-6  # the token itself is read (window includes it)
