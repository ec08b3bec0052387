"""``memory-maze`` (MuJoCo 3D mazes) as a source of maze trajectories in the format of
:mod:`seqmix.data.maze_data`.

Optional: ``pip install 'seqmix[memory-maze]'`` (memory-maze 1.0.3, gym 0.26.2 which memory-maze imports,
mujoco 3.17.0, dm-control 1.0.50) and a headless OpenGL: ``MUJOCO_GL=egl`` (set here when unset; ``osmesa`` also
works where libOSMesa is installed). The environment is used through its dm_env interface
(``memory_maze.tasks``) with ``global_observables=True`` for the agent's position, heading and the maze layout.

Actions (memory-maze's own ids): 0 noop, 1 forward, 2 turn left, 3 turn right, 4 forward + left, 5 forward +
right; turns are continuous (about 18 degrees per step with momentum), so poses never repeat exactly: a place
counts as revisited within :data:`REVISIT_TOLERANCE` (each position coordinate within half a cell, heading within
20 degrees). Poses are ``(x, y, heading degrees)`` in memory-maze's grid coordinates (cells, origin bottom-left,
``y`` up; heading counter-clockwise from +x).

Trajectories: frontier exploration for ``explore_frames`` (a steering controller walks shortest paths over the
layout's cells to the nearest unvisited cell, with random look-arounds), then the return phase walks to the
positions and headings of early exploration frames, oldest first. The ground truth of the return path is what
the environment renders there.
"""

from __future__ import annotations

import math
import os
from collections import deque

import numpy as np

from .maze_trajectory import MazeDataConfig, Trajectory, revisits

__all__ = ["MemoryMazeSource", "MEMORY_MAZE_ACTIONS", "REVISIT_TOLERANCE", "MAZE_SIZES", "memory_maze_available"]

MEMORY_MAZE_ACTIONS = ("noop", "forward", "turn_left", "turn_right", "forward_left", "forward_right")
REVISIT_TOLERANCE = {"pos": 0.5, "angle": 20.0}
MAZE_SIZES = (9, 11, 13, 15)
_INSTALL = ("the memory-maze source needs the optional extra: pip install 'seqmix[memory-maze]' (memory-maze, gym, "
            "mujoco==3.17.0, dm-control==1.0.50) and a headless OpenGL (MUJOCO_GL=egl, libEGL)")


def memory_maze_available() -> bool:
    try:
        _import_tasks()
    except ImportError:
        return False
    return True


def _import_tasks():
    os.environ.setdefault("MUJOCO_GL", "egl")  # headless rendering; must be set before mujoco is imported
    try:
        from memory_maze import tasks
    except ImportError as e:
        raise ImportError(f"{_INSTALL} ({e})") from e
    return tasks


class MemoryMazeSource:
    """Makes trajectory ``i`` of a dataset with ``cfg`` (seeded by ``(cfg.seed, i)``) in a memory-maze episode."""

    def __init__(self, cfg: MazeDataConfig):
        cfg.validate()
        if cfg.maze_size not in MAZE_SIZES:
            raise ValueError(f"memory-maze has maze sizes {MAZE_SIZES}, got maze_size={cfg.maze_size}")
        self.cfg = cfg
        self.tasks = _import_tasks()

    def trajectory(self, index: int) -> Trajectory:
        cfg = self.cfg
        rng = np.random.default_rng([cfg.seed, index])
        make = getattr(self.tasks, f"memory_maze_{cfg.maze_size}x{cfg.maze_size}")
        # Episodes end at memory-maze's time limit (1000 steps for 9x9, 2000 / 3000 / 4000 for the larger
        # mazes): longer trajectories fail with a clear error below.
        env = make(global_observables=True, seed=int(rng.integers(2**31)), camera_resolution=cfg.frame_size,
                   target_color_in_image=False)
        try:
            frames, actions, poses = self._walk(env, rng)
        finally:
            env.close()
        n, e = cfg.num_frames, cfg.explore_frames
        if len(actions) < n:
            raise RuntimeError(f"memory-maze episode ended after {len(actions)} of {n} frames; use fewer frames or a "
                               "larger maze (longer time limit)")
        pose_arr = np.array(poses, dtype=np.float32)
        prev, dist = revisits(pose_arr, REVISIT_TOLERANCE["pos"], REVISIT_TOLERANCE["angle"])
        return Trajectory(frames=np.stack(frames).astype(np.uint8), actions=np.array(actions, dtype=np.int64),
                          poses=pose_arr, prev_index=prev, distance=dist,
                          phase=(np.arange(n) >= e).astype(np.int64))

    def _walk(self, env, rng: np.random.Generator):
        """Exploration, then the return to early poses; returns frames, actions and poses (lists)."""
        cfg = self.cfg
        ts = env.reset()
        obs = ts.observation
        layout = np.asarray(obs["maze_layout"], dtype=bool)  # [y, x], True = free cell
        frames, actions, poses = [obs["image"].copy()], [0], [_pose(obs)]
        visited = {_cell(poses[0])}
        n, e = cfg.num_frames, cfg.explore_frames
        targets: list[tuple[float, float, float]] = []
        look, look_dir = 0, 2
        while len(actions) < n and not ts.last():
            pose = poses[-1]
            if len(actions) < e:
                if look > 0:  # a look-around: a few turn steps one way
                    a, look = look_dir, look - 1
                elif rng.random() < cfg.look_prob / 4:
                    a = look_dir = 2 if rng.random() < 0.5 else 3
                    look = int(rng.integers(1, 5))
                elif rng.random() < cfg.noop_prob:
                    a = 0
                else:
                    a = _steer(layout, pose, _nearest_unvisited(layout, _cell(pose), visited, rng), None)
            else:
                if not targets:
                    stride = max(1, e // 16)
                    targets = [poses[i] for i in range(0, e, stride)]
                a = _steer(layout, pose, _cell(targets[0]), targets[0][2])
                if a == 0:  # arrived and facing the target heading
                    targets.pop(0)
            ts = env.step(a)
            obs = ts.observation
            frames.append(obs["image"].copy())
            actions.append(a)
            poses.append(_pose(obs))
            visited.add(_cell(poses[-1]))
        return frames, actions, poses


def _pose(obs) -> tuple[float, float, float]:
    x, y = obs["agent_pos"]
    dx, dy = obs["agent_dir"]
    return float(x), float(y), math.degrees(math.atan2(dy, dx)) % 360.0


def _cell(pose) -> tuple[int, int]:
    return int(pose[0]), int(pose[1])


def _neighbours(layout: np.ndarray, c: tuple[int, int]):
    x, y = c
    for dx, dy in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        if 0 <= x + dx < layout.shape[1] and 0 <= y + dy < layout.shape[0] and layout[y + dy, x + dx]:
            yield x + dx, y + dy


def _bfs(layout: np.ndarray, start: tuple[int, int]) -> dict:
    parent: dict = {start: None}
    q = deque([start])
    while q:
        c = q.popleft()
        for nb in _neighbours(layout, c):
            if nb not in parent:
                parent[nb] = c
                q.append(nb)
    return parent


def _nearest_unvisited(layout, cell, visited, rng) -> tuple[int, int]:
    order = list(_bfs(layout, cell))
    fresh = [c for c in order if c not in visited]
    return fresh[0] if fresh else order[int(rng.integers(len(order)))]


def _steer(layout: np.ndarray, pose, goal: tuple[int, int], heading: float | None) -> int:
    """One action toward the centre of the next cell on the shortest path to ``goal``; at the goal, turn to
    ``heading`` (returns 0 once within tolerance, or at once when ``heading`` is None)."""
    here = _cell(pose)
    if here == goal:
        if heading is None:
            return 0
        err = (heading - pose[2] + 180.0) % 360.0 - 180.0
        return 0 if abs(err) <= REVISIT_TOLERANCE["angle"] / 2 else (2 if err > 0 else 3)
    parent = _bfs(layout, here)
    if goal not in parent:
        return 2
    nxt = goal
    while parent[nxt] != here:
        nxt = parent[nxt]
    want = math.degrees(math.atan2(nxt[1] + 0.5 - pose[1], nxt[0] + 0.5 - pose[0]))
    err = (want - pose[2] + 180.0) % 360.0 - 180.0  # > 0: turn left (counter-clockwise)
    if abs(err) < 15.0:
        return 1
    if abs(err) < 45.0:
        return 4 if err > 0 else 5
    return 2 if err > 0 else 3
