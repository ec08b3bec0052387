"""Third-party kernels in one place: fla, mamba-ssm, causal-conv1d, flash-attn and FlexAttention.

Everything here imports its library on first use (never at ``import seqmix``) and says in one sentence why a
library cannot be used (``*_unavailable() -> None | reason``), which the layers' backend records
(:class:`seqmix.layers.Backend`) turn into a fallback with one warning. The calls that map seqmix's layout onto a
library's (``ssd_fla`` / ``ssd_mamba`` in :mod:`seqmix.ops.ssd`, ``attention_flash`` / ``attention_flex`` in
:mod:`seqmix.ops.attention`) sit beside the naive twins they are tested against.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import sys
import types
from types import SimpleNamespace
from typing import Callable

from seqmix.utils.triton_compat import patch_triton_interpreter, triton_interpreter

__all__ = [
    "causal_conv1d_fn",
    "fla_gated_delta_rule",
    "fla_unavailable",
    "flash_attn_unavailable",
    "flex_unavailable",
    "import_mamba_ssm",
    "mamba_chunk_scan_combined",
    "mamba_ssm_unavailable",
    "patch_triton_interpreter",
    "triton_interpreter",
]


# ----------------------------------------------------------------------------------------------------- fla
@functools.lru_cache(maxsize=None)
def fla_unavailable() -> str | None:
    """``None`` if fla's ``chunk_simple_gla`` imports, else why not (cached)."""
    try:
        importlib.import_module("fla.ops.simple_gla")
    except Exception as e:  # ImportError, or a Triton / driver error raised while fla imports its kernels
        return f"fla is not importable ({type(e).__name__}: {e})"
    return None


_FLA: SimpleNamespace | None = None
_FLA_ERROR: str | None = None


def fla_gated_delta_rule() -> SimpleNamespace:
    """fla's Gated DeltaNet kernels (``chunk``, ``fused_recurrent``, ``causal_conv1d``, ``rms_norm_gated``), imported
    on first use. Raises ImportError with the reason."""
    global _FLA, _FLA_ERROR
    if _FLA is None and _FLA_ERROR is None:
        try:
            from fla.modules.causal_conv1d import causal_conv1d
            from fla.modules.norm.fused_norm_gate import rms_norm_gated
            from fla.ops.gated_delta_rule import chunk_gated_delta_rule, fused_recurrent_gated_delta_rule
        except Exception as e:  # ImportError, or a Triton / driver error raised while importing the kernels
            _FLA_ERROR = f"fla (flash-linear-attention) cannot be imported: {type(e).__name__}: {e}"
        else:
            _FLA = SimpleNamespace(
                chunk=chunk_gated_delta_rule,
                fused_recurrent=fused_recurrent_gated_delta_rule,
                causal_conv1d=causal_conv1d,
                rms_norm_gated=rms_norm_gated,
            )
    if _FLA is None:
        raise ImportError(_FLA_ERROR)
    return _FLA


# ----------------------------------------------------------------------------------------------- mamba-ssm
def import_mamba_ssm(name: str) -> types.ModuleType:
    """Import submodule ``name`` of mamba-ssm (e.g. ``"mamba_ssm.ops.triton.ssd_combined"``).

    mamba-ssm 2.3.2.post1's package ``__init__`` imports its compiled ``selective_scan_cuda`` extension, so a pure-Python
    install (``MAMBA_SKIP_CUDA_BUILD=TRUE``, see shared/spec/environment.md) cannot ``import mamba_ssm`` although its
    Triton SSD kernels and ``modules/ssd_minimal.py`` need no compiled code (fixed upstream after that release). When
    the normal import fails, the package is loaded once under a stand-in parent that skips ``__init__``; afterwards
    ``sys.modules`` is restored to what it was, so other libraries still see ``import mamba_ssm`` fail as before.
    Raises ImportError when mamba-ssm is not installed.
    """
    before = set(sys.modules)

    def restore() -> None:  # drop every mamba_ssm module this call added (a failed import leaves submodules behind)
        for k in set(sys.modules) - before:
            if k == "mamba_ssm" or k.startswith("mamba_ssm."):
                del sys.modules[k]

    try:
        return importlib.import_module(name)
    except ImportError as first:
        restore()
        spec = importlib.util.find_spec("mamba_ssm") if "mamba_ssm" not in sys.modules else None
        if spec is None or not spec.submodule_search_locations:
            raise
        stub = types.ModuleType("mamba_ssm")
        stub.__path__ = list(spec.submodule_search_locations)
        stub.__spec__ = spec
        sys.modules["mamba_ssm"] = stub
        try:
            return importlib.import_module(name)
        except Exception as e:
            raise ImportError(f"cannot import {name} ({type(e).__name__}: {e}); package import failed with: {first}") from e
        finally:
            restore()


@functools.lru_cache(maxsize=None)
def mamba_chunk_scan_combined() -> Callable:
    """mamba-ssm's fused Triton SSD ``mamba_chunk_scan_combined`` (imported on first call)."""
    return import_mamba_ssm("mamba_ssm.ops.triton.ssd_combined").mamba_chunk_scan_combined


@functools.lru_cache(maxsize=None)
def mamba_ssm_unavailable() -> str | None:
    """``None`` if mamba-ssm's ``mamba_chunk_scan_combined`` imports, else why not (cached)."""
    try:
        mamba_chunk_scan_combined()
    except Exception as e:
        return f"mamba-ssm is not importable ({type(e).__name__}: {e})"
    return None


def causal_conv1d_fn() -> Callable | None:
    """Dao-AILab causal-conv1d's CUDA conv if importable, else None (the PyTorch conv is used)."""
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:
        return None
    return causal_conv1d_fn


# ------------------------------------------------------------------------------------ flash-attn and Flex
@functools.lru_cache(maxsize=1)
def flash_attn_unavailable() -> str | None:
    """``None`` if ``flash_attn.flash_attn_func`` imports (with its CUDA extension), else why not."""
    try:
        from flash_attn import flash_attn_func  # noqa: F401
    except Exception as e:  # ImportError, or OSError / undefined symbols from a broken CUDA extension
        return f"flash-attn does not import ({type(e).__name__}: {e})"
    return None


def flex_unavailable() -> str | None:
    """``None`` if FlexAttention imports in this torch, else why not."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except Exception as e:  # pragma: no cover - torch >= 2.5 has it
        return f"torch.nn.attention.flex_attention does not import ({e})"
    return None
