"""Procedural first-person mazes in numpy: grid maze generation, agent poses and actions, a column ray caster.

The always-available data source of the world-model task (spec/world-model.md); ``memory-maze`` (MuJoCo) writes
the same on-disk format through :mod:`seqmix.data.maze_memory`.

Geometry
    A maze of ``n x n`` cells is a block grid ``walls [2n+1, 2n+1]`` (True = wall block). Cell ``(i, j)`` sits at
    block ``(2i+1, 2j+1)``; the blocks between cells are walls or open corridors. Randomised depth-first search
    carves a perfect maze, then a fraction ``loop_fraction`` of the remaining interior walls between cells is
    opened so the maze has loops (more than one way back to a place). Every wall block has its own colour (seeded),
    so places are distinguishable; the floor is a two-tone checkerboard of block-sized tiles, the ceiling a flat
    colour; both walls and floor fade with distance (style ``"textured"``, the default). Style ``"flat"`` is a
    learnable memory target: wall blocks take one of ``num_colors`` flat, well-separated colours (seeded per
    block), no fog, no seams, a one-tone floor (what a frame shows is then mostly which colours are where).

Coordinates and headings
    Block ``(x, y)``: ``x`` is the column (grows east), ``y`` the row (grows south), so ``walls[y, x]``. The agent
    stands at a block centre ``(x + 0.5, y + 0.5)``. Its heading ``h`` counts quarter turns clockwise on the map
    from east: ``h = 0`` east (+x), ``1`` south (+y), ``2`` west (-x), ``3`` north (-y); ``90 * h`` degrees.
    A pose is ``(x, y, h)`` (ints).

Actions (ids)
    ``0`` NOOP, ``1`` FORWARD (one block; blocked by a wall: the pose does not change), ``2`` TURN_LEFT (90
    degrees counter-clockwise on the map), ``3`` TURN_RIGHT (90 degrees clockwise), ``4`` BACKWARD (one block
    back, heading kept). Turns are 90 degrees so poses are discrete and a revisited pose renders exactly the same
    frame; BACKWARD exists so a trajectory can be walked back exactly (each action has an inverse:
    :data:`INVERSE_ACTION`).

Frames
    ``render(maze, pose, frame_size)`` -> ``uint8 [H, W, 3]`` (``H = W = frame_size``), one ray per column cast
    through the block grid (DDA), horizontal field of view ``fov_degrees`` (90 by default, so the four headings
    tile the full circle). Deterministic: float64 numpy only, no randomness at render time; the same maze and pose
    give a bit-identical frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Maze", "make_maze", "render", "STYLES", "cast_rays", "step", "Pose", "ACTIONS", "NOOP", "FORWARD", "TURN_LEFT",
           "TURN_RIGHT", "BACKWARD", "NUM_ACTIONS", "INVERSE_ACTION", "DIRECTIONS", "MIN_FRAME_SIZE"]

NOOP, FORWARD, TURN_LEFT, TURN_RIGHT, BACKWARD = 0, 1, 2, 3, 4
ACTIONS = ("noop", "forward", "turn_left", "turn_right", "backward")  # index = action id
NUM_ACTIONS = len(ACTIONS)
INVERSE_ACTION = (NOOP, BACKWARD, TURN_RIGHT, TURN_LEFT, FORWARD)
DIRECTIONS = ((1, 0), (0, 1), (-1, 0), (0, -1))  # heading h -> (dx, dy): east, south, west, north
MIN_FRAME_SIZE = 8  # below this a frame cannot show a wall, floor and ceiling apart

Pose = tuple[int, int, int]  # (x, y, heading)

_CEILING = np.array([46.0, 52.0, 74.0])
_FLOOR = (np.array([136.0, 126.0, 110.0]), np.array([72.0, 66.0, 60.0]))  # checkerboard tones
_FOG = 0.12  # brightness falls as exp(-_FOG * distance): depth cue, far walls darker
STYLES = ("textured", "flat")  # renderer / wall-colour styles (module docstring)


@dataclass(frozen=True)
class Maze:
    """A block-grid maze: ``walls [S, S]`` bool (True = wall block), ``colors [S, S, 3]`` uint8 per wall block.

    ``S = 2 n + 1`` for ``n x n`` cells; the border is all wall, so every ray hits a wall.
    """

    walls: np.ndarray
    colors: np.ndarray

    @property
    def size(self) -> int:
        return self.walls.shape[0]

    def is_open(self, x: int, y: int) -> bool:
        return 0 <= x < self.walls.shape[1] and 0 <= y < self.walls.shape[0] and not self.walls[y, x]

    def open_blocks(self) -> list[tuple[int, int]]:
        """Open blocks as ``(x, y)``, row-major."""
        ys, xs = np.nonzero(~self.walls)
        return [(int(x), int(y)) for y, x in zip(ys, xs)]

    def neighbours(self, x: int, y: int) -> list[tuple[int, int]]:
        return [(x + dx, y + dy) for dx, dy in DIRECTIONS if self.is_open(x + dx, y + dy)]


def make_maze(cells: int, seed: int, loop_fraction: float = 0.2, num_colors: int | None = None) -> Maze:
    """A random ``cells x cells`` maze: depth-first-search carving, then ``loop_fraction`` of the remaining
    interior walls between cells opened (loops), then a colour per wall block: random hue and brightness, or with
    ``num_colors`` one of that many flat colours (evenly spaced hues, full saturation). Same arguments, same maze."""
    if num_colors is not None and not 2 <= num_colors <= 12:
        raise ValueError(f"num_colors must be None (a colour per block) or 2..12 flat colours, got {num_colors}")
    if cells < 2:
        raise ValueError(f"maze size must be >= 2 cells per side, got {cells}")
    if not 0.0 <= loop_fraction <= 1.0:
        raise ValueError(f"loop_fraction must be in [0, 1], got {loop_fraction}")
    rng = np.random.default_rng(seed)
    s = 2 * cells + 1
    walls = np.ones((s, s), dtype=bool)
    seen = np.zeros((cells, cells), dtype=bool)
    stack = [(int(rng.integers(cells)), int(rng.integers(cells)))]  # cell (i, j) = column, row
    seen[stack[0][1], stack[0][0]] = True
    walls[2 * stack[0][1] + 1, 2 * stack[0][0] + 1] = False
    while stack:
        i, j = stack[-1]
        nxt = [(i + dx, j + dy) for dx, dy in DIRECTIONS
               if 0 <= i + dx < cells and 0 <= j + dy < cells and not seen[j + dy, i + dx]]
        if not nxt:
            stack.pop()
            continue
        a, b = nxt[int(rng.integers(len(nxt)))]
        seen[b, a] = True
        walls[2 * b + 1, 2 * a + 1] = False
        walls[j + b + 1, i + a + 1] = False  # the block between the two cells
        stack.append((a, b))
    # Interior wall blocks that separate two cells: exactly one coordinate even, not on the border.
    ys, xs = np.nonzero(walls)
    between = [(x, y) for x, y in zip(xs, ys) if 0 < x < s - 1 and 0 < y < s - 1 and (x + y) % 2 == 1]
    k = int(round(loop_fraction * len(between)))
    for idx in rng.permutation(len(between))[:k]:
        x, y = between[idx]
        walls[y, x] = False
    if num_colors is not None:  # a few flat colours: evenly spaced hues, a random one per block
        pick = rng.integers(num_colors, size=(s, s))
        palette = _hsv_to_rgb(np.arange(num_colors) / num_colors, np.ones(num_colors), np.full(num_colors, 0.9))
        return Maze(walls=walls, colors=(palette[pick] * 255.0).round().astype(np.uint8))
    # Saturated colours with random hue and brightness: neighbouring blocks almost always differ.
    hue = rng.random((s, s))
    sat = 0.55 + 0.45 * rng.random((s, s))
    val = 0.6 + 0.4 * rng.random((s, s))
    colors = (_hsv_to_rgb(hue, sat, val) * 255.0).round().astype(np.uint8)
    return Maze(walls=walls, colors=colors)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB in [0, 1]: ``[...]`` x3 -> ``[..., 3]``."""
    i = np.floor(h * 6.0).astype(int) % 6
    f = h * 6.0 - np.floor(h * 6.0)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    table = np.stack([np.stack(c, -1) for c in ((v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q))])
    return np.take_along_axis(table, i[None, ..., None], 0)[0]


def step(maze: Maze, pose: Pose, action: int) -> Pose:
    """The pose after ``action`` (see the module docstring for ids); moving into a wall leaves the pose unchanged."""
    x, y, h = pose
    if action == NOOP:
        return pose
    if action == TURN_LEFT:
        return (x, y, (h - 1) % 4)
    if action == TURN_RIGHT:
        return (x, y, (h + 1) % 4)
    if action in (FORWARD, BACKWARD):
        dx, dy = DIRECTIONS[h]
        if action == BACKWARD:
            dx, dy = -dx, -dy
        return (x + dx, y + dy, h) if maze.is_open(x + dx, y + dy) else pose
    raise ValueError(f"unknown action id {action!r}; valid ids: "
                     + ", ".join(f"{i} ({n})" for i, n in enumerate(ACTIONS)))


def _camera(pose: Pose, width: int, fov_degrees: float):
    """Camera position ``[2]``, ray directions ``[W, 2]`` (unit component along the heading) for a pose."""
    x, y, h = pose
    d = np.array(DIRECTIONS[h], dtype=np.float64)
    right = np.array([-d[1], d[0]])  # clockwise quarter turn of d (y grows south)
    half = np.tan(np.radians(fov_degrees) / 2.0)
    cam = (2.0 * (np.arange(width) + 0.5) / width - 1.0) * half  # [W], -half (left edge) .. +half
    return np.array([x + 0.5, y + 0.5]), d[None, :] + cam[:, None] * right[None, :]


def cast_rays(maze: Maze, pose: Pose, width: int, fov_degrees: float = 90.0):
    """One ray per image column through the block grid (DDA).

    Returns ``dist [W]`` (distance to the hit wall along the heading, i.e. perpendicular to the image plane),
    ``hit [W, 2]`` int (the wall block ``(x, y)``), ``side [W]`` int (0: an x-facing face, 1: a y-facing face),
    ``u [W]`` in [0, 1) (where along the face the ray hit: texture coordinate).
    """
    x, y, _ = pose
    if not maze.is_open(x, y):
        raise ValueError(f"pose {pose} is inside a wall or outside the {maze.size}x{maze.size} block grid")
    pos, ray = _camera(pose, width, fov_degrees)
    with np.errstate(divide="ignore"):
        delta = np.where(ray == 0.0, np.inf, np.abs(1.0 / np.where(ray == 0.0, 1.0, ray)))  # [W, 2]
    stepv = np.where(ray < 0, -1, 1)
    cell = np.broadcast_to(np.floor(pos).astype(int), ray.shape).copy()  # [W, 2]
    frac = pos - np.floor(pos)
    side_dist = np.where(ray < 0, frac, 1.0 - frac) * delta  # [W, 2] distance to the first x / y grid line
    side = np.zeros(width, dtype=int)
    done = np.zeros(width, dtype=bool)
    for _ in range(2 * maze.size + 2):  # the border is wall: every ray hits within this many steps
        go_x = side_dist[:, 0] < side_dist[:, 1]
        act = ~done
        ax, ay = act & go_x, act & ~go_x
        cell[ax, 0] += stepv[ax, 0]
        side_dist[ax, 0] += delta[ax, 0]
        cell[ay, 1] += stepv[ay, 1]
        side_dist[ay, 1] += delta[ay, 1]
        side[act] = np.where(go_x[act], 0, 1)
        done |= maze.walls[cell[:, 1], cell[:, 0]]
        if done.all():
            break
    rows = np.arange(width)
    dist = side_dist[rows, side] - delta[rows, side]
    hit_at = pos[None, :] + dist[:, None] * ray  # world point on the face
    u = np.where(side == 0, hit_at[:, 1], hit_at[:, 0])
    return dist, cell, side, u - np.floor(u)


def render(maze: Maze, pose: Pose, frame_size: int = 32, fov_degrees: float = 90.0,
           return_wall_mask: bool = False, style: str = "textured"):
    """First-person frame ``uint8 [H, W, 3]`` (``H = W = frame_size``) of ``pose`` in ``maze``; ``style``:
    ``"textured"`` (fog, seams, checkerboard floor) or ``"flat"`` (none of them: module docstring).

    Walls are 1 block high with the camera at half height. With the default 90 degree field of view a face at
    distance ``d`` spans ``frame_size / (2 d)`` rows: the face of the block just ahead (``d = 0.5``) fills the
    frame's height, the next one (``d = 1.5``) a third of it. ``return_wall_mask=True`` also returns ``bool [H, W]`` (wall
    pixels).
    """
    if frame_size < MIN_FRAME_SIZE:
        raise ValueError(f"frame_size must be >= {MIN_FRAME_SIZE}, got {frame_size}")
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; valid: {', '.join(STYLES)}")
    if not 10.0 <= fov_degrees <= 170.0:
        raise ValueError(f"fov_degrees must be in [10, 170], got {fov_degrees}")
    hgt = wid = frame_size
    dist, hit, side, u = cast_rays(maze, pose, wid, fov_degrees)
    focal = (wid / 2.0) / np.tan(np.radians(fov_degrees) / 2.0)  # pixels per unit at distance 1
    ys = np.arange(hgt) + 0.5 - hgt / 2.0  # [H] screen row offsets from the horizon (down positive)
    half_wall = 0.5 * focal / dist  # [W] half the wall's height in pixels
    wall = np.abs(ys)[:, None] < half_wall[None, :]  # [H, W]

    # Walls: block colour, y-facing faces darker, dark seams at block edges, fog.
    wc = maze.colors[hit[:, 1], hit[:, 0]].astype(np.float64)  # [W, 3]
    flat = style == "flat"
    shade = np.where(side == 1, 0.75, 1.0)
    if not flat:  # seams at block edges and fog
        shade = shade * np.where((u < 0.06) | (u > 0.94), 0.55, 1.0) * np.exp(-_FOG * dist)
    wall_rgb = wc * shade[:, None]  # [W, 3]

    # Floor: where the row's ray meets the ground plane (distance 0.5 focal / y along the heading).
    pos, ray = _camera(pose, wid, fov_degrees)
    below = np.maximum(ys, 0.5)  # rows above the horizon are ceiling; avoid division by 0
    fd = 0.5 * focal / below  # [H]
    pts = pos[None, None, :] + fd[:, None, None] * ray[None, :, :]  # [H, W, 2]
    tile = (np.floor(pts[..., 0]).astype(np.int64) + np.floor(pts[..., 1]).astype(np.int64)) % 2
    if flat:
        floor_rgb = np.broadcast_to(_FLOOR[1], (*tile.shape, 3))
    else:
        floor_rgb = np.where(tile[..., None] == 0, _FLOOR[0], _FLOOR[1]) * np.exp(-_FOG * fd)[:, None, None]

    img = np.where(wall[..., None], wall_rgb[None, :, :],
                   np.where((ys > 0)[:, None, None], floor_rgb, _CEILING[None, None, :]))
    frame = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return (frame, wall) if return_wall_mask else frame


def top_down(maze: Maze, pose: Pose | None = None, scale: int = 4) -> np.ndarray:
    """Map view ``uint8 [S*scale, S*scale, 3]``: wall colours, grey floor, the agent in white with a red nose."""
    img = np.where(maze.walls[..., None], maze.colors, np.uint8(96)).astype(np.uint8)
    img = np.repeat(np.repeat(img, scale, 0), scale, 1)
    if pose is not None:
        x, y, h = pose
        img[y * scale:(y + 1) * scale, x * scale:(x + 1) * scale] = 255
        dx, dy = DIRECTIONS[h]
        nose = max(1, scale // 3)  # a red square on the side of the agent's block it faces
        cx = x * scale + (scale - nose) // 2 + dx * ((scale - nose) // 2)
        cy = y * scale + (scale - nose) // 2 + dy * ((scale - nose) // 2)
        img[cy:cy + nose, cx:cx + nose] = (255, 0, 0)
    return img
