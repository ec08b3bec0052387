"""Peak tensor memory on any device, CPU included.

On CUDA, use ``torch.cuda.max_memory_allocated``. On CPU there is no allocator statistic, so
:class:`TensorMemoryTracker` accounts for every tensor storage created by an operator inside its context
(forward and autograd backward alike) and frees it when the storage dies: the peak it reports is the high-water
mark of live tensor bytes created in the context (inputs and parameters made before it are not counted).
"""

from __future__ import annotations

import threading
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

__all__ = ["TensorMemoryTracker"]


class TensorMemoryTracker(TorchDispatchMode):
    """Context manager: ``with TensorMemoryTracker() as m: ...; m.peak_bytes``."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._live: dict[int, int] = {}
        self.current_bytes = 0
        self.peak_bytes = 0

    def _free(self, key: int) -> None:
        with self._lock:
            self.current_bytes -= self._live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            st = t.untyped_storage()
            key = id(st)
            with self._lock:
                if key in self._live:
                    continue
                n = st.nbytes()
                self._live[key] = n
                self.current_bytes += n
                self.peak_bytes = max(self.peak_bytes, self.current_bytes)
            weakref.finalize(st, self._free, key)
        return out
