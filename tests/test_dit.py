"""Segmented video DiT (seqmix.backbones.dit) and its token layout (seqmix.backbones.layout).

Oracles no one here wrote: diffusers' CogVideoXTransformer3DModel (one window = the whole clip) and a loop over
windows built from diffusers' own block modules (norm1 / attn1 / norm2 / ff) for several segments.
"""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch import nn

from seqmix.backbones.dit import DiTConfig, GlobalLayer, SegmentedDiT
from seqmix.backbones.layout import VideoLayout
from seqmix.layers import Mixer, MixerConfig
from seqmix.utils.testing import assert_close

diffusers = pytest.importorskip("diffusers")
safetensors_torch = pytest.importorskip("safetensors.torch")
from diffusers import CogVideoXTransformer3DModel  # noqa: E402
from diffusers.models.embeddings import get_3d_rotary_pos_embed  # noqa: E402

# Tiny sizes: D = 2 heads x 16, latent channels 4, text width 16.
TINY = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, text_embed_dim=16,
            time_embed_dim=16, num_layers=2, patch_size=2)


def tiny_model(**kw) -> SegmentedDiT:
    return SegmentedDiT(DiTConfig(**{**TINY, **kw}))


def tiny_diffusers(frames: int, height: int, width: int, text_len: int, seed: int = 0, **kw):
    """A random tiny CogVideoX transformer; every weight perturbed so LayerNorm affines and gates are non-trivial."""
    torch.manual_seed(seed)
    cfg = {**TINY, **kw}
    m = CogVideoXTransformer3DModel(
        **cfg, sample_frames=(frames - 1) * 4 + 1, sample_height=height, sample_width=width,
        max_text_seq_length=text_len, use_rotary_positional_embeddings=True,
    ).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return m


def inputs(lay: VideoLayout, batch: int = 2, channels: int = 4, text_dim: int = 16, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, lay.num_frames, channels, lay.latent_height, lay.latent_width, generator=g)
    t = torch.tensor([17.0, 803.0][:batch])
    text = torch.randn(batch, lay.text_tokens, text_dim, generator=g)
    return x, t, text


def diffusers_rope(lay: VideoLayout, head_dim: int, frames: int):
    gh, gw = lay.grid
    return get_3d_rotary_pos_embed(head_dim, ((0, 0), (gh, gw)), (gh, gw), frames)


def windowed_reference(dm, latents, t, text, lay: VideoLayout):
    """The segmented forward written as a loop over windows with diffusers' block modules (averaging after to_out)."""
    B, Fr = latents.shape[:2]
    S, L, N, Wf = lay.num_segments, lay.text_len, lay.tokens_per_frame, lay.window_frames
    emb = dm.time_embedding(dm.time_proj(t).to(latents.dtype))
    h = dm.patch_embed(text, latents)
    txt, vid = h[:, : S * L], h[:, S * L :]
    D = vid.shape[-1]
    rope = diffusers_rope(lay, dm.config.attention_head_dim, Wf)
    for blk in dm.transformer_blocks:
        nv, nt, gate, t_gate = blk.norm1(vid, txt, emb)
        acc, cnt, at = torch.zeros(B, Fr, N, D), torch.zeros(Fr), []
        for i in range(S):
            f0, f1 = lay.window(i)
            ov, ot = blk.attn1(hidden_states=nv.view(B, Fr, N, D)[:, f0:f1].reshape(B, -1, D),
                               encoder_hidden_states=nt[:, i * L : (i + 1) * L], image_rotary_emb=rope)
            acc[:, f0:f1] += ov.view(B, Wf, N, D)
            cnt[f0:f1] += 1
            at.append(ot)
        vid = vid + gate * (acc / cnt[:, None, None]).reshape(B, Fr * N, D)
        txt = txt + t_gate * torch.cat(at, dim=1)
        nv, nt, gate, t_gate = blk.norm2(vid, txt, emb)
        ff = blk.ff(torch.cat([nt, nv], dim=1))
        vid, txt = vid + gate * ff[:, S * L :], txt + t_gate * ff[:, : S * L]
    out = dm.proj_out(dm.norm_out(dm.norm_final(vid), temb=emb))
    p = dm.config.patch_size
    out = out.reshape(B, Fr, lay.grid[0], lay.grid[1], -1, p, p)
    return out.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)


# ==================================================================================================== oracle
@pytest.mark.parametrize("ofs", [False, True], ids=["cogvideox", "with-ofs"])
def test_one_window_matches_diffusers(tmp_path, ofs):
    """S = 1 and a window covering all frames: the model is exactly diffusers' CogVideoXTransformer3DModel."""
    F_, H, W, L = 5, 6, 8, 7  # odd-ish sizes: 3 x 4 patch grid, 5 latent frames
    extra = dict(ofs_embed_dim=16) if ofs else {}
    dm = tiny_diffusers(F_, H, W, L, **extra)
    dm.save_pretrained(tmp_path)
    model = SegmentedDiT.from_cogvideox(tmp_path).eval()
    assert model.load_report.fresh_keys == [] and model.load_report.missing_keys == []
    lay = VideoLayout(num_segments=1, text_len=L, latent_height=H, latent_width=W, window_frames=F_)
    x, t, text = inputs(lay)
    kw = dict(ofs=torch.tensor([2.0, 3.0])) if ofs else {}
    with torch.no_grad():
        ref = dm(x, text, t, image_rotary_emb=diffusers_rope(lay, 16, F_), **kw).sample
        out = model(x, t, text, lay, **kw)
    assert_close("one window vs diffusers", out, ref, 1e-5)


@pytest.mark.parametrize("window,overlap,segments", [(3, 1, 3), (4, 2, 2), (2, 0, 3)],
                         ids=["w3-o1-S3", "w4-o2-S2", "w2-o0-S3"])
def test_windows_match_diffusers_block_loop(tmp_path, window, overlap, segments):
    """Several windows (shared frames averaged, text per window) against a loop over diffusers' block modules."""
    lay = VideoLayout(num_segments=segments, text_len=3, latent_height=4, latent_width=6, window_frames=window,
                      overlap_frames=overlap)
    dm = tiny_diffusers(lay.num_frames, 4, 6, 3)
    dm.save_pretrained(tmp_path)
    model = SegmentedDiT.from_cogvideox(tmp_path).eval()
    x, t, text = inputs(lay)
    with torch.no_grad():
        ref = windowed_reference(dm, x, t, text, lay)
        out = model(x, t, text, lay)
    assert_close("windows vs diffusers loop", out, ref, 1e-5)


def test_sharded_checkpoint_and_global_layer_fresh(tmp_path):
    dm = tiny_diffusers(3, 4, 4, 2)
    dm.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 1
    model = SegmentedDiT.from_cogvideox(tmp_path, mixer="ttt_linear", mixer_config=dict(mini_batch_size=4))
    rep = model.load_report
    assert len(rep.files) > 1 and rep.missing_keys == [] and rep.unexpected_keys == []
    sd, ref = model.state_dict(), dm.state_dict()
    assert set(rep.fresh_keys) == {k for k in sd if ".global_layer." in k} and rep.fresh_keys
    assert set(sd) - set(rep.fresh_keys) == set(ref)
    for k, v in ref.items():
        assert torch.equal(sd[k], v), k
    # The loaded model maps onto the same config as diffusers'.
    assert model.config.num_layers == 2 and model.config.mixer == "ttt_linear"


def test_loading_errors(tmp_path):
    dm = tiny_diffusers(3, 4, 4, 2)
    dm.save_pretrained(tmp_path)
    f = tmp_path / "diffusion_pytorch_model.safetensors"
    sd = safetensors_torch.load_file(str(f))
    sd.pop("proj_out.bias")
    sd["extra.weight"] = torch.zeros(1)
    safetensors_torch.save_file(sd, str(f))
    with pytest.raises(ValueError, match=r"missing.*proj_out\.bias.*unexpected.*extra\.weight"):
        SegmentedDiT.from_cogvideox(tmp_path)
    model = SegmentedDiT.from_cogvideox(tmp_path, strict=False)
    assert model.load_report.missing_keys == ["proj_out.bias"]
    assert model.load_report.unexpected_keys == ["extra.weight"]
    # Shape mismatch (config overridden against the checkpoint) and non-diffusers directories.
    with pytest.raises(ValueError, match="shape mismatch"):
        SegmentedDiT.from_cogvideox(tmp_path, strict=False, time_embed_dim=32)
    with pytest.raises(TypeError, match="unknown DiTConfig field"):
        SegmentedDiT.from_cogvideox(tmp_path, not_a_field=1)
    with pytest.raises(FileNotFoundError, match="config.json"):
        SegmentedDiT.from_cogvideox(tmp_path / "nowhere")
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "_class_name": "UNet2DModel"}))
    with pytest.raises(ValueError, match="UNet2DModel"):
        SegmentedDiT.from_cogvideox(tmp_path)


# ==================================================================================================== layout
def test_paper_presets_token_counts():
    table = {3: (13, 17_550), 9: (37, 49_950), 18: (73, 98_550), 30: (121, 163_350), 63: (253, 341_550)}
    for sec, (frames, video) in table.items():
        lay = VideoLayout.paper(sec)
        assert lay.num_frames == frames == 12 * lay.num_segments + 1
        assert lay.tokens_per_frame == 1350
        assert lay.video_tokens == video == 1350 * frames
        assert lay.text_tokens == 226 * lay.num_segments
        assert lay.total_tokens == video + lay.text_tokens
        assert lay.window_tokens == 226 + 13 * 1350
    assert VideoLayout.paper(63, text_len=500).text_tokens == 21 * 500
    with pytest.raises(ValueError, match="valid"):
        VideoLayout.paper(10)


def test_windows_and_ownership():
    lay = VideoLayout.paper(18)
    assert lay.windows() == [(12 * i, 12 * i + 13) for i in range(6)]
    assert lay.owned_frames(0) == (0, 13) and lay.owned_frames(1) == (13, 25) and lay.owned_frames(5) == (61, 73)
    assert lay.windows_of_frame(12) == [0, 1] and lay.windows_of_frame(13) == [1] and lay.windows_of_frame(72) == [5]
    counts = lay.frame_counts()
    assert counts.shape == (73,) and counts.sum() == 6 * 13 and (counts == 2).sum() == 5
    assert lay.text_slot(2) == (452, 678)
    one = VideoLayout.paper(3)
    assert one.windows() == [(0, 13)] and one.owned_frames(0) == (0, 13) and bool((one.frame_counts() == 1).all())
    assert VideoLayout.from_num_frames(37, text_len=4).num_segments == 3
    with pytest.raises(ValueError, match="cannot be cut"):
        VideoLayout.from_num_frames(30, text_len=4)


def _labels(lay: VideoLayout) -> list[tuple]:
    """Storage-order token labels: ('t', segment, k) for text, ('v', frame, n) for video."""
    S, L, N = lay.num_segments, lay.text_len, lay.tokens_per_frame
    return [("t", i, k) for i in range(S) for k in range(L)] + [("v", f, n) for f in range(lay.num_frames)
                                                                for n in range(N)]


@pytest.mark.parametrize("segments", [1, 2, 5])
def test_interleave_reverse_orders(segments):
    lay = VideoLayout(num_segments=segments, text_len=2, latent_height=2, latent_width=4, window_frames=3)
    labels = _labels(lay)
    idx = torch.arange(lay.total_tokens)
    inter = lay.interleave(idx, dim=0).tolist()
    got = [labels[j] for j in inter]
    # Expected by hand: segment i's text, then the frames it owns (the shared frame goes to the earlier segment).
    want = []
    for i in range(segments):
        want += [("t", i, k) for k in range(2)]
        f0 = 0 if i == 0 else 2 * i + 1
        want += [("v", f, n) for f in range(f0, 2 * i + 3) for n in range(2)]
    assert got == want
    x = torch.randn(3, lay.total_tokens, 5)
    assert torch.equal(lay.deinterleave(lay.interleave(x)), x)
    assert torch.equal(lay.interleave(lay.deinterleave(x)), x)
    assert torch.equal(lay.reverse(lay.reverse(x)), x)
    # Reversal: text slots stay put, holding the chunks in reverse order (inner order kept); video flipped.
    rev = [got[j] for j in lay.reverse(torch.arange(lay.total_tokens), dim=0).tolist()]
    is_text = lay.is_text().tolist()
    assert [r[0] == "t" for r in rev] == is_text
    text_rev = [r for r in rev if r[0] == "t"]
    assert text_rev == [("t", i, k) for i in reversed(range(segments)) for k in range(2)]
    video = [r for r in got if r[0] == "v"]
    assert [r for r in rev if r[0] == "v"] == video[::-1]


def test_positions():
    lay = VideoLayout(num_segments=3, text_len=2, latent_height=4, latent_width=6, window_frames=3)
    pos = lay.global_positions()
    assert pos.shape == (lay.total_tokens, 3) and pos.dtype == torch.int64
    assert bool((pos[lay.is_text()] == -1).all())
    labels = _labels(lay)
    gh, gw = lay.grid
    for j, lab in zip(lay.index().interleave.tolist(), pos.tolist()):
        if labels[j][0] == "v":
            f, n = labels[j][1:]
            assert lab == [f, n // gw, n % gw]
    wpos = lay.window_positions()
    assert wpos.shape == (2 + 3 * gh * gw, 3) and bool((wpos[:2] == -1).all())
    assert wpos[2:, 0].tolist() == [t for t in range(3) for _ in range(gh * gw)]


def test_layout_validation_and_text_packing():
    with pytest.raises(ValueError, match="divisible by patch_size"):
        VideoLayout(num_segments=1, text_len=4, latent_height=5, latent_width=4)
    with pytest.raises(ValueError, match="overlap_frames"):
        VideoLayout(num_segments=1, text_len=4, window_frames=2, overlap_frames=2)
    with pytest.raises(ValueError, match="num_segments"):
        VideoLayout(num_segments=0, text_len=4)
    with pytest.raises(ValueError, match="scene_ids"):
        VideoLayout(num_segments=3, text_len=4, scene_ids=(0, 2, 2))
    lay = VideoLayout.from_scenes([2, 1, 2], text_len=3, latent_height=2, latent_width=2)
    assert lay.scene_ids == (0, 0, 1, 2, 2) and lay.scenes() == [(0, 1), (2,), (3, 4)]
    assert VideoLayout(num_segments=2, text_len=3) == VideoLayout(num_segments=2, text_len=3, scene_ids=[0, 0])
    small = VideoLayout(num_segments=2, text_len=3, latent_height=2, latent_width=2)
    packed = small.pack_text([torch.ones(2, 8), torch.ones(3, 8)])
    assert packed.shape == (1, 6, 8) and packed[0, :, 0].tolist() == [1, 1, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="longer than its slot"):
        small.pack_text([torch.ones(4, 8), torch.ones(1, 8)])
    with pytest.raises(ValueError, match="one per segment"):
        small.pack_text([torch.ones(1, 8)])
    with pytest.raises(ValueError, match="tokens; the layout has"):
        small.interleave(torch.zeros(1, 5, 2))


# ======================================================================================== global layer order
class _Cumsum(Mixer):
    """An order-sensitive stand-in mixer that records the positions it was given."""

    def __init__(self, dim: int):
        super().__init__(dim, 1, MixerConfig())
        self.seen: list = []

    def state_size(self, seq_len=None) -> int:
        return 0

    def _forward(self, x, *, layout, positions, state, return_state):
        self.seen.append(positions)
        return 0.1 * x.cumsum(dim=1), None


def test_global_layer_order_and_gates():
    lay = VideoLayout(num_segments=3, text_len=2, latent_height=2, latent_width=4, window_frames=3)
    model = tiny_model(num_layers=1, mixer="ttt_linear", mixer_config=dict(mini_batch_size=4))
    plan = model._plan(lay, torch.device("cpu"))
    D = model.config.inner_dim
    gl = GlobalLayer(_Cumsum(D), D, gate_init=0.3, use_positions=True)
    with torch.no_grad():
        gl.gate_fwd_video.alpha.fill_(0.5)
        gl.gate_bwd_text.alpha.fill_(-0.2)
    txt, vid = torch.randn(2, lay.text_tokens, D), torch.randn(2, lay.video_tokens, D)
    out_vid, out_txt = gl(vid, txt, plan)

    # Reference: explicit orders built from labels (not from the layout's index tensors).
    labels = _labels(lay)
    y = torch.cat([txt, vid], dim=1)
    seg_text = [[j for j, l in enumerate(labels) if l[:2] == ("t", i)] for i in range(3)]
    owned = [[j for j, l in enumerate(labels) if l[0] == "v" and l[1] in range(*lay.owned_frames(i))]
             for i in range(3)]
    fwd = sum((seg_text[i] + owned[i] for i in range(3)), [])
    video_flipped = [j for j, l in enumerate(labels) if l[0] == "v"][::-1]
    text_rev = sum(seg_text[::-1], [])
    bwd, it, iv = [], iter(text_rev), iter(video_flipped)  # text slots keep their places in the interleaved order
    for j in fwd:
        bwd.append(next(it) if labels[j][0] == "t" else next(iv))
    is_txt = torch.tensor([l[0] == "t" for l in labels])[:, None]

    def gate(a_text, a_video):
        return torch.where(is_txt, torch.tanh(torch.tensor(a_text)), torch.tanh(torch.tensor(a_video)))

    def run(order, y):
        g = torch.zeros_like(y)
        g[:, order] = 0.1 * y[:, order].cumsum(dim=1)
        return g

    y = y + gate(0.3, 0.5) * run(fwd, y)
    y = y + gate(-0.2, 0.3) * run(bwd, y)
    assert_close("global layer vs explicit orders", torch.cat([out_txt, out_vid], 1), y, 1e-6)
    pos = lay.global_positions()
    assert torch.equal(gl.mixer.seen[0], pos)
    assert torch.equal(gl.mixer.seen[1], pos)  # default "mirrored": the reversed read order gets the table by index
    own = GlobalLayer(_Cumsum(D), D, gate_init=0.3, use_positions=True, reverse_positions="own")
    own(vid, txt, plan)
    assert torch.equal(own.mixer.seen[1], pos[lay.index().reverse])  # "own": every token keeps its position


# ==================================================================================================== locality
def _changed_frames(model, lay, frames: range) -> tuple[torch.Tensor, torch.Tensor]:
    x, t, text = inputs(lay, batch=1)
    x2 = x.clone()
    x2[:, list(frames)] += torch.randn_like(x2[:, list(frames)])
    with torch.no_grad():
        d = (model(x2, t, text, lay) - model(x, t, text, lay)).abs().flatten(2).amax(-1)[0]  # [F]
    return d, x


def test_locality_without_and_with_global_layer():
    lay = VideoLayout.paper(9, text_len=4, latent_height=4, latent_width=4)  # 37 frames, windows [0,13),[12,25),[24,37)
    torch.manual_seed(0)
    local = tiny_model(num_layers=1).eval()
    d, _ = _changed_frames(local, lay, range(14, 23))  # interior of window 1 only
    outside = list(range(0, 12)) + list(range(25, 37))
    assert float(d[outside].max()) == 0.0
    assert bool((d[12:25] > 0).all())
    torch.manual_seed(0)
    glob = tiny_model(num_layers=1, mixer="ttt_linear", mixer_config=dict(mini_batch_size=8)).eval()
    d, _ = _changed_frames(glob, lay, range(14, 23))
    assert float(d[:12].min()) > 1e-6 and float(d[25:].min()) > 1e-6  # backward and forward passes reach them


# ======================================================================================= 9 s model, training
@pytest.fixture(scope="module")
def nine_seconds():
    lay = VideoLayout.paper(9, text_len=4, latent_height=4, latent_width=4)
    return lay, inputs(lay)


def test_nine_second_forward_backward_checkpointing(nine_seconds):
    lay, (x, t, text) = nine_seconds
    torch.manual_seed(0)
    model = tiny_model(mixer="ttt_linear", mixer_config=dict(mini_batch_size=16)).train()
    target = torch.randn_like(x)
    t0 = time.perf_counter()

    def grads(ckpt: bool):
        model.zero_grad(set_to_none=True)
        model.gradient_checkpointing = ckpt
        out = model(x, t, text, lay)
        assert out.shape == x.shape and torch.isfinite(out).all()
        loss = (out - target).pow(2).mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    l0, g0 = grads(False)
    l1, g1 = grads(True)
    assert time.perf_counter() - t0 < 30
    assert torch.equal(l0, l1)
    assert set(g0) == set(g1) == {n for n, _ in model.named_parameters()}
    for n in g0:
        assert_close(f"grad {n}", g1[n], g0[n], 1e-5)
    # The gates of the global layer receive gradients (the new layer trains).
    assert all(g0[n].abs().sum() > 0 for n in g0 if n.endswith("gate_fwd_video.alpha"))


def test_bf16_autocast(nine_seconds):
    lay, (x, t, text) = nine_seconds
    torch.manual_seed(0)
    model = tiny_model(mixer="ttt_linear", mixer_config=dict(mini_batch_size=8)).eval()
    with torch.no_grad():
        ref = model(x, t, text, lay)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x, t, text, lay)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert_close("bf16 autocast vs fp32", out.float(), ref, 5e-2)


# ================================================================================================ parameters
def test_param_groups_partition():
    model = tiny_model(num_layers=3, mixer="ttt_linear", mixer_config=dict(mini_batch_size=4))
    groups = model.param_groups()
    assert set(groups) == {"pretrained", "attention_qkvo", "global_layer"}
    names = [n for g in groups.values() for n in g]
    assert len(names) == len(set(names)) and set(names) == {n for n, _ in model.named_parameters()}
    assert all(".global_layer." in n for n in groups["global_layer"])
    assert sum(n.endswith(".alpha") for n in groups["global_layer"]) == 4 * 3  # {fwd, bwd} x {text, video}
    assert all(".attn1." in n for n in groups["attention_qkvo"])
    for blk in range(3):
        for proj in ("to_q", "to_k", "to_v", "to_out.0"):
            assert f"transformer_blocks.{blk}.attn1.{proj}.weight" in groups["attention_qkvo"]
    assert "proj_out.weight" in groups["pretrained"] and "patch_embed.proj.weight" in groups["pretrained"]
    assert all(float(p.detach().max()) == pytest.approx(0.1) for n, p in groups["global_layer"].items()
               if n.endswith(".alpha"))
    local = tiny_model(num_layers=1).param_groups()
    assert local["global_layer"] == {}
    model.set_trainable("attention+global")  # the paper's later stages
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {*groups["attention_qkvo"],
                                                                          *groups["global_layer"]}
    with pytest.raises(ValueError, match="trainable='qkv'; valid: all, attention\\+global, global"):
        model.set_trainable("qkv")


# ================================================================================================= bad input
def test_bad_inputs():
    lay = VideoLayout(num_segments=2, text_len=3, latent_height=4, latent_width=4, window_frames=3)
    model = tiny_model(num_layers=1).eval()
    x, t, text = inputs(lay)
    with pytest.raises(ValueError, match="needs 5"):
        model(x[:, :4], t, text, lay)
    with pytest.raises(ValueError, match="longer than"):
        model(x, t, torch.cat([text, text[:, :1]], 1), lay)
    with pytest.raises(ValueError, match="shorter than"):
        model(x, t, text[:, :-1], lay)
    with pytest.raises(ValueError, match="text_embed_dim"):
        model(x, t, text[..., :8], lay)
    with pytest.raises(ValueError, match="channels"):
        model(x[:, :, :3], t, text, lay)
    with pytest.raises(ValueError, match="layout expects 4x2"):
        model(x, t, text, VideoLayout(num_segments=2, text_len=3, latent_height=4, latent_width=2, window_frames=3))
    with pytest.raises(ValueError, match="B, F, C, H, W"):
        model(x[0], t, text, lay)
    with pytest.raises(ValueError, match="timestep"):
        model(x, torch.zeros(3), text, lay)
    with pytest.raises(TypeError, match="VideoLayout"):
        model(x, t, text, None)
    with pytest.raises(ValueError, match="patch_size"):
        model(x, t, text, VideoLayout(num_segments=2, text_len=3, latent_height=4, latent_width=4,
                                      window_frames=3, patch_size=1))
    with pytest.raises(ValueError, match="valid names: .*ttt_linear"):
        tiny_model(mixer="not_a_mixer")
    with pytest.raises(TypeError, match="unknown config key"):
        tiny_model(mixer="ttt_linear", mixer_config=dict(bogus=1))
    with pytest.raises(ValueError, match="use_rotary_positional_embeddings"):
        DiTConfig(**TINY, use_rotary_positional_embeddings=False)
    with pytest.raises(ValueError, match="patch_size_t"):
        DiTConfig(**TINY, patch_size_t=2)
    with pytest.raises(ValueError, match="divisible by 16"):
        DiTConfig(**{**TINY, "attention_head_dim": 8})
