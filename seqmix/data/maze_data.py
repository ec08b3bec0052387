"""Maze trajectories for the world-model task: exploration then a return to places seen earlier, with ground truth;
their on-disk format (safetensors shards + checksummed ``index.json``) and a clip dataset.

A trajectory of ``F = explore_frames + return_frames`` frames::

    frames      uint8   [F, H, W, 3]   what the agent sees
    actions     int64   [F]            actions[t] is the action that led from frame t-1 to frame t (actions[0] = NOOP)
    poses       float32 [F, 3]         (x, y, heading in degrees): camera position in maze blocks / cells, heading
                                       clockwise on the map from +x (procedural: 0, 90, 180, 270)
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

Dataset directory::

    index.json   {"format": "seqmix-mazes/v1", "source": ..., "frames": F, "explore_frames": E,
                  "frame_shape": [H, W, 3], "num_actions": A, "action_names": [...], "revisit_tolerance": {...},
                  "config": {...}, "shards": [{"file", "num_examples", "sha256"}, ...]}
    shard-00000.safetensors   the tensors above with a leading trajectory axis [n, ...]
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from .maze import (ACTIONS, DIRECTIONS, FORWARD, INVERSE_ACTION, MIN_FRAME_SIZE, NOOP, TURN_LEFT,
                   TURN_RIGHT, Maze, Pose, make_maze, render, step, top_down)
from .shards import atomic_write_bytes, sha256_file

logger = logging.getLogger(__name__)

__all__ = ["MazeDataConfig", "Trajectory", "make_trajectory", "revisits", "MazeShardWriter", "MazeClips",
           "write_mazes", "write_preview", "FORMAT", "SOURCES"]

FORMAT = "seqmix-mazes/v1"
SOURCES = ("procedural", "memory-maze")
RETURN_MODES = ("reverse", "revisit")
_KEYS = ("frames", "actions", "poses", "prev_index", "distance", "phase")


@dataclass
class MazeDataConfig:
    """Trajectory settings. Defaults: small CPU-friendly mazes (7x7 cells, 32x32 frames, 192 + 96 frames).

    Args:
        maze_size: cells per side (procedural: >= 2; memory-maze: 9, 11, 13 or 15).
        loop_fraction: fraction of interior walls between cells removed after carving (loops).
        frame_size: frame height = width in pixels (memory-maze renders at this camera resolution).
        fov_degrees: horizontal field of view of the procedural renderer.
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
        return {k: torch.from_numpy(np.ascontiguousarray(getattr(self, k))) for k in _KEYS}


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
    maze = make_maze(cfg.maze_size, int(rng.integers(2**62)), cfg.loop_fraction)
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
    frames = np.stack([render(maze, p, cfg.frame_size, cfg.fov_degrees) for p in poses])
    pose_arr = np.array([(px + 0.5, py + 0.5, 90.0 * h) for px, py, h in poses], dtype=np.float32)
    prev, dist = revisits(pose_arr)
    phase = (np.arange(cfg.num_frames) >= e).astype(np.int64)
    return Trajectory(frames=frames, actions=np.array(actions, dtype=np.int64), poses=pose_arr, prev_index=prev,
                      distance=dist, phase=phase, maze=maze)


class MazeShardWriter:
    """Append trajectories of one shape; writes a shard every ``shard_size`` and ``index.json`` on ``close()``.

    Files are written atomically (temporary file + fsync + rename) with their sha256 in the index.
    """

    def __init__(self, out_dir: str | Path, *, shard_size: int = 64, meta: dict | None = None):
        from safetensors.torch import save  # noqa: F401  (fail early if safetensors is missing)

        if shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {shard_size}")
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if (self.dir / "index.json").exists():
            raise FileExistsError(f"{self.dir} already holds a dataset (index.json); choose an empty directory")
        self.shard_size, self.meta = shard_size, dict(meta or {})
        self._buf: list[dict[str, torch.Tensor]] = []
        self._shards: list[dict] = []
        self._shape: tuple | None = None

    def add(self, traj: Trajectory) -> None:
        t = traj.tensors()
        shape = tuple(t["frames"].shape)
        if t["frames"].dim() != 4 or shape[-1] != 3 or t["frames"].dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 [F, H, W, 3], got {t['frames'].dtype} {shape}")
        bad = [k for k in _KEYS[1:] if t[k].shape[0] != shape[0]]
        if bad:
            raise ValueError(f"{bad} do not have one entry per frame ({shape[0]} frames)")
        if self._shape is None:
            self._shape = shape
        elif shape != self._shape:
            raise ValueError(f"trajectory frames {shape} differ from the dataset's {self._shape}; one shape per dataset")
        self._buf.append(t)
        if len(self._buf) == self.shard_size:
            self._flush()

    def _flush(self) -> None:
        from safetensors.torch import save

        if not self._buf:
            return
        name = f"shard-{len(self._shards):05d}.safetensors"
        data = save({k: torch.stack([b[k] for b in self._buf]).contiguous() for k in _KEYS})
        atomic_write_bytes(self.dir / name, data)
        self._shards.append({"file": name, "num_examples": len(self._buf), "sha256": hashlib.sha256(data).hexdigest()})
        self._buf = []

    def close(self) -> Path:
        self._flush()
        if not self._shards:
            raise ValueError("no trajectories were added")
        index = {"format": FORMAT, **self.meta, "frames": self._shape[0], "frame_shape": list(self._shape[1:]),
                 "num_trajectories": sum(s["num_examples"] for s in self._shards), "shards": self._shards}
        atomic_write_bytes(self.dir / "index.json", json.dumps(index, indent=1).encode())
        return self.dir / "index.json"

    def __enter__(self) -> "MazeShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


class MazeClips(Dataset):
    """Clips of the trajectories in a maze dataset directory.

    ``clip_frames=None``: one item per trajectory (all frames). Otherwise windows of ``clip_frames`` frames: at
    offsets ``0, stride, 2 stride, ...`` (``stride`` defaults to ``clip_frames``; every window that fits), or with
    ``random_offset=True`` one window per trajectory at an offset drawn from torch's global generator (seeded per
    worker by the DataLoader / Lightning).

    Items: ``frames [L, 3, H, W]`` float32 in [-1, 1], ``actions [L]`` int64, ``poses [L, 3]`` float32,
    ``prev_index [L]`` int64 (clip-relative: -1 where the place was not seen earlier in the clip), ``distance
    [L]`` int64 (-1 likewise), ``phase [L]`` int64, ``trajectory`` and ``offset`` (ints: where the clip comes from).
    Shards are verified against their sha256 on first read (``verify=True``); one shard is cached at a time.
    """

    def __init__(self, path: str | Path, clip_frames: int | None = None, stride: int | None = None,
                 random_offset: bool = False, verify: bool = True):
        self.dir = Path(path)
        index = self.dir / "index.json"
        if not index.is_file():
            raise FileNotFoundError(f"no maze dataset at {self.dir}: index.json is missing (write one with "
                                    "`seqmix prepare mazes`)")
        self.index = json.loads(index.read_text())
        if self.index.get("format") != FORMAT:
            raise ValueError(f"{index}: format {self.index.get('format')!r} is not {FORMAT!r}")
        f = self.num_frames
        if clip_frames is not None and not 1 <= clip_frames <= f:
            raise ValueError(f"clip_frames must be in [1, {f}] (the trajectories' length), got {clip_frames}")
        if stride is not None and stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.clip = clip_frames or f
        self.random_offset = random_offset
        self.offsets = [0] if random_offset else list(range(0, f - self.clip + 1, stride or self.clip))
        self.verify = verify
        self._starts, n = [], 0
        for s in self.index["shards"]:
            if not (self.dir / s["file"]).is_file():
                raise FileNotFoundError(f"shard {s['file']} listed in {index} is missing")
            self._starts.append(n)
            n += s["num_examples"]
        self.num_trajectories = n
        self._cache: tuple[int, dict] | None = None
        self._verified: set[int] = set()

    @property
    def num_frames(self) -> int:
        return int(self.index["frames"])

    @property
    def explore_frames(self) -> int:
        return int(self.index["explore_frames"])

    def __len__(self) -> int:
        return self.num_trajectories * len(self.offsets)

    def _load(self, k: int) -> dict:
        from safetensors.torch import load_file

        if self._cache is not None and self._cache[0] == k:
            return self._cache[1]
        meta = self.index["shards"][k]
        path = self.dir / meta["file"]
        if self.verify and k not in self._verified:
            got = sha256_file(path)
            if got != meta["sha256"]:
                raise ValueError(f"checksum mismatch for {path}: index says {meta['sha256'][:12]}..., file is "
                                 f"{got[:12]}... (the file is corrupt or was changed; write the dataset again)")
            self._verified.add(k)
        data = load_file(str(path))
        self._cache = (k, data)
        return data

    def trajectory(self, i: int) -> dict[str, torch.Tensor]:
        """The raw tensors of trajectory ``i`` (uint8 frames ``[F, H, W, 3]``, absolute indices)."""
        if not 0 <= i < self.num_trajectories:
            raise IndexError(f"trajectory {i} out of range for {self.num_trajectories} trajectories")
        k = max(j for j, s in enumerate(self._starts) if s <= i)
        d = self._load(k)
        return {key: d[key][i - self._starts[k]] for key in _KEYS}

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} clips")
        traj, w = divmod(i, len(self.offsets))
        off = (int(torch.randint(0, self.num_frames - self.clip + 1, ())) if self.random_offset
               else self.offsets[w])
        t = self.trajectory(traj)
        sl = slice(off, off + self.clip)
        prev = t["prev_index"][sl] - off
        seen = prev >= 0
        return {"frames": t["frames"][sl].permute(0, 3, 1, 2).float() / 127.5 - 1.0,
                "actions": t["actions"][sl].long(), "poses": t["poses"][sl].float(),
                "prev_index": torch.where(seen, prev, -1).long(),
                "distance": torch.where(seen, t["distance"][sl], -1).long(),
                "phase": t["phase"][sl].long(), "trajectory": traj, "offset": off}


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
                source: str = "procedural", shard_size: int = 64, preview: bool = False,
                progress: bool = True) -> Path:
    """Generate ``num_trajectories`` trajectories from ``source`` (``"procedural"`` or ``"memory-maze"``) and
    write them as a maze dataset in ``out``; ``preview=True`` also writes ``preview.gif`` of trajectory 0."""
    from tqdm.auto import tqdm

    cfg = (cfg or MazeDataConfig()).validate()
    if source not in SOURCES:
        raise ValueError(f"unknown source {source!r}; choose one of {SOURCES}")
    if num_trajectories < 1:
        raise ValueError(f"num_trajectories must be >= 1, got {num_trajectories}")
    if source == "procedural":
        make, tol, names = (lambda i: make_trajectory(cfg, i)), {"pos": 0.0, "angle": 0.0}, list(ACTIONS)
    else:
        from .maze_memory import MEMORY_MAZE_ACTIONS, REVISIT_TOLERANCE, MemoryMazeSource

        src = MemoryMazeSource(cfg)
        make, tol, names = src.trajectory, dict(REVISIT_TOLERANCE), list(MEMORY_MAZE_ACTIONS)
    meta = {"source": source, "explore_frames": cfg.explore_frames, "num_actions": len(names),
            "action_names": names, "revisit_tolerance": tol, "config": asdict(cfg)}
    first = None
    with MazeShardWriter(out, shard_size=shard_size, meta=meta) as w:
        for i in tqdm(range(num_trajectories), desc=f"mazes ({source})", disable=not progress):
            traj = make(i)
            first = traj if first is None else first
            w.add(traj)
    if preview:
        write_preview(first, Path(out) / "preview.gif")
    logger.info("wrote %d %s trajectories of %d frames to %s", num_trajectories, source, cfg.num_frames, out)
    return Path(out)
