"""World-model layers: blockwise_ssm, frame_local_attn and blockwise_ttt (frame-major video latents).

Frame-causality, carried state (frame by frame, chunk by chunk) against one pass, the oracles (plain mamba2 /
ttt_mlp on block sequences gathered here by explicit index lists, dense SDPA with a frame mask built here by
loops), backend twins and bad input. Tiny shapes, fp64 where exactness is checked.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F

from seqmix import layers
from seqmix.ops import external
from seqmix.ops import frame_attention as fops
from seqmix.utils.testing import assert_close

import contract as C

DIM, HEADS = C.DIM, C.HEADS
WM = ("blockwise_ssm", "frame_local_attn", "blockwise_ttt")
CHUNKED = {"grid": (2, 2), "window_frames": 4, "chunk_frames": 2}


def make(name, dtype=torch.float64, seed=0, **over):
    return C.make(name, dtype=dtype, seed=seed, **over)


def rand(B, T, dtype=torch.float64, seed=1):
    return C.rand_x(B, T, dtype, seed)


def block_index(grid, block, by, bx, frames):
    """Token indices of block (by, bx) in frame-major order, time-major inside the block (built by loops)."""
    (H, W), (bh, bw) = grid, block
    return [f * H * W + (by * bh + r) * W + bx * bw + c for f in range(frames) for r in range(bh) for c in range(bw)]


# ------------------------------------------------------------------------------------------------ registry
def test_registered_as_frame_input_mixers():
    for name in WM:
        cls = layers.mixer_class(name)
        assert cls.frame_input and cls.causal_modes == (True,)
        assert name in layers.available() and name not in layers.sequence_mixers()
    assert "mamba2" in layers.sequence_mixers()
    assert make("blockwise_ssm").step_tokens == 4 and make("frame_local_attn", **CHUNKED).step_tokens == 8


def test_chunked_attention_passes_the_contract_checks():
    C.check_shape_dtype(C.make("frame_local_attn", **CHUNKED))
    C.check_causality(C.make("frame_local_attn", **CHUNKED))
    C.check_state_carry(C.make("frame_local_attn", **CHUNKED))
    C.check_bidirectional(C.make("frame_local_attn", **{**CHUNKED, "window_frames": 20}))


# ------------------------------------------------------------------------------------------------ causality
@pytest.mark.parametrize("name,over", [("blockwise_ssm", {}), ("blockwise_ttt", {}), ("frame_local_attn", {}),
                                       ("blockwise_ssm", {"grid": (2, 3), "block": (2, 1)})])
def test_frame_causal(name, over):
    layer = make(name, **over)
    ft = layer.step_tokens
    F_, j = 6, 3
    x = rand(2, F_ * ft)
    x2 = x.clone()
    x2[:, j * ft:(j + 1) * ft] += torch.randn(2, ft, DIM, dtype=torch.float64)
    y, y2 = layer(x), layer(x2)
    assert torch.equal(y[:, :j * ft], y2[:, :j * ft]), f"{name}: a frame before {j} saw frame {j}"
    assert not torch.allclose(y[:, j * ft:(j + 1) * ft], y2[:, j * ft:(j + 1) * ft]), f"{name}: frame {j} did not react"
    assert not torch.allclose(y[:, (j + 1) * ft:], y2[:, (j + 1) * ft:]), f"{name}: later frames did not react"


def test_chunked_attention_is_chunk_causal_and_bidirectional_in_a_chunk():
    layer = make("frame_local_attn", **CHUNKED)  # chunks of 2 frames of 4 tokens
    ft = 4
    x = rand(1, 8 * ft)
    x2 = x.clone()
    x2[:, 5 * ft:6 * ft] += 1.0  # frame 5: second frame of chunk 2 (frames 4, 5)
    y, y2 = layer(x), layer(x2)
    assert torch.equal(y[:, :4 * ft], y2[:, :4 * ft])  # chunks 0, 1 untouched
    assert not torch.allclose(y[:, 4 * ft:5 * ft], y2[:, 4 * ft:5 * ft])  # frame 4 sees frame 5 (same chunk)


# ------------------------------------------------------------------------------------------------ carried state
@pytest.mark.parametrize("name,over", [("blockwise_ssm", {}), ("blockwise_ttt", {}), ("frame_local_attn", {}),
                                       ("frame_local_attn", CHUNKED),
                                       ("frame_local_attn", {"grid": (1, 3), "window_frames": 10, "chunk_frames": 5}),
                                       ("blockwise_ssm", {"grid": (4, 2), "block": (2, 2)})])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_carried_state_equals_one_pass(name, over, dtype, tol):
    layer = make(name, dtype=dtype, **over)
    u = layer.step_tokens  # a frame, or a chunk of frames
    splits = [1, 1, 2, 3, 1, 4]  # steps per call: one at a time, then several
    x = rand(2, sum(splits) * u, dtype)
    full = layer(x)
    outs, state, t0 = [], None, 0
    for n in splits:
        y, state = layer(x[:, t0:t0 + n * u], state=state, return_state=True)
        outs.append(y)
        t0 += n * u
    assert_close(f"{name} {over} step by step vs one pass", torch.cat(outs, 1), full, tol)


def test_kv_cache_holds_the_visible_frames_only():
    ft = 4
    for over, keep in (({"window_frames": 3}, 3), (CHUNKED, 2), ({**CHUNKED, "chunk_frames": 4}, 0)):
        layer = make("frame_local_attn", **over)
        _, st = layer(rand(1, 9 * ft if "chunk_frames" not in over else 8 * ft), return_state=True)
        assert st.k.shape[2] == keep * ft, over
    assert make("frame_local_attn", window_frames=3).state_size() == 2 * DIM * 3 * ft  # carried: the last k frames
    assert make("frame_local_attn", **CHUNKED).state_size() == 2 * DIM * 2 * ft  # chunked: k - c frames
    assert make("frame_local_attn", **CHUNKED).state_size(seq_len=5) == 2 * DIM * 5


# ------------------------------------------------------------------------------------------------ oracles
def _mamba_like(layer, **over):
    torch.manual_seed(0)
    cfg = {**layers.mixer_class("mamba2").Tooling.small_config, **over}
    m = layers.build("mamba2", dim=DIM, num_heads=HEADS, **cfg)
    m = m.double()
    m.load_state_dict(layer.inner.state_dict())
    return m


def test_blockwise_ssm_one_block_is_mamba2_on_the_frame_major_sequence():
    layer = make("blockwise_ssm", grid=(2, 3), block=(2, 3))
    x = rand(2, 5 * 6)
    assert_close("one block vs mamba2", layer(x), _mamba_like(layer)(x), 1e-12)


def test_blockwise_ssm_unit_blocks_are_mamba2_per_position_over_time():
    grid = (2, 3)
    layer = make("blockwise_ssm", grid=grid, block=(1, 1))
    x = rand(2, 5 * 6)
    y, m = layer(x), _mamba_like(layer)
    for p in range(6):
        assert_close(f"position {p}", y[:, p::6], m(x[:, p::6]), 1e-12)


def test_blockwise_ssm_blocks_are_mamba2_on_each_block_sequence():
    grid, block, frames = (4, 4), (2, 2), 3
    layer = make("blockwise_ssm", grid=grid, block=block)
    x = rand(2, frames * 16)
    y, m = layer(x), _mamba_like(layer)
    for by in range(2):
        for bx in range(2):
            idx = block_index(grid, block, by, bx, frames)
            assert_close(f"block {by},{bx}", y[:, idx], m(x[:, idx]), 1e-12)
    assert layer.state_size() == 4 * m.state_size()


def test_blockwise_ttt_is_ttt_mlp_per_block_with_frame_mini_batches():
    grid, block, frames = (2, 4), (2, 2), 3
    layer = make("blockwise_ttt", grid=grid, block=block)
    torch.manual_seed(0)
    ref = layers.build("ttt_mlp", dim=DIM, num_heads=HEADS, causal=False, mini_batch_size=4, mlp_expansion=2).double()
    ref.load_state_dict(layer.inner.state_dict())
    x = rand(2, frames * 8)
    y = layer(x)
    for bx in range(2):
        idx = block_index(grid, block, 0, bx, frames)
        assert_close(f"block {bx}", y[:, idx], ref(x[:, idx]), 1e-12)
    assert layer.state_size() == 2 * ref.state_size()


def _frame_mask_by_loops(frames_q, frames_k, ft, k, c):
    """[Tq, Tk] visibility written out frame by frame (independent of seqmix.ops.frame_attention)."""
    f0 = frames_k - frames_q  # keys start this many frames before the queries
    mask = torch.zeros(frames_q * ft, frames_k * ft, dtype=torch.bool)
    for qi in range(frames_q):
        i = f0 + qi
        if c is None:
            seen = range(max(0, i - k), i + 1)
        else:
            start = i - i % c  # first frame of i's chunk
            end = start + c - 1
            seen = range(max(0, end - k + 1), min(end, frames_k - 1) + 1)
        for j in seen:
            mask[qi * ft:(qi + 1) * ft, j * ft:(j + 1) * ft] = True
    return mask


@pytest.mark.parametrize("over", [{"window_frames": 2}, {"window_frames": 1}, CHUNKED,
                                  {"grid": (1, 2), "window_frames": 10, "chunk_frames": 5},
                                  {"grid": (1, 2), "window_frames": 3, "chunk_frames": 2}])
@pytest.mark.parametrize("backend", ["sdpa", "naive"])
def test_frame_attention_is_dense_sdpa_with_a_frame_mask(over, backend):
    layer = make("frame_local_attn", backend=backend, **over)
    ft, frames = layer.frame_tokens, 13
    x = rand(2, frames * ft)
    B, T = x.shape[:2]
    q, k, v = (p(x).view(B, T, HEADS, -1).transpose(1, 2) for p in (layer.wq, layer.wk, layer.wv))
    mask = _frame_mask_by_loops(frames, frames, ft, over["window_frames"], over.get("chunk_frames"))
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    ref = layer.wo(o.transpose(1, 2).reshape(B, T, DIM))
    assert_close(f"frame attention [{backend}] {over}", layer(x), ref, 1e-12)


def test_paper_chunking_sees_own_and_previous_chunk():
    i = torch.arange(15)[:, None]
    j = torch.arange(15)[None, :]
    vis = fops.frame_visible(i, j, window_frames=10, chunk_frames=5)
    for q in range(10, 15):  # chunk 2 = frames 10..14 sees chunks 1 and 2: frames 5..14
        assert vis[q].nonzero().flatten().tolist() == list(range(5, 15))
    assert vis[0].nonzero().flatten().tolist() == list(range(0, 5))
    plain = fops.frame_visible(i, j, window_frames=10)
    assert plain[12].nonzero().flatten().tolist() == list(range(2, 13))  # frames i - k .. i


@pytest.mark.parametrize("chunk", [None, 2])
def test_frame_attention_ops_with_a_kv_cache(chunk):
    g = torch.Generator().manual_seed(0)
    ft, k_frames = 3, 4
    q = torch.randn(1, 2, 4 * ft, 8, generator=g, dtype=torch.float64)
    k, v = (torch.randn(1, 2, 7 * ft, 8, generator=g, dtype=torch.float64) for _ in range(2))
    kw = dict(frame_tokens=ft, window_frames=k_frames, chunk_frames=chunk, q_frame0=6)
    ref = fops.frame_attention_naive(q, k, v, **kw)
    assert_close("sdpa vs naive with a cache", fops.frame_attention_sdpa(q, k, v, **kw), ref, 1e-12)


@pytest.mark.parametrize("chunk", [None, 2])
def test_frame_attention_flex_on_cpu_matches_sdpa(chunk):
    """FlexAttention's eager forward (CPU; no CPU backward) against the block-wise SDPA path."""
    if external.flex_unavailable():
        pytest.skip(external.flex_unavailable())
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 9 * 4, 16, generator=g) for _ in range(3))
    kw = dict(frame_tokens=4, window_frames=3, chunk_frames=chunk)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()": expected here
        o = fops.frame_attention_flex(q, k, v, compiled=False, **kw)
        o_dec = fops.frame_attention_flex(q[:, :, -8:], k, v, compiled=False, q_frame0=7, **kw)
    assert_close("flex vs sdpa", o, fops.frame_attention_sdpa(q, k, v, **kw), 1e-5)
    assert_close("flex vs sdpa (cache)", o_dec, fops.frame_attention_sdpa(q[:, :, -8:], k, v, q_frame0=7, **kw), 1e-5)


@pytest.mark.parametrize("name", ["blockwise_ssm", "blockwise_ttt"])
def test_blockwise_backends_match_their_naive_twin(name):
    x = rand(2, 5 * 4)
    fast, ref = make(name), make(name, backend="naive")
    assert fast.backend == "torch" and ref.backend == "naive"
    assert_close(f"{name} torch vs naive", fast(x), ref(x), 1e-10)


def test_positions_rope_and_grads():
    layer = make("frame_local_attn", dtype=torch.float32, qk_norm=True)
    x = rand(2, 3 * 4, torch.float32).requires_grad_()
    pos = torch.stack(torch.meshgrid(torch.arange(3), torch.arange(2), torch.arange(2), indexing="ij"), -1)
    y = layer(x, positions=pos.reshape(12, 3))
    assert not torch.allclose(y, layer(x))
    y.square().mean().backward()
    assert torch.isfinite(x.grad).all()


# ------------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_fail_clearly():
    with pytest.raises(ValueError, match="not divisible by block"):
        layers.build("blockwise_ssm", DIM, HEADS, grid=(4, 6), block=(3, 2))
    with pytest.raises(ValueError, match="not divisible by block"):
        layers.build("blockwise_ttt", DIM, HEADS, grid=(4, 6), block=(2, 4))
    with pytest.raises(ValueError, match="window_frames must be an int >= 1"):
        layers.build("frame_local_attn", DIM, HEADS, grid=(2, 2), window_frames=0)
    with pytest.raises(ValueError, match="chunk_frames"):
        layers.build("frame_local_attn", DIM, HEADS, grid=(2, 2), window_frames=2, chunk_frames=3)
    with pytest.raises(TypeError, match="grid must be a pair"):
        layers.build("frame_local_attn", DIM, HEADS, grid=4, window_frames=2)
    with pytest.raises(ValueError, match="grid must be a pair of positive ints"):
        layers.build("blockwise_ssm", DIM, HEADS, grid=(0, 2), block=(1, 1))
    for name in WM:
        layer = make(name, dtype=torch.float32)
        with pytest.raises(ValueError, match="frames that do not match the grid 2x2"):
            layer(torch.randn(1, 6, DIM))
        with pytest.raises(TypeError, match="state must be"):
            layer(torch.randn(1, 8, DIM), state=object())
        with pytest.raises(ValueError, match="Bidirectional"):
            C.make(name, causal=False)
    ssm = make("blockwise_ssm", dtype=torch.float32)
    _, st = ssm(torch.randn(1, 8, DIM), return_state=True)
    with pytest.raises(ValueError, match="block sequences"):
        ssm(torch.randn(2, 8, DIM), state=st)
    attn = make("frame_local_attn", dtype=torch.float32, **CHUNKED)
    _, st = attn(torch.randn(1, 3 * 4, DIM), return_state=True)  # ends inside chunk 1
    with pytest.raises(ValueError, match="ends inside a chunk"):
        attn(torch.randn(1, 8, DIM), state=st)


# ------------------------------------------------------------------------------------------------ GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("chunk", [None, 5])
def test_frame_attention_compiled_flex_on_cuda(chunk):
    layer = C.make("frame_local_attn", grid=(4, 4), window_frames=10, chunk_frames=chunk, head_dim=16).cuda()
    x = torch.randn(2, 20 * 16, DIM, device="cuda")
    assert layer.backend == "flex"
    y = layer(x)
    ref = C.make("frame_local_attn", grid=(4, 4), window_frames=10, chunk_frames=chunk, head_dim=16,
                 backend="sdpa").cuda()
    assert_close("flex (compiled) vs sdpa on CUDA", y, ref(x), 1e-3)
    y.square().mean().backward()  # FlexAttention's compiled backward (training runs it)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_blockwise_ssm_gpu_backend_matches_torch():
    layer = C.make("blockwise_ssm", grid=(4, 4), block=(2, 2)).cuda()
    x = torch.randn(2, 12 * 16, DIM, device="cuda")
    ref = C.make("blockwise_ssm", grid=(4, 4), block=(2, 2), backend="torch").cuda()
    assert_close(f"blockwise_ssm [{layer.backend}] vs torch on CUDA", layer(x), ref(x), 1e-3)


@pytest.mark.parametrize("cfg", [{"grid": (2, 2), "window_frames": 3}, CHUNKED], ids=["per-frame", "chunked"])
def test_frame_local_state_size_is_what_is_carried(cfg):
    """state_size() equals the elements of the KV cache a step really carries (after more frames than the window)."""
    layer = make("frame_local_attn", causal=True, **cfg)
    ft = layer.frame_tokens
    step = ft * (cfg.get("chunk_frames") or 1)
    x = torch.randn(1, 4 * 2 * step, DIM, dtype=torch.float64)
    state = None
    for i in range(0, x.shape[1], step):
        _, state = layer(x[:, i:i + step], state=state, return_state=True)
    carried = state.k.numel() + state.v.numel()
    assert layer.state_size() == carried, (layer.state_size(), carried)
