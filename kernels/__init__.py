"""seqmix's own GPU kernels with their autograd wrappers, importable as ``seqmix.kernels`` (the repository's
``kernels/`` directory, mapped in pyproject.toml so it cannot clash with PyPI's ``kernels`` package).

Importing this package imports no Triton: kernel modules are loaded on first attribute access, so that
``TRITON_INTERPRET`` (CPU tests) can still be set before anything decorated with ``@triton.jit`` is defined.

* :mod:`seqmix.kernels.ttt_triton`: fused TTT-Linear / TTT-MLP scans (forward + backward), ``ttt_scan_triton``.
* :mod:`seqmix.kernels.ttt_ref`: their plain-PyTorch twin with the same loop structure and hand-written backward.
* :mod:`seqmix.kernels.ttt_tp`: the tensor-parallel TTT-MLP Hopper kernel (CUDA C++ ``ttt_tp.cu``, thread-block
  clusters; unvalidated, opt-in backend ``"tp"``), its emulation :mod:`seqmix.kernels.ttt_tp_ref` and its GPU check
  ``python -m seqmix.kernels.ttt_tp_check``.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ttt_scan_triton", "TTTScanFunction", "ttt_scan_manual"]

_LAZY = {
    "ttt_scan_triton": "ttt_triton",
    "TTTScanFunction": "ttt_triton",
    "ttt_scan_manual": "ttt_ref",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
