"""seqmix layers: one registry of interchangeable sequence mixers.

>>> from seqmix import layers
>>> layer = layers.build("ttt_mlp", dim=256, num_heads=4, mini_batch_size=16)
>>> y = layer(x)  # x: [B, T, 256] -> y: [B, T, 256]

``available()`` lists the names; ``config_class(name)`` gives the typed config whose fields ``build`` accepts;
``mixer_class(name)`` the class, whose attributes declare what consumers need (see :class:`Mixer`).
"""

import importlib as _importlib
import pkgutil as _pkgutil

from .base import (Backend, BackendUnavailable, Mixer, MixerConfig, available, build, config_class, mixer_class,
                   register, sequence_mixers)
from .ttt import TTTLinear, TTTMLP, TTTState
from .wrappers import Bidirectional, TanhGate

# Import every module of this package: each mixer family (one file per family) registers itself on import; the
# support modules (base, cost, sizing, wrappers) register nothing.
for _m in _pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        _importlib.import_module(f"{__name__}.{_m.name}")

__all__ = [
    "Backend",
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
    "mixer_class",
    "register",
    "sequence_mixers",
]
