"""Text-to-video recipes: fast_dev_run of every recipe, bad configs, kill + resume exactness, DDP (gloo) = 1 process."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted(str(p) for p in (ROOT / "recipes" / "t2v").glob("*.yaml"))
BASELINES = {"ttt_mlp", "ttt_linear", "mamba2", "gated_deltanet", "swa", "local_attn", "full_attn"}
SEQMIX = [sys.executable, "-m", "seqmix.cli"]


def _fit(args, tmp_path):
    from seqmix.lightning_cli import run_lightning

    return run_lightning(["fit", *args, f"--trainer.default_root_dir={tmp_path}", "--trainer.enable_progress_bar=false",
                          "--trainer.enable_model_summary=false"])


def test_one_recipe_per_baseline():
    assert BASELINES <= {Path(r).stem for r in RECIPES}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: Path(r).stem)
def test_recipe_fast_dev_run(recipe, tmp_path):
    cli = _fit(["--config", recipe, "--trainer.fast_dev_run=true", "--data.init_args.num_train=16",
                "--data.init_args.num_val=8", "--data.init_args.batch_size=2"], tmp_path)
    m = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 1
    assert torch.isfinite(m["train/loss"]) and torch.isfinite(m["val/loss"])
    assert 0.0 <= float(m["val/consistency"]) <= 1.0


@pytest.mark.parametrize(
    "args, err, msg",
    [
        (["--model.init_args.model.mixer=nope"], ValueError, "model.init_args.model.*unknown mixer 'nope'"),
        (["--data.init_args.num_segments=0"], ValueError, "num_segments must be >= 1, got 0"),
        (["--model.init_args.model.in_channels=8"], ValueError, "in_channels=8"),
        (["--model.init_args.trainable=bogus"], Exception, "trainable"),
    ],
    ids=["unknown-mixer", "bad-segments", "channel-mismatch", "bad-trainable"],
)
def test_bad_configs_fail_before_training(args, err, msg, tmp_path):
    with pytest.raises((err, SystemExit)) as e:
        _fit(["--config", str(ROOT / "recipes/t2v/ttt_linear.yaml"), "--trainer.max_steps=1", *args], tmp_path)
    if e.type is not SystemExit:
        import re

        assert re.search(msg, str(e.value)), str(e.value)


def test_missing_data_path_names_the_key(tmp_path):
    from seqmix.tasks import LatentVideoData

    with pytest.raises(FileNotFoundError, match="data.init_args.path"):
        LatentVideoData(path=str(tmp_path / "missing"))


def test_stage_layout_mismatch_names_the_data(tmp_path):
    """Latent shards whose frame count is not 12 S + 1 do not fit the 3 s segment layout."""
    from seqmix.data.shards import ShardWriter

    with ShardWriter(tmp_path / "ds", shard_size=4, dtype=torch.float32) as w:
        for _ in range(4):
            w.add(torch.randn(20, 4, 8, 8), torch.randn(8, 32))
    with pytest.raises(ValueError, match="20 latent frames do not fit"):
        _fit(["--config", str(ROOT / "recipes/t2v/none.yaml"), "--trainer.max_steps=1",
              "--data=seqmix.tasks.LatentVideoData", f"--data.init_args.path={tmp_path / 'ds'}",
              "--data.init_args.val_examples=1"], tmp_path)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("TRITON_INTERPRET", None)
    env["OMP_NUM_THREADS"] = "1"
    return env


_COMMON = [
    "--config", str(ROOT / "recipes/t2v/ttt_linear.yaml"),
    "--data.init_args.num_train=64", "--data.init_args.num_val=4", "--data.init_args.batch_size=4",
    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.logger=false",
    "--trainer.limit_val_batches=0", "--trainer.deterministic=true",
    "--model.init_args.warmup_steps=2",
]


def _final_weights(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


# kill + resume: tests/test_resume.py (every task)


@pytest.mark.slow
def test_two_process_gloo_equals_one_process(tmp_path):
    """Same global batch (1 x 4 vs 2 x 2) -> same losses and weights (up to reduction order)."""
    out = {}
    for n in (1, 2):
        d = tmp_path / f"p{n}"
        subprocess.run(
            [*SEQMIX, "fit", *[a for a in _COMMON if not a.startswith("--data.init_args.batch_size")],
             f"--data.init_args.batch_size={4 // n}", "--trainer.max_steps=3", f"--trainer.devices={n}",
             "--trainer.accelerator=cpu", f"--trainer.strategy={'ddp' if n > 1 else 'auto'}",
             f"--trainer.default_root_dir={d}", "--trainer.callbacks+=ModelCheckpoint",
             f"--trainer.callbacks.dirpath={d}/ck", "--trainer.callbacks.filename=last"],
            check=True, env=_env(), capture_output=True, timeout=600)
        out[n] = _final_weights(d / "ck" / "last.ckpt")
    for k in out[1]:
        torch.testing.assert_close(out[2][k], out[1][k], rtol=1e-4, atol=1e-5, msg=f"{k} differs between 1 and 2 processes")


STAGES = ["3s", "9s", "18s", "30s", "63s"]


@pytest.mark.parametrize("stage", STAGES)
def test_cpu_stage_fast_dev_run(stage, tmp_path):
    cli = _fit(["--config", str(ROOT / "recipes/t2v/ttt_linear.yaml"), "--config",
                str(ROOT / f"recipes/t2v/cpu-stages/{stage}.yaml"), "--trainer.fast_dev_run=true",
                "--data.init_args.num_train=4", "--data.init_args.num_val=2", "--data.init_args.batch_size=1"],
               tmp_path)
    segments = {"3s": 1, "9s": 3, "18s": 6, "30s": 10, "63s": 21}[stage]
    assert cli.model.layout.num_segments == segments
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])


@pytest.mark.parametrize("stage", STAGES)
def test_paper_stage_composes(stage, tmp_path):
    """Baseline recipe + paper base + the global layer's paper settings + stage parse into the paper's settings
    (instantiated at tiny width on a tiny latent dataset of the stage's length, since the 5B weights are not
    here)."""
    from seqmix.lightning_cli import run_lightning
    from seqmix.data.shards import ShardWriter

    S = {"3s": 1, "9s": 3, "18s": 6, "30s": 10, "63s": 21}[stage]
    with ShardWriter(tmp_path / "ds", shard_size=4, dtype=torch.float32, layout={"text_tokens": 2}) as w:
        for _ in range(2):
            w.add(torch.randn(12 * S + 1, 16, 4, 4), torch.randn(2 * S, 32))
    cli = run_lightning([
        "--config", str(ROOT / "recipes/t2v/ttt_mlp.yaml"), "--config", str(ROOT / "recipes/t2v/paper/base.yaml"),
        "--config", str(ROOT / "recipes/t2v/paper/ttt_mlp.yaml"),
        "--config", str(ROOT / f"recipes/t2v/paper/stages/{stage}.yaml"),
        "--model.init_args.pretrained=null", "--model.init_args.init_from=null", "--model.init_args.model.num_layers=1",
        "--model.init_args.model.num_attention_heads=2", "--model.init_args.model.attention_head_dim=16",
        "--model.init_args.model.time_embed_dim=16", "--model.init_args.model.text_embed_dim=32",
        f"--data.init_args.path={tmp_path / 'ds'}", "--data.init_args.val_examples=1",
        "--trainer.accelerator=cpu", "--trainer.strategy=auto", "--trainer.precision=32", "--trainer.devices=1",
        f"--trainer.default_root_dir={tmp_path}",
    ], run=False)
    h = cli.model.hparams
    steps = {"3s": 5000, "9s": 5000, "18s": 1000, "30s": 500, "63s": 250}[stage]
    assert cli.trainer.max_steps == steps and cli.trainer.gradient_clip_val == 0.1
    assert h.lr == 1e-5 and tuple(h.betas) == (0.9, 0.95) and h.weight_decay == 1e-4
    assert h.trainable == ("all" if stage == "3s" else "attention+global")
    assert h.lr_global == (1e-4 if stage == "3s" else 1e-5)
    assert cli.model.dit.config.mixer == "ttt_mlp" and cli.model.dit.config.gradient_checkpointing
    assert cli.model.dit.config.mixer_config == {"mini_batch_size": 64, "scan_checkpoint_group": 16}
    assert h.sequence_parallel
