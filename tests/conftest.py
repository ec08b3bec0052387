"""Test setup. Triton kernels run under the interpreter on CPU machines: TRITON_INTERPRET must be set before
anything decorated with @triton.jit is imported (see shared/spec/environment.md)."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    """Tests marked ``first`` run before the others (a stable sort): the GPU kit's ``tests`` stage ends the contract
    harness at its deadline, and a check that must not be starved by it runs ahead of it."""
    items.sort(key=lambda item: item.get_closest_marker("first") is None)
