"""TTT variants of the public code: mirrored positions in the reversed pass, the reversal of text chunks, the
language-model (ttt-lm-pytorch) causal variant and the ttt-video-dit state-dict loader.

The public repositories are not installed: their formulas and procedures are re-derived here, independently of
the code under test (explicit loops, labels and hand-built tables).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from seqmix import layers
from seqmix.backbones.dit import GlobalLayer
from seqmix.backbones.layout import VideoLayout
from seqmix.layers import Mixer, MixerConfig
from seqmix.utils.testing import assert_close


# ============================================================================ 1. reversed-pass positions
def _grid_positions(frames: int, gh: int, gw: int) -> torch.Tensor:
    """[frames gh gw, 3] (t, y, x) by token index, frame-major, row-major: the public code's RoPE table."""
    return torch.tensor([[t, y, x] for t in range(frames) for y in range(gh) for x in range(gw)])


@pytest.mark.parametrize("dims", ["1d", "3d"])
def test_bidirectional_reverse_positions(dims):
    """Mirrored: the reversed pass is the forward pass of the layer on the flipped input with positions rebuilt by
    index (0..T-1 / the grid table); own: every token keeps its position. Independent construction of both."""
    torch.manual_seed(0)
    inner = layers.build("ttt_linear", dim=32, num_heads=2, mini_batch_size=4).double()
    T = 12
    pos = torch.arange(T) if dims == "1d" else _grid_positions(3, 2, 2)
    x = torch.randn(2, T, 32, dtype=torch.float64)
    outs = {}
    for mode in ("mirrored", "own"):
        bi = layers.Bidirectional(inner, reverse_positions=mode).double()
        with torch.no_grad():
            bi.gate_fwd.alpha.uniform_(-1, 1)
            bi.gate_bwd.alpha.uniform_(-1, 1)
        y = bi(x, positions=pos)
        z = x + torch.tanh(bi.gate_fwd.alpha) * inner(x, positions=pos)
        if mode == "mirrored":  # rebuilt by index over the flipped sequence, not taken from `pos`
            rpos = torch.arange(T) if dims == "1d" else _grid_positions(3, 2, 2)
        else:
            rpos = torch.stack([pos[T - 1 - i] for i in range(T)])
        ref = z + torch.tanh(bi.gate_bwd.alpha) * inner(z.flip(1), positions=rpos).flip(1)
        assert_close(f"bidirectional {mode}", y, ref, 1e-12)
        outs[mode] = y
    assert (outs["mirrored"] - outs["own"]).abs().max() > 1e-6  # the choice matters


def test_bidirectional_rejects_unknown_reverse_positions():
    with pytest.raises(ValueError, match="mirrored"):
        layers.Bidirectional(layers.build("ttt_linear", dim=16, num_heads=1), reverse_positions="flipped")


class _Recorder(Mixer):
    """Order-sensitive stand-in mixer that records its inputs and positions."""

    def __init__(self, dim: int):
        super().__init__(dim, 1, MixerConfig())
        self.seen: list = []

    def state_size(self, seq_len=None) -> int:
        return 0

    def _forward(self, x, *, layout, positions, state, return_state):
        self.seen.append((x.detach().clone(), positions))
        return 0.1 * x.cumsum(dim=1), None


def _public_reverse_pass(lay: VideoLayout, txt: torch.Tensor, vid: torch.Tensor):
    """The public ttt-video-dit reversed pass, re-derived: in storage order reverse the ORDER of the text chunks and
    flip the video token by token; rotate the video by storage index (its RoPE table by index); then interleave
    with its rule (chunk 0 takes the first scene's frames plus the extra frame, the rest split equally).
    Returns (sequence the mixer reads, its 3D positions)."""
    S, L, N = lay.num_segments, lay.text_len, lay.tokens_per_frame
    gh, gw = lay.grid
    text = txt.view(txt.shape[0], S, L, -1).flip(1).reshape(txt.shape)
    video = vid.flip(1)
    vpos = _grid_positions(lay.num_frames, gh, gw)  # by index: mirrored
    first = (lay.window_frames) * N
    rest = (video.shape[1] - first) // max(S - 1, 1)
    bounds = [0, first] + [first + rest * i for i in range(1, S)]
    seq, pos = [], []
    for i in range(S):
        seq += [text[:, i * L:(i + 1) * L], video[:, bounds[i]:bounds[i + 1]]]
        pos += [torch.full((L, 3), -1), vpos[bounds[i]:bounds[i + 1]]]
    return torch.cat(seq, 1), torch.cat(pos, 0)


@pytest.mark.parametrize("segments", [1, 3])
def test_dit_reverse_pass_is_the_public_one(segments):
    """GlobalLayer's reversed pass reads the public code's reversed sequence with its positions (mirrored default)."""
    from test_dit import tiny_model  # noqa: PLC0415 - the tiny DiT of the DiT tests

    lay = VideoLayout(num_segments=segments, text_len=2, latent_height=4, latent_width=4, window_frames=3)
    model = tiny_model(num_layers=1, mixer="ttt_linear", mixer_config=dict(mini_batch_size=4))
    plan = model._plan(lay, torch.device("cpu"))
    D = model.config.inner_dim
    gl = GlobalLayer(_Recorder(D), D, gate_init=0.0, use_positions=True)  # gate 0: the backward pass sees the input
    txt, vid = torch.randn(2, lay.text_tokens, D), torch.randn(2, lay.video_tokens, D)
    gl(vid, txt, plan)
    seq, pos = _public_reverse_pass(lay, txt, vid)
    x_bwd, pos_bwd = gl.mixer.seen[1]
    assert torch.equal(x_bwd, seq)
    assert torch.equal(pos_bwd, pos)


# ============================================================================ 2. the language-model variant
from seqmix.ops import ttt as ops  # noqa: E402
from seqmix.layers.ttt import _triton_supports  # noqa: E402


def _scan_inputs(kind, B=2, H=2, T=11, K=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    Fd = K if kind == "linear" else 2 * K
    rn = lambda *s, sc=1.0: sc * torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, r = rn(B, H, T, K), rn(B, H, T, K), rn(B, H, T, K)
    eta = 0.5 * torch.rand(B, H, T, generator=g, dtype=torch.float64)
    lw, lb = 1 + rn(H, K, sc=0.1), rn(H, K, sc=0.1)
    P = [rn(H, K, Fd, sc=0.3), rn(H, 1, Fd, sc=0.1)]
    if kind == "mlp":
        P += [rn(H, Fd, K, sc=0.3), rn(H, 1, K, sc=0.1)]
    return [t.requires_grad_() for t in (q, k, r, eta, lw, lb, *P)]


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("T", [8, 11], ids=lambda t: f"T{t}")
def test_scan_token_weights_match_naive(kind, T):
    """Learnable token-index weights: dual-form scan == naive twin (outputs, state, every gradient incl. the
    weights'), with one weight clamped to 0 and a ragged tail, fp64."""
    leaves = _scan_inputs(kind, T=T)
    tw = torch.tensor([0.9, 0.0, 0.4, 0.3], dtype=torch.float64, requires_grad=True)
    res = []
    for fn in (ops.ttt_scan, ops.ttt_scan_naive):
        q, k, r, eta, lw, lb, *P = leaves
        z, st = fn(q, k, r, eta, lw, lb, ops.init_state(P, 2, q.dtype), kind=kind, causal=True,
                   mini_batch_size=4, token_weights=tw, checkpoint_group=1)
        w = torch.randn(z.shape, generator=torch.Generator().manual_seed(5), dtype=z.dtype)
        loss = (z * w).sum() + sum(s.square().sum() for s in st)
        res.append((z, st, torch.autograd.grad(loss, [*leaves, tw])))
    (z, st, gr), (z0, st0, gr0) = res
    assert_close("z", z, z0, 1e-10)
    for a, b in zip(st, st0):
        assert_close("state", a, b, 1e-10)
    for i, (a, b) in enumerate(zip(gr, gr0)):
        assert_close(f"grad {i}", a, b, 1e-10)
    # default weights 1/(i+1) == passing them explicitly
    q, k, r, eta, lw, lb, *P = leaves
    kw = dict(kind=kind, causal=True, mini_batch_size=4)
    za, _ = ops.ttt_scan(q, k, r, eta, lw, lb, ops.init_state(P, 2, q.dtype), **kw)
    zb, _ = ops.ttt_scan(q, k, r, eta, lw, lb, ops.init_state(P, 2, q.dtype), **kw,
                         token_weights=1.0 / torch.arange(1, 5, dtype=torch.float64))
    assert_close("default token weights", zb, za, 1e-14)


def test_lm_update_by_hand():
    """TTT-Linear, one mini-batch of 2 tokens with token weights (w0, 0), written out by hand: token 1's weight is
    clamped to 0, so it reads the initial model and the state does not move; token 0 reads
    q0 W + b - w0 eta0 (q0 . k0 + 1) g0 with g0 the LayerNorm-L2 gradient of token 0."""
    H, K, eps = 1, 4, 1e-6
    g = torch.Generator().manual_seed(3)
    q, k, r = (torch.randn(1, H, 2, K, generator=g, dtype=torch.float64) for _ in range(3))
    eta = torch.tensor([[[0.7, 0.4]]], dtype=torch.float64)
    W, b = 0.3 * torch.randn(H, K, K, generator=g, dtype=torch.float64), 0.1 * torch.randn(H, 1, K, generator=g,
                                                                                           dtype=torch.float64)
    lw, lb = torch.ones(H, K, dtype=torch.float64), torch.zeros(H, K, dtype=torch.float64)
    w0 = 0.8
    z, (W1, b1) = ops.ttt_scan(q, k, r, eta, lw, lb, (W[None], b[None]), kind="linear", causal=True,
                               mini_batch_size=2, eps=eps, token_weights=torch.tensor([w0, 0.0], dtype=torch.float64))
    q0, k0, r0, q1 = q[0, 0, 0], k[0, 0, 0], r[0, 0, 0], q[0, 0, 1]
    z0 = k0 @ W[0] + b[0, 0]
    mu, var = z0.mean(), ((z0 - z0.mean()) ** 2).mean()
    std = math.sqrt(var + eps)
    xh = (z0 - mu) / std
    gx = xh - r0  # d/dLN of 1/2 ||LN - r||^2 (unit weight, zero bias)
    g0 = (K * gx - gx.sum() - xh * (gx * xh).sum()) / (K * std)
    want0 = q0 @ W[0] + b[0, 0] - w0 * 0.7 * (q0 @ k0 + 1.0) * g0
    assert_close("token 0", z[0, 0, 0], want0, 1e-12)
    assert_close("token 1 (weight 0)", z[0, 0, 1], q1 @ W[0] + b[0, 0], 1e-12)
    assert_close("state unchanged (last weight 0)", W1[0], W, 1e-14)
    assert_close("bias unchanged", b1[0], b, 1e-14)


def _gelu_tanh_grad(x):
    c = math.sqrt(2 / math.pi)
    t = torch.tanh(c * (x + 0.044715 * x ** 3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)


def _public_lm_forward(m, x):
    """ttt-lm-pytorch's TTTLinear / TTTMLP forward (prefill, no cache), re-derived from its formulas with our
    layer's parameters: RoPE in the half-split convention on permuted Q/K, ``eta[i, j] = token_idx[i] lr[j]``,
    ``tril`` dual form, full mini-batches then the remainder from the last state, post-norm, gate, output."""
    B, L, D = x.shape
    H, K, N, c = m.num_heads, m.head_dim, m.config.mini_batch_size, m.config
    split = lambda t: t.view(B, L, H, K).transpose(1, 2)  # noqa: E731
    if m.conv_q is None:
        XQ, XK = split(x @ m.wq.weight.T), split(x @ m.wk.weight.T)
    else:  # share_qk: one projection, then a causal depthwise convolution (with bias) each for Q and K
        xq = x @ m.wq.weight.T  # [B, L, H K]
        taps = m.conv_q.weight.shape[-1]

        def conv(cv):
            out = cv.bias.expand(B, L, -1).clone()
            for t in range(L):
                for i in range(taps):
                    src = t - (taps - 1) + i
                    if src >= 0:
                        out[:, t] = out[:, t] + cv.weight[:, 0, i] * xq[:, src]
            return out

        XQ, XK = split(conv(m.conv_q)), split(conv(m.conv_k))
    XV = split(x @ m.wv.weight.T)
    pos = (torch.arange(L) % N).double()
    inv = 1.0 / (c.rope_theta ** (torch.arange(0, K, 2, dtype=torch.float64) / K))
    emb = torch.cat([pos[:, None] * inv, pos[:, None] * inv], -1)
    cos, sin = emb.cos(), emb.sin()
    perm = lambda t: t.reshape(B, H, L, K // 2, 2).transpose(3, 4).reshape(B, H, L, K)  # noqa: E731
    unperm = lambda t: t.reshape(B, H, L, 2, K // 2).transpose(3, 4).reshape(B, H, L, K)  # noqa: E731
    half = lambda t: torch.cat([-t[..., K // 2:], t[..., : K // 2]], -1)  # noqa: E731
    XQ, XK = (unperm(perm(t) * cos + half(perm(t)) * sin) for t in (XQ, XK))
    lr = torch.sigmoid(torch.einsum("bld,hd->bhl", x, m.lr_weight) + m.lr_bias[None, :, None])
    lr = m.base_lr * lr / K  # [B, H, L]
    token_idx = torch.clamp_min(1.0 / torch.arange(1, N + 1, dtype=torch.float64) + m.token_weight_offset, 0.0)
    gw, gb = m.ttt_norm_weight[:, None], m.ttt_norm_bias[:, None]

    def ln(t):
        mu, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True, unbiased=False)
        return gw * (t - mu) / torch.sqrt(var + 1e-6) + gb

    def ln_l2_bwd(t, target):
        mu, var = t.mean(-1, keepdim=True), t.var(-1, keepdim=True, unbiased=False)
        std = torch.sqrt(var + 1e-6)
        xh = (t - mu) / std
        gxh = (gw * xh + gb - target) * gw
        return (K * gxh - gxh.sum(-1, keepdim=True) - xh * (gxh * xh).sum(-1, keepdim=True)) / (K * std)

    params = [p[None].expand(B, *p.shape) for p in m.inner_params().values()]
    outs = []
    for s in range(0, L, N):
        n = min(N, L - s)
        q, k, v = XQ[:, :, s:s + n], XK[:, :, s:s + n], XV[:, :, s:s + n]
        eta = token_idx[:n, None] * lr[:, :, None, s:s + n]  # [B, H, n, n]
        last = eta[:, :, -1, :, None]
        if m.kind == "linear":
            W1, b1 = params
            g1 = ln_l2_bwd(k @ W1 + b1, v - k)
            Z = q @ W1 - (eta * torch.tril(q @ k.mT)) @ g1 + b1 - torch.tril(eta) @ g1
            params = [W1 - (last * k).mT @ g1, b1 - (last * g1).sum(-2, keepdim=True)]
        else:
            W1, b1, W2, b2 = params
            Z1 = k @ W1 + b1
            X2 = F.gelu(Z1, approximate="tanh")
            g2 = ln_l2_bwd(X2 @ W2 + b2, v - k)
            g1 = g2 @ W2.mT * _gelu_tanh_grad(Z1)
            Z1b = q @ W1 - (eta * torch.tril(q @ k.mT)) @ g1 + b1 - torch.tril(eta) @ g1
            X2b = F.gelu(Z1b, approximate="tanh")
            Z = X2b @ W2 - (eta * torch.tril(X2b @ X2.mT)) @ g2 + b2 - torch.tril(eta) @ g2
            params = [W1 - (last * k).mT @ g1, b1 - (last * g1).sum(-2, keepdim=True),
                      W2 - (last * X2).mT @ g2, b2 - (last * g2).sum(-2, keepdim=True)]
        outs.append(q + ln(Z))
    y = torch.cat(outs, 2).transpose(1, 2).reshape(B, L, H * K)
    y = F.layer_norm(y, (H * K,), m.post_norm.weight, m.post_norm.bias, 1e-6)
    if m.gate_proj is not None:
        y = F.gelu(x @ m.gate_proj.weight.T, approximate="tanh") * y
    return y @ m.wo.weight.T


@pytest.mark.parametrize("name", ["ttt_linear", "ttt_mlp"])
@pytest.mark.parametrize("T", [16, 13], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("gate,qk_conv", [(False, 0), (True, 4)], ids=["plain", "gate-qkconv"])
def test_lm_variant_matches_public_formulas(name, T, gate, qk_conv):
    torch.manual_seed(0)
    m = layers.build(name, dim=32, num_heads=2, mini_batch_size=8, causal=True, variant="lm",
                     output_gate=gate, qk_conv=qk_conv).double()
    with torch.no_grad():  # non-trivial learnable parts: token-index offsets (one clamps), LN affine, lr bias
        m.token_weight_offset.copy_(0.2 * torch.randn(8, dtype=torch.float64))
        m.token_weight_offset[3] = -1.0
        m.ttt_norm_weight.add_(0.1 * torch.randn_like(m.ttt_norm_weight))
        m.ttt_norm_bias.add_(0.1 * torch.randn_like(m.ttt_norm_bias))
        m.lr_bias.add_(0.5)
    assert m.wq.bias is None and m.wo.bias is None and m.ln_eps == 1e-6
    assert (m.wk is None) == bool(qk_conv)
    x = torch.randn(2, T, 32, dtype=torch.float64, requires_grad=True)
    y = m(x)
    y0 = _public_lm_forward(m, x)
    assert_close("lm variant vs public formulas", y, y0, 1e-12)
    gy, gy0 = (torch.autograd.grad(t.square().sum(), [x, m.token_weight_offset]) for t in (y, y0))
    for a, b in zip(gy, gy0):
        assert_close("grad", a, b, 1e-10)


def test_lm_variant_backends_and_state():
    """torch vs naive backend (outputs, all parameter gradients), chunked calls == one pass, the Triton kernels
    decline the variant with a reason, bad configs and positions."""
    torch.manual_seed(1)
    kw = dict(dim=32, num_heads=2, mini_batch_size=4, causal=True, variant="lm", output_gate=True, qk_conv=3)
    m = layers.build("ttt_mlp", **kw, mlp_expansion=2).double()
    ref = layers.build("ttt_mlp", **kw, mlp_expansion=2, backend="naive").double()
    with torch.no_grad():
        m.token_weight_offset.uniform_(-0.5, 0.3)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 11, 32, dtype=torch.float64)
    y, y0 = m(x), ref(x)
    assert_close("torch vs naive", y, y0, 1e-10)
    g, g0 = (torch.autograd.grad(t.square().sum(), list(mm.parameters())) for t, mm in ((y, m), (y0, ref)))
    for (n, _), a, b in zip(m.named_parameters(), g, g0):
        assert_close(f"grad {n}", a, b, 1e-10)
    with torch.no_grad():
        y1, st = m(x[:, :6], return_state=True)
        y2, st = m(x[:, 6:9], state=st, return_state=True)
        y3 = m(x[:, 9:], state=st)
        assert_close("chunked == one pass", torch.cat([y1, y2, y3], 1), m(x), 1e-12)
        assert_close("positions by index == none", m(x, positions=torch.arange(11)), m(x), 1e-14)
    reason = _triton_supports(m, torch.device("cuda"), torch.float32, None)
    assert reason and "variant" in reason
    with pytest.raises(ValueError, match="causal=True"):
        layers.build("ttt_linear", dim=16, num_heads=1, variant="lm")
    with pytest.raises(ValueError, match="variant"):
        layers.build("ttt_linear", dim=16, num_heads=1, variant="chat")
    with pytest.raises(ValueError, match="output_gate"):
        layers.build("ttt_linear", dim=16, num_heads=1, output_gate=True)
    with pytest.raises(ValueError, match="qk_conv"):
        layers.build("ttt_linear", dim=16, num_heads=1, qk_conv=4)
    with pytest.raises(ValueError, match="qk_conv"):
        layers.build("ttt_linear", dim=16, num_heads=1, causal=True, variant="lm", qk_conv=1)
    with torch.no_grad():
        _, st = m(x[:, :5], return_state=True)
    other = layers.build("ttt_mlp", **{**kw, "qk_conv": 0}, mlp_expansion=2).double()
    assert m.state_size() == other.state_size() + 2 * 32  # + (taps - 1) x H K of carried projections
    with pytest.raises(ValueError, match="qk_conv history"):
        other(x, state=st)
    with pytest.raises(ValueError, match="1D integer positions"):
        m(x, positions=torch.zeros(11, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="token_weights"):
        q, k, r, eta, lw, lb, *P = _scan_inputs("linear", T=8)
        ops.ttt_scan(q, k, r, eta, lw, lb, ops.init_state(P, 2, q.dtype), kind="linear", causal=False,
                     mini_batch_size=4, token_weights=torch.ones(4, dtype=torch.float64))


# ============================================================================ 3. ttt-video-dit state dicts
from seqmix.backbones.dit import load_public_ttt, ttt_from_public, ttt_to_public  # noqa: E402
from seqmix.ops.rope import rope_angles  # noqa: E402


def _public_layer_dict(kind: str, D: int, H: int, K: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict of the public TTT layer built by hand from its shapes (random, non-trivial values)."""
    g = torch.Generator().manual_seed(seed)
    rn = lambda *s, sc=0.3: sc * torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    Fd = K if kind == "linear" else 4 * K
    sd = {}
    for n in ("wq", "wk", "wv"):
        sd[f"{n}.weight"], sd[f"{n}.bias"] = rn(H * K, D), rn(H * K, sc=0.1)
    sd["wo.weight"], sd["wo.bias"] = rn(D, H * K), rn(D, sc=0.1)
    sd["learnable_ttt_lr_weight"], sd["learnable_ttt_lr_bias"] = rn(H, 1, D), rn(H, 1)
    sd["ttt_norm_weight"], sd["ttt_norm_bias"] = 1 + rn(H, K, sc=0.1), rn(H, K, sc=0.1)
    sd["post_norm.weight"], sd["post_norm.bias"] = 1 + rn(H * K, sc=0.1), rn(H * K, sc=0.1)
    sd["W1"], sd["b1"] = rn(H, K, Fd), rn(H, 1, Fd, sc=0.1)
    if kind == "mlp":
        sd["W2"], sd["b2"] = rn(H, Fd, K), rn(H, 1, K, sc=0.1)
    return sd


def _public_ttt_forward(sd, x, *, kind, H, K, N, base_lr, vpos, n_text=0, chunks=None):
    """The public TTT layer's forward, re-derived from its formulas with its own tensors (public names and shapes):
    Q/K L2-normalised, 3D RoPE on the video tokens by storage index (text unrotated), target
    ``LN_t(V - K) + K`` (unbiased std, eps on the std), ``eta = base_lr sigmoid(x . w + b) / K / N``, optional
    interleave by ``chunks`` ([(text slice, video slice)] in storage order) of the tokens and of the ROWS of the
    step sizes (computed per storage mini-batch), non-causal scan, ``Q + LN(Z)``, post-norm, output projection,
    undo the interleave. The inner scan is seqmix's naive twin with row-wise rates (held to the public
    mini-batch equations by test_rowwise_rates_equal_public_minibatch_equations)."""
    B, T, D = x.shape
    lin = lambda n: x @ sd[f"{n}.weight"].T + sd[f"{n}.bias"]  # noqa: E731
    XQ, XK, XV = (lin(n).view(B, T, H, K) for n in ("wq", "wk", "wv"))
    XQ, XK = F.normalize(XQ, dim=-1), F.normalize(XK, dim=-1)
    ang = rope_angles(vpos, K)  # [T_v, K/2] fp64 (the split t/h/w = K/4, 3K/8, 3K/8 as the public table)
    cis = torch.polar(torch.ones_like(ang), ang)

    def rot(t):
        c = torch.view_as_complex(t[:, n_text:].reshape(B, T - n_text, H, K // 2, 2).contiguous())
        return torch.cat([t[:, :n_text], torch.view_as_real(c * cis[None, :, None]).flatten(-2)], 1)

    XQ, XK = rot(XQ), rot(XK)
    d = XV - XK
    tgt = (d - d.mean(-1, keepdim=True)) / (d.std(-1, keepdim=True) + 1e-8) * sd["ttt_norm_weight"] \
        + sd["ttt_norm_bias"] + XK
    lr = torch.einsum("btc,hdc->bhtd", x, sd["learnable_ttt_lr_weight"]) + sd["learnable_ttt_lr_bias"].reshape(1, H, 1, 1)
    eta = (base_lr * torch.sigmoid(lr) / K)[..., 0]  # [B, H, T] in storage order; the scan divides by N
    # The public code's step sizes: eta.repeat over the rows of each STORAGE mini-batch ([.., nc, N, N], row i
    # holds the rates of the mini-batch's N tokens), then only the rows are interleaved with the tokens.
    rows = eta.view(B, H, T // N, 1, N).expand(B, H, T // N, N, N).reshape(B, H, T, N)
    order = list(range(T)) if chunks is None else sum((list(range(*a)) + list(range(*b)) for a, b in chunks), [])
    tr = lambda t: t[:, order].transpose(1, 2)  # noqa: E731
    P = [sd["W1"], sd["b1"]] + ([sd["W2"], sd["b2"]] if kind == "mlp" else [])
    q, k = tr(XQ), tr(XK)
    z, _ = ops.ttt_scan_naive(q, k, tr(tgt) - k, rows[:, :, order], sd["ttt_norm_weight"], sd["ttt_norm_bias"],
                              ops.init_state(P, B, x.dtype), kind=kind, causal=False, mini_batch_size=N)
    y = q + ops.head_layer_norm(z, sd["ttt_norm_weight"], sd["ttt_norm_bias"], 1e-8)
    y = F.layer_norm(y.transpose(1, 2).reshape(B, T, H * K), (H * K,), sd["post_norm.weight"], sd["post_norm.bias"],
                     1e-6)
    y = y @ sd["wo.weight"].T + sd["wo.bias"]
    out = torch.empty_like(y)
    out[:, order] = y
    return out


@pytest.mark.parametrize("name,kind", [("ttt_linear", "linear"), ("ttt_mlp", "mlp")])
def test_public_state_dict_round_trip_and_output(name, kind):
    D, H, K, N = 32, 2, 16, 4
    torch.manual_seed(0)
    ours = layers.build(name, dim=D, num_heads=H, mini_batch_size=N).double()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    pub = ttt_to_public(ours.state_dict())
    assert pub["learnable_ttt_lr_weight"].shape == (H, 1, D) and pub["learnable_ttt_lr_bias"].shape == (H, 1)
    back = ttt_from_public(pub)
    assert back.keys() == ours.state_dict().keys()
    assert all(torch.equal(back[k], v) for k, v in ours.state_dict().items())
    # A public-layout dict built by hand loads and reproduces the public forward (12 tokens: 3 frames of 2 x 2).
    sd = _public_layer_dict(kind, D, H, K)
    layer = layers.build(name, dim=D, num_heads=H, mini_batch_size=N).double()
    load_public_ttt(layer, sd)
    vpos = _grid_positions(3, 2, 2)
    x = torch.randn(2, 12, D, dtype=torch.float64)
    want = _public_ttt_forward(sd, x, kind=kind, H=H, K=K, N=N, base_lr=layer.base_lr, vpos=vpos)
    assert_close("public weights: ours vs public forward", layer(x, positions=vpos), want, 1e-12)


def test_public_state_dict_strict_errors():
    layer = layers.build("ttt_linear", dim=32, num_heads=2, mini_batch_size=4).double()
    sd = _public_layer_dict("linear", 32, 2, 16)
    with pytest.raises(ValueError, match=r"missing \['W1'\]"):
        load_public_ttt(layer, {k: v for k, v in sd.items() if k != "W1"})
    with pytest.raises(ValueError, match=r"unexpected \['W2'\]"):
        load_public_ttt(layer, {**sd, "W2": torch.zeros(2, 16, 16)})
    with pytest.raises(ValueError, match=r"shape mismatch \['b1: checkpoint \(2, 16\)"):
        load_public_ttt(layer, {**sd, "b1": torch.zeros(2, 16)})
    with pytest.raises(ValueError, match=r"\[H, 1, D\]"):
        load_public_ttt(layer, {**sd, "learnable_ttt_lr_weight": torch.zeros(2, 32)})
    lm = layers.build("ttt_linear", dim=32, num_heads=2, causal=True, variant="lm")
    with pytest.raises(ValueError, match="variant"):
        load_public_ttt(lm, sd)
    with pytest.raises(ValueError, match="no counterpart"):
        ttt_to_public(lm.state_dict())


def test_public_dit_checkpoint_loads_into_segmented_dit():
    """A public DiT state dict (its TTT layers and gates, plus keys of its own CogVideoX weights that are ignored)
    loads into SegmentedDiT; the global layer then equals the public sequence-modelling step re-derived: gated TTT
    over the interleaved sequence, then over the reversed one (text chunks in reverse order, video flipped, in
    storage order, RoPE table by index), un-reversed and gated."""
    from test_dit import tiny_model  # noqa: PLC0415

    lay = VideoLayout(num_segments=2, text_len=2, latent_height=4, latent_width=4, window_frames=3)  # T = 24
    model = tiny_model(num_layers=2, mixer="ttt_linear", mixer_config=dict(mini_batch_size=4)).double()
    D, H, K, N = model.config.inner_dim, 2, 16, 4
    g = torch.Generator().manual_seed(9)
    sd = {"dit.layers.0.seq_modeling_block.q.weight": torch.zeros(D, D)}  # not a TTT key: ignored
    for i in range(2):
        pre = f"dit.layers.{i}.seq_modeling_block."
        sd.update({f"{pre}ssm.ttt.{k}": v for k, v in _public_layer_dict("linear", D, H, K, seed=i).items()})
        for gate in ("forward_ssm_gating_text", "forward_ssm_gating_video", "backward_ssm_gating_text",
                     "backward_ssm_gating_video"):
            sd[f"{pre}{gate}.gating_alpha"] = torch.randn(D, generator=g, dtype=torch.float64)
    loaded = model.load_public_ttt(sd)
    assert len(loaded) == sum(1 for k in model.state_dict() if model.is_global_key(k))
    gl = model.transformer_blocks[1].global_layer
    assert torch.equal(gl.gate_bwd_video.alpha, sd["dit.layers.1.seq_modeling_block.backward_ssm_gating_video.gating_alpha"])

    plan = model._plan(lay, torch.device("cpu"))
    txt = torch.randn(2, lay.text_tokens, D, dtype=torch.float64)
    vid = torch.randn(2, lay.video_tokens, D, dtype=torch.float64)
    out_vid, out_txt = gl(vid, txt, plan)

    pub = {k[len("dit.layers.1.seq_modeling_block.ssm.ttt."):]: v for k, v in sd.items()
           if k.startswith("dit.layers.1.seq_modeling_block.ssm.ttt.")}
    alpha = lambda n: torch.tanh(sd[f"dit.layers.1.seq_modeling_block.{n}.gating_alpha"])  # noqa: E731
    n_text, S, L, Nf = lay.text_tokens, lay.num_segments, lay.text_len, lay.tokens_per_frame
    first = lay.window_frames * Nf
    rest = (lay.video_tokens - first) // (S - 1)
    vb = [0, first] + [first + rest * j for j in range(1, S)]
    chunks = [((j * L, (j + 1) * L), (n_text + vb[j], n_text + vb[j + 1])) for j in range(S)]
    vpos = _grid_positions(lay.num_frames, *lay.grid)
    ssm = lambda e: _public_ttt_forward(pub, e, kind="linear", H=H, K=K, N=N, base_lr=1.0, vpos=vpos,  # noqa: E731
                                        n_text=n_text, chunks=chunks)

    def gate(res, out, t, v):
        return res + torch.cat([alpha(t) * out[:, :n_text], alpha(v) * out[:, n_text:]], 1)

    def rev(e):  # reverse the order of the text chunks, flip the video (an involution)
        t = e[:, :n_text].view(2, S, L, D).flip(1).reshape(2, n_text, D)
        return torch.cat([t, e[:, n_text:].flip(1)], 1)

    emb = torch.cat([txt, vid], 1)
    emb = gate(emb, ssm(emb), "forward_ssm_gating_text", "forward_ssm_gating_video")
    emb = gate(emb, rev(ssm(rev(emb))), "backward_ssm_gating_text", "backward_ssm_gating_video")
    assert_close("DiT global layer vs public step", torch.cat([out_txt, out_vid], 1), emb, 1e-12)

    with pytest.raises(ValueError, match="absent"):
        model.load_public_ttt({k: v for k, v in sd.items() if not k.startswith("dit.layers.1.")})


# ============================================================================ 4. text in the reversed pass
@pytest.mark.parametrize("segments", [1, 2, 4])
def test_reversed_order_reads_each_text_before_its_own_window(segments):
    """The reason the text chunks are reordered, not kept in place: in both read orders of the global layer, every
    text chunk is followed (up to the next text chunk) only by frames of its own attention window (in the reversed
    order: all of them but the one shared with the later window, read just before); keeping the chunks in their
    slots would break it."""
    lay = VideoLayout(num_segments=segments, text_len=2, latent_height=2, latent_width=2, window_frames=3)
    S, L, N = lay.num_segments, lay.text_len, lay.tokens_per_frame
    labels = [("t", i) for i in range(S) for _ in range(L)] + [("v", f) for f in range(lay.num_frames) for _ in range(N)]
    inter = lay.index().interleave
    fwd = [labels[j] for j in inter.tolist()]
    bwd = [labels[j] for j in inter[lay.index().reverse].tolist()]
    in_place = []  # text chunk i stays in slot i, only the video is flipped
    video_rev = iter([lab for lab in fwd if lab[0] == "v"][::-1])
    for lab in fwd:
        in_place.append(lab if lab[0] == "t" else next(video_rev))

    def frames_after_text(order):
        out, cur = {}, None
        for kind, val in order:
            if kind == "t":
                cur = val
                out.setdefault(cur, set())
            else:
                out[cur].add(val)
        return out

    for order in (fwd, bwd):
        for seg, frames in frames_after_text(order).items():
            assert frames <= set(range(*lay.window(seg))), (seg, frames)
    for seg, frames in frames_after_text(bwd).items():  # its window, less the frame shared with the later window
        start, stop = lay.window(seg)
        assert frames == set(range(start, stop if seg == segments - 1 else stop - 1)), (seg, frames)
    if segments > 1:
        assert any(not frames <= set(range(*lay.window(seg))) for seg, frames in frames_after_text(in_place).items())


def test_lm_variant_in_the_lm_backbone_carries_state():
    """MixerLM with the LM variant (output gate, the backbone's short convolution): chunked == one pass."""
    from seqmix.backbones.lm import LMConfig, MixerLM  # noqa: PLC0415

    torch.manual_seed(0)
    m = MixerLM(LMConfig(vocab_size=11, dim=32, mixer="ttt_linear", short_conv=4, max_len=0,
                         mixer_config=dict(variant="lm", mini_batch_size=4, output_gate=True))).double().eval()
    t = torch.randint(0, 11, (2, 13))
    with torch.no_grad():
        y1, st = m(t[:, :5], return_state=True)
        y2, _ = m(t[:, 5:], state=st, offset=5, return_state=True)
        assert_close("chunked == one pass", torch.cat([y1, y2], 1), m(t), 1e-12)


def test_kernel_scans_decline_token_weights():
    """Same signature on every backend: the kernel scans accept token_weights and refuse them with a reason."""
    from seqmix.kernels.ttt_tp import ttt_scan_tp  # noqa: PLC0415
    from seqmix.kernels.ttt_triton import ttt_scan_triton  # noqa: PLC0415

    q, k, r, eta, lw, lb, *P = (t.detach().float() for t in _scan_inputs("linear", T=8))
    tw = torch.ones(4)
    with pytest.raises(ValueError, match="1/\\(i\\+1\\)"):
        ttt_scan_triton(q, k, r, eta, lw, lb, ops.init_state(P, 2, q.dtype), kind="linear", causal=True,
                        mini_batch_size=4, token_weights=tw)
    with pytest.raises(ValueError, match="non-causal"):
        ttt_scan_tp(q, k, r, eta, lw, lb, ops.init_state(P, 2, q.dtype), kind="mlp", causal=True,
                    mini_batch_size=4, token_weights=tw)


@pytest.mark.parametrize("name", ["ttt_linear", "ttt_mlp"])
def test_mqar_recipe_builds_the_published_lm_form(name):
    """The MQAR recipe's TTT mixer is the ttt-lm-pytorch layer (Zoology's TTT mixer is a copy): variant 'lm', and
    its output equals the public formulas re-derived above on the same weights. (The video layer made causal
    stayed at chance on this task; it is opt-in as variant 'video_causal'.) The default form of a causal TTT in
    the LM backbone is the same, with or without the recipe's explicit variant."""
    from seqmix.backbones.lm import LMConfig, MixerLM  # noqa: PLC0415
    from seqmix.lightning_cli import run_lightning  # noqa: PLC0415
    from seqmix.utils.recipes import builtin_recipe  # noqa: PLC0415

    cli = run_lightning(["--config", str(builtin_recipe(f"mqar/{name}")), "--trainer.logger=false"], run=False)
    mixers = [m for m in cli.model.modules() if isinstance(m, layers.mixer_class(name))]
    assert mixers and all(m.variant == "lm" and m.causal for m in mixers)
    m = mixers[0].double()
    x = torch.randn(2, 37, m.dim, dtype=torch.float64)
    assert_close("recipe's mixer vs public formulas", m(x), _public_lm_forward(m, x), 1e-12)
    default = MixerLM(LMConfig(vocab_size=11, dim=32, mixer=name, mixer_config={"mini_batch_size": 16}))
    assert all(b.mixer.variant == "lm" for b in default.blocks)


# ============================================================================ 5. the public code's step sizes
def _public_linear_scan(XK, XQ, target, eta, ln_w, ln_b, W1, b1, eps=1e-8):
    """TEST-ONLY transcription of the public ttt-video-dit TTT-Linear mini-batch equations (``compute_mini_batch``
    of its ``ops/ttt_linear.py`` with its ``ln_fused_l2_bwd``), in fp64: ``XK, XQ, target [B, H, nc, N, K]``,
    step sizes ``eta [B, H, nc, N, N]`` (row i, column j), ``W1 [B, H, K, K]``, ``b1 [B, H, 1, K]``. Returns the
    read-out before the LayerNorm, ``Z1_bar [B, H, nc, N, K]``."""
    H, K = XK.shape[1], XK.shape[-1]
    gamma, beta = ln_w.reshape(H, 1, K), ln_b.reshape(H, 1, K)
    outs = []
    for m in range(XK.shape[2]):
        X1, XQm, tgt, em = XK[:, :, m], XQ[:, :, m], target[:, :, m], eta[:, :, m]
        Z1 = X1 @ W1 + b1
        mu, var = Z1.mean(-1, keepdim=True), Z1.var(-1, keepdim=True, unbiased=False)
        std = torch.sqrt(var + eps)
        x_hat = (Z1 - mu) / std
        gx = (gamma * x_hat + beta - tgt) * gamma
        grad = (K * gx - gx.sum(-1, keepdim=True) - x_hat * (gx * x_hat).sum(-1, keepdim=True)) / K / std
        Attn1 = XQm @ X1.transpose(-2, -1)
        b1_bar = b1 - em @ grad
        outs.append(XQm @ W1 - (em * Attn1) @ grad + b1_bar)
        last = em[:, :, -1, :, None]
        W1 = W1 - (last * X1).transpose(-1, -2) @ grad
        b1 = b1 - torch.sum(last * grad, dim=-2, keepdim=True)
    return torch.stack(outs, dim=2)


def test_rowwise_rates_equal_public_minibatch_equations():
    """Row-wise step sizes (the public code's eta after its interleave: every row its own rates) in the torch scan
    equal the public mini-batch equations (fp64), and differ from per-token rates once rows differ."""
    g = torch.Generator().manual_seed(3)
    B, H, nc, N, K = 2, 2, 3, 4, 8
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, tgt = F.normalize(r(B, H, nc * N, K), dim=-1), F.normalize(r(B, H, nc * N, K), dim=-1), r(B, H, nc * N, K)
    eta = 0.5 * torch.rand(B, H, nc * N, N, generator=g, dtype=torch.float64)  # row p: rates of its N columns
    ln_w, ln_b = 1 + 0.1 * r(H, K), 0.1 * r(H, K)
    W1, b1 = 0.3 * r(B, H, K, K), 0.1 * r(B, H, 1, K)
    z, _ = ops.ttt_scan(q, k, tgt, eta, ln_w, ln_b, (W1, b1), kind="linear", causal=False, mini_batch_size=N)
    mb = lambda t: t.view(B, H, nc, N, *t.shape[3:])  # noqa: E731
    want = _public_linear_scan(mb(k), mb(q), mb(tgt), mb(eta) / N, ln_w, ln_b, W1, b1)
    assert_close("row-wise torch scan vs public equations", z, want.reshape(B, H, nc * N, K), 1e-12)
    same_rows = eta[..., :1, :].expand_as(eta).contiguous()  # every row of a mini-batch equal -> per-token rates
    z_rows, _ = ops.ttt_scan(q, k, tgt, same_rows, ln_w, ln_b, (W1, b1), kind="linear", causal=False,
                             mini_batch_size=N)
    per_token = same_rows.view(B, H, nc, N, N)[:, :, :, 0].reshape(B, H, nc * N)
    z_tok, _ = ops.ttt_scan(q, k, tgt, per_token, ln_w, ln_b, (W1, b1), kind="linear", causal=False,
                            mini_batch_size=N)
    assert_close("equal rows = per-token rates", z_rows, z_tok, 1e-12)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_rowwise_rates_torch_equals_naive_with_gradients(kind):
    g = torch.Generator().manual_seed(4)
    B, H, T, N, K = 1, 2, 8, 4, 4
    Fd = K if kind == "linear" else 4 * K
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q, k, tgt = F.normalize(r(B, H, T, K), dim=-1), F.normalize(r(B, H, T, K), dim=-1), r(B, H, T, K)
    eta = 0.5 * torch.rand(B, H, T, N, generator=g, dtype=torch.float64)
    ln_w, ln_b = 1 + 0.1 * r(H, K), 0.1 * r(H, K)
    state = (0.3 * r(B, H, K, Fd), 0.1 * r(B, H, 1, Fd)) + (
        (0.3 * r(B, H, Fd, K), 0.1 * r(B, H, 1, K)) if kind == "mlp" else ())
    leaves = [q, k, tgt, eta, *state]
    for t in leaves:
        t.requires_grad_(True)
    res = []
    for fn in (ops.ttt_scan, ops.ttt_scan_naive):
        z, st = fn(q, k, tgt, eta, ln_w, ln_b, state, kind=kind, causal=False, mini_batch_size=N)
        loss = (z * torch.linspace(-1, 1, z.numel(), dtype=z.dtype).view_as(z)).sum() + sum((s * s).sum() for s in st)
        res.append((z, st, torch.autograd.grad(loss, leaves)))
    (z1, s1, g1), (z2, s2, g2) = res
    assert_close("z", z1, z2, 1e-10)
    for a, b in zip(s1, s2):
        assert_close("state", a, b, 1e-10)
    for a, b in zip(g1, g2):
        assert_close("grad", a, b, 1e-9)
    with pytest.raises(ValueError, match="row-wise"):
        ops.ttt_scan(q, k, tgt, eta[:, :, :7], ln_w, ln_b, state, kind=kind, causal=False, mini_batch_size=N)


def test_eta_order_public_only_differs_when_a_boundary_cuts_a_mini_batch():
    """eta_order='public' equals the default read order where every segment boundary is a mini-batch edge (and
    for one scene), differs where a boundary falls inside a mini-batch; refused for the LM form; the Triton
    kernels decline it with a reason."""
    from seqmix.layers.spans import TokenSpans

    torch.manual_seed(0)
    D, H, N, T = 32, 2, 4, 16
    read = layers.build("ttt_linear", dim=D, num_heads=H, mini_batch_size=N).double()
    pub = layers.build("ttt_linear", dim=D, num_heads=H, mini_batch_size=N, eta_order="public").double()
    pub.load_state_dict(read.state_dict())
    x = torch.randn(2, T, D, dtype=torch.float64)
    assert_close("one scene", pub(x), read(x), 1e-12)

    def spans(src):
        return TokenSpans((0, T), (0, T), source_index=torch.tensor(src))

    aligned = list(range(8, 16)) + list(range(8))  # two 8-token blocks swapped: boundaries on mini-batch edges
    assert_close("aligned", pub(x, layout=spans(aligned)), read(x, layout=spans(aligned)), 1e-12)
    cut = list(range(2, 16)) + [0, 1]  # every read mini-batch spans two storage mini-batches
    assert not torch.allclose(pub(x, layout=spans(cut)), read(x, layout=spans(cut)))
    with pytest.raises(ValueError, match="eta_order"):
        layers.build("ttt_linear", dim=D, num_heads=H, causal=True, eta_order="public")
    with pytest.raises(ValueError, match="multiple of mini_batch_size"):
        pub(x[:, :14])
    from seqmix.layers.ttt import _triton_supports

    assert "row-wise" in _triton_supports(pub, torch.device("cuda"), torch.float32, None)
