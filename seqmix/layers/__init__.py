"""seqmix layers: one registry of interchangeable sequence mixers.

>>> from seqmix import layers
>>> layer = layers.build("ttt_mlp", dim=256, num_heads=4, mini_batch_size=16)
>>> y = layer(x)  # x: [B, T, 256] -> y: [B, T, 256]

``available()`` lists the names; ``config_class(name)`` gives the typed config whose fields ``build`` accepts.
"""

from .base import BackendUnavailable, Mixer, MixerConfig, available, build, config_class, register
from .ttt import TTTLinear, TTTMLP, TTTState
from .wrappers import Bidirectional, TanhGate

__all__ = [
    "BackendUnavailable",
    "Bidirectional",
    "Mixer",
    "MixerConfig",
    "TTTLinear",
    "TTTMLP",
    "TTTState",
    "TanhGate",
    "available",
    "build",
    "config_class",
    "register",
]
