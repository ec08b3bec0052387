"""seqmix: interchangeable global-context sequence layers, the backbones they plug into, recipes and benchmarks.

Importing seqmix never requires a GPU library (flash-attn, mamba-ssm, causal-conv1d): missing optional
backends are detected when a layer runs and degrade to the next backend with one warning.
"""

import logging
import sys

from . import _source_tree
from . import layers
from .layers import available, build

__version__ = "0.1.0"


class _UnconfiguredStderrHandler(logging.Handler):
    """Prints seqmix's warnings (a backend that fell back, a checkpoint loaded unverified) to stderr while the
    application has configured no logging (the root logger has no handler) - where a library's usual NullHandler
    would swallow them. Once the application configures logging, records reach it by propagation and this handler
    stays silent, so nothing is printed twice."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return
        try:
            sys.stderr.write(f"seqmix: {record.levelname.lower()}: {self.format(record)}\n")
        except Exception:  # noqa: BLE001 - logging must never raise into the caller
            self.handleError(record)


logging.getLogger(__name__).addHandler(_UnconfiguredStderrHandler())

__all__ = ["available", "build", "layers", "__version__"]
