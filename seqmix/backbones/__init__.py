"""Backbones that host registry mixers: a small causal LM (language-side comparisons such as MQAR)."""

from .lm import LMConfig, MixerLM

__all__ = ["LMConfig", "MixerLM"]
