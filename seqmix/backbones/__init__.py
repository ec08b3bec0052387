"""Backbones that host registry mixers: the segmented CogVideoX-architecture video DiT (with its token layout),
a small causal LM (language-side comparisons such as MQAR) and the causal video world model."""

from .dit import DiTConfig, SegmentedDiT
from .layout import VideoLayout
from .lm import LMConfig, MixerLM
from .worldmodel import WorldModel, WorldModelConfig, WorldModelState

__all__ = ["DiTConfig", "LMConfig", "MixerLM", "SegmentedDiT", "VideoLayout", "WorldModel", "WorldModelConfig",
           "WorldModelState"]
