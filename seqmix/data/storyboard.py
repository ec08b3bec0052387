"""Procedural "storyboard" videos in latent space, for offline training and evaluation where long-range
consistency matters.

Each video is ``S`` segments of 3 s (a window of 13 latent frames; neighbouring windows share one frame, so the
video has ``12 S + 1`` latent frames). A character with one of ``K`` appearances (a latent colour over the
channels) moves over a per-video background. Segments alternate between *present* (the character is on screen,
moving in the direction its text names) and *absent* (empty scene): ``P A P A P ...``. Only the FIRST segment's
text names the appearance; later present segments' text only says "the character returns". The shared frame
belongs to the earlier segment, so the window of a returning segment never shows the character before it
returns: a model with local attention only cannot know the appearance there, a global layer can carry it from
segment 1. :func:`consistency` measures exactly that on model predictions.

Text is a sequence of ``L`` token embeddings per segment from a fixed random table (a stand-in for T5 output).
Shapes: latents ``[F, C, H, W]``, text ``[S * L, text_dim]``, mask ``[F, H, W]`` (character pixels).
Item ``i`` of a dataset is a pure function of ``(config, seed, i)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["StoryboardConfig", "StoryboardDataset", "make_storyboard", "consistency", "latents_to_rgb", "write_gif"]

# Text vocabulary: event words, 4 directions, K appearances, "unknown appearance", padding.
_EVENTS = ("enters", "absent", "returns")
_DIRS = ((0, 1), (0, -1), (1, 0), (-1, 0))  # (dy, dx): right, left, down, up


@dataclass(kw_only=True)
class StoryboardConfig:
    """Procedural storyboard settings.

    Attributes:
        num_segments: S, 3 s segments per video (latent frames ``12 S + 1``).
        channels: latent channels C.
        height, width: latent grid H x W.
        char_size: side of the square character in latent pixels.
        num_appearances: K, the palette of character appearances.
        text_tokens: L, text tokens per segment.
        text_dim: text embedding width.
        noise: std of per-pixel noise added to the latents (texture).
        background: std of the random per-video background colour (0 = a plain scene, so that the character is
            what a model has to get right).
    """

    num_segments: int = 3
    channels: int = 4
    height: int = 8
    width: int = 8
    char_size: int = 6  # as the t2v recipes: a 6x6 character in 8x8 frames is worth carrying across segments
    num_appearances: int = 4
    text_tokens: int = 4
    text_dim: int = 32
    noise: float = 0.02
    background: float = 0.0

    @property
    def num_frames(self) -> int:
        return 12 * self.num_segments + 1

    def validate(self) -> None:
        if self.num_segments < 1:
            raise ValueError(f"num_segments must be >= 1, got {self.num_segments}")
        if self.char_size < 1 or self.char_size > min(self.height, self.width):
            raise ValueError(f"char_size must lie in [1, min(height, width)={min(self.height, self.width)}], got {self.char_size}")
        if self.channels < 1 or self.num_appearances < 2:
            raise ValueError(f"need channels >= 1 and num_appearances >= 2, got {self.channels}, {self.num_appearances}")
        if self.text_tokens < 3:
            raise ValueError(f"text_tokens must be >= 3 (event, direction, appearance), got {self.text_tokens}")

    def events(self) -> list[str]:
        """Per-segment event: enters, then alternating absent / returns."""
        return ["enters"] + ["absent" if i % 2 else "returns" for i in range(1, self.num_segments)]


def _tables(cfg: StoryboardConfig) -> tuple[np.ndarray, np.ndarray]:
    """Fixed (not per-seed) appearance palette [K, C] and word embeddings [V, text_dim]."""
    rng = np.random.default_rng(12345)
    pal = rng.normal(size=(cfg.num_appearances, cfg.channels))
    pal = 1.5 * pal / np.linalg.norm(pal, axis=1, keepdims=True) * np.sqrt(cfg.channels) / 2
    n_words = len(_EVENTS) + len(_DIRS) + cfg.num_appearances + 2
    words = rng.normal(size=(n_words, cfg.text_dim)) / np.sqrt(cfg.text_dim) * 4
    return pal.astype(np.float32), words.astype(np.float32)


def make_storyboard(cfg: StoryboardConfig, seed: int) -> dict:
    """One video: ``latents [F, C, H, W]``, ``text [S*L, D]``, ``mask [F, H, W]``, ``appearance`` (int),
    ``present [S]`` (bool per segment)."""
    cfg.validate()
    rng = np.random.default_rng(seed)
    pal, words = _tables(cfg)
    S, F, C, H, W, c = cfg.num_segments, cfg.num_frames, cfg.channels, cfg.height, cfg.width, cfg.char_size
    app = int(rng.integers(cfg.num_appearances))
    bg = (cfg.background * rng.normal(size=(C, 1, 1)) + 0.25 * cfg.background * rng.normal(size=(C, H, W)))
    bg = bg.astype(np.float32)
    lat = np.broadcast_to(bg, (F, C, H, W)).copy()
    mask = np.zeros((F, H, W), dtype=bool)
    events = cfg.events()
    text = np.zeros((S, cfg.text_tokens, cfg.text_dim), dtype=np.float32)
    pad = len(_EVENTS) + len(_DIRS) + cfg.num_appearances + 1
    unknown = pad - 1
    for s, ev in enumerate(events):
        d = int(rng.integers(len(_DIRS)))
        frames = range(12 * s if s == 0 else 12 * s + 1, 12 * s + 13)  # the shared frame belongs to segment s-1
        if ev != "absent":
            y, x = int(rng.integers(H - c + 1)), int(rng.integers(W - c + 1))
            dy, dx = _DIRS[d]
            for k, f in enumerate(frames):
                yy = int(np.clip(y + dy * (k // 3), 0, H - c))
                xx = int(np.clip(x + dx * (k // 3), 0, W - c))
                lat[f, :, yy : yy + c, xx : xx + c] = pal[app][:, None, None]
                mask[f, yy : yy + c, xx : xx + c] = True
        ids = [_EVENTS.index(ev), len(_EVENTS) + d, (len(_EVENTS) + len(_DIRS) + app) if s == 0 else unknown]
        ids += [pad] * (cfg.text_tokens - len(ids))
        text[s] = words[ids]
    lat += cfg.noise * rng.normal(size=lat.shape).astype(np.float32)
    return {
        "latents": torch.from_numpy(lat),
        "text": torch.from_numpy(text.reshape(S * cfg.text_tokens, cfg.text_dim)),
        "mask": torch.from_numpy(mask),
        "appearance": app,
        "present": torch.tensor([e != "absent" for e in events]),
    }


class StoryboardDataset(Dataset):
    """``size`` procedural storyboards; item ``i`` is ``make_storyboard(cfg, seed * 1_000_003 + i)``."""

    def __init__(self, cfg: StoryboardConfig, size: int, seed: int = 0):
        cfg.validate()
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.cfg, self.size, self.seed = cfg, size, seed

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.size:
            raise IndexError(i)
        return make_storyboard(self.cfg, self.seed * 1_000_003 + i)


def consistency(pred_x0: torch.Tensor, mask: torch.Tensor, appearance: torch.Tensor, cfg: StoryboardConfig,
                segments: list[int] | None = None) -> torch.Tensor:
    """Per-video appearance recall in returning segments: 1 where the mean predicted latent over the character's
    pixels is nearest (cosine) to the true appearance in the palette, else 0. A model that cannot know the
    appearance predicts background or a palette average there and scores near chance (``1 / K``).

    pred_x0: ``[B, F, C, H, W]``; mask: ``[B, F, H, W]``; appearance: ``[B]``. ``segments``: which segments to
    score (default: every returning segment). Returns ``[B]`` floats (chance level ``1 / K``).
    """
    pal, _ = _tables(cfg)
    pal_t = torch.from_numpy(pal).to(pred_x0)
    events = cfg.events()
    segs = segments if segments is not None else [s for s, e in enumerate(events) if e == "returns"]
    if not segs:
        raise ValueError(f"no returning segment to score with num_segments={cfg.num_segments} (need >= 3)")
    frames = [f for s in segs for f in range(12 * s + 1, 12 * s + 13)]
    p = pred_x0[:, frames]  # [B, n, C, H, W]
    m = mask[:, frames].unsqueeze(2).to(p.dtype)  # [B, n, 1, H, W]
    inside = (p * m).sum((1, 3, 4)) / m.sum((1, 3, 4)).clamp_min(1)  # [B, C]
    sims = torch.nn.functional.cosine_similarity(inside[:, None, :], pal_t[None], dim=-1)  # [B, K]
    return (sims.argmax(-1) == appearance.to(sims.device)).float()


def latents_to_rgb(latents: torch.Tensor, scale: int = 8) -> np.ndarray:
    """``[F, C, H, W]`` latents -> ``[F, H*scale, W*scale, 3]`` uint8 (first 3 channels, min-max normalised)."""
    x = latents[:, :3].float()
    if x.shape[1] < 3:
        x = torch.cat([x, x[:, :1].expand(-1, 3 - x.shape[1], -1, -1)], 1)
    lo, hi = x.amin(), x.amax()
    x = ((x - lo) / (hi - lo).clamp_min(1e-6) * 255).round().to(torch.uint8)
    x = x.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def write_gif(latents: torch.Tensor, path: str, fps: int = 8, scale: int = 8) -> str:
    """Write latents as an animated GIF (Pillow)."""
    from PIL import Image

    frames = [Image.fromarray(f) for f in latents_to_rgb(latents, scale)]
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=int(1000 / fps), loop=0)
    return path
