"""Numerical comparison helpers used by the tests (relative error as in fla's ``assert_close``)."""

from __future__ import annotations

import torch

__all__ = ["rel_err", "assert_close"]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||`` in fp64 (0 when both are zero)."""
    a64, b64 = a.detach().to(torch.float64), b.detach().to(torch.float64)
    den = b64.norm().item()
    num = (a64 - b64).norm().item()
    if den == 0.0:
        return num
    return num / den


def assert_close(name: str, a: torch.Tensor, b: torch.Tensor, tol: float) -> None:
    """Assert ``rel_err(a, b) <= tol`` with a message that names the tensor and shows the numbers."""
    if a.shape != b.shape:
        raise AssertionError(f"{name}: shape {tuple(a.shape)} != reference {tuple(b.shape)}")
    if not torch.isfinite(a).all():
        raise AssertionError(f"{name}: non-finite values")
    e = rel_err(a, b)
    if not e <= tol:
        diff = (a.detach().double() - b.detach().double()).abs().max().item()
        raise AssertionError(f"{name}: relative error {e:.3e} > {tol:.1e} (max abs diff {diff:.3e})")
