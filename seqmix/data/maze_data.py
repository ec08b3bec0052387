"""Maze trajectories for the world-model task: exploration, then a return to places seen earlier, with the ground
truth of the return path; ``write_mazes`` (the library side of ``seqmix prepare mazes``) and GIF previews.

A trajectory of ``F = explore_frames + return_frames`` frames::

    frames      uint8   [F, H, W, 3]   what the agent sees
    actions     int64   [F]            actions[t] is the action that led from frame t-1 to frame t (actions[0] = NOOP)
    poses       float32 [F, 3]         (x, y, heading): camera position in maze blocks / cells; heading in degrees
                                       from +x toward +y, i.e. atan2(dy, dx) (procedural: 0, 90, 180, 270)
    prev_index  int64   [F]            most recent earlier frame with the same pose (within the source's
                                       tolerance), -1 if none
    distance    int64   [F]            t - prev_index[t] (frames since the place was last seen), -1 if never
    phase       int64   [F]            0 exploration, 1 return

Procedural return modes (``MazeDataConfig.return_mode``):
    ``"reverse"``  the exploration walked back exactly (inverse actions: BACKWARD for FORWARD, left for right), so
                   return frame ``E + k`` has the pose, hence bit-for-bit the frame, of exploration frame
                   ``E - 2 - k``; distances span 2 .. 2 R (fewer where a pose was seen again in between).
    ``"revisit"``  the agent walks forward, by shortest paths, to the poses of early exploration frames (oldest
                   first); frames whose pose was seen before carry its index, the others -1.

Settings, the trajectory record and ``revisits``: :mod:`seqmix.data.maze_trajectory`. Storage and the clip
dataset: :mod:`seqmix.data.maze_shards` (safetensors shards + checksummed ``index.json``).
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .maze import (ACTIONS, DIRECTIONS, FORWARD, INVERSE_ACTION, NOOP, TURN_LEFT, TURN_RIGHT,
                   Maze, Pose, make_maze, render, step, top_down)
from .maze_shards import FORMAT, MazeClips, MazeShardWriter
# The settings and the trajectory record live apart so every source (this one, maze_memory) shares them.
from .maze_trajectory import MazeDataConfig, Trajectory, revisits

logger = logging.getLogger(__name__)

__all__ = ["MazeDataConfig", "Trajectory", "make_trajectory", "revisits", "MazeShardWriter", "MazeClips",
           "write_mazes", "write_preview", "FORMAT", "SOURCES"]

SOURCES = ("procedural", "memory-maze")


def _bfs(maze: Maze, start: tuple[int, int]) -> dict[tuple[int, int], tuple[int, int] | None]:
    """Parents of a breadth-first search over open blocks (insertion order = distance order)."""
    parent: dict = {start: None}
    q = deque([start])
    while q:
        b = q.popleft()
        for n in maze.neighbours(*b):
            if n not in parent:
                parent[n] = b
                q.append(n)
    return parent


def _path_actions(maze: Maze, pose: Pose, goal: tuple[int, int], parent: dict, heading: int | None = None) -> list[int]:
    """Actions (turns + FORWARD) that walk ``pose`` along the BFS tree ``parent`` to block ``goal``, then turn to
    ``heading`` if given."""
    path = [goal]
    while parent[path[-1]] is not None:
        path.append(parent[path[-1]])
    path.reverse()  # path[0] is the current block
    acts, h = [], pose[2]

    def turn_to(want: int) -> None:
        nonlocal h
        d = (want - h) % 4
        acts.extend({0: [], 1: [TURN_RIGHT], 2: [TURN_RIGHT, TURN_RIGHT], 3: [TURN_LEFT]}[d])
        h = want

    for (x0, y0), (x1, y1) in zip(path, path[1:]):
        turn_to(DIRECTIONS.index((x1 - x0, y1 - y0)))
        acts.append(FORWARD)
    if heading is not None:
        turn_to(heading)
    return acts


def _explore(maze: Maze, start: Pose, n: int, cfg: MazeDataConfig, rng: np.random.Generator):
    """Frontier exploration: walk by shortest paths to the nearest unvisited block (ties broken at random; once
    all are visited, to random blocks), with random look-arounds and NOOPs. Returns actions and poses (n each)."""
    actions, poses, pose = [NOOP], [start], start
    visited, plan = {start[:2]}, []
    while len(actions) < n:
        if not plan:
            parent = _bfs(maze, pose[:2])
            order = list(parent)  # by distance
            fresh = [b for b in order if b not in visited]
            if fresh:
                d0 = _depth(parent, fresh[0])
                near = [b for b in fresh if _depth(parent, b) == d0]
                goal = near[int(rng.integers(len(near)))]
            else:
                goal = order[1 + int(rng.integers(len(order) - 1))] if len(order) > 1 else order[0]
            plan = _path_actions(maze, pose, goal, parent) or [TURN_LEFT]
        r = rng.random()
        if r < cfg.look_prob:
            t = TURN_LEFT if rng.random() < 0.5 else TURN_RIGHT
            todo = [t, INVERSE_ACTION[t]]
        elif r < cfg.look_prob + cfg.noop_prob:
            todo = [NOOP]
        else:
            todo = [plan.pop(0)]
        for a in todo:
            if len(actions) == n:
                break
            pose = step(maze, pose, a)
            visited.add(pose[:2])
            actions.append(a)
            poses.append(pose)
    return actions, poses


def _depth(parent: dict, b) -> int:
    d = 0
    while parent[b] is not None:
        b, d = parent[b], d + 1
    return d


def make_trajectory(cfg: MazeDataConfig, index: int = 0) -> Trajectory:
    """Procedural trajectory ``index`` of the dataset ``cfg`` (deterministic in ``(cfg, index)``)."""
    cfg.validate()
    rng = np.random.default_rng([cfg.seed, index])
    maze = make_maze(cfg.maze_size, int(rng.integers(2**62)), cfg.loop_fraction,
                     num_colors=cfg.num_colors if cfg.style == "flat" else None)
    blocks = maze.open_blocks()
    x, y = blocks[int(rng.integers(len(blocks)))]
    e = cfg.explore_frames
    actions, poses = _explore(maze, (x, y, int(rng.integers(4))), e, cfg, rng)
    pose = poses[-1]
    if cfg.return_mode == "reverse":
        for k in range(cfg.return_frames):
            a = INVERSE_ACTION[actions[e - 1 - k]]
            pose = step(maze, pose, a)
            if pose != poses[e - 2 - k]:  # cannot happen for walks made of valid moves; guards the ground truth
                raise RuntimeError(f"reverse walk diverged at return frame {k}: {pose} != {poses[e - 2 - k]}")
            actions.append(a)
            poses.append(pose)
    else:
        stride = max(1, e // 16)
        targets = [poses[i] for i in range(0, e, stride)]
        while len(actions) < cfg.num_frames:
            goal = targets.pop(0) if targets else poses[int(rng.integers(e))]
            for a in _path_actions(maze, pose, goal[:2], _bfs(maze, pose[:2]), heading=goal[2]) or [NOOP]:
                if len(actions) == cfg.num_frames:
                    break
                pose = step(maze, pose, a)
                actions.append(a)
                poses.append(pose)
    frames = np.stack([render(maze, p, cfg.frame_size, cfg.fov_degrees, style=cfg.style) for p in poses])
    pose_arr = np.array([(px + 0.5, py + 0.5, 90.0 * h) for px, py, h in poses], dtype=np.float32)
    prev, dist = revisits(pose_arr)
    phase = (np.arange(cfg.num_frames) >= e).astype(np.int64)
    return Trajectory(frames=frames, actions=np.array(actions, dtype=np.int64), poses=pose_arr, prev_index=prev,
                      distance=dist, phase=phase, maze=maze)


def write_preview(traj: Trajectory, path: str | Path, scale: int | None = None, fps: int = 8) -> Path:
    """Animated GIF of a trajectory: the frame (upscaled ``scale`` times, default to about 128 pixels; red border
    during the return phase) and, for procedural trajectories, the map with the agent beside it. Needs Pillow."""
    from PIL import Image

    scale = scale or max(1, 128 // traj.frames.shape[1])
    pics = []
    for t in range(len(traj.frames)):
        img = np.repeat(np.repeat(traj.frames[t], scale, 0), scale, 1)
        if traj.phase[t]:
            img = img.copy()
            img[:2], img[-2:], img[:, :2], img[:, -2:] = 220, 220, 220, 220
            img[:2, :, 1:], img[-2:, :, 1:], img[:, :2, 1:], img[:, -2:, 1:] = 0, 0, 0, 0
        if traj.maze is not None:
            x, y, deg = traj.poses[t]
            m = top_down(traj.maze, (int(x), int(y), int(round(deg / 90.0)) % 4), scale=max(1, img.shape[0] // traj.maze.size))
            canvas = np.zeros((max(img.shape[0], m.shape[0]), img.shape[1] + 4 + m.shape[1], 3), np.uint8)
            canvas[:img.shape[0], :img.shape[1]] = img
            canvas[:m.shape[0], img.shape[1] + 4:] = m
            img = canvas
        pics.append(Image.fromarray(img))
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    pics[0].save(tmp, format="GIF", save_all=True, append_images=pics[1:], duration=int(1000 / fps), loop=0)
    tmp.replace(path)
    return path


def write_mazes(out: str | Path, cfg: MazeDataConfig | None = None, num_trajectories: int = 64,
                source: str = "procedural", shard_size: int | None = None, preview: bool = False,
                progress: bool = True) -> Path:
    """Generate ``num_trajectories`` trajectories from ``source`` (``"procedural"`` or ``"memory-maze"``) and
    write them as a maze dataset in ``out``; ``preview=True`` also writes ``preview.gif`` of trajectory 0.
    ``shard_size`` (trajectories per shard) defaults to as many as fit in about 256 MB, at most 64."""
    from tqdm.auto import tqdm

    cfg = (cfg or MazeDataConfig()).validate()
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {SOURCES}")
    if num_trajectories < 1:
        raise ValueError(f"num_trajectories must be >= 1, got {num_trajectories}")
    if source != "procedural" and cfg.style != "textured":
        raise ValueError(f"style={cfg.style!r} is a look of the procedural renderer; {source} renders its own")
    if source == "procedural":
        make, tol, names = (lambda i: make_trajectory(cfg, i)), {"pos": 0.0, "angle": 0.0}, list(ACTIONS)
    else:
        from .maze_memory import MEMORY_MAZE_ACTIONS, REVISIT_TOLERANCE, MemoryMazeSource

        src = MemoryMazeSource(cfg)
        make, tol, names = src.trajectory, dict(REVISIT_TOLERANCE), list(MEMORY_MAZE_ACTIONS)
    meta = {"source": source, "explore_frames": cfg.explore_frames, "num_actions": len(names),
            "action_names": names, "revisit_tolerance": tol, "config": asdict(cfg)}
    first = None
    if shard_size is None:
        shard_size = int(np.clip((256 << 20) // (cfg.num_frames * cfg.frame_size**2 * 3), 1, 64))
    with MazeShardWriter(out, shard_size=shard_size, meta=meta) as w:
        for i in tqdm(range(num_trajectories), desc=f"mazes ({source})", disable=not progress):
            traj = make(i)
            first = traj if first is None else first
            w.add(traj.tensors())
    if preview:
        write_preview(first, Path(out) / "preview.gif")
    logger.info("wrote %d %s trajectories of %d frames to %s", num_trajectories, source, cfg.num_frames, out)
    return Path(out)
