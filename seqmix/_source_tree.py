"""Make ``seqmix.kernels`` importable from a source checkout that is not installed (``PYTHONPATH=<repo root>``).

pyproject.toml maps the top-level ``kernels/`` directory to ``seqmix.kernels``; installed (wheel or editable)
copies resolve it through the installer. A plain checkout on ``PYTHONPATH`` (as ``scripts/gpu_check.sh`` uses it
on a machine without a package index) would not find it: this finder, appended after every other one, maps that
single name to ``<repo root>/kernels`` and nothing else. ``kernels/`` has no ``__init__.py`` (so that nothing named
``kernels`` is importable from the repository root, where it would shadow PyPI's ``kernels``): the package is a
namespace package whose only location is that folder. Loading stays lazy (no Triton is imported here).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from pathlib import Path

_PKG = Path(__file__).resolve().parent
_KERNELS = _PKG.parent / "kernels"


class _KernelsFinder(importlib.abc.MetaPathFinder):
    """Finds ``seqmix.kernels`` in the checkout's top-level ``kernels/`` directory."""

    def find_spec(self, fullname, path, target=None):
        if fullname != "seqmix.kernels":
            return None
        spec = importlib.machinery.ModuleSpec(fullname, None, is_package=True)
        spec.submodule_search_locations = [str(_KERNELS)]
        return spec


# Only in a checkout (kernels/ beside the package, not inside it) and only once per interpreter.
if (_KERNELS / "ttt_triton.py").is_file() and not (_PKG / "kernels").exists():
    if not any(isinstance(f, _KernelsFinder) or type(f).__name__ == "_KernelsFinder" for f in sys.meta_path):
        sys.meta_path.append(_KernelsFinder())
