"""Retrieval evaluation of the world model: rollout shape and determinism (= the backbone's sampler), per-frame
scores, distance binning on a known case, GIFs, bad inputs."""

import pytest
import torch

from seqmix.backbones.worldmodel import WorldModel, WorldModelConfig
from seqmix.tasks.worldmodel_eval import bin_by_distance, frame_scores, retrieval, write_rollout_gif


def _model(stack="blockwise_ssm"):
    torch.manual_seed(0)
    c = WorldModelConfig(dim=32, depth=1, heads=2, grid=(2, 2), patch_size=4, channels=3, mixers=stack,
                         window_frames=2, chunk_frames=2, action_kind="discrete", num_actions=5)
    return WorldModel(c).eval()


def _batch(B=2, F=10):
    g = torch.Generator().manual_seed(1)
    frames = torch.rand(B, F, 3, 8, 8, generator=g) * 2 - 1
    actions = torch.randint(0, 5, (B, F), generator=g)
    distance = torch.arange(F).expand(B, F).clone() - 3
    return frames, actions, distance


@pytest.mark.parametrize("stack", ["blockwise_ssm", "causal_transformer"])
def test_retrieval_shapes_determinism_and_sampler_equivalence(stack):
    m = _model(stack)
    frames, actions, distance = _batch()
    a = retrieval(m, frames, actions, distance, 6, num_steps=2, seed=3, lpips=False)
    b = retrieval(m, frames, actions, distance, 6, num_steps=2, seed=3, lpips=False)
    assert a.generated.shape == (2, 4, 3, 8, 8) and len(a.psnr) == len(a.ssim) == len(a.distance) == 8
    assert torch.equal(a.generated, b.generated) and a.psnr == b.psnr
    assert a.distance == distance[:, 6:].flatten().tolist()
    ref = m.sample(frames[:, :6], actions[:, :6], actions[:, 6:], num_steps=2,
                   generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.generated, ref.clamp(-1, 1))
    c = retrieval(m, frames, actions, distance, 6, num_steps=2, seed=4, lpips=False)
    assert not torch.equal(a.generated, c.generated)
    assert a.seconds_per_frame > 0 and min(a.state_bytes) > 0


def test_frame_scores_and_bins_on_a_known_case():
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    s = frame_scores(x, x.clone())
    assert torch.all(s["psnr"] == 100.0) and torch.allclose(s["ssim"], torch.ones(3))
    y = x.clone()
    y[1] += 0.2  # MSE 0.04 on a range of 2: PSNR = 10 log10(4 / 0.04) = 20 dB
    assert abs(float(frame_scores(y.clamp(-1, 1), x)["psnr"][1]) - 20) < 1.5
    vals = [1.0, 2.0, 3.0, 4.0, 5.0, 9.0]
    dist = [1, 4, 5, 8, 13, -1]  # -1: never seen, left out
    assert bin_by_distance(vals, dist, 4) == [
        {"lo": 0, "hi": 4, "n": 2, "mean": 1.5}, {"lo": 4, "hi": 8, "n": 2, "mean": 3.5},
        {"lo": 12, "hi": 16, "n": 1, "mean": 5.0}]
    with pytest.raises(ValueError, match="bin width"):
        bin_by_distance(vals, dist, 0)


def test_bad_inputs_and_gif(tmp_path):
    m = _model()
    frames, actions, distance = _batch()
    with pytest.raises(ValueError, match="multiples of the model's step of 2"):
        retrieval(m, frames, actions, distance, 5, num_steps=1, lpips=False)
    with pytest.raises(ValueError, match="actions and distance"):
        retrieval(m, frames, actions[:, :3], distance, 6, num_steps=1, lpips=False)
    with pytest.raises(ValueError, match="one shape"):
        frame_scores(frames[0], frames[1, :3])
    p = write_rollout_gif(frames[0, :3], frames[1, :3], tmp_path / "r.gif", scale=2)
    from PIL import Image

    im = Image.open(p)
    assert im.n_frames == 3 and im.size == (8 * 2 * 2 + 2, 16)


def test_memory_probe_splits_by_window_and_scores_references():
    """The memory metric: one-step predictions of every return frame at the maximum noise with the exploration
    clean; the references need no model (a return frame equal to the last exploration frame scores 100 dB there);
    the summary splits by the true recall distance against the window."""
    from seqmix.tasks.worldmodel_eval import memory_probe

    torch.manual_seed(0)
    model = _model("frame_local_attn")
    B, E, R = 2, 8, 4
    frames = torch.rand(B, E + R, 3, 8, 8) * 2 - 1
    frames[:, E] = frames[:, E - 1]  # the first return frame repeats the last exploration frame
    actions = torch.randint(0, 5, (B, E + R))
    distance = torch.full((B, E + R), -1)
    distance[:, E:] = torch.tensor([1, 3, 5, 7])
    probe = memory_probe(model, frames, actions, distance, E, window=4)
    assert set(probe.psnr) == {"model", "mean_frame", "last_context", "best_window"}
    assert all(len(v) == B * R for v in probe.psnr.values()) and probe.distance[:4] == [1, 3, 5, 7]
    assert probe.psnr["last_context"][0] == 100.0 and probe.psnr["best_window"][0] == 100.0
    assert all(b >= a - 1e-6 for a, b in zip(probe.psnr["last_context"], probe.psnr["best_window"]))
    summ = probe.summary()
    assert set(summ["model"]) == {"psnr_within", "psnr_beyond", "ssim_within", "ssim_beyond"}
    again = memory_probe(model, frames, actions, distance, E, window=4)
    assert again.psnr == probe.psnr  # seeded noise: the same numbers
