"""seqmix.ops.conv: the CPU causal depthwise conv (custom forward and backward) against its twin F.conv1d."""

import pytest
import torch
import torch.nn.functional as F

from seqmix.ops.conv import causal_depthwise_conv1d


def _twin(x, w, bias, history):
    """F.conv1d on [history or zeros; x], channel-first: the definition."""
    K = w.shape[1]
    h = history if history is not None else x.new_zeros(x.shape[0], K - 1, x.shape[2])
    xp = torch.cat([h, x], dim=1).transpose(1, 2)
    return F.conv1d(xp, w[:, None], bias, groups=w.shape[0]).transpose(1, 2)


@pytest.mark.parametrize("T,K", [(1, 4), (3, 4), (4, 4), (37, 4), (20, 1), (9, 2)])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("with_history", [True, False])
def test_matches_conv1d_fp64_values_and_grads(T, K, with_bias, with_history):
    g = torch.Generator().manual_seed(T * 10 + K)
    B, C = 2, 5
    x = torch.randn(B, T, C, dtype=torch.float64, generator=g, requires_grad=True)
    w = torch.randn(C, K, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(C, dtype=torch.float64, generator=g, requires_grad=True) if with_bias else None
    hist = (torch.randn(B, K - 1, C, dtype=torch.float64, generator=g, requires_grad=True)
            if with_history else None)
    y = causal_depthwise_conv1d(x, w, bias, hist)
    ref = _twin(x, w, bias, hist)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-13)
    dy = torch.randn_like(y)
    leaves = [t for t in (x, w, bias, hist) if t is not None]
    got = torch.autograd.grad(y, leaves, dy)
    want = torch.autograd.grad(ref, leaves, dy)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_gradcheck_and_causality():
    x = torch.randn(1, 6, 3, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda *a: causal_depthwise_conv1d(*a), (x, w, b))
    y = causal_depthwise_conv1d(x, w, b)
    x2 = x.detach().clone()
    x2[:, 4:] += 1.0  # the future does not reach the past
    torch.testing.assert_close(causal_depthwise_conv1d(x2, w, b)[:, :4], y[:, :4], rtol=0, atol=0)


def test_bad_shapes():
    with pytest.raises(ValueError, match="weight"):
        causal_depthwise_conv1d(torch.randn(1, 4, 3), torch.randn(2, 4))
    with pytest.raises(ValueError, match="history"):
        causal_depthwise_conv1d(torch.randn(1, 4, 3), torch.randn(3, 4), None, torch.randn(1, 2, 3))


def test_conv_tail_reaches_into_history_for_short_calls():
    from seqmix.ops.conv import conv_tail

    x = torch.arange(2 * 1 * 3, dtype=torch.float64).reshape(2, 1, 3)  # T = 1 < K - 1 = 3
    hist = -torch.arange(2 * 3 * 3, dtype=torch.float64).reshape(2, 3, 3)
    torch.testing.assert_close(conv_tail(x, hist, 4), torch.cat([hist[:, 1:], x], dim=1), rtol=0, atol=0)
    torch.testing.assert_close(conv_tail(x, None, 4)[:, :2], torch.zeros(2, 2, 3, dtype=torch.float64))
    long = torch.randn(2, 9, 3, dtype=torch.float64)
    torch.testing.assert_close(conv_tail(long, hist, 4), long[:, -3:], rtol=0, atol=0)
