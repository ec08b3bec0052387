"""TTT-Linear / TTT-MLP: dual form vs naive reference, fla's naive TTT-Linear, visibility, state, errors."""

import pytest
import torch
import torch.nn.functional as F

from seqmix import layers
from seqmix.ops import ttt as ops
from seqmix.ops.rope import apply_rope, rope_angles
from seqmix.utils.testing import assert_close, rel_err


def _inputs(kind, B=2, H=3, T=21, K=8, dtype=torch.float64, seed=0, expansion=4):
    g = torch.Generator().manual_seed(seed)
    Fd = K if kind == "linear" else expansion * K
    rn = lambda *s, sc=1.0: (sc * torch.randn(*s, generator=g, dtype=dtype))
    q = F.normalize(rn(B, H, T, K), dim=-1)
    k = F.normalize(rn(B, H, T, K), dim=-1)
    r = rn(B, H, T, K)
    eta = torch.rand(B, H, T, generator=g, dtype=dtype)
    lw, lb = 1 + rn(H, K, sc=0.1), rn(H, K, sc=0.1)
    if kind == "linear":
        P = [rn(H, K, Fd, sc=0.3), rn(H, 1, Fd, sc=0.1)]
    else:
        P = [rn(H, K, Fd, sc=0.3), rn(H, 1, Fd, sc=0.1), rn(H, Fd, K, sc=0.3), rn(H, 1, K, sc=0.1)]
    leaves = [t.requires_grad_() for t in (q, k, r, eta, lw, lb, *P)]
    return leaves


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("T", [16, 21, 3], ids=lambda t: f"T{t}")
@pytest.mark.parametrize("dual", [None, True], ids=["default", "dual"])
def test_scan_matches_naive(kind, causal, T, dual):
    """Dual-form scan == naive (autograd inner gradient, per-token weights): outputs, final state, all grads."""
    leaves = _inputs(kind, T=T)
    q, k, r, eta, lw, lb, *P = leaves
    g = torch.Generator().manual_seed(7)
    res = []
    for fn in (ops.ttt_scan, ops.ttt_scan_naive):
        st = ops.init_state(P, q.shape[0], q.dtype)
        z, fs = fn(q, k, r, eta, lw, lb, st, kind=kind, causal=causal, mini_batch_size=4, dual=dual,
                   checkpoint_group=2)
        w = torch.randn(z.shape, generator=g, dtype=z.dtype)
        loss = (z * w).sum() + sum(s.square().sum() for s in fs)
        res.append((z, fs, torch.autograd.grad(loss, leaves)))
        g.manual_seed(7)
    (z, fs, gr), (z0, fs0, gr0) = res
    assert_close("z", z, z0, 1e-10)
    for i, (a, b) in enumerate(zip(fs, fs0)):
        assert_close(f"state[{i}]", a, b, 1e-10)
    for name, a, b in zip(["q", "k", "r", "eta", "ln_w", "ln_b", "W1", "b1", "W2", "b2"], gr, gr0):
        assert_close(f"grad {name}", a, b, 1e-10)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_scan_fp32_matches_fp64_reference(kind):
    leaves64 = _inputs(kind, T=37)
    leaves32 = [t.detach().float().requires_grad_() for t in leaves64]
    outs = []
    for lv in (leaves32, leaves64):
        q, k, r, eta, lw, lb, *P = lv
        fn = ops.ttt_scan if lv is leaves32 else ops.ttt_scan_naive
        z, _ = fn(q, k, r, eta, lw, lb, ops.init_state(P, 2, q.dtype), kind=kind, causal=True, mini_batch_size=8)
        w = torch.randn(z.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
        (z * w.to(z.dtype)).sum().backward()
        outs.append((z, [t.grad for t in lv]))
    assert_close("z fp32", outs[0][0], outs[1][0], 1e-5)
    for name, a, b in zip(["q", "k", "r", "eta", "ln_w", "ln_b", "W1", "b1", "W2", "b2"], outs[0][1], outs[1][1]):
        assert_close(f"grad {name} fp32", a, b, 1e-5)


def test_causal_needs_dual_readout():
    q, k, r, eta, lw, lb, *P = _inputs("linear", T=8)
    with pytest.raises(ValueError, match="dual"):
        ops.ttt_scan(q, k, r, eta, lw, lb, ops.init_state(P, 2, q.dtype), kind="linear", causal=True,
                     mini_batch_size=4, dual=False)


@pytest.mark.parametrize("T", [32, 27], ids=["T32", "T27"])
def test_matches_fla_naive_ttt_linear(T):
    """fla's naive TTT-Linear (causal, per-query step size, o + LN(o) output, target v - k) is our causal scan
    with a constant per-token rate c: fla's eta_i = c / (i + 1) is our token-position weighting."""
    fla_naive = pytest.importorskip("fla.ops.ttt.naive")
    g = torch.Generator().manual_seed(0)
    B, H, K, N, c, eps = 2, 2, 16, 8, 0.3, 1e-6
    f32 = torch.float32  # fla's reference computes in fp32 whatever it is given
    q = torch.randn(B, T, H, K, generator=g, dtype=f32)
    k = F.normalize(torch.randn(B, T, H, K, generator=g, dtype=f32), dim=-1)
    v = torch.randn(B, T, H, K, generator=g, dtype=f32)
    w = 1 + 0.1 * torch.randn(H, K, generator=g, dtype=f32)
    b = 0.1 * torch.randn(H, K, generator=g, dtype=f32)
    h0 = 0.1 * torch.randn(B, H, K, K, generator=g, dtype=f32)
    hb0 = 0.1 * torch.randn(B, H, 1, K, generator=g, dtype=f32)
    pos = torch.arange(T) % N
    eta_fla = (c / (pos + 1)).to(f32).view(1, T, 1, 1).expand(B, T, H, 1).contiguous()
    o_fla, h_fla, hb_fla = fla_naive.chunk_ttt_linear_ref(
        q.clone(), k.clone(), v.clone(), w, b, eta_fla, scale=1.0, eps=eps, mini_batch_size=N,
        initial_state=h0.clone(), initial_state_bias=hb0.clone(), output_final_state=True)
    d = lambda t: t.double()
    tr = lambda t: d(t).transpose(1, 2)
    z, (h, hb) = ops.ttt_scan(tr(q), tr(k), tr(v - k), torch.full((B, H, T), c, dtype=torch.float64), d(w), d(b),
                              (d(h0), d(hb0)), kind="linear", causal=True, mini_batch_size=N, eps=eps)
    o = z + ops.head_layer_norm(z, d(w), d(b), eps)
    assert_close("o vs fla naive", o.transpose(1, 2), o_fla, 1e-5)
    if T % N == 0:  # fla pads ragged tails with zero tokens that then update its final state; ours does not
        assert_close("state vs fla naive", h, h_fla, 1e-5)
        assert_close("bias state vs fla naive", hb, hb_fla, 1e-5)


@pytest.mark.parametrize("name", ["ttt_linear", "ttt_mlp"])
@pytest.mark.parametrize("causal, variant", [(False, None), (True, "video_causal"), (True, None)],
                         ids=["video", "video_causal", "lm"])
def test_layer_torch_backend_matches_naive_backend(name, causal, variant):
    torch.manual_seed(0)
    kw = dict(dim=32, num_heads=2, mini_batch_size=4, causal=causal, variant=variant)
    layer = layers.build(name, **kw).double()
    ref = layers.build(name, **kw, backend="naive").double()
    ref.load_state_dict(layer.state_dict())
    assert layer.backend == "torch" and ref.backend == "naive"
    assert layer.variant == (variant or ("lm" if causal else "video"))
    x = torch.randn(2, 19, 32, dtype=torch.float64, requires_grad=True)
    pos = torch.stack(torch.meshgrid(torch.arange(19), torch.arange(1), torch.arange(1), indexing="ij"), -1)
    pos = pos.reshape(19, 3) if layer.variant != "lm" else torch.arange(19)  # 3D (t, h, w) video, 1D text
    y = layer(x, positions=pos)
    y0 = ref(x, positions=pos)
    assert_close("layer output", y, y0, 1e-10)
    gx, *gp = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])
    gx0, *gp0 = torch.autograd.grad(y0.square().sum(), [x, *ref.parameters()])
    assert_close("grad x", gx, gx0, 1e-10)
    for (n, _), a, b in zip(layer.named_parameters(), gp, gp0):
        assert_close(f"grad {n}", a, b, 1e-10)


@pytest.mark.parametrize("name", ["ttt_linear", "ttt_mlp"])
def test_noncausal_visibility_is_exactly_per_mini_batch(name):
    torch.manual_seed(0)
    N, T = 4, 18
    layer = layers.build(name, dim=32, num_heads=2, mini_batch_size=N).double()
    x = torch.randn(1, T, 32, dtype=torch.float64)
    y = layer(x)
    for t in (5, 13, 17):  # inside mini-batch 1, mini-batch 3, the ragged tail
        x2 = x.clone()
        x2[:, t] += 1.0
        y2 = layer(x2)
        m0 = t // N * N
        assert torch.equal(y[:, :m0], y2[:, :m0]), f"perturbing token {t} changed an earlier mini-batch"
        changed = (y[:, m0 : m0 + N] - y2[:, m0 : m0 + N]).abs().amax(-1) > 1e-9
        assert changed.all(), f"perturbing token {t}: tokens of its own mini-batch did not all change"


@pytest.mark.parametrize("name", ["ttt_linear", "ttt_mlp"])
def test_scan_checkpointing_gives_same_gradients(name):
    torch.manual_seed(0)
    a = layers.build(name, dim=32, num_heads=2, mini_batch_size=4).double()
    b = layers.build(name, dim=32, num_heads=2, mini_batch_size=4, scan_checkpoint_group=2).double()
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 23, 32, dtype=torch.float64)
    ga = torch.autograd.grad(a(x).square().sum(), list(a.parameters()))
    gb = torch.autograd.grad(b(x).square().sum(), list(b.parameters()))
    for u, v in zip(ga, gb):
        assert_close("checkpointed grad", u, v, 1e-12)


def test_scan_checkpointing_inside_a_checkpointed_block_frees_every_step():
    """TTT's scan recomputed in groups inside a checkpointed block (the DiT's per-block checkpointing with the paper
    recipe's scan_checkpoint_group) keeps nothing after a step: live memory after each step equals the layer's
    without the inner recompute. Regression: the group function referred to the scan loop's running state, an
    autograd reference cycle that the outer checkpoint's recomputation (whose graph is never run backward) never
    freed - every step leaked each block's recomputed scan, and one backward held every block's at once."""
    from torch.distributed._tools.mem_tracker import MemTracker
    from torch.utils.checkpoint import checkpoint

    def live_after_steps(group: int) -> list[float]:
        torch.manual_seed(0)
        blocks = [layers.build("ttt_mlp", dim=32, num_heads=2, mini_batch_size=8, scan_checkpoint_group=group)
                  for _ in range(2)]
        tracker = MemTracker()
        tracker.track_external(*blocks)
        live = []
        with tracker:
            for _ in range(3):
                tracker.reset_mod_stats()
                h = torch.randn(1, 96, 32, requires_grad=True)
                for b in blocks:
                    h = h + checkpoint(b, h, use_reentrant=False)
                h.sum().backward()
                del h
                for b in blocks:
                    b.zero_grad(set_to_none=True)
                live.append(max(d["Total"] for d in tracker.get_tracker_snapshot("current").values() if "Total" in d))
        return live

    assert live_after_steps(2) == pytest.approx(live_after_steps(0), abs=1e3)


def test_inner_state_is_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    layer = layers.build("ttt_mlp", dim=32, num_heads=2, mini_batch_size=4, causal=True)
    x = torch.randn(1, 10, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, st = layer(x, return_state=True)
    assert y.dtype == torch.bfloat16
    assert all(w.dtype == torch.float32 for w in st.weights)
    assert st.pending_k.dtype == torch.float32 and st.pending_k.shape[2] == 10 % 4


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_lr_gate_equals_its_twin_and_keeps_its_input_in_its_own_dtype(dtype):
    """The learning-rate gate (fp32, or the input's fp64) equals plain autograd in value and every gradient, and
    keeps x for backward as it came (bf16 under autocast): no fp32 copy of the layer input (4 bytes a value, whole
    on every tensor-parallel rank)."""
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(2, 7, 16, generator=g).to(dtype)
    w0, b0, up = torch.randn(3, 16, generator=g), torch.randn(3, generator=g), torch.randn(2, 7, 3, generator=g)
    out, grads = {}, {}
    for name, fn in (("fast", ops.lr_gate), ("naive", ops.lr_gate_naive)):
        x, w, b = x0.clone().requires_grad_(), w0.clone().requires_grad_(), b0.clone().requires_grad_()
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out[name] = fn(x, w, b, acc)
        (out[name].to(up.dtype) * up).sum().backward()
        grads[name] = (x.grad, w.grad, b.grad)
        if name == "fast":
            assert out[name].dtype == acc and x.grad.dtype == dtype and w.grad.dtype == w0.dtype
            assert not any(t.shape == x0.shape and t.dtype != dtype for t in saved), [t.dtype for t in saved]
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert_close("lr gate", out["fast"], out["naive"], tol)
    for what, a, b in zip(("x", "w", "b"), grads["fast"], grads["naive"]):
        assert_close(f"lr gate grad {what}", a, b, tol)


def test_paper_defaults_and_state_size():
    mlp = layers.build("ttt_mlp", dim=128, num_heads=2)
    lin = layers.build("ttt_linear", dim=128, num_heads=2)
    assert mlp.base_lr == 0.1 and lin.base_lr == 1.0
    assert mlp.config.mini_batch_size == 64 and lin.config.mini_batch_size == 16
    K = 64
    assert lin.state_size() == 2 * (K * K + K)
    assert mlp.state_size() == 2 * (K * 4 * K + 4 * K + 4 * K * K + K)
    assert mlp.W1.std().item() == pytest.approx(0.02, rel=0.1) and mlp.b1.abs().max() == 0


def test_bad_configs_and_state():
    with pytest.raises(ValueError, match="divisible"):
        layers.build("ttt_mlp", dim=30, num_heads=4)
    layers.build("ttt_mlp", dim=30, num_heads=4, head_dim=16)  # explicit head dim is fine
    with pytest.raises(ValueError, match="mini_batch_size"):
        layers.build("ttt_linear", dim=32, num_heads=2, mini_batch_size=0)
    with pytest.raises(ValueError, match="mlp_expansion"):
        layers.build("ttt_mlp", dim=32, num_heads=2, mlp_expansion=0)
    causal = layers.build("ttt_linear", dim=32, num_heads=2, causal=True)
    with pytest.raises(TypeError, match="TTTState"):
        causal(torch.randn(1, 4, 32), state=(1, 2))
    with pytest.raises(ValueError, match="causal=True"):
        layers.build("ttt_linear", dim=32, num_heads=2)(torch.randn(1, 4, 32), return_state=True)
    with pytest.raises(ValueError, match="positions"):
        causal(torch.randn(1, 4, 32), positions=torch.arange(5))


def test_rope_pairs_rotate_by_hand():
    """RoPE rotates interleaved pairs: (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos), the same in fp32 / fp64 (one
    complex product) and bf16 (real arithmetic), for inputs that are views at odd offsets and transposed."""
    ang = torch.rand(5, 3, dtype=torch.float64) * 6
    x = torch.randn(1 + 2 * 5 * 2 * 6, dtype=torch.float64)[1:].view(2, 5, 2, 6)  # odd storage offset
    c, s = ang.cos()[None, :, None], ang.sin()[None, :, None]
    want = torch.stack((x[..., 0::2] * c - x[..., 1::2] * s, x[..., 0::2] * s + x[..., 1::2] * c), -1).flatten(-2)
    assert_close("rope fp64", apply_rope(x, ang), want, 1e-14)
    assert_close("rope fp32", apply_rope(x.float(), ang).double(), want, 1e-6)
    xt = x.transpose(1, 2).contiguous().transpose(1, 2)  # same values, [B, H, T, K] memory
    assert not xt.is_contiguous()
    assert_close("rope transposed input", apply_rope(xt, ang), want, 1e-14)
    assert apply_rope(x.bfloat16(), ang).dtype == torch.bfloat16
    assert_close("rope bf16", apply_rope(x.bfloat16(), ang).double(), want, 3e-2)


def test_rope_halves_equal_fla_rotary_reference():
    """``interleaved=False`` rotates the halves of a head together: it equals fla's own rotary reference op
    (``rotary_embedding_ref``, GPT-NeoX style, which fla's ``RotaryEmbedding`` computes) and, with the channels
    permuted to interleaved order, the interleaved rotation."""
    from fla.modules.rotary.ops import rotary_embedding_ref

    ang = torch.rand(2, 5, 3, dtype=torch.float64) * 6  # per batch row
    x = torch.randn(2, 5, 4, 6, dtype=torch.float64)
    want = rotary_embedding_ref(x, ang.cos(), ang.sin(), interleaved=False)
    assert_close("halves vs fla", apply_rope(x, ang, interleaved=False), want, 1e-14)
    perm = torch.arange(6).view(2, 3).T.flatten()  # [x0, x3, x1, x4, x2, x5]: halves -> interleaved pairs
    assert_close("halves vs interleaved", apply_rope(x, ang, interleaved=False)[..., perm],
                 apply_rope(x[..., perm], ang), 1e-14)


def test_rope_3d_rotates_video_tokens_only():
    ang = rope_angles(torch.tensor([[-1, -1, -1], [0, 0, 0], [3, 1, 2]]), 64)
    assert ang.shape == (3, 32)
    assert ang[0].abs().max() == 0 and ang[1].abs().max() == 0 and ang[2].abs().max() > 0
    x = torch.randn(1, 3, 2, 64, dtype=torch.float64)
    y = apply_rope(x, ang)
    assert torch.equal(y[:, :2], x[:, :2])
    assert_close("rope keeps norms", y.norm(dim=-1), x.norm(dim=-1), 1e-12)
    # Relative property: <R(a) q, R(b) k> depends only on a - b (1D).
    q, k = torch.randn(64, dtype=torch.float64), torch.randn(64, dtype=torch.float64)
    rot = lambda v, p: apply_rope(v.view(1, 1, 1, 64), rope_angles(torch.tensor([p]), 64)).flatten()
    assert rot(q, 5) @ rot(k, 2) == pytest.approx((rot(q, 13) @ rot(k, 10)).item(), rel=1e-10)


@pytest.mark.parametrize("name", ["ttt_linear", "ttt_mlp"])
def test_bf16_post_norm_gradients_are_at_the_rounding_floor(name):
    """In bf16 the post-norm's weight / bias gradients are sums over B x T tokens. Accumulated in fp32 (the layer
    runs the post-norm in fp32, as autocast does), their error is the rounding of each summand and of the result,
    ~ sqrt(2/3) 2^-8 ~ 3e-3 at any length; a bf16 LayerNorm on CPU accumulated in bf16 (1.1e-2 here, growing with
    B x T), over the GPU contract's 1e-2. The twin is the fp64 naive backend on the same (bf16-valued) weights."""
    from seqmix import layers as L

    torch.manual_seed(0)
    cls = L.mixer_class(name)
    cfg = {**cls.Tooling.small_config, **cls.Tooling.kernel_test_config}
    layer = L.build(name, dim=128, num_heads=2, backend="torch", **cfg).to(torch.bfloat16)
    twin = L.build(name, dim=128, num_heads=2, backend="naive", **cfg).double()
    twin.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 77, 128, generator=gen).bfloat16()
    g = torch.randn(2, 77, 128, generator=gen).bfloat16()
    layer(x).backward(g)
    twin(x.double()).backward(g.double())
    for p in ("post_norm.weight", "post_norm.bias"):
        got, ref = layer.get_parameter(p).grad.double(), twin.get_parameter(p).grad
        assert ((got - ref).norm() / ref.norm()).item() < 5e-3, p


def test_variant_follows_causal_and_the_hybrid_is_opt_in():
    """No silent hybrid: the default form is the published one for ``causal`` (video non-causal, LM causal); the
    video layer made causal must be asked for by name; a mismatched pair is one error naming the choices."""
    assert layers.build("ttt_linear", dim=32, num_heads=2).variant == "video"
    lm = layers.build("ttt_mlp", dim=32, num_heads=2, causal=True)
    assert lm.variant == "lm" and lm.base_lr == 1.0  # ttt-lm-pytorch's default for both inner models
    assert layers.build("ttt_mlp", dim=32, num_heads=2).base_lr == 0.1  # the video code's / paper's TTT-MLP value
    assert layers.build("ttt_mlp", dim=32, num_heads=2, causal=True, variant="video_causal").variant == "video_causal"
    with pytest.raises(ValueError, match="'video_causal' opts into"):
        layers.build("ttt_linear", dim=32, num_heads=2, causal=True, variant="video")
    with pytest.raises(ValueError, match="needs causal=True"):
        layers.build("ttt_linear", dim=32, num_heads=2, variant="lm")
    with pytest.raises(ValueError, match="one of"):
        layers.build("ttt_linear", dim=32, num_heads=2, variant="hybrid")
