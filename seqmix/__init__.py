"""seqmix: interchangeable global-context sequence layers, the backbones they plug into, recipes and benchmarks.

Importing seqmix never requires a GPU library (flash-attn, mamba-ssm, causal-conv1d): missing optional
backends are detected when a layer runs and degrade to the next backend with one warning.
"""

import logging

from . import _source_tree
from . import layers
from .layers import available, build

__version__ = "0.1.0"
logging.getLogger(__name__).addHandler(logging.NullHandler())

__all__ = ["available", "build", "layers", "__version__"]
