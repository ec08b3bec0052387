"""Maze data for the world model: renderer determinism and geometry, trajectories with exact revisits, storage,
CLI, bad inputs."""

import json
import sys

import numpy as np
import pytest
import torch

from seqmix.data import maze_data, shards
from seqmix.data.maze import (BACKWARD, FORWARD, NOOP, NUM_ACTIONS, TURN_LEFT, TURN_RIGHT, Maze, cast_rays,
                              make_maze, render, step)
from seqmix.data.maze_data import MazeClips, MazeDataConfig, make_trajectory, revisits, write_mazes

TINY = dict(maze_size=3, frame_size=16, explore_frames=24, return_frames=20)


def _corridor(length=6):
    """A straight east-west corridor of ``length`` open blocks in row 1, closed at both ends."""
    walls = np.ones((3, length + 2), dtype=bool)
    walls[1, 1:length + 1] = False
    colors = np.random.default_rng(0).integers(40, 255, size=walls.shape + (3,)).astype(np.uint8)
    return Maze(walls=walls, colors=colors)


def test_render_is_deterministic_and_depends_on_heading():
    maze = make_maze(4, seed=1)
    x, y = maze.open_blocks()[5]
    frames = [render(maze, (x, y, h), 32) for h in range(4)]
    assert all(f.shape == (32, 32, 3) and f.dtype == np.uint8 for f in frames)
    assert all(np.array_equal(render(maze, (x, y, h), 32), frames[h]) for h in range(4))
    assert np.array_equal(make_maze(4, seed=1).walls, maze.walls)  # same seed, same maze
    assert all(not np.array_equal(frames[i], frames[j]) for i in range(4) for j in range(i + 1, 4))


def test_nearer_wall_renders_taller():
    maze = _corridor(6)
    rows, dists = [], []
    for x in range(1, 7):  # walking east toward the wall block at x = 7
        dist, hit, side, _ = cast_rays(maze, (x, 1, 0), 16)
        frame, wall = render(maze, (x, 1, 0), 64, return_wall_mask=True)
        assert tuple(hit[8]) == (7, 1) and side[8] == 0
        dists.append(dist[8])
        rows.append(int(wall[:, 32].sum()))
    assert np.allclose(dists, [5.5, 4.5, 3.5, 2.5, 1.5, 0.5])
    assert all(a < b for a, b in zip(rows, rows[1:])), rows  # distance d + 1 is shorter on screen than d
    assert rows[-1] == 64  # the face half a block ahead fills the frame's height (90 degree field of view)


def test_turns_and_moves():
    maze = _corridor(4)
    pose = (2, 1, 0)
    p = pose
    for _ in range(4):
        p = step(maze, p, TURN_RIGHT)
    assert p == pose and np.array_equal(render(maze, p, 16), render(maze, pose, 16))
    assert step(maze, step(maze, pose, TURN_LEFT), TURN_RIGHT) == pose
    assert step(maze, pose, FORWARD) == (3, 1, 0) and step(maze, pose, BACKWARD) == (1, 1, 0)
    assert step(maze, pose, NOOP) == pose
    north = (2, 1, 3)
    assert step(maze, north, FORWARD) == north  # into a wall: no move
    assert step(maze, (4, 1, 0), FORWARD) == (4, 1, 0)


def _brute_revisits(poses):
    keys = [tuple(p) for p in poses.tolist()]
    prev = [max([j for j in range(t) if keys[j] == keys[t]], default=-1) for t in range(len(keys))]
    return np.array(prev), np.array([t - p if p >= 0 else -1 for t, p in enumerate(prev)])


@pytest.mark.parametrize("mode", ["reverse", "revisit"])
def test_trajectory_ground_truth(mode):
    cfg = MazeDataConfig(**TINY, return_mode=mode, seed=3)
    tr = make_trajectory(cfg, 0)
    f, e = cfg.num_frames, cfg.explore_frames
    assert tr.frames.shape == (f, 16, 16, 3) and tr.actions.shape == (f,) and tr.poses.shape == (f, 3)
    assert tr.actions[0] == NOOP and tr.actions.max() < NUM_ACTIONS
    assert np.array_equal(tr.phase, (np.arange(f) >= e).astype(np.int64))
    # The stored actions reproduce the stored poses.
    p = (int(tr.poses[0, 0]), int(tr.poses[0, 1]), int(tr.poses[0, 2]) // 90)
    for t in range(1, f):
        p = step(tr.maze, p, int(tr.actions[t]))
        assert (p[0] + 0.5, p[1] + 0.5, 90.0 * p[2]) == tuple(tr.poses[t].tolist())
    prev, dist = _brute_revisits(tr.poses)
    assert np.array_equal(tr.prev_index, prev) and np.array_equal(tr.distance, dist)
    seen = np.nonzero(tr.prev_index >= 0)[0]
    assert all(np.array_equal(tr.frames[t], tr.frames[tr.prev_index[t]]) for t in seen)  # bit-for-bit
    if mode == "reverse":
        assert (tr.prev_index[e:] >= 0).all()
        for k in range(cfg.return_frames):
            assert np.array_equal(tr.frames[e + k], tr.frames[e - 2 - k])
        assert tr.distance[e:].max() > cfg.return_frames  # long-range revisits are present
    else:
        assert (tr.prev_index[e:] >= 0).any()
    again = make_trajectory(cfg, 0)
    assert np.array_equal(again.frames, tr.frames) and np.array_equal(again.actions, tr.actions)
    assert not np.array_equal(make_trajectory(cfg, 1).frames, tr.frames)


def test_revisits_with_tolerance_ignore_the_current_stay():
    poses = np.array([[0, 0, 0], [0.1, 0, 5], [0.2, 0, 10], [3, 3, 0], [0.1, 0.1, 355], [0.1, 0.1, 90]], float)
    prev, dist = revisits(poses, pos_tol=0.5, angle_tol=20)
    assert prev.tolist() == [-1, -1, -1, -1, 2, -1] and dist.tolist() == [-1, -1, -1, -1, 2, -1]
    prev, _ = revisits(poses[[0, 0, 3, 0]])
    assert prev.tolist() == [-1, 0, -1, 1]  # exact poses: a repeated pose counts at once


def test_storage_round_trip_and_clips(tmp_path):
    cfg = MazeDataConfig(**TINY)
    write_mazes(tmp_path / "d", cfg, 3, shard_size=2, progress=False)
    index = json.loads((tmp_path / "d" / "index.json").read_text())
    assert len(index["shards"]) == 2 and index["num_actions"] == NUM_ACTIONS and index["frames"] == cfg.num_frames
    ds = MazeClips(tmp_path / "d")
    assert len(ds) == 3
    for i in range(3):
        tr, item = make_trajectory(cfg, i), ds[i]
        want = torch.from_numpy(tr.frames).permute(0, 3, 1, 2).float() / 127.5 - 1.0
        assert item["frames"].shape == (cfg.num_frames, 3, 16, 16) and item["frames"].dtype == torch.float32
        assert torch.equal(item["frames"], want) and item["frames"].min() >= -1 and item["frames"].max() <= 1
        assert item["actions"].dtype == torch.int64 and torch.equal(item["actions"], torch.from_numpy(tr.actions))
        assert torch.equal(item["poses"], torch.from_numpy(tr.poses))
        assert torch.equal(item["prev_index"], torch.from_numpy(tr.prev_index))
    clips = MazeClips(tmp_path / "d", clip_frames=10, stride=7)
    assert len(clips) == 3 * 5  # offsets 0, 7, 14, 21, 28 (+ 10 <= 44)
    c = clips[4]
    full = ds[0]
    assert c["offset"] == 28 and c["frames"].shape[0] == 10
    assert torch.equal(c["frames"], full["frames"][28:38])
    rel = full["prev_index"][28:38] - 28
    assert torch.equal(c["prev_index"], torch.where(rel >= 0, rel, -1))
    assert torch.equal(c["distance"], torch.where(rel >= 0, full["distance"][28:38], -1))
    batch = next(iter(torch.utils.data.DataLoader(clips, batch_size=2, num_workers=1)))
    assert batch["frames"].shape == (2, 10, 3, 16, 16) and batch["offset"].tolist() == [0, 7]
    rnd = MazeClips(tmp_path / "d", clip_frames=10, random_offset=True)
    assert len(rnd) == 3 and 0 <= rnd[1]["offset"] <= cfg.num_frames - 10
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(ValueError, match="clip_frames"):
        MazeClips(tmp_path / "d", clip_frames=cfg.num_frames + 1)
    with pytest.raises(FileExistsError):
        write_mazes(tmp_path / "d", cfg, 1, progress=False)


def test_checksum_mismatch_names_the_file(tmp_path):
    write_mazes(tmp_path, MazeDataConfig(**TINY), 2, shard_size=1, progress=False)
    shard = tmp_path / "shard-00001.safetensors"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    ds = MazeClips(tmp_path)
    ds[0]
    with pytest.raises(ValueError, match="checksum mismatch for .*shard-00001.safetensors"):
        ds[1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match="shard-00001.safetensors"):
        MazeClips(tmp_path)
    with pytest.raises(FileNotFoundError, match="index.json"):
        MazeClips(tmp_path / "nope")


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "shard-00000.safetensors"

    def boom(fd):
        raise OSError("disk full")

    monkeypatch.setattr(shards.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        shards.atomic_write_bytes(target, b"x" * 1000)
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temporary file
    monkeypatch.undo()
    # A failure while generating leaves no index.json: the directory is not a dataset.
    monkeypatch.setattr(maze_data, "make_trajectory", lambda cfg, i: step(make_maze(2, 0), (1, 1, 0), 9))
    with pytest.raises(ValueError, match="unknown action id"):
        write_mazes(tmp_path / "d", MazeDataConfig(**TINY), 2, progress=False)
    assert not (tmp_path / "d" / "index.json").exists()


def test_cli_prepare_mazes(tmp_path, capsys):
    from seqmix.cli import main

    out = tmp_path / "mazes"
    main(["prepare", "mazes", str(out), "--num_trajectories", "2", "--maze_size", "2", "--frame_size", "16",
          "--explore_frames", "12", "--return_frames", "6", "--preview"])
    assert "wrote 2 maze trajectories (procedural) of 18 frames" in capsys.readouterr().out
    assert (out / "preview.gif").stat().st_size > 0
    ds = MazeClips(out)
    assert len(ds) == 2 and ds[1]["frames"].shape == (18, 3, 16, 16)
    with pytest.raises(SystemExit) as e:  # the user's input error: seqmix's message in one line, exit 2
        main(["prepare", "mazes", str(tmp_path / "x"), "--source", "minecraft"])
    assert e.value.code == 2 and "unknown source 'minecraft'" in capsys.readouterr().err


def test_bad_inputs_fail_clearly(tmp_path):
    with pytest.raises(ValueError, match="maze_size must be >= 2"):
        MazeDataConfig(maze_size=1).validate()
    with pytest.raises(ValueError, match="maze size must be >= 2"):
        make_maze(1, seed=0)
    with pytest.raises(ValueError, match="frame_size must be >= 8"):
        MazeDataConfig(frame_size=4).validate()
    with pytest.raises(ValueError, match="frame_size must be >= 8"):
        render(make_maze(2, 0), (1, 1, 0), 4)
    with pytest.raises(ValueError, match=r"unknown action id 7; valid ids: 0 \(noop\), 1 \(forward\)"):
        step(make_maze(2, 0), (1, 1, 0), 7)
    with pytest.raises(ValueError, match="inside a wall"):
        render(make_maze(2, 0), (0, 0, 0), 16)
    with pytest.raises(ValueError, match="return_frames must be <= explore_frames - 1"):
        MazeDataConfig(explore_frames=10, return_frames=10).validate()
    with pytest.raises(ValueError, match="unknown return_mode"):
        MazeDataConfig(return_mode="teleport").validate()
    with pytest.raises(ValueError, match=r"unknown source 'minecraft'; choose one of \('procedural', 'memory-maze'\)"):
        write_mazes(tmp_path, MazeDataConfig(**TINY), 1, source="minecraft")
    assert not (tmp_path / "index.json").exists()


def test_memory_maze_missing_package_error(monkeypatch, tmp_path):
    from seqmix.data import maze_memory

    monkeypatch.setitem(sys.modules, "memory_maze", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r"pip install 'seqmix\[memory-maze\]'"):
        write_mazes(tmp_path, MazeDataConfig(maze_size=9, frame_size=16, explore_frames=4, return_frames=2), 1,
                    source="memory-maze", progress=False)
    assert not maze_memory.memory_maze_available()
    with pytest.raises(ValueError, match="memory-maze has maze sizes"):
        maze_memory.MemoryMazeSource(MazeDataConfig(**TINY))


def test_memory_maze_source_writes_the_same_format(tmp_path):
    from seqmix.data.maze_memory import memory_maze_available

    if not memory_maze_available():
        pytest.skip("memory-maze is not installed (optional extra: pip install 'seqmix[memory-maze]')")
    cfg = MazeDataConfig(maze_size=9, frame_size=16, explore_frames=6, return_frames=3)
    write_mazes(tmp_path, cfg, 1, source="memory-maze", progress=False)
    index = json.loads((tmp_path / "index.json").read_text())
    assert index["source"] == "memory-maze" and index["num_actions"] == 6
    item = MazeClips(tmp_path)[0]
    assert item["frames"].shape == (9, 3, 16, 16) and item["frames"].std() > 0
    assert item["actions"][0] == 0 and int(item["actions"].max()) < 6 and item["poses"].shape == (9, 3)


def test_flat_style_few_colours_no_fog_plain_floor():
    """Style "flat": every wall pixel is one of num_colors palette colours (times the face shade), the floor one
    tone, nothing fades with distance; seeded (same settings, same frames); the settings are written with the
    data; memory-maze refuses it."""
    from seqmix.data.maze import make_maze, render

    maze = make_maze(4, seed=3, num_colors=3)
    blocks = maze.colors[maze.walls]
    assert len({tuple(c) for c in blocks}) <= 3
    shots = [render(maze, (x, y, h), 16, style="flat", return_wall_mask=True)
             for (x, y) in maze.open_blocks()[:6] for h in range(4)]
    floor = {tuple(int(v) for v in f[r, c]) for f, wall in shots for r in range(8, 16) for c in range(16)
             if not wall[r, c]}
    assert floor == {(72, 66, 60)}  # one tone, no fog
    textured = render(make_maze(4, seed=3), maze.open_blocks()[0] + (0,), 16)
    assert len({tuple(c) for c in textured[-1]}) > 1  # the textured floor varies (checkerboard, fog)
    cfg = MazeDataConfig(maze_size=3, frame_size=16, explore_frames=6, return_frames=3, style="flat", num_colors=2)
    a, b = make_trajectory(cfg, 0), make_trajectory(cfg, 0)
    assert np.array_equal(a.frames, b.frames)
    with pytest.raises(ValueError, match="style"):
        MazeDataConfig(style="foggy").validate()
    with pytest.raises(ValueError, match="num_colors"):
        MazeDataConfig(style="flat", num_colors=1).validate()
