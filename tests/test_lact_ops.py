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
    y, st2 = lact_scan(q[:, :, 5:], k[:, :, 5:], v[:, :, 5:], *(t[:, :, 5:] for t in lrs), st,
                       chunk_bounds=(0, 3, 7), **kw)
    assert_close("o", torch.cat([x, y], 2), full, 1e-12)
    for u, w in zip(st2, st_full):
        assert_close("state", u, w, 1e-12)


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
    with pytest.raises(ValueError, match="state must hold 6"):
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
