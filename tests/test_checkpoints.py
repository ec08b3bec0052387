"""Checkpoint integrity (digest written with every checkpoint, verified before a resume), stale temporaries of a
killed save, and the non-finite-loss stop."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from seqmix.training import AtomicCheckpointIO, CheckpointCorruptError, load_checkpoint, verify_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "mqar" / "full_attn.yaml")
_FAST = ["--data.init_args.num_train=64", "--data.init_args.num_val=8", "--data.init_args.batch_size=8",
         "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.logger=false",
         "--trainer.limit_val_batches=0", "--model.init_args.model.dim=16"]


def _flip_bit_in_a_tensor(ckpt: Path) -> None:
    """Flip the top exponent bit of one float32 stored in the checkpoint's zip (data entries are stored raw)."""
    with zipfile.ZipFile(ckpt) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
        assert info.compress_type == zipfile.ZIP_STORED
        with open(ckpt, "rb") as f:
            f.seek(info.header_offset + 26)
            n, m = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
        offset = info.header_offset + 30 + n + m + 4 * 3 + 3  # byte 3 of the 4th float: sign + exponent
    data = bytearray(ckpt.read_bytes())
    data[offset] ^= 0x40
    ckpt.write_bytes(bytes(data))


def test_digest_written_and_verified(tmp_path):
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"w": torch.arange(64, dtype=torch.float32)}, path)
    assert (tmp_path / "last.ckpt.sha256").read_text().split()[1] == "last.ckpt"
    verify_checkpoint(path)
    assert torch.equal(io.load_checkpoint(path)["w"], torch.arange(64, dtype=torch.float32))
    _flip_bit_in_a_tensor(path)
    assert torch.load(path, weights_only=True)["w"][3] != 3  # the flip loads silently with torch.load ...
    with pytest.raises(CheckpointCorruptError, match=f"checkpoint {path} is corrupt"):  # ... not with ours
        io.load_checkpoint(path)
    io.remove_checkpoint(path)
    assert not path.exists() and not (tmp_path / "last.ckpt.sha256").exists()


def test_linked_last_checkpoint_is_verified_through_its_target(tmp_path):
    io = AtomicCheckpointIO()
    target = tmp_path / "step=3.ckpt"
    io.save_checkpoint({"w": torch.arange(8, dtype=torch.float32)}, target)
    link = tmp_path / "last.ckpt"
    link.symlink_to(target.name)  # ModelCheckpoint(save_last="link")
    verify_checkpoint(link)
    _flip_bit_in_a_tensor(target)
    with pytest.raises(CheckpointCorruptError, match=f"checkpoint {link} is corrupt"):
        verify_checkpoint(link)


def test_overwrite_keeps_previous_digest_until_the_file_is_replaced(tmp_path):
    """The digest file is replaced first and also lists the old digest: a kill between the renames still verifies."""
    io = AtomicCheckpointIO()
    path = tmp_path / "last.ckpt"
    io.save_checkpoint({"w": torch.zeros(4)}, path)
    old = path.read_bytes()
    io.save_checkpoint({"w": torch.ones(4)}, path)
    assert len((tmp_path / "last.ckpt.sha256").read_text().splitlines()) == 2
    path.write_bytes(old)  # as if killed after the digest rename, before the checkpoint rename
    verify_checkpoint(path)


def test_stale_temporary_of_a_killed_save_is_removed(tmp_path):
    stale = [tmp_path / ".last.ckpt.tmp-99999999", tmp_path / ".last.ckpt.sha256.tmp-99999999"]
    for p in stale:
        p.write_bytes(b"torn")
    keep = tmp_path / ".other.ckpt.tmp-99999999"
    keep.write_bytes(b"another checkpoint's save")
    AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(2)}, tmp_path / "last.ckpt")
    assert not any(p.exists() for p in stale) and keep.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.ckpt.tmp-99999999", ".seqmix-run.lock", "last.ckpt",
                                                          "last.ckpt.sha256"]


def test_resume_from_a_corrupt_checkpoint_fails_naming_the_previous_one(tmp_path, capsys):
    from seqmix.cli import main

    ck = tmp_path / "ck"
    main(["fit", "--config", RECIPE, *_FAST, "--trainer.max_steps=3", f"--trainer.default_root_dir={tmp_path}",
          "--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps=1",
          "--trainer.callbacks.save_top_k=-1", "--trainer.callbacks.filename={step}",
          f"--trainer.callbacks.dirpath={ck}"])
    last = ck / "step=3.ckpt"
    newest = max(p.stat().st_mtime for p in ck.glob("*.ckpt")) + 10
    os.utime(ck / "step=2.ckpt", (newest, newest))  # step=2: the newest other checkpoint, whatever the clock
    _flip_bit_in_a_tensor(last)
    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", RECIPE, *_FAST, "--trainer.max_steps=5", f"--trainer.default_root_dir={tmp_path}",
              f"--ckpt_path={last}"])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert f"checkpoint {last} is corrupt" in err and f"--ckpt_path={ck / 'step=2.ckpt'}" in err, err
    with pytest.raises(CheckpointCorruptError):  # stage chaining (init_from) verifies too
        load_checkpoint(last)


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("TRITON_INTERPRET", None)
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_nan_loss_stops_fit_with_an_error_and_nonzero_exit(tmp_path):
    cmd = [sys.executable, "-m", "seqmix.cli", "fit", "--config", RECIPE, *_FAST, "--trainer.max_steps=6",
           f"--trainer.default_root_dir={tmp_path}", "--trainer.callbacks+=tests.nan_callback.PoisonWeights"]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "seqmix fit: error: non-finite training loss (nan) at step 2" in r.stderr, r.stderr[-3000:]
    assert "Traceback" not in r.stderr


def test_nan_loss_check_can_be_turned_off(tmp_path):
    from seqmix.cli import main

    main(["fit", "--config", RECIPE, *_FAST, "--trainer.max_steps=4", f"--trainer.default_root_dir={tmp_path}",
          "--trainer.callbacks+=nan_callback.PoisonWeights", "--stop_on_nonfinite_loss.enabled=false"])


def test_a_live_run_owns_its_checkpoint_folder(tmp_path):
    """Two processes saving into one folder: the second stops with one message naming the first; the first's live
    temporaries are never removed; a dead owner's lock and temporaries are taken over / cleaned."""
    from seqmix.training import AtomicCheckpointIO, CheckpointFolderInUseError, _OWNED

    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time, pathlib\n"
         "from seqmix.training import AtomicCheckpointIO\n"
         f"d = pathlib.Path({str(tmp_path)!r})\n"
         "AtomicCheckpointIO().save_checkpoint({'a': 1}, d / 'step=1.ckpt')\n"
         "(d / '.step=2.ckpt.tmp-' ).with_name('.step=2.ckpt.tmp-%s' % __import__('socket').gethostname() + '-%d' % __import__('os').getpid()).write_bytes(b'live')\n"
         "print('ready', flush=True)\n"
         "time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(CheckpointFolderInUseError, match=f"pid {holder.pid}"):
            AtomicCheckpointIO().save_checkpoint({"b": 2}, tmp_path / "step=2.ckpt")
        assert list(tmp_path.glob(".step=2.ckpt.tmp-*")), "another live process's temporary was removed"
    finally:
        holder.kill()
        holder.wait()
    # the owner is dead: its lock is taken over and its temporary cleaned up
    AtomicCheckpointIO().save_checkpoint({"b": 2}, tmp_path / "step=2.ckpt")
    assert not list(tmp_path.glob(".step=2.ckpt.tmp-*")) and (tmp_path / "step=2.ckpt").is_file()
    assert (tmp_path / ".seqmix-run.lock").read_text().split()[1] == str(os.getpid())
    _OWNED.discard(tmp_path.resolve())


def test_corrupt_checkpoint_hint_names_the_furthest_good_step_not_the_newest_file(tmp_path):
    """After a copy (file times reset), the hint still names the checkpoint with the highest step that verifies."""
    from seqmix.training import AtomicCheckpointIO, CheckpointCorruptError, _OWNED, verify_checkpoint

    io = AtomicCheckpointIO()
    for step in (3, 6, 7):
        io.save_checkpoint({"w": torch.full((2,), float(step))}, tmp_path / f"step={step}.ckpt")
    _OWNED.discard(tmp_path.resolve())
    os.utime(tmp_path / "step=3.ckpt")  # newest file time, lower step
    raw = bytearray((tmp_path / "step=7.ckpt").read_bytes())
    raw[-10] ^= 0xFF
    (tmp_path / "step=7.ckpt").write_bytes(bytes(raw))
    with pytest.raises(CheckpointCorruptError, match=r"--ckpt_path=\S*step=6\.ckpt"):
        verify_checkpoint(tmp_path / "step=7.ckpt")
