"""Dataset preparation: procedural storyboards and real videos through a (tiny, local) CogVideoX VAE + T5."""

import json

import numpy as np
import pytest
import torch

from seqmix.data.prepare import encode_videos, write_storyboards
from seqmix.data.shards import LatentShards
from seqmix.data.storyboard import StoryboardConfig, make_storyboard


def test_storyboards_to_shards(tmp_path):
    cfg = StoryboardConfig(num_segments=2)
    write_storyboards(tmp_path, cfg, 5, seed=3, shard_size=2, progress=False)
    ds = LatentShards(tmp_path)
    assert len(ds) == 5 and ds.latent_shape == (25, 4, 8, 8)
    assert torch.equal(ds[4]["latents"], make_storyboard(cfg, 3 * 1_000_003 + 4)["latents"])


def test_encode_videos_with_local_encoders(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    transformers = pytest.importorskip("transformers")
    from PIL import Image

    vae = diffusers.AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 2,
        up_block_types=("CogVideoXUpBlock3D",) * 2, block_out_channels=(8, 16), latent_channels=4,
        layers_per_block=1, norm_num_groups=4)
    vae.save_pretrained(tmp_path / "vae")
    enc = transformers.T5EncoderModel(transformers.T5Config(vocab_size=384, d_model=16, d_kv=4, d_ff=32,
                                                            num_layers=1, num_heads=2))
    enc.save_pretrained(tmp_path / "t5")
    transformers.ByT5Tokenizer().save_pretrained(tmp_path / "t5")  # byte-level: needs no vocabulary file
    frames = tmp_path / "clip"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(9):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(frames / f"{i:03d}.png")
    (tmp_path / "m.jsonl").write_text(json.dumps({"frames": str(frames), "captions": ["a cat", "a dog"]}) + "\n")
    encode_videos(tmp_path / "m.jsonl", tmp_path / "out", vae_path=str(tmp_path / "vae"),
                  text_encoder_path=str(tmp_path / "t5"), height=16, width=16, frames_per_segment=4,
                  text_tokens=8, dtype=torch.float32, progress=False)
    ds = LatentShards(tmp_path / "out")
    assert len(ds) == 1 and ds.latent_shape[1:] == (4, 8, 8) and ds.text_shape == (16, 16)
    assert ds[0]["text_mask"][:5].all() and not ds[0]["text_mask"][7]  # "a cat" + eos, then padding
    assert ds.index["encoders"]["vae"].endswith("vae")
    with pytest.raises(ValueError, match="frames"):
        encode_videos(tmp_path / "m.jsonl", tmp_path / "out2", vae_path=str(tmp_path / "vae"),
                      text_encoder_path=str(tmp_path / "t5"), height=16, width=16, frames_per_segment=8,
                      text_tokens=8, dtype=torch.float32, progress=False)
