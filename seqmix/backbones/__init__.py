"""Backbones that host registry mixers: the segmented CogVideoX-architecture video DiT (with its token layout)
and a small causal LM (language-side comparisons such as MQAR)."""

from .dit import DiTConfig, SegmentedDiT
from .layout import VideoLayout
from .lm import LMConfig, MixerLM

__all__ = ["DiTConfig", "LMConfig", "MixerLM", "SegmentedDiT", "VideoLayout"]
