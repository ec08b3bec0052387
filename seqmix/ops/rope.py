"""Rotary position embeddings: 1D and the 3D (t, h, w) variant of CogVideoX / the TTT video code.

Pairs are interleaved (``x[..., 2i], x[..., 2i+1]`` rotate together), as in both references; ``interleaved=False``
rotates the halves together instead (``x[..., i], x[..., i + K/2]``: GPT-NeoX / fla's ``RotaryEmbedding``, which the
public LaCT LM layer uses). Tokens whose position is negative (text tokens in a video sequence) are left unrotated.
"""

from __future__ import annotations

import torch

__all__ = ["rope_axes_split", "rope_angles", "apply_rope"]


def rope_axes_split(head_dim: int) -> tuple[int, int, int]:
    """Head-dim channels given to (t, h, w): 1/4, 3/8, 3/8 (16/24/24 for head dim 64, as CogVideoX)."""
    if head_dim % 16:
        raise ValueError(f"3D RoPE needs a head dim divisible by 16, got {head_dim}")
    t = head_dim // 4
    h = (head_dim - t) // 2
    return t, h, head_dim - t - h


def _axis_angles(pos: torch.Tensor, dim: int, theta: float) -> torch.Tensor:
    # pos: [...]; returns [..., dim // 2]
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, device=pos.device, dtype=torch.float64) / dim))
    return pos.to(torch.float64)[..., None] * inv


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float = 1e4) -> torch.Tensor:
    """Rotation angles ``[..., T, head_dim // 2]`` (fp64) for integer positions.

    ``positions`` is ``[..., T]`` (1D RoPE over the whole head dim) or ``[..., T, 3]`` (3D RoPE, axes split by
    :func:`rope_axes_split`). Rows with a negative position get angle 0 (no rotation).
    """
    if positions.is_floating_point():
        raise TypeError(f"positions must be an integer tensor, got {positions.dtype}")
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    if positions.dim() >= 2 and positions.shape[-1] == 3:
        dt, dh, dw = rope_axes_split(head_dim)
        ang = torch.cat(
            [_axis_angles(positions[..., 0], dt, theta), _axis_angles(positions[..., 1], dh, theta),
             _axis_angles(positions[..., 2], dw, theta)],
            dim=-1,
        )
        valid = (positions >= 0).all(-1)
    else:
        ang = _axis_angles(positions, head_dim, theta)
        valid = positions >= 0
    return ang * valid[..., None]


def apply_rope(x: torch.Tensor, angles: torch.Tensor, *, interleaved: bool = True) -> torch.Tensor:
    """Rotate the pairs of ``x [B, T, H, K]`` by ``angles [T, K/2]`` or ``[B, T, K/2]``: interleaved pairs
    ``(2i, 2i+1)``, or with ``interleaved=False`` the halves ``(i, i + K/2)``; pair i turns by ``angles[..., i]``."""
    if angles.dim() == 2:
        angles = angles[None]
    if angles.shape[-2] != x.shape[1] or angles.shape[-1] * 2 != x.shape[-1]:
        raise ValueError(f"RoPE angles {tuple(angles.shape)} do not fit input {tuple(x.shape)} [B, T, H, K]")
    if interleaved and x.dtype in _COMPLEX:
        # A pair (x0, x1) is the complex number x0 + i x1, rotated by one complex product: the same arithmetic as
        # below, on contiguous memory (the strided halves below make forward + backward ~5x slower on CPU).
        rot = torch.polar(torch.ones_like(angles), angles).to(_COMPLEX[x.dtype])[:, :, None, :]  # [B|1, T, 1, K/2]
        pairs = x.contiguous().unflatten(-1, (-1, 2))
        if pairs.storage_offset() % 2:  # a complex view must start on a whole complex number
            pairs = pairs.clone()
        return torch.view_as_real(torch.view_as_complex(pairs) * rot).flatten(-2)
    cos = angles.cos().to(x.dtype)[:, :, None, :]  # [B|1, T, 1, K/2]
    sin = angles.sin().to(x.dtype)[:, :, None, :]
    if interleaved:
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
    x0, x1 = x.chunk(2, dim=-1)
    return torch.cat((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1)


_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}
