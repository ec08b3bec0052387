"""Which optional extra of seqmix brings a module, so that a command or backend that needs a missing one says in one
line what to install (``pip install 'seqmix[train]'``) instead of a traceback. The table follows pyproject.toml's
``[project.optional-dependencies]`` (tests/test_packaging.py checks that every extra named here exists)."""

from __future__ import annotations

__all__ = ["EXTRA_OF", "missing_extra"]

#: top-level import name -> the extra that installs it
EXTRA_OF = {
    "lightning": "train", "torchmetrics": "train", "jsonargparse": "train", "yaml": "train", "tqdm": "train",
    "safetensors": "train", "PIL": "train",
    "triton": "triton",
    "fla": "fla",
    "mamba_ssm": "mamba",
    "diffusers": "video", "transformers": "video", "imageio": "video",
    "matplotlib": "bench",
    "flash_attn": "gpu", "causal_conv1d": "gpu",
    "pytest": "dev", "hypothesis": "dev",
}


def missing_extra(error: BaseException) -> str | None:
    """The one-line message for ``error`` if it is a missing optional dependency of seqmix, else None."""
    if not isinstance(error, ModuleNotFoundError) or not error.name:
        return None
    root = error.name.split(".")[0]
    extra = EXTRA_OF.get(root)
    if extra is None:
        return None
    return f"the optional dependency {root!r} is not installed: pip install 'seqmix[{extra}]' (or 'seqmix[all]')"

