"""Segmented video DiT (CogVideoX architecture with window attention and a pluggable global layer).

Modules: :mod:`.config` (:class:`DiTConfig`), :mod:`.blocks` (embeddings, window attention, the block),
:mod:`.global_layer` (:class:`GlobalLayer`), :mod:`.model` (:class:`SegmentedDiT`), :mod:`.loading` (diffusers
CogVideoX checkpoints), :mod:`.public_ttt` (TTT weights of the public ttt-video-dit code). See :mod:`seqmix.backbones.dit.model` for the architecture and parameter counts.
"""

from .config import DiTConfig
from .global_layer import GlobalLayer
from .loading import LoadReport
from .model import SegmentedDiT
from .public_ttt import load_public_dit_ttt, load_public_ttt, ttt_from_public, ttt_to_public

__all__ = ["DiTConfig", "GlobalLayer", "LoadReport", "SegmentedDiT", "load_public_dit_ttt", "load_public_ttt",
           "ttt_from_public", "ttt_to_public"]
