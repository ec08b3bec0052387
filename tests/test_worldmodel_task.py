"""World-model training task: diffusion-forcing draws, long-context masking (no loss on the clean prefix, the prefix
clean in the model input), recipes (fast_dev_run of every model, the paper-scale composition), bad inputs, resume
after SIGKILL."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from seqmix.tasks.worldmodel import draw_training_noise, masked_v_loss

ROOT = Path(__file__).resolve().parents[1]
MODELS = ["blockwise_ssm", "mamba2", "mamba2_fla", "frame_local_attn", "causal_transformer", "blockwise_ttt"]
SEQMIX = [sys.executable, "-m", "seqmix.cli"]
# A tiny maze dataset: 3x3 cells, 16x16 frames, 8 exploration + 4 return frames.
TINY_DATA = ["--data.init_args.generate.explore_frames=8", "--data.init_args.generate.return_frames=4",
             "--data.init_args.num_trajectories=6", "--data.init_args.val_trajectories=2",
             "--data.init_args.batch_size=2"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("mazes") / "tiny"


def _cli(args, tmp_path, run=True):
    from seqmix.cli import run_lightning

    extra = [f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
             "--trainer.enable_model_summary=false", "--trainer.logger=false"]
    return run_lightning((["fit"] if run else []) + [*args, *extra], run=run)


def test_noise_levels_are_independent_per_frame_and_the_prefix_is_long():
    F_, n = 12, 400
    ts, lens = [], []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        t, noise, mask = draw_training_noise((F_, 3, 4, 4), 1000, g, long_context_prob=0.5, min_prefix=0.5)
        assert noise.shape == (F_, 3, 4, 4) and t.dtype == torch.int64
        L = int((~mask).sum())
        assert not mask[:L].any() and mask[L:].all()  # a prefix, never the whole clip
        assert (t[:L] == 0).all()
        if L:
            lens.append(L)
        else:
            ts.append(t.double())
    assert min(lens) == 7 and max(lens) == 11  # longer than half of 12 frames, at least one noised frame
    assert 0.4 < len(lens) / n < 0.6  # p = 0.5
    t = torch.stack(ts)  # plain diffusion forcing: per-frame levels uniform and uncorrelated
    assert t.min() >= 0 and t.max() < 1000 and abs(t.mean().item() - 499.5) < 40
    c = torch.corrcoef(t.T)
    assert (c - torch.eye(F_)).abs().max() < 0.3
    assert (t[:, 1:] != t[:, :1]).any(1).float().mean() > 0.99  # frames of an example differ
    g0, g1 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = draw_training_noise((F_, 3, 4, 4), 1000, g0, long_context_prob=0.5, min_prefix=0.5)
    b = draw_training_noise((F_, 3, 4, 4), 1000, g1, long_context_prob=0.5, min_prefix=0.5)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_masked_loss_has_no_gradient_on_clean_frames():
    v_hat = torch.randn(2, 5, 3, 4, 4, requires_grad=True)
    v = torch.randn(2, 5, 3, 4, 4)
    mask = torch.tensor([[False, False, False, True, True], [True] * 5])
    loss = masked_v_loss(v_hat, v, mask)
    loss.backward()
    assert (v_hat.grad[0, :3] == 0).all() and (v_hat.grad[0, 3:] != 0).any() and (v_hat.grad[1] != 0).any()
    ref = torch.cat([(v_hat[0, 3:] - v[0, 3:]).pow(2).flatten(1).mean(1), (v_hat[1] - v[1]).pow(2).flatten(1).mean(1)])
    torch.testing.assert_close(loss, ref.mean())


def test_training_step_feeds_the_prefix_clean(data_dir, tmp_path):
    """Captures the model's input in training steps: clean-prefix frames are the data itself at noise level 0, the
    others noised; the loss equals the masked loss of exactly those frames."""
    cli = _cli(["--config", str(ROOT / "recipes/worldmodel/frame_local_attn.yaml"), f"--data.init_args.path={data_dir}",
                *TINY_DATA, "--model.init_args.long_context_prob=1.0"], tmp_path, run=False)
    task, dm = cli.model, cli.datamodule
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    seen = {}
    fwd = task.model.forward

    def spy(x, t, a):
        seen.update(x=x.clone(), t=t.clone())
        return fwd(x, t, a)

    task.model.forward = spy
    task.log = lambda *a, **k: None
    loss = task.training_step(batch, 0)
    x0, t, F_ = batch["frames"], seen["t"], batch["frames"].shape[1]
    for b in range(x0.shape[0]):
        L = int((t[b] == 0).long().cumprod(0).sum())
        assert F_ // 2 < L < F_
        assert torch.equal(seen["x"][b, :L], x0[b, :L])  # bit-for-bit clean
        assert not torch.isclose(seen["x"][b, L:], x0[b, L:]).all()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("model", MODELS)
def test_recipe_fast_dev_run(model, data_dir, tmp_path):
    cli = _cli(["--config", str(ROOT / f"recipes/worldmodel/{model}.yaml"), f"--data.init_args.path={data_dir}",
                *TINY_DATA, "--trainer.fast_dev_run=true"], tmp_path)
    m = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 1
    assert torch.isfinite(m["train/loss"]) and torch.isfinite(m["val/loss"]) and torch.isfinite(m["val/psnr_return"])


def test_model_recipes_are_the_base_plus_mixers():
    from seqmix.compare.worldmodel import model_overrides

    for m in MODELS:
        assert set(model_overrides(ROOT / f"recipes/worldmodel/{m}.yaml")) <= {
            "model.init_args.model.mixers", "trainer.default_root_dir"}


@pytest.mark.parametrize("stage", [400, 800])
def test_paper_config_composes_at_tiny_width(stage, tmp_path):
    from seqmix.data.maze_data import MazeDataConfig, write_mazes

    cfg = MazeDataConfig(maze_size=3, frame_size=16, explore_frames=401, return_frames=399)
    write_mazes(tmp_path / "mm", cfg, 3, progress=False)
    cli = _cli(["--config", str(ROOT / "recipes/worldmodel/blockwise_ssm.yaml"),
                "--config", str(ROOT / "recipes/worldmodel/paper/base.yaml"),
                "--config", str(ROOT / "recipes/worldmodel/paper/blockwise_ssm.yaml"),
                "--config", str(ROOT / f"recipes/worldmodel/paper/stages/{stage}.yaml"),
                f"--data.init_args.path={tmp_path / 'mm'}", "--data.init_args.val_trajectories=1",
                "--trainer.accelerator=cpu", "--trainer.strategy=auto", "--trainer.precision=32",
                "--trainer.devices=1", "--model.init_args.model.dim=32", "--model.init_args.model.cond_dim=32",
                "--model.init_args.model.heads=2", "--model.init_args.model.patch_size=2"], tmp_path, run=False)
    c, h = cli.model.model.config, cli.model.hparams
    assert c.depth == 14 and c.grid == (8, 8) and c.window_frames == 10 and c.chunk_frames == 5
    assert c.mixer_names() == ["blockwise_ssm", "frame_local_attn"] and h.long_context_prob == 0.5
    dm = cli.datamodule
    assert dm.clip_frames == stage and dm.generate is None
    dm.setup("fit")
    assert dm._train[0]["frames"].shape == (stage, 3, 16, 16)
    # at full width the paper's stack is ~200M parameters (counted without building it: the backbone's formula)
    from seqmix.backbones.worldmodel import WorldModelConfig

    full = WorldModelConfig.preset("paper", mixers="blockwise_ssm")
    assert (full.dim, full.depth, full.cond_dim) == (768, 14, 512)


def test_bad_inputs_fail_with_clear_errors(data_dir, tmp_path):
    from seqmix.tasks import MazeData, WorldModelTask

    base = ["--config", str(ROOT / "recipes/worldmodel/frame_local_attn.yaml"), f"--data.init_args.path={data_dir}",
            *TINY_DATA, "--trainer.fast_dev_run=true"]
    with pytest.raises(FileNotFoundError, match="seqmix prepare mazes"):
        MazeData(path=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="long_context_prob"):
        _cli([*base, "--model.init_args.long_context_prob=1.5"], tmp_path, run=False)
    with pytest.raises(ValueError, match="channels=4"):
        _cli([*base, "--model.init_args.model.channels=4"], tmp_path)
    with pytest.raises(ValueError, match="num_actions=5"):
        _cli([*base, "--model.init_args.model.num_actions=6"], tmp_path)
    with pytest.raises(ValueError, match="other settings"):  # the data at path was written differently
        _cli([*base, "--data.init_args.generate.frame_size=24"], tmp_path)
    with pytest.raises(ValueError, match="return_frames"):
        _cli([*base, "--data.init_args.generate.return_frames=0"], tmp_path, run=False)
    assert isinstance(WorldModelTask, type)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("TRITON_INTERPRET", None)
    env["OMP_NUM_THREADS"] = "1"
    return env


# kill + resume: tests/test_resume.py (every task)


@pytest.mark.slow
def test_two_process_gloo_equals_one_process(tmp_path):
    """Same global batch (1 x 4 vs 2 x 2, gloo DDP) -> the same weights after 3 steps (up to reduction order): the
    per-example draws, the data order and the loss normalisation (loss frames counted over both processes; the
    clean prefixes make the counts differ) do not depend on the number of processes."""
    data = tmp_path / "data"
    common = ["--config", str(ROOT / "recipes/worldmodel/frame_local_attn.yaml"), f"--data.init_args.path={data}",
              *[a for a in TINY_DATA if "batch_size" not in a and "num_trajectories" not in a],
              "--data.init_args.num_trajectories=14", "--model.init_args.long_context_prob=1.0",
              "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.logger=false",
              "--trainer.limit_val_batches=0", "--trainer.max_steps=3", "--trainer.accelerator=cpu",
              "--trainer.callbacks+=ModelCheckpoint"]
    out = {}
    for n in (1, 2):
        d = tmp_path / f"p{n}"
        subprocess.run([*SEQMIX, "fit", *common, f"--data.init_args.batch_size={4 // n}", f"--trainer.devices={n}",
                        f"--trainer.strategy={'ddp' if n > 1 else 'auto'}", f"--trainer.default_root_dir={d}",
                        f"--trainer.callbacks.dirpath={d}/ck", "--trainer.callbacks.filename=last"],
                       check=True, env=_env(), capture_output=True, timeout=600)
        out[n] = torch.load(d / "ck" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert out[1].keys() == out[2].keys()
    for k in out[1]:
        torch.testing.assert_close(out[2][k], out[1][k], rtol=1e-4, atol=1e-5, msg=f"{k} differs between 1 and 2 processes")


def test_loss_count_override_weighs_every_frame_the_same():
    """Two processes' losses, each divided by the mean count, average to the loss over the whole batch."""
    g = torch.Generator().manual_seed(0)
    v_hat, v = torch.randn(4, 6, 3, generator=g), torch.randn(4, 6, 3, generator=g)
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[0, 1:], mask[1, 5:], mask[2, 3:], mask[3, 4:] = True, True, True, True  # 5 + 1 | 3 + 2 loss frames
    whole = masked_v_loss(v_hat, v, mask)
    mean_count = mask.sum() / 2
    parts = [masked_v_loss(v_hat[s], v[s], mask[s], mean_count) for s in (slice(0, 2), slice(2, 4))]
    torch.testing.assert_close((parts[0] + parts[1]) / 2, whole)
    # the local count would not: 6 and 5 frames weigh differently
    local = [masked_v_loss(v_hat[s], v[s], mask[s]) for s in (slice(0, 2), slice(2, 4))]
    assert not torch.isclose((local[0] + local[1]) / 2, whole)
