"""Exact resume for every task: a run killed with SIGKILL mid-epoch and resumed from its last checkpoint ends with
exactly the weights of an uninterrupted run (checkpointed data order, atomic checkpoints). One procedure,
parametrised over the tasks' recipes."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SEQMIX = [sys.executable, "-m", "seqmix.cli"]
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.logger=false",
         "--trainer.limit_val_batches=0", "--trainer.deterministic=true"]
CHECKPOINT_EVERY_STEP = ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps=1",
                         "--trainer.callbacks.save_top_k=-1", "--trainer.callbacks.filename={step}"]


def _task_args(task: str, tmp_path: Path) -> tuple[list[str], int, int]:
    """(recipe arguments, steps, the step after which the run is killed) of a tiny run of ``task``; each has more
    batches per epoch than steps, so the kill lands mid-epoch."""
    if task == "t2v":  # 16 batches per epoch
        return ([f"--config={ROOT / 'recipes/t2v/ttt_linear.yaml'}", "--data.init_args.num_train=64",
                 "--data.init_args.num_val=4", "--data.init_args.batch_size=4", "--model.init_args.warmup_steps=2"],
                10, 4)
    if task == "worldmodel":  # 6 batches per epoch
        return ([f"--config={ROOT / 'recipes/worldmodel/frame_local_attn.yaml'}",
                 f"--data.init_args.path={tmp_path / 'd'}",
                 "--data.init_args.generate.explore_frames=8", "--data.init_args.generate.return_frames=4",
                 "--data.init_args.num_trajectories=14", "--data.init_args.val_trajectories=2",
                 "--data.init_args.batch_size=2"], 8, 3)
    if task == "mqar":  # 16 batches per epoch
        return ([f"--config={ROOT / 'recipes/mqar/full_attn.yaml'}", "--data.init_args.num_train=128",
                 "--data.init_args.num_val=16", "--data.init_args.batch_size=8", "--model.init_args.warmup_steps=2"],
                10, 4)
    raise ValueError(task)


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("TRITON_INTERPRET", None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _weights(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("task", ["t2v", "worldmodel", "mqar"])
def test_sigkill_then_resume_equals_uninterrupted_run(task, tmp_path):
    args, steps, kill_after = _task_args(task, tmp_path)
    common = [*args, *QUIET, f"--trainer.max_steps={steps}", *CHECKPOINT_EVERY_STEP]

    def fit(name: str, *extra: str):
        cmd = [*SEQMIX, "fit", *common, f"--trainer.default_root_dir={tmp_path / name}",
               f"--trainer.callbacks.dirpath={tmp_path / name / 'ck'}", *extra]
        return subprocess.run(cmd, check=True, env=_env(), capture_output=True, timeout=600)

    fit("ref")
    ck = tmp_path / "run" / "ck"
    # slowed down so that it is killed mid-epoch
    proc = subprocess.Popen([*SEQMIX, "fit", *common, f"--trainer.default_root_dir={tmp_path / 'run'}",
                             f"--trainer.callbacks.dirpath={ck}", "--trainer.callbacks+=tests.slow_callback.Sleep"],
                            env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and not (ck / f"step={kill_after}.ckpt").exists():
        if proc.poll() is not None:
            pytest.fail(f"training exited early: {proc.stderr.read().decode()[-2000:]}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(ck.glob("step=*.ckpt"), key=lambda p: int(p.stem.split("=")[1]))
    assert done and int(done[-1].stem.split("=")[1]) < steps, "the run was not interrupted"
    _weights(done[-1])  # the latest checkpoint is complete (atomic write)
    fit("run", f"--ckpt_path={done[-1]}")  # the killed run's lock is taken over (its owner is dead)
    a, b = _weights(tmp_path / "ref" / "ck" / f"step={steps}.ckpt"), _weights(ck / f"step={steps}.ckpt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{task}: {k} differs after resume"


class _Interrupt(Exception):
    pass


def _interrupt_after_step_4(module, monkeypatch):
    """Make ``module._fit_recipe`` stop its run after the step-4 checkpoint (as a kill would); returns the original."""
    import lightning as pl

    class Stop(pl.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step == 5:
                raise _Interrupt

    fit = module._fit_recipe
    monkeypatch.setattr(module, "_fit_recipe", lambda *a, **k: fit(*a, **{**k, "callbacks": (*k["callbacks"], Stop())}))
    return fit


def test_comparison_run_interrupted_then_resumed_equals_uninterrupted(tmp_path, monkeypatch):
    """A comparison run stopped after its step-4 checkpoint and continued with ``resume`` ends with the metrics,
    learning curve and step count of the uninterrupted run (the curve's points and the wall clock are carried in
    the checkpoint), and the finished run's checkpoint folder is what the comparison removes once it is logged."""
    import seqmix.compare.video as V

    cmp = V.VideoComparison(layers=["ttt_linear"], out=str(tmp_path / "a"), max_steps=6, num_train=32, samples=0,
                            curve_points=3, curve_batches=1, checkpoint_every=2, jobs=1)
    full = V._video_run("ttt_linear", 0, cmp)

    fit = _interrupt_after_step_4(V, monkeypatch)
    cut = dataclasses.replace(cmp, out=str(tmp_path / "b"))
    with pytest.raises(_Interrupt):
        V._video_run("ttt_linear", 0, cut)
    assert (V._checkpoints(cut, "ttt_linear", 0) / "last.ckpt").is_file()
    monkeypatch.setattr(V, "_fit_recipe", fit)
    resumed = V._video_run("ttt_linear", 0, dataclasses.replace(cut, resume=True))
    assert resumed["steps"] == full["steps"] == 6
    assert resumed["curve"] == full["curve"] and full["curve"]["steps"] == [0, 2, 4, 6]
    assert resumed["metrics"] == full["metrics"]
    assert resumed["train_seconds"] > 0


def test_mqar_sweep_run_interrupted_then_resumed_equals_uninterrupted(tmp_path, monkeypatch):
    """The same for an MQAR sweep run (checkpoint folder keyed by its grid point)."""
    import seqmix.compare.mqar as M

    sweep = M.MQARSweep(layers=["full_attn"], widths=[32], out=str(tmp_path / "a"), max_steps=6, num_train=512,
                        curve_points=3, curve_batches=1, checkpoint_every=2, jobs=1)
    run = ("full_attn", 32, 3e-3, {}, 0)
    full = M._run_one(*run, sweep)

    fit = _interrupt_after_step_4(M, monkeypatch)
    cut = dataclasses.replace(sweep, out=str(tmp_path / "b"))
    with pytest.raises(_Interrupt):
        M._run_one(*run, cut)
    assert (M._checkpoints(cut, "full_attn", M._run_args(*run, cut)) / "last.ckpt").is_file()
    monkeypatch.setattr(M, "_fit_recipe", fit)
    resumed = M._run_one(*run, dataclasses.replace(cut, resume=True))
    assert resumed["steps"] == full["steps"] == 6 and resumed["curve"] == full["curve"]
    assert (resumed["val_acc"], resumed["val_loss"]) == (full["val_acc"], full["val_loss"])
