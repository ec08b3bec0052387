"""Test setup. Triton kernels run under the interpreter on CPU machines: TRITON_INTERPRET must be set before
anything decorated with @triton.jit is imported (see shared/spec/environment.md)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
