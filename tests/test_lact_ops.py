"""LaCT scans: the chunked matmul form against its per-token autograd twin, a hand-derived update, Muon."""

import math

import pytest
import torch
import torch.nn.functional as F

from seqmix.ops.lact import chunk_update, lact_scan, lact_scan_naive, newton_schulz, swiglu_apply
from seqmix.utils.testing import assert_close

B, H, K, Fw = 2, 2, 4, 6


def _inputs(T, momentum, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    q, k, v = (F.normalize(r(B, H, T, K), dim=-1) for _ in range(3))
    lrs = tuple(0.3 * torch.rand(B, H, T, generator=g, dtype=dtype) for _ in range(3))
    mom = torch.rand(B, H, T, generator=g, dtype=dtype) if momentum else None
    state = (r(B, H, Fw, K) / 2, r(B, H, K, Fw) / 2, r(B, H, Fw, K) / 2)
    if momentum:
        state += tuple(0.1 * torch.randn_like(w) for w in state)
    return q, k, v, lrs, mom, state


CASES = [
    dict(causal=False, muon_steps=0, renorm=True, momentum=False),
    dict(causal=True, muon_steps=0, renorm=True, momentum=False),
    dict(causal=False, muon_steps=5, renorm=True, momentum=False),
    dict(causal=True, muon_steps=5, renorm=False, momentum=True),
    dict(causal=False, muon_steps=0, renorm=False, momentum=True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
@pytest.mark.parametrize("T", [7, 8])
def test_chunked_form_equals_per_token_twin(case, T):
    """Outputs, final state and the gradients of every input and of the initial weights (fp64, ragged T)."""
    case = dict(case)
    use_mom = case.pop("momentum")
    q, k, v, lrs, mom, state = _inputs(T, use_mom)
    leaves = [q, k, v, *lrs, *state] + ([mom] if use_mom else [])
    for x in leaves:
        x.requires_grad_(True)
    results = []
    for fn in (lact_scan, lact_scan_naive):
        o, st = fn(q, k, v, *lrs, state, chunk_size=4, momentum=mom, **case)
        loss = (o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() + sum(
            (s * s).sum() for s in st)
        grads = torch.autograd.grad(loss, leaves)
        results.append((o, st, grads))
    (o1, s1, g1), (o2, s2, g2) = results
    assert_close("o", o1, o2, 1e-10)
    for i, (a, b) in enumerate(zip(s1, s2)):
        assert_close(f"state[{i}]", a, b, 1e-10)
    for i, (a, b) in enumerate(zip(g1, g2)):
        assert_close(f"grad[{i}]", a, b, 1e-9)


#: Ragged chunks like a video's: a 13-frame segment, then 12-frame ones (here 4 + 3 + 3 tokens, then a 1-token chunk).
RAGGED = (0, 4, 7, 10, 11)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_ragged_chunk_bounds_equal_per_token_twin(case):
    """Explicit chunk boundaries of unequal lengths: outputs, state and every gradient against the twin (fp64)."""
    case = dict(case)
    use_mom = case.pop("momentum")
    q, k, v, lrs, mom, state = _inputs(RAGGED[-1], use_mom, seed=5)
    leaves = [q, k, v, *lrs, *state] + ([mom] if use_mom else [])
    for x in leaves:
        x.requires_grad_(True)
    results = []
    for fn in (lact_scan, lact_scan_naive):
        o, st = fn(q, k, v, *lrs, state, chunk_bounds=RAGGED, momentum=mom, **case)
        loss = (o * torch.linspace(-1, 1, o.numel(), dtype=o.dtype).view_as(o)).sum() + sum(
            (s * s).sum() for s in st)
        results.append((o, st, torch.autograd.grad(loss, leaves)))
    (o1, s1, g1), (o2, s2, g2) = results
    assert_close("o", o1, o2, 1e-10)
    for i, (a, b) in enumerate(zip(s1, s2)):
        assert_close(f"state[{i}]", a, b, 1e-10)
    for i, (a, b) in enumerate(zip(g1, g2)):
        assert_close(f"grad[{i}]", a, b, 1e-9)


@pytest.mark.parametrize("causal", [False, True])
def test_chunk_bounds_match_chunk_size_and_split_at_their_boundaries(causal):
    """Bounds at multiples of C equal chunk_size=C (T a multiple of C); ragged chunks differ from fixed ones and
    a ragged scan resumes from its state at a chunk boundary (every explicit chunk is complete)."""
    q, k, v, lrs, mom, state = _inputs(12, momentum=False, seed=7)
    kw = dict(causal=causal, muon_steps=5)
    a, sa = lact_scan(q, k, v, *lrs, state, chunk_size=4, **kw)
    b, sb = lact_scan(q, k, v, *lrs, state, chunk_bounds=(0, 4, 8, 12), **kw)
    assert torch.equal(a, b) and all(torch.equal(x, y) for x, y in zip(sa, sb))
    c, _ = lact_scan(q, k, v, *lrs, state, chunk_bounds=(0, 5, 8, 12), **kw)
    assert not torch.allclose(a, c)
    full, st_full = lact_scan(q, k, v, *lrs, state, chunk_bounds=(0, 5, 8, 12), **kw)
    x, st = lact_scan(q[:, :, :5], k[:, :, :5], v[:, :, :5], *(t[:, :, :5] for t in lrs), state,
                      chunk_bounds=(0, 5), **kw)
    # the continuation renormalises to the INITIAL weights' row norms (the public rule), not the carried ones
    norms = tuple(w.norm(dim=-1, keepdim=True) for w in state[:3])
    y, st2 = lact_scan(q[:, :, 5:], k[:, :, 5:], v[:, :, 5:], *(t[:, :, 5:] for t in lrs), st,
                       chunk_bounds=(0, 3, 7), norms=norms, **kw)
    assert_close("o", torch.cat([x, y], 2), full, 1e-12)
    for u, w in zip(st2, st_full):
        assert_close("state", u, w, 1e-12)
    for w, n in zip(st2[:3], norms):  # every row keeps exactly its initial norm
        assert_close("row norms", w.norm(dim=-1, keepdim=True), n, 1e-4)


def test_hand_derived_update_one_chunk_no_muon():
    """w0 = w1 = w2 = I (K = F = 2), one token k = e1, v = (1, 1), Muon and renormalisation off.

    gate = up = w k = e1, act = (silu 1, 0), hidden = (silu 1, 0), d_hidden = w1^T v = (1, 1), so
    g1 = lr1 v hidden^T = lr1 [[s, 0], [s, 0]], g2 = lr2 (d_hidden * act) k^T = lr2 [[s, 0], [0, 0]],
    g0 = lr0 (d_hidden * up * silu'(gate)) k^T = lr0 [[s', 0], [0, 0]] with s = silu(1), s' = silu'(1).
    Reading q = e2 with the updated weights (non-causal form) gives hidden = (0, silu(1) * 1), o = w1 hidden.
    """
    I = torch.eye(2, dtype=torch.float64).expand(1, 1, 2, 2)
    k = torch.tensor([1.0, 0.0], dtype=torch.float64).view(1, 1, 1, 2)
    v = torch.tensor([1.0, 1.0], dtype=torch.float64).view(1, 1, 1, 2)
    q = torch.tensor([0.0, 1.0], dtype=torch.float64).view(1, 1, 1, 2)
    lr0, lr1, lr2 = (torch.full((1, 1, 1), x, dtype=torch.float64) for x in (0.1, 0.2, 0.3))
    s = 1 / (1 + math.exp(-1))  # sigmoid(1)
    silu1, dsilu1 = 1 * s, s * (1 + 1 * (1 - s))
    g0, g1, g2 = chunk_update((I, I, I), k, v, (lr0, lr1, lr2))
    assert torch.allclose(g1[0, 0], torch.tensor([[0.2 * silu1, 0], [0.2 * silu1, 0]], dtype=torch.float64))
    assert torch.allclose(g2[0, 0], torch.tensor([[0.3 * silu1, 0], [0, 0]], dtype=torch.float64))
    assert torch.allclose(g0[0, 0], torch.tensor([[0.1 * dsilu1, 0], [0, 0]], dtype=torch.float64))
    o, (w0, w1, w2) = lact_scan(q, k, v, lr0, lr1, lr2, (I, I, I), chunk_size=1, causal=False, renorm=False)
    assert torch.allclose(w1[0, 0], torch.eye(2, dtype=torch.float64) + g1[0, 0])
    # q = e2: gate = w0[:, 1] = (0, 1), up = w2[:, 1] = (0, 1), hidden = (0, silu(1)), o = w1 @ hidden.
    assert torch.allclose(o[0, 0, 0], w1[0, 0, :, 1] * silu1)
    assert torch.allclose(o[0, 0, 0], torch.tensor([0.0, silu1], dtype=torch.float64))
    # The causal form reads with the weights from before the chunk: f_I(e2) = silu(1) e2 as well here, but the
    # update is not applied for a partial last chunk.
    o_c, st = lact_scan(q, k, v, lr0, lr1, lr2, (I, I, I), chunk_size=2, causal=True, renorm=False)
    assert torch.equal(st[1], I) and torch.allclose(o_c, swiglu_apply(I, I, I, q))


def test_newton_schulz_orthogonalises():
    g = torch.randn(3, 6, 10, dtype=torch.float64)
    x = newton_schulz(g, 5)
    sv = torch.linalg.svdvals(x)
    assert sv.min() > 0.6 and sv.max() < 1.25, sv  # the quintic lands singular values near 1, not exactly on it
    U, _, Vh = torch.linalg.svd(g, full_matrices=False)
    assert (x - U @ Vh).norm() / (U @ Vh).norm() < 0.3
    assert torch.allclose(newton_schulz(g.transpose(-1, -2), 5), x.transpose(-1, -2))
    with pytest.raises(ValueError, match="steps"):
        newton_schulz(g, 0)


def test_causal_scan_resumes_from_state_on_chunk_boundaries():
    q, k, v, lrs, mom, state = _inputs(11, momentum=True, seed=3)
    kw = dict(chunk_size=4, causal=True, momentum=None, muon_steps=5)
    full, st_full = lact_scan(q, k, v, *lrs, state[:3], **kw)
    a, st = lact_scan(q[:, :, :8], k[:, :, :8], v[:, :, :8], *(x[:, :, :8] for x in lrs), state[:3], **kw)
    b, st2 = lact_scan(q[:, :, 8:], k[:, :, 8:], v[:, :, 8:], *(x[:, :, 8:] for x in lrs), st, **kw)
    assert_close("o", torch.cat([a, b], 2), full, 1e-12)
    for x, y in zip(st2, st_full):
        assert_close("state", x, y, 1e-12)


def test_bad_inputs():
    q, k, v, lrs, mom, state = _inputs(5, momentum=False)
    with pytest.raises(ValueError, match="share one shape"):
        lact_scan(q, k[:, :, :4], v, *lrs, state, chunk_size=2, causal=True)
    with pytest.raises(ValueError, match="lr1 must be"):
        lact_scan(q, k, v, lrs[0], lrs[1][:, :, :3], lrs[2], state, chunk_size=2, causal=True)
    with pytest.raises(ValueError, match="state must hold w0, w1, w2, g0, g1, g2"):
        lact_scan(q, k, v, *lrs, state, chunk_size=2, causal=True, momentum=lrs[0])
    with pytest.raises(ValueError, match="chunk_size"):
        lact_scan(q, k, v, *lrs, state, chunk_size=0, causal=True)
    with pytest.raises(ValueError, match="exactly one of chunk_size"):
        lact_scan(q, k, v, *lrs, state, causal=True)
    with pytest.raises(ValueError, match="exactly one of chunk_size"):
        lact_scan_naive(q, k, v, *lrs, state, chunk_size=2, chunk_bounds=(0, 5), causal=True)
    for bad in [(0, 3), (1, 5), (0, 3, 3, 5), (0, 2.0, 5)]:
        with pytest.raises(ValueError, match="chunk_bounds must be strictly increasing"):
            lact_scan(q, k, v, *lrs, state, chunk_bounds=bad, causal=False)


def _public_block_causal_lact(w0, w1, w2, q, k, v, lr0, lr1, lr2, chunk_size, use_muon, momentum, update_first=False,
                              prenorm=False):
    """TEST-ONLY transcription of the published equations of LaCT's causal LM operator ("apply then update",
    ``block_causal_lact_swiglu`` of the public LaCT code), in fp64 and without its bf16 casts. Layout as there:
    ``w0, w2 [b, dh, dk]``, ``w1 [b, dv, dh]``, ``q, k, v [b, l, d]``, ``lr* [b, l, 1]``, ``momentum [b, l, 1]``.
    Every update is renormalised to the row norms of the weights the call started with, computed once.
    ``update_first``: the public bidirectional (video / novel-view) operator instead: every chunk, the last partial
    one included, first updates the weights, then its queries are read with them. ``prenorm``: the public
    ``prenorm_block_causal_lact_swiglu`` (updates accumulate on ``w_main``; reads and gradients use its
    renormalised copy)."""
    def ns5(g):  # the public Newton-Schulz: wide orientation, Frobenius scaling, five coefficient triples
        x = g.transpose(1, 2) if g.size(1) > g.size(2) else g
        x = x / (x.norm(dim=(1, 2), keepdim=True) + 1e-7)
        for a, b, c in ((4.0848, -6.8946, 2.9270), (3.9505, -6.3029, 2.6377), (3.7418, -5.5913, 2.3037),
                        (2.8769, -3.1427, 1.2046), (2.8366, -3.0525, 1.2012)):
            A = x @ x.transpose(1, 2)
            x = a * x + (b * A + c * A @ A) @ x
        return x.transpose(1, 2) if g.size(1) > g.size(2) else x

    n0, n1, n2 = (w.norm(dim=2, keepdim=True) for w in (w0, w1, w2))
    main = (w0, w1, w2)
    m0 = m1 = m2 = None
    qt, vt = q.transpose(1, 2), v.transpose(1, 2)
    out = torch.zeros_like(vt)
    read = lambda qi: w1 @ (F.silu(w0 @ qi) * (w2 @ qi))  # noqa: E731
    e = 0
    L = k.shape[1]
    starts = range(0, L, chunk_size) if update_first else range(0, L - chunk_size, chunk_size)
    for s in starts:
        e = min(s + chunk_size, L)
        ki, vi, qi = k[:, s:e], vt[:, :, s:e], qt[:, :, s:e]
        if not update_first:
            out[:, :, s:e] = read(qi)
        gba, hbm = w0 @ ki.transpose(1, 2), w2 @ ki.transpose(1, 2)
        hidden = F.silu(gba) * hbm
        dh = w1.transpose(1, 2) @ vi
        dhbm = dh * F.silu(gba)
        sg = torch.sigmoid(gba)
        dgba = dh * hbm * sg * (1 + gba * (1 - sg))
        dw1 = vi @ (hidden.transpose(1, 2) * lr1[:, s:e])
        dw0 = dgba @ (ki * lr0[:, s:e])
        dw2 = dhbm @ (ki * lr2[:, s:e])
        if momentum is not None:
            mi = momentum[:, s:e].mean(dim=1, keepdim=True)
            if m0 is not None:
                dw0, dw1, dw2 = dw0 + m0 * mi, dw1 + m1 * mi, dw2 + m2 * mi
            m0, m1, m2 = dw0, dw1, dw2
        if use_muon:
            dw0, dw1, dw2 = ns5(dw0), ns5(dw1), ns5(dw2)
        if prenorm:
            main = tuple(a + b for a, b in zip(main, (dw0, dw1, dw2)))
            w0, w1, w2 = main
        else:
            w0, w1, w2 = w0 + dw0, w1 + dw1, w2 + dw2
        w0 = w0 / (w0.norm(dim=2, keepdim=True) + 1e-5) * n0
        w1 = w1 / (w1.norm(dim=2, keepdim=True) + 1e-5) * n1
        w2 = w2 / (w2.norm(dim=2, keepdim=True) + 1e-5) * n2
        if update_first:
            out[:, :, s:e] = read(qi)
    if not update_first:
        out[:, :, e:] = read(qt[:, :, e:])
    return out.transpose(1, 2)


@pytest.mark.parametrize("prenorm", [False, True])
@pytest.mark.parametrize("muon", [False, True])
@pytest.mark.parametrize("momentum", [False, True])
@pytest.mark.parametrize("T", [11, 12])
def test_causal_scan_equals_public_lact_equations(muon, momentum, T, prenorm):
    """The causal (LM) forms, post-norm and pre-norm, equal the published LaCT operators' equations in fp64 over
    several updates (renorm to the initial row norms, Muon, momentum, a partial or complete last chunk); the
    pre-norm scan equals its per-token twin too."""
    q, k, v, lrs, mom, state = _inputs(T, momentum, seed=11)
    ws = state[:3]
    state = ws + (ws if prenorm else ()) + (tuple(torch.zeros_like(w) for w in ws) if momentum else ())
    kw = dict(chunk_size=4, causal=True, momentum=mom, muon_steps=5 if muon else 0, prenorm=prenorm)
    o, st = lact_scan(q, k, v, *lrs, state, **kw)
    flat = lambda t: t.reshape(B * H, *t.shape[2:])  # noqa: E731
    ref = _public_block_causal_lact(*(flat(w) for w in ws), flat(q), flat(k), flat(v),
                                    *(flat(lr)[..., None] for lr in lrs), chunk_size=4, use_muon=muon,
                                    momentum=flat(mom)[..., None] if momentum else None, prenorm=prenorm)
    assert_close("o", flat(o), ref, 1e-12)
    if prenorm:
        o2, st2 = lact_scan_naive(q, k, v, *lrs, state, **kw)
        assert_close("o naive", o2, o, 1e-10)
        for a, b in zip(st, st2):
            assert_close("state naive", b, a, 1e-10)


@pytest.mark.parametrize("muon", [False, True])
@pytest.mark.parametrize("T", [11, 12])
def test_noncausal_scan_equals_public_lact_equations(muon, T):
    """The non-causal (video) form equals the published bidirectional LaCT operator's equations in fp64: every
    chunk updates, then is read with the updated weights (renormalised to the initial row norms, Muon)."""
    q, k, v, lrs, _, state = _inputs(T, False, seed=12)
    o, _ = lact_scan(q, k, v, *lrs, state, chunk_size=4, causal=False, muon_steps=5 if muon else 0)
    flat = lambda t: t.reshape(B * H, *t.shape[2:])  # noqa: E731
    ref = _public_block_causal_lact(*(flat(w) for w in state[:3]), flat(q), flat(k), flat(v),
                                    *(flat(lr)[..., None] for lr in lrs), chunk_size=4, use_muon=muon, momentum=None,
                                    update_first=True)
    assert_close("o", flat(o), ref, 1e-12)
