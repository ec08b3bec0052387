"""Fill the latent shard format (:mod:`seqmix.data.shards`) from real videos, or from the procedural
storyboards.

Real data: a JSON-lines manifest, one video per line::

    {"frames": "clips/0001.mp4" | "clips/0001/" (a folder of PNG/JPG frames), "captions": ["seg 1 text", ...]}

Frames are resized to ``height x width``, scaled to [-1, 1] and encoded by a CogVideoX VAE
(``diffusers.AutoencoderKLCogVideoX``) loaded from a LOCAL directory; captions (one per 3 s segment) by a local
T5 encoder (``transformers.T5EncoderModel`` + tokenizer, padded to ``text_tokens``). Nothing is downloaded:
``local_files_only=True`` everywhere. Both encoders are optional dependencies used only here.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .shards import ShardWriter
from .storyboard import StoryboardConfig, make_storyboard

logger = logging.getLogger(__name__)

__all__ = ["write_storyboards", "encode_videos", "read_frames"]


def write_storyboards(out: str | Path, cfg: StoryboardConfig, num_examples: int, seed: int = 0,
                      shard_size: int = 256, progress: bool = True) -> Path:
    """Write ``num_examples`` procedural storyboards (already latents) as a shard dataset."""
    layout = {"num_segments": cfg.num_segments, "text_tokens": cfg.text_tokens, "source": "storyboard",
              "config": cfg.__dict__}
    with ShardWriter(out, shard_size=shard_size, dtype=torch.float32, layout=layout) as w:
        for i in tqdm(range(num_examples), desc="storyboards", disable=not progress):
            ex = make_storyboard(cfg, seed * 1_000_003 + i)
            w.add(ex["latents"], ex["text"])
    return Path(out)


def read_frames(src: str | Path, height: int, width: int) -> torch.Tensor:
    """Frames of a video file (needs imageio) or a folder of images -> ``[F, 3, H, W]`` in [-1, 1]."""
    from PIL import Image

    src = Path(src)
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
        if not files:
            raise FileNotFoundError(f"no PNG/JPG frames in {src}")
        imgs = [Image.open(p).convert("RGB") for p in files]
    elif src.is_file():
        try:
            import imageio.v3 as iio
        except ImportError as e:
            raise ImportError(f"reading {src.suffix} videos needs imageio (+ imageio-ffmpeg); or pass a folder of frames") from e
        imgs = [Image.fromarray(f).convert("RGB") for f in iio.imiter(src)]
    else:
        raise FileNotFoundError(f"video {src} does not exist")
    arr = np.stack([np.asarray(im.resize((width, height), Image.BICUBIC)) for im in imgs])  # [F, H, W, 3]
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0


@torch.no_grad()
def encode_videos(manifest: str | Path, out: str | Path, *, vae_path: str, text_encoder_path: str,
                  height: int = 480, width: int = 720, frames_per_segment: int = 48, text_tokens: int = 226,
                  shard_size: int = 64, device: str = "cpu", dtype: torch.dtype = torch.bfloat16,
                  tokenizer=None, progress: bool = True) -> Path:
    """Encode a manifest of videos with a local CogVideoX VAE and T5 encoder into a shard dataset.

    The VAE compresses time 4x after a leading frame (49 pixel frames -> 13 latent frames = one 3 s window), so a
    video with ``S`` captions needs ``frames_per_segment * S + 1`` pixel frames (-> ``12 S + 1`` latent frames
    with the default 48); extra frames are dropped.
    """
    from diffusers import AutoencoderKLCogVideoX
    from transformers import AutoTokenizer, T5EncoderModel

    vae = AutoencoderKLCogVideoX.from_pretrained(vae_path, local_files_only=True).to(device, dtype).eval()
    enc = T5EncoderModel.from_pretrained(text_encoder_path, local_files_only=True).to(device, dtype).eval()
    tok = tokenizer or AutoTokenizer.from_pretrained(text_encoder_path, local_files_only=True)
    lines = [json.loads(s) for s in Path(manifest).read_text().splitlines() if s.strip()]
    if not lines:
        raise ValueError(f"manifest {manifest} lists no videos")
    layout = {"text_tokens": text_tokens, "frames_per_segment": frames_per_segment, "source": str(manifest)}
    encoders = {"vae": str(vae_path), "text_encoder": str(text_encoder_path)}
    with ShardWriter(out, shard_size=shard_size, layout=layout, encoders=encoders) as w:
        for rec in tqdm(lines, desc="encode", disable=not progress):
            caps = rec["captions"]
            frames = read_frames(rec["frames"], height, width)
            need = frames_per_segment * len(caps) + 1
            if frames.shape[0] < need:
                raise ValueError(f"{rec['frames']}: {frames.shape[0]} frames < {need} needed for {len(caps)} segments")
            video = frames[:need].permute(1, 0, 2, 3).unsqueeze(0).to(device, dtype)  # [1, 3, F, H, W]
            lat = vae.encode(video).latent_dist.sample() * vae.config.scaling_factor  # [1, C, F', H', W']
            t = tok(caps, max_length=text_tokens, padding="max_length", truncation=True, return_tensors="pt")
            emb = enc(input_ids=t.input_ids.to(device), attention_mask=t.attention_mask.to(device)).last_hidden_state
            w.add(lat[0].permute(1, 0, 2, 3).float(), emb.flatten(0, 1).float(), t.attention_mask.flatten().bool())
    return Path(out)
