"""Frame-grid helpers shared by the mixers that read ``x`` as frames of a latent grid (``frame_input``).

Token layout: a clip of F frames, each an ``H x W`` grid, is ``x: [B, F*H*W, D]`` in frame-major order (all tokens
of frame 0 in raster order, then frame 1, ...). Blocks: the grid splits into ``(H / b_h) x (W / b_w)`` blocks of
``b_h x b_w`` tokens; a block's sequence is time-major (its tokens of frame 0 in raster order, then frame 1, ...).
"""

from __future__ import annotations

import torch

__all__ = ["check_pair", "check_block", "num_frames", "fold_blocks", "unfold_blocks"]


def check_pair(name: str, key: str, value) -> tuple[int, int]:
    """``value`` as a pair of positive ints, else a clear error naming ``key``."""
    try:
        a, b = value
    except (TypeError, ValueError):
        raise TypeError(f"{name}: {key} must be a pair of positive ints (e.g. {key}=(8, 8)), got {value!r}") from None
    for v in (a, b):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name}: {key} must be a pair of positive ints, got {value!r}")
    return a, b


def check_block(name: str, grid: tuple[int, int], block: tuple[int, int]) -> None:
    """Raise unless the ``block`` divides the ``grid`` in both directions."""
    (H, W), (bh, bw) = grid, block
    if H % bh or W % bw:
        ok_h = [d for d in range(1, H + 1) if H % d == 0]
        ok_w = [d for d in range(1, W + 1) if W % d == 0]
        raise ValueError(f"{name}: grid {H}x{W} is not divisible by block {bh}x{bw}; b_h must divide H (one of "
                         f"{ok_h}) and b_w must divide W (one of {ok_w})")


def num_frames(name: str, T: int, grid: tuple[int, int]) -> int:
    """Frames in a call of ``T`` tokens; raises unless ``T`` holds whole frames."""
    H, W = grid
    if T % (H * W):
        raise ValueError(f"{name}: {T} tokens are frames that do not match the grid {H}x{W}: T must be a multiple "
                         f"of H*W = {H * W} (frame-major tokens [B, F*H*W, D])")
    return T // (H * W)


def fold_blocks(x: torch.Tensor, grid: tuple[int, int], block: tuple[int, int]) -> torch.Tensor:
    """``x [B, F*H*W, D]`` (frame-major) -> ``[B * nb, F*b_h*b_w, D]``: one time-major sequence per block, blocks
    ``nb = (H / b_h)(W / b_w)`` in raster order folded into the batch (batch-major)."""
    B, T, D = x.shape
    (H, W), (bh, bw) = grid, block
    nh, nw, F = H // bh, W // bw, T // (H * W)
    x = x.reshape(B, F, nh, bh, nw, bw, D).permute(0, 2, 4, 1, 3, 5, 6)  # [B, nh, nw, F, bh, bw, D]
    return x.reshape(B * nh * nw, F * bh * bw, D)


def unfold_blocks(y: torch.Tensor, grid: tuple[int, int], block: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`fold_blocks`: ``[B * nb, F*b_h*b_w, D] -> [B, F*H*W, D]``."""
    (H, W), (bh, bw) = grid, block
    nh, nw = H // bh, W // bw
    Bn, n, D = y.shape
    B, F = Bn // (nh * nw), n // (bh * bw)
    y = y.reshape(B, nh, nw, F, bh, bw, D).permute(0, 3, 1, 4, 2, 5, 6)  # [B, F, nh, bh, nw, bw, D]
    return y.reshape(B, F * H * W, D)
