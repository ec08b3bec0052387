"""What a maze trajectory is: its settings (``MazeDataConfig``), the record of one trajectory (``Trajectory``,
shapes in :mod:`seqmix.data.maze_data`) and the revisit ground truth computed from poses (``revisits``).

Shared by every trajectory source (the procedural one in :mod:`seqmix.data.maze_data`, MuJoCo's in
:mod:`seqmix.data.maze_memory`), so the sources depend on it and not on each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .maze import MIN_FRAME_SIZE, STYLES, Maze
from .maze_shards import TENSOR_KEYS

__all__ = ["MazeDataConfig", "Trajectory", "revisits", "RETURN_MODES"]

RETURN_MODES = ("reverse", "revisit")


@dataclass
class MazeDataConfig:
    """Trajectory settings. Defaults: small CPU-friendly mazes (7x7 cells, 32x32 frames, 192 + 96 frames).

    Args:
        maze_size: cells per side (procedural: >= 2; memory-maze: 9, 11, 13 or 15).
        loop_fraction: fraction of interior walls between cells removed after carving (loops).
        frame_size: frame height = width in pixels (memory-maze renders at this camera resolution).
        fov_degrees: horizontal field of view of the procedural renderer.
        style: procedural look: ``"textured"`` (a colour per wall block, fog, seams, checkerboard floor) or
            ``"flat"`` (``num_colors`` flat wall colours, no fog or seams, plain floor: a learnable memory target;
            :mod:`seqmix.data.maze`).
        num_colors: wall colours of the ``"flat"`` style (2..12).
        explore_frames: E, frames of the exploration phase (frame 0 included).
        return_frames: R, frames of the return phase (``reverse`` mode: R <= E - 1).
        return_mode: ``"reverse"`` or ``"revisit"`` (module docstring).
        look_prob: exploration: chance per step of a look-around (a turn and its inverse).
        noop_prob: exploration: chance per step of a NOOP.
        seed: dataset seed; trajectory ``i`` uses the maze and walk of ``(seed, i)``.
    """

    maze_size: int = 7
    loop_fraction: float = 0.2
    frame_size: int = 32
    fov_degrees: float = 90.0
    style: str = "textured"
    num_colors: int = 4
    explore_frames: int = 192
    return_frames: int = 96
    return_mode: str = "reverse"
    look_prob: float = 0.15
    noop_prob: float = 0.03
    seed: int = 0

    def validate(self) -> "MazeDataConfig":
        if self.maze_size < 2:
            raise ValueError(f"maze_size must be >= 2 cells per side, got {self.maze_size}")
        if self.frame_size < MIN_FRAME_SIZE:
            raise ValueError(f"frame_size must be >= {MIN_FRAME_SIZE} pixels, got {self.frame_size}")
        if self.style not in STYLES:
            raise ValueError(f"unknown style {self.style!r}; valid: {', '.join(STYLES)}")
        if not 2 <= self.num_colors <= 12:
            raise ValueError(f"num_colors must be in 2..12, got {self.num_colors}")
        if self.explore_frames < 2:
            raise ValueError(f"explore_frames must be >= 2, got {self.explore_frames}")
        if self.return_frames < 0:
            raise ValueError(f"return_frames must be >= 0, got {self.return_frames}")
        if self.return_mode not in RETURN_MODES:
            raise ValueError(f"unknown return_mode {self.return_mode!r}; choose one of {RETURN_MODES}")
        if self.return_mode == "reverse" and self.return_frames > self.explore_frames - 1:
            raise ValueError(f"return_mode='reverse' walks the exploration back, so return_frames must be <= "
                             f"explore_frames - 1 = {self.explore_frames - 1}, got {self.return_frames}")
        for name in ("look_prob", "noop_prob", "loop_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        return self

    @property
    def num_frames(self) -> int:
        return self.explore_frames + self.return_frames


@dataclass
class Trajectory:
    """One trajectory (shapes in the module docstring); ``maze`` is kept for previews (procedural only)."""

    frames: np.ndarray
    actions: np.ndarray
    poses: np.ndarray
    prev_index: np.ndarray
    distance: np.ndarray
    phase: np.ndarray
    maze: Maze | None = None

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k))) for k in TENSOR_KEYS}


def revisits(poses: np.ndarray, pos_tol: float = 0.0, angle_tol: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """For poses ``[F, 3]`` (x, y, heading degrees): ``prev_index [F]``, the most recent earlier frame within
    ``pos_tol`` (each coordinate) and ``angle_tol`` degrees of the same pose (-1: none), and ``distance [F]``
    (``t - prev_index``, -1: none).

    Tolerance 0 means equal poses (the procedural source; a NOOP repeats the pose, distance 1). With a tolerance
    (continuous poses) the frames of the current stay - the run of consecutive frames up to ``t`` that all match
    pose ``t`` - do not count: the place must have been left and come back to.
    """
    poses = np.asarray(poses, dtype=np.float64)
    f = len(poses)
    tolerant = pos_tol > 0 or angle_tol > 0
    prev = np.full(f, -1, dtype=np.int64)
    for t in range(1, f):
        near = np.all(np.abs(poses[:t, :2] - poses[t, :2]) <= pos_tol, axis=1)
        turn = np.abs((poses[:t, 2] - poses[t, 2] + 180.0) % 360.0 - 180.0)
        match = near & (turn <= angle_tol)
        if tolerant:
            miss = np.nonzero(~match)[0]
            match[miss[-1] + 1 if len(miss) else 0:] = False  # drop the current stay
        hit = np.nonzero(match)[0]
        if len(hit):
            prev[t] = hit[-1]
    dist = np.where(prev >= 0, np.arange(f) - prev, -1)
    return prev, dist
