"""LaCT in the segmented DiT: fast-weight chunks aligned to latent frames or to the 3 s segments (13 latent frames for
the first segment, 12 for the others), in the interleaved order and in the reversed pass; block-local attention
with blocks aligned the same way."""

from __future__ import annotations

import pytest
import torch

from seqmix import layers
from seqmix.backbones.dit import DiTConfig, GlobalLayer, SegmentedDiT
from seqmix.backbones.layout import VideoLayout
from seqmix.bench.dit import variants
from seqmix.layers import Bidirectional, Mixer, MixerConfig
from seqmix.layers.spans import TokenSpans
from seqmix.utils.testing import assert_close

TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, text_embed_dim=8,
            time_embed_dim=8, num_layers=1, patch_size=2)
#: 3 segments -> 37 latent frames (13 + 12 + 12 owned), 2 tokens per frame, 2 text tokens per segment: 80 tokens.
LAY = VideoLayout.paper(9, text_len=2, latent_height=2, latent_width=4)


def _labels(lay: VideoLayout) -> list[tuple]:
    """Storage-order labels: ("t", segment) for text, ("v", frame) for video tokens."""
    text = [("t", i) for i in range(lay.num_segments) for _ in range(lay.text_len)]
    return text + [("v", f) for f in range(lay.num_frames) for _ in range(lay.tokens_per_frame)]


def _read_orders(lay: VideoLayout) -> dict[str, list[tuple]]:
    idx, labels = lay.index(), _labels(lay)
    return {"fwd": [labels[j] for j in idx.interleave.tolist()],
            "bwd": [labels[j] for j in idx.interleave[idx.reverse].tolist()]}


def _spans(order: list[tuple], bounds: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """(text segments, frames) of every span, each in read order without repeats."""
    out = []
    for s, e in zip(bounds, bounds[1:]):
        part = order[s:e]
        texts = list(dict.fromkeys(i for k, i in part if k == "t"))
        frames = list(dict.fromkeys(f for k, f in part if k == "v"))
        n_text = sum(1 for k, _ in part if k == "t")
        assert all(k == "t" for k, _ in part[:n_text]), "text is read at the start of its span"
        out.append((texts, frames))
    return out


def test_token_spans_are_frames_and_segments_in_both_passes():
    spans, S, L = LAY.token_spans(), LAY.num_segments, LAY.text_len
    assert spans.total == LAY.total_tokens and LAY.num_frames == 37
    orders = _read_orders(LAY)
    # Forward (interleaved) order: segment i = text i + the frames it owns (13 for the first, 12 after).
    segs = _spans(orders["fwd"], spans.segments)
    assert segs == [([i], list(range(*LAY.owned_frames(i)))) for i in range(S)]
    assert [len(f) for _, f in segs] == [13, 12, 12]
    frames = _spans(orders["fwd"], spans.frames)
    firsts = {LAY.owned_frames(i)[0]: i for i in range(S)}
    assert frames == [([firsts[f]] if f in firsts else [], [f]) for f in range(LAY.num_frames)]
    # Reversed order, same boundaries: segment span i holds text S-1-i and the frames of window S-1-i that the
    # reversed pass reaches first (the shared frame goes with the segment read first); frames stay whole.
    segs = _spans(orders["bwd"], spans.segments)
    for i, (texts, fr) in enumerate(segs):
        w0, w1 = LAY.window(S - 1 - i)
        assert texts == [S - 1 - i] and fr == list(range(w1 - 1 if i == 0 else w1 - 2, w0 - 1, -1))
    assert [len(f) for _, f in segs] == [13, 12, 12]
    frames = _spans(orders["bwd"], spans.frames)
    assert [f for _, f in frames] == [[f] for f in range(LAY.num_frames - 1, -1, -1)]
    assert [t for t, _ in frames if t] == [[2], [1], [0]]
    # The plan hands both passes these spans.
    model = SegmentedDiT(DiTConfig(**TINY, mixer="lact"))
    plan = model._plan(LAY, torch.device("cpu"))
    assert plan.spans_fwd == plan.spans_bwd == spans


class _Recorder(Mixer):
    """Identity-like mixer that records the layouts it is given."""

    name = "recorder"
    Config = MixerConfig
    takes_layout = True

    def __init__(self, dim):
        super().__init__(dim, 1, MixerConfig())
        self.w = torch.nn.Parameter(torch.ones(()))
        self.seen = []

    def state_size(self, seq_len=None):
        return 0

    def _forward(self, x, *, layout, positions, state, return_state):
        self.seen.append(layout)
        return x * self.w, None


def test_layout_reaches_only_mixers_that_take_it():
    model = SegmentedDiT(DiTConfig(**TINY, mixer="gated_deltanet", mixer_config={}))
    plan = model._plan(LAY, torch.device("cpu"))
    D = model.config.inner_dim
    txt, vid = torch.randn(1, LAY.text_tokens, D), torch.randn(1, LAY.video_tokens, D)
    rec = GlobalLayer(_Recorder(D), D, 0.1, use_positions=False)
    rec(vid, txt, plan)
    assert rec.mixer.seen == [LAY.token_spans()] * 2
    assert not layers.mixer_class("gated_deltanet").takes_layout
    model.transformer_blocks[0].global_layer(vid, txt, plan)  # Gated DeltaNet rejects a layout: it got none


def _perturbed(unit: str, pass_: str, frame: int, mixer: str = "lact") -> tuple[torch.Tensor, torch.Tensor]:
    """Max change of each latent frame's and each text slot's output of one gated pass (the other's gate at 0) of a
    LaCT global layer with chunks aligned to ``unit`` (``mixer="local_attn"``: blocks) when the tokens of latent
    ``frame`` change."""
    torch.manual_seed(0)
    config = {"chunk_align": unit, "muon": False} if mixer == "lact" else {"block_align": unit}
    model = SegmentedDiT(DiTConfig(**TINY, mixer=mixer, mixer_config=config))
    gl = model.transformer_blocks[0].global_layer.double()
    with torch.no_grad():
        for name, p in gl.named_parameters():
            if "gate_" in name:
                p.fill_(0.0 if pass_ not in name else 0.5)
    plan = model._plan(LAY, torch.device("cpu"))
    D, N = model.config.inner_dim, LAY.tokens_per_frame
    txt, vid = torch.randn(1, LAY.text_tokens, D, dtype=torch.float64), torch.randn(1, LAY.video_tokens, D,
                                                                                     dtype=torch.float64)
    vid2 = vid.clone()
    vid2[:, frame * N:(frame + 1) * N] += 3.0
    with torch.no_grad():
        (v1, t1), (v2, t2) = gl(vid, txt, plan), gl(vid2, txt, plan)
    dv = (v2 - v1).abs().view(LAY.num_frames, -1).amax(-1)
    dt = (t2 - t1).abs().view(LAY.num_segments, -1).amax(-1)
    return dv, dt


def test_lact_chunks_follow_frames_in_the_forward_pass():
    dv, dt = _perturbed("frame", "fwd", 13)  # first frame of segment 1: its chunk holds text 1
    assert float(dv[:13].max()) == 0.0 and bool((dv[13:] > 0).all())
    assert dt[0] == 0 and dt[1] > 0 and dt[2] > 0
    dv, dt = _perturbed("frame", "fwd", 14)  # text 1 was read (and updated) with frame 13, before frame 14
    assert float(dv[:14].max()) == 0.0 and dv[14] > 0 and dt[1] == 0 and dt[2] > 0


def test_lact_chunks_follow_segments_in_both_passes():
    # Forward: segment 1 = text 1 + frames 13..24; frame 12 (shared, owned by segment 0) is in segment 0's chunk.
    dv, dt = _perturbed("segment", "fwd", 20)
    assert float(dv[:13].max()) == 0.0 and bool((dv[13:] > 0).all()) and dt[0] == 0 and dt[1] > 0
    # Reversed: the chunks are windows 2, 1, 0 read from their end, the shared frame with the window read first:
    # frame 24 goes with window 2 (read first), frames 12..23 with window 1, frames 0..11 with window 0.
    dv, dt = _perturbed("segment", "bwd", 23)
    assert float(dv[24:].max()) == 0.0 and bool((dv[:24] > 0).all()) and dt[2] == 0 and dt[1] > 0
    dv, dt = _perturbed("segment", "bwd", 24)
    assert bool((dv > 0).all()) and dt[2] > 0


def test_local_attn_blocks_follow_segments_in_both_passes():
    """Segment-aligned block-local attention: a change inside a segment reaches only that segment's tokens (its text
    slot included), in both passes; unlike LaCT's carried fast weights, nothing reaches later segments."""
    dv, dt = _perturbed("segment", "fwd", 20, mixer="local_attn")  # segment 1 = text 1 + frames 13..24
    assert float(dv[:13].max()) == 0.0 and bool((dv[13:25] > 0).all()) and float(dv[25:].max()) == 0.0
    assert dt[0] == 0 and dt[1] > 0 and dt[2] == 0
    dv, dt = _perturbed("segment", "bwd", 23, mixer="local_attn")  # reversed: window 1 = frames 12..23, text 1
    assert float(dv[24:].max()) == 0.0 and bool((dv[12:24] > 0).all()) and float(dv[:12].max()) == 0.0
    assert dt[1] > 0 and dt[0] == 0 and dt[2] == 0
    dv, dt = _perturbed("frame", "fwd", 14, mixer="local_attn")  # frame blocks: only frame 14 itself
    assert float(dv[:14].max()) == 0.0 and dv[14] > 0 and float(dv[15:].max()) == 0.0 and float(dt.max()) == 0.0


@pytest.mark.parametrize("unit", ["frame", "segment"])
def test_dit_forward_backward_with_aligned_lact(unit):
    lay = LAY if unit == "segment" else VideoLayout.paper(3, text_len=2, latent_height=2, latent_width=4)  # 13 frames
    torch.manual_seed(0)
    model = SegmentedDiT(DiTConfig(**TINY, mixer="lact", mixer_config={"chunk_align": unit, "inter_multi": 2.0}))
    x = torch.randn(1, lay.num_frames, 4, 2, 4)
    text = torch.randn(1, lay.text_tokens, 8)
    out = model(x, torch.tensor([500.0]), text, lay)
    assert out.shape == x.shape and torch.isfinite(out).all()
    out.square().mean().backward()
    mixer = model.transformer_blocks[0].global_layer.mixer
    assert mixer.config.chunk_align == unit and not mixer.causal
    for name in ("w0", "w1", "w2", "qkv.weight", "lr_proj.weight"):
        g = mixer.get_parameter(name).grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name
    assert "lact" in variants()  # the DiT benchmark times it (variants come from the registry)


def test_aligned_layer_needs_spans_and_bidirectional_mirrors_them():
    D, T = 8, 10
    spans = TokenSpans((0, 3, 5, 8, 10), (0, 5, 10))
    torch.manual_seed(0)
    layer = layers.build("lact", dim=D, num_heads=2, chunk_align="segment").double()
    x = torch.randn(1, T, D, dtype=torch.float64)
    with pytest.raises(ValueError, match="takes its chunks from the layout's segments"):
        layer(x)
    with pytest.raises(TypeError, match="TokenSpans"):
        layer(x, layout=LAY)
    with pytest.raises(ValueError, match="spans 10 tokens, the input has 9"):
        layer(x[:, :9], layout=spans)
    with pytest.raises(ValueError, match="chunk_align must be one of"):
        layers.build("lact", dim=D, num_heads=2, chunk_align="window")
    # Segment chunks of 5 tokens equal chunk_size=5; a chunk_size layer accepts (and ignores) spans.
    fixed = layers.build("lact", dim=D, num_heads=2, chunk_size=5).double()
    fixed.load_state_dict(layer.state_dict())
    assert_close("segments = chunks of 5", layer(x, layout=spans), fixed(x), 1e-12)
    assert torch.equal(fixed(x, layout=spans), fixed(x))
    # The bidirectional wrapper gives the flipped pass the mirrored spans.
    bi = Bidirectional(layer)
    y = bi(x, layout=spans)
    z = x + torch.tanh(bi.gate_fwd.alpha) * layer(x, layout=spans)
    ref = z + torch.tanh(bi.gate_bwd.alpha) * layer(z.flip(1), layout=spans.mirrored()).flip(1)
    assert_close("bidirectional", y, ref, 1e-12)
    assert spans.mirrored() == TokenSpans((0, 2, 5, 7, 10), (0, 5, 10))


def test_causal_aligned_chunks_carry_state():
    D = 8
    torch.manual_seed(0)
    layer = layers.build("lact", dim=D, num_heads=2, chunk_align="frame", causal=True).double()
    x = torch.randn(1, 9, D, dtype=torch.float64)
    full = layer(x, layout=TokenSpans((0, 4, 6, 9), (0, 9)))
    a, st = layer(x[:, :4], layout=TokenSpans((0, 4), (0, 4)), return_state=True)
    b, st = layer(x[:, 4:], layout=TokenSpans((0, 2, 5), (0, 5)), state=st, return_state=True)
    assert_close("frame by frame", torch.cat([a, b], 1), full, 1e-12)
    assert st.pending[0].shape[2] == 0


def test_benchmarks_time_lact_with_large_chunks():
    """bench dit aligns LaCT's chunks to the segments under every size preset (as the t2v recipe, through the class's
    ``dit_config``); the GPU layers preset (the kit's layers stage) updates once per CogVideoX latent frame (1350
    tokens, the class's ``bench_paper_config``)."""
    from seqmix.bench.dit import DiTBenchConfig
    from seqmix.bench.driver import mixer_bench_config
    from seqmix.bench.layers import LayerBenchConfig

    for cfg in (DiTBenchConfig(), DiTBenchConfig.gpu(), DiTBenchConfig.quick_config()):
        assert cfg.mixer_config("lact")["chunk_align"] == "segment"
    gpu = LayerBenchConfig.gpu()
    assert mixer_bench_config("lact", gpu.layer_sizes, gpu.layer_configs) == {"chunk_size": 1350}
