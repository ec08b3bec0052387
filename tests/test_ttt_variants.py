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
    from tests.test_dit import tiny_model  # noqa: PLC0415 - the tiny DiT of the DiT tests

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
