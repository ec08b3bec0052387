"""Segmented video DiT (CogVideoX architecture with window attention and a pluggable global layer).

Modules: :mod:`.config` (:class:`DiTConfig`), :mod:`.blocks` (embeddings, window attention, the block),
:mod:`.global_layer` (:class:`GlobalLayer`), :mod:`.model` (:class:`SegmentedDiT`), :mod:`.loading` (diffusers
CogVideoX checkpoints). See :mod:`seqmix.backbones.dit.model` for the architecture and parameter counts.
"""

from .config import DiTConfig
from .global_layer import GlobalLayer
from .loading import LoadReport
from .model import SegmentedDiT

__all__ = ["DiTConfig", "GlobalLayer", "LoadReport", "SegmentedDiT"]
