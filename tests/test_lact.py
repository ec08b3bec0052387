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


@pytest.mark.parametrize("causal", [False, True], ids=["video", "causal"])
@pytest.mark.parametrize("muon", [False, True], ids=["sgd", "muon"])
def test_chunked_backend_equals_naive_twin(causal, muon):
    a, b = _pair(chunk_size=3, causal=causal, muon=muon, momentum=causal, inter_multi=2.0)
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


def test_fp32_fast_weights_under_bf16_autocast():
    layer = layers.build("lact", dim=D, num_heads=H, chunk_size=4)
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
    with pytest.raises(ValueError, match="takes no positions"):
        layer(x, positions=torch.arange(5))
    with pytest.raises(ValueError, match="return_state needs causal"):
        layers.build("lact", dim=D, num_heads=H)(x, return_state=True)
