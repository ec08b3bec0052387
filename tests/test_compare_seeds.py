"""Seeds, learning curves and sweep knobs of the comparisons (seqmix.compare): aggregation of per-seed records on
known inputs, the knob grid, and the quick comparisons with two seeds."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from seqmix.compare.curves import curve_band
from seqmix.compare.knobs import knob_args, knob_grid, parse_knobs
from seqmix.compare.seeds import aggregate, interval_note, parse_seeds, ranking, seed_args, summary_of


def _rec(layer, lr, seed, acc, knobs=None):
    return {"layer": layer, "lr": lr, "knobs": knobs or {}, "seed": seed, "acc": acc}


def test_aggregate_groups_by_everything_but_the_seed():
    recs = [_rec("a", 1e-3, 1, 0.6), _rec("a", 1e-3, 0, 0.4), _rec("b", 1e-3, 0, 0.9), _rec("b", 1e-3, 1, 0.7),
            _rec("b", 1e-3, 2, 0.8), _rec("a", 1e-2, 0, 0.1), _rec("a", 1e-3, 0, 0.5, {"base_lr": 1.0})]
    rows = aggregate(recs, ("layer", "lr", "knobs"), {"acc": lambda r: r["acc"]})
    by = {(r["layer"], r["lr"], json.dumps(r["knobs"])): r for r in rows}
    assert len(rows) == 4
    a = by[("a", 1e-3, "{}")]
    assert a["seeds"] == [0, 1] and a["values"]["acc"] == [0.4, 0.6]  # in seed order
    assert a["summary"]["acc"] == {"mean": 0.5, "low": 0.4, "high": 0.6, "n": 2, "interval": "minmax"}
    b = summary_of(by[("b", 1e-3, "{}")], "acc")
    # mean 0.8, sd 0.1, t_{0.975,2} = 4.302653: half width 4.302653 * 0.1 / sqrt(3)
    half = 4.302653 * 0.1 / math.sqrt(3)
    assert b.interval == "t95" and b.n == 3
    assert b.mean == pytest.approx(0.8) and b.low == pytest.approx(0.8 - half) and b.high == pytest.approx(0.8 + half)
    single = summary_of(by[("a", 1e-2, "{}")], "acc")
    assert (single.n, single.low, single.high, single.interval) == (1, 0.1, 0.1, "single")
    assert by[("a", 1e-3, json.dumps({"base_lr": 1.0}))]["n_seeds"] == 1
    with pytest.raises(ValueError, match="repeated seeds"):
        aggregate([_rec("a", 1, 0, 0.1), _rec("a", 1, 0, 0.2)], ("layer", "lr"), {"acc": lambda r: r["acc"]})


def test_ranking_states_only_separated_pairs():
    recs = [_rec("hi", 1, 0, 0.9), _rec("hi", 1, 1, 0.95), _rec("mid", 1, 0, 0.5), _rec("mid", 1, 1, 0.92),
            _rec("lo", 1, 0, 0.1), _rec("lo", 1, 1, 0.2)]
    rows = aggregate(recs, ("layer",), {"acc": lambda r: r["acc"]})
    stmts = ranking(rows, "acc", lambda r: r["layer"])
    assert sorted(stmts) == ["hi > lo", "mid > lo"]  # hi and mid overlap: no statement
    assert ranking(rows, "acc", lambda r: r["layer"], higher_is_better=False) == ["lo > hi", "lo > mid"]
    one = aggregate([_rec("x", 1, 0, 1.0), _rec("y", 1, 0, 0.0)], ("layer",), {"acc": lambda r: r["acc"]})
    assert ranking(one, "acc", lambda r: r["layer"]) == []  # one seed: never a ranking


def test_parse_seeds_and_seed_args():
    assert parse_seeds(3) == [0, 1, 2] and parse_seeds([4, 7]) == [4, 7]
    for bad in (0, [], [1, 1], [-1], True):
        with pytest.raises(ValueError, match="seeds"):
            parse_seeds(bad)
    assert seed_args(5) == ["--seed_everything=5", "--data.init_args.seed=5"]
    assert seed_args(5, model_seed=True)[-1] == "--model.init_args.seed=5"
    assert "min, max" in interval_note(2) and "95%" in interval_note(3) and "no interval" in interval_note(1)


def test_curve_band_mean_and_interval_per_step():
    band = curve_band([{"steps": [0, 5, 10], "values": [0.0, 0.4, 0.8]},
                       {"steps": [0, 5, 10], "values": [0.2, 0.6, 1.0]}])
    assert band["steps"] == [0, 5, 10]
    assert band["mean"] == pytest.approx([0.1, 0.5, 0.9])
    assert band["low"] == pytest.approx([0.0, 0.4, 0.8]) and band["high"] == pytest.approx([0.2, 0.6, 1.0])


def test_knob_grid_and_arguments():
    from seqmix import layers as L

    assert L.mixer_class("full_attn").Tooling.sweep_knobs == {}  # none unless declared
    assert knob_grid("full_attn", "declared") == [{}]
    grid = knob_grid("ttt_linear", "declared")
    assert len(grid) == 4 and {"base_lr": 0.1, "mini_batch_size": 32} in grid
    assert knob_grid("ttt_mlp", None) == [{}]
    assert knob_grid("ttt_mlp", "{ttt_mlp: {base_lr: [0.1, 1.0]}}") == [{"base_lr": 0.1}, {"base_lr": 1.0}]
    assert knob_grid("mamba2", {"ttt_mlp": {"base_lr": [1.0]}}) == [{}]  # layers not named keep their recipe
    with pytest.raises(ValueError, match="unknown knob"):
        knob_grid("mamba2", {"mamba2": {"window": [8]}})
    with pytest.raises(ValueError, match="knobs must be"):
        parse_knobs("[1, 2]")
    # the recipe's mixer config (recipes/mqar/ttt_linear.yaml: mini_batch_size 16, the LM form) is kept, the knob added
    (arg,) = knob_args("mqar", "ttt_linear", {"base_lr": 0.1})
    assert json.loads(arg.split("=", 1)[1]) == {"mini_batch_size": 16, "variant": "lm", "base_lr": 0.1}
    assert knob_args("mqar", "ttt_linear", {}) == []


def test_mqar_two_seeds_quick(tmp_path):
    from seqmix.compare import MQARSweep, run_mqar_sweep

    sweep = MQARSweep(layers=["swa"], widths=[16], lrs=[1e-3], seeds=2, max_steps=2, num_train=64, curve_points=1,
                      curve_batches=16, knobs={"swa": {"window": [4, 8]}}, jobs=1, out=str(tmp_path))
    res = run_mqar_sweep(sweep, progress=False)
    assert len(res["records"]) == 4 and sorted({r["seed"] for r in res["records"]}) == [0, 1]
    (best,) = res["best"]
    assert best["n_seeds"] == 2 and best["summary"]["val_acc"]["interval"] == "minmax"
    assert best["val_acc"] == pytest.approx(sum(best["values"]["val_acc"]) / 2)  # best = highest mean over seeds
    assert best["val_acc"] == max(p["val_acc"] for p in res["points"])
    for r in res["records"]:
        # curve: steps 0 and 2; its last point is the final model on the whole validation set (16 batches of 32)
        assert r["curve"]["steps"] == [0, 2]
        assert r["curve"]["values"][-1] == pytest.approx(r["val_acc"], abs=1e-6)
    md = (tmp_path / "results.md").read_text()
    assert "mean [min, max] over 2 seeds" in md and "best knobs" in md and "window=" in md
    doc = json.loads((tmp_path / "results.json").read_text())
    assert len(doc["runs"]) == 4 and (tmp_path / "curves.png").is_file()
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 4
    # the same sweep again with resume: nothing is trained, the records are the first call's
    again = run_mqar_sweep(dataclasses.replace(sweep, resume=True), progress=False)
    assert [r["train_seconds"] for r in again["records"]] == [r["train_seconds"] for r in res["records"]]
    assert again["best"][0]["val_acc"] == best["val_acc"]


def test_mqar_presets():
    from seqmix.compare import MQARSweep

    z = MQARSweep.preset("zoology")
    assert z.widths == [64, 128, 256] and z.num_layers == 2 and z.vocab_size == 8192  # Zoology's standard task
    assert z.lrs == pytest.approx([10 ** x for x in (-3, -2.5, -2, -1.5)])
    cpu = MQARSweep.preset("cpu", layers=["swa"])
    assert len(cpu.lrs) >= 3 and len(parse_seeds(cpu.seeds)) >= 3 and cpu.layers == ["swa"]
    assert cpu.num_train == 3 * 38_400 and cpu.curve_points == 18  # three epochs' worth, a curve point per 200 steps
    assert MQARSweep.preset("cpu-1epoch").num_train is None  # the recipe's one epoch (the earlier study's folder)
    v = MQARSweep.preset("cpu-vocab8192")
    v.validate()
    assert v.vocab_size == 8192 and v.num_layers == 2 and v.task().vocab_size == 8192 and v.widths == [64]
    assert {"full_attn", "gated_deltanet", "mamba2", "ttt_linear", "ttt_mlp", "lact"} <= set(v.layers)
    from seqmix.compare.common import token_mixers

    smoke = MQARSweep.preset("smoke")
    smoke.validate()
    # every causal layer but the 8-token window (it cannot reach the keys), each at one learning rate and one seed
    assert set(smoke.layers) == set(token_mixers(causal=True)) - {"swa"}
    assert all(len(smoke.lrs_of(n)) == 1 for n in smoke.layers) and len(smoke.runs()) == len(smoke.layers)
    assert smoke.task().num_kv_pairs == 4 and smoke.max_steps * 32 == smoke.num_train
    with pytest.raises(ValueError, match="valid: zoology, cpu"):
        MQARSweep.preset("nope")


def test_video_two_seeds_quick(tmp_path):
    from seqmix.compare import VideoComparison, run_video_comparison

    res = run_video_comparison(VideoComparison(layers=["none"], max_steps=1, num_train=8, samples=0, seeds=2,
                                               curve_points=1, curve_batches=1, jobs=1, out=str(tmp_path)),
                               progress=False)
    (row,) = res["rows"]
    assert row["seeds"] == [0, 1] and len(row["values"]["val/loss"]) == 2 and len(row["curves"]) == 2
    assert row["metrics"]["val/loss"] == pytest.approx(sum(row["values"]["val/loss"]) / 2)
    assert all(0.0 <= v <= 1.0 for c in row["curves"] for v in c["values"])
    assert "mean [min, max] over 2 seeds" in (tmp_path / "results.md").read_text()
    assert [r["seed"] for r in res["runs"]] == [0, 1]
    # resume: the logged runs are kept; another seed and a changed budget train anew
    log = tmp_path / "runs.jsonl"
    assert len(log.read_text().splitlines()) == 2
    more = VideoComparison(layers=["none"], max_steps=1, num_train=8, samples=0, seeds=3, curve_points=1,
                           curve_batches=1, jobs=1, resume=True, out=str(tmp_path))
    again = run_video_comparison(more, progress=False)
    assert [r["train_seconds"] for r in again["runs"][:2]] == [r["train_seconds"] for r in res["runs"]]
    assert [r["seed"] for r in again["runs"]] == [0, 1, 2] and len(log.read_text().splitlines()) == 3
    other = run_video_comparison(dataclasses.replace(more, num_train=16, seeds=1), progress=False)
    assert other["runs"][0]["train_seconds"] != res["runs"][0]["train_seconds"]
    assert other["runs"][0]["num_train"] == 16 and len(other["runs"]) == 1
    assert len(log.read_text().splitlines()) == 4  # the other settings' runs stay logged for the calls that want them
    fresh = run_video_comparison(dataclasses.replace(more, resume=False, seeds=1), progress=False)
    assert len(fresh["runs"]) == 1 and len(log.read_text().splitlines()) == 1  # without resume the log starts over


def test_longest_first_queues_expensive_layers_first_and_none_last():
    from seqmix.compare.common import longest_first

    order = longest_first(["none", "ttt_linear", "mamba2", "swa", "gated_deltanet"])
    assert order[0] == "mamba2" and order[-1] == "none"
    assert sorted(order) == sorted(["none", "ttt_linear", "mamba2", "swa", "gated_deltanet"])
    assert order.index("gated_deltanet") < order.index("swa")  # its chunked form moves ~2x the bytes
    assert longest_first(["none", "none"]) == ["none", "none"]


def test_video_skip_leaves_layers_out_and_checks_names():
    from seqmix.compare import VideoComparison

    cmp = VideoComparison(layers=["none", "swa", "ttt_linear"], skip=["swa"])
    assert cmp.run_layers() == ["none", "ttt_linear"]
    cmp.validate()
    with pytest.raises(ValueError, match="not among the layers"):
        VideoComparison(layers=["none"], skip=["swa"]).validate()
    with pytest.raises(ValueError, match="leaves no layer"):
        VideoComparison(layers=["none"], skip=["none"]).validate()


def test_run_log_records_portable_recipe_paths_and_resumes_across_checkouts(tmp_path):
    """A run's record names the built-in recipe as ``recipes/...`` (not this checkout's absolute path) and a log
    written elsewhere, or with the old relative form, resumes here."""
    from seqmix.compare.common import RunLog
    from seqmix.utils.recipes import recipe_dir

    here = ["--config", str(recipe_dir() / "base" / "mqar.yaml"), "--seed_everything=0"]
    log = RunLog(tmp_path)
    kept, todo = log.start([("a",)], lambda _: here, lambda rec: True, resume=True)
    assert kept == [] and todo == [("a",)]
    log.append({"args": here, "val_acc": 1.0})
    rec = json.loads(log.path.read_text().splitlines()[0])
    assert rec["args"][1] == "recipes/base/mqar.yaml"
    kept, todo = RunLog(tmp_path).start([("a",)], lambda _: here, lambda rec: True, resume=True)
    assert len(kept) == 1 and todo == []


def test_zoology_vocabulary_reaches_data_and_model(tmp_path):
    """The zoology preset's vocabulary 8192 is the data's and the model's (a quick run builds and trains)."""
    from seqmix.compare import MQARSweep, run_mqar_sweep

    sweep = dataclasses.replace(MQARSweep.preset("zoology", out=str(tmp_path), layers=["full_attn"]).quick(),
                                widths=[32], num_layers=1)
    res = run_mqar_sweep(sweep)
    (rec,) = json.loads((tmp_path / "results.json").read_text())["runs"]
    assert "--data.init_args.vocab_size=8192" in rec["args"] and "--model.init_args.model.vocab_size=8192" in rec["args"]
    assert res["markdown"] and "vocab 8192" in res["markdown"]


def test_mqar_default_layers_have_a_causal_form(monkeypatch):
    """A token mixer with no causal form is not an MQAR default (the causal LM could not build it)."""
    from seqmix import layers as L
    from seqmix.compare import MQARSweep
    from seqmix.compare.common import token_mixers

    assert set(MQARSweep().layers) == set(token_mixers(causal=True)) <= set(token_mixers())
    assert all(L.mixer_class(n).can_be_causal() for n in MQARSweep().layers)
    name = MQARSweep().layers[0]
    monkeypatch.setattr(L.mixer_class(name), "causal_modes", (False,))
    assert name not in MQARSweep().layers and name in token_mixers()


def test_video_readings_speed_and_level_from_curves():
    """A long run's two readings: recall at the equal budget and the first step the seed mean reaches the level
    (from the curves), final values from the validation, seconds per step; 'never' where the mean stays below."""
    from seqmix.compare.curves import curve_at, first_crossing, tail_change
    from seqmix.compare.video import VideoComparison, _video_markdown, add_readings, video_rows

    steps = [0, 250, 500, 750, 1000]
    fast = [{"steps": steps, "values": v} for v in ([0.25, 0.5, 0.7, 0.8, 0.8], [0.25, 0.4, 0.6, 0.8, 0.9])]
    slow = [{"steps": steps, "values": v} for v in ([0.25, 0.25, 0.3, 0.4, 0.45], [0.25, 0.3, 0.3, 0.35, 0.4])]
    assert first_crossing(fast, 0.5) == 500 and first_crossing(slow, 0.5) is None  # mean at 250 is 0.45
    assert curve_at(fast, 500).mean == pytest.approx(0.65) and curve_at(fast, 600) is None
    records = [{"name": n, "seed": s, "mixer": n, "curve": c[s], "steps": 1000, "train_seconds": 500.0, "params": 1,
                "state_size": 0, "num_appearances": 4,
                "metrics": {"val/consistency": c[s]["values"][-1], "val/loss_seg0": 0.1, "val/loss_seg1": 0.1,
                            "val/loss_seg2": 0.2 - c[s]["values"][-1] / 10}}
               for n, c in (("a", fast), ("b", slow)) for s in (0, 1)]
    cmp = VideoComparison(layers=["a", "b"], max_steps=1000, curve_points=4, seeds=2)
    rows = video_rows(records)
    add_readings(rows, cmp)
    assert rows[0]["readings"]["first_step_at_level"] == 500 and rows[1]["readings"]["first_step_at_level"] is None
    assert rows[0]["readings"]["seconds_per_step"] == pytest.approx(0.5)
    # last 25% = steps 750 and 1000: a's mean 0.8 -> 0.85 (flat within 0.05), b's 0.375 -> 0.425 (flat)
    assert rows[0]["readings"]["tail_change"] == pytest.approx(0.05) and rows[0]["readings"]["flat"]
    assert tail_change([{"steps": steps, "values": [0.0, 0.0, 0.0, 0.2, 0.6]}]) == pytest.approx(0.4)
    assert tail_change([{"steps": [0, 10], "values": [0.0, 1.0]}], fraction=0.01) is None
    md = _video_markdown(rows, cmp, "cmd")
    assert "## How fast and how far (1000 steps)" in md and "| never |" in md and "| +0.050 |" in md
    assert "Recall at step 500, pairs whose intervals separate" in md and "a > b" in md.split("Recall at step 500")[-1]


def test_mqar_per_layer_learning_rates():
    from seqmix.compare import MQARSweep

    sweep = MQARSweep(layers=["swa", "full_attn"], widths=[16], lrs={"swa": [1e-3], "full_attn": [3e-3, 1e-2]},
                      seeds=2)
    sweep.validate()
    runs = [(r[0], r[2], r[4]) for r in sweep.runs()]
    assert runs == [("swa", 1e-3, 0), ("swa", 1e-3, 1), ("full_attn", 3e-3, 0), ("full_attn", 3e-3, 1),
                    ("full_attn", 1e-2, 0), ("full_attn", 1e-2, 1)]
    assert sweep.quick().lrs == {"swa": [1e-3], "full_attn": [3e-3]}
    with pytest.raises(ValueError, match=r"no learning rate for \['full_attn'\]; they name \['mamba2', 'swa'\]"):
        MQARSweep(layers=["swa", "full_attn"], lrs={"swa": [1e-3], "mamba2": [1e-3]}).validate()
    MQARSweep(layers=["swa"], lrs={"swa": [1e-3], "mamba2": [1e-3]}).validate()  # a preset's others are ignored
    with pytest.raises(ValueError, match="vocab_size=64 must exceed seq_len=64"):  # before any process starts
        MQARSweep(layers=["swa"], seq_len=64, vocab_size=64).validate()
    with pytest.raises(ValueError, match="positive"):
        MQARSweep(layers=["swa"], lrs={"swa": []}).validate()


def _sleep_forever(pid_dir: str) -> None:
    import os
    import pathlib
    import time

    pathlib.Path(pid_dir, str(os.getpid())).touch()
    time.sleep(600)


def test_stopping_a_comparison_ends_its_worker_processes(tmp_path):
    """SIGTERM to a comparison (or its death by SIGKILL) ends the runs it started in worker processes; they used to
    train on as orphans."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap
    import time

    script = textwrap.dedent(f"""
        from seqmix.compare.common import _map_runs
        from tests.test_compare_seeds import _sleep_forever
        if __name__ == "__main__":
            _map_runs(_sleep_forever, [({str(tmp_path)!r},)] * 2, 2, str, "t", False, print)
    """)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for p in tmp_path.iterdir():
            p.unlink()
        proc = subprocess.Popen([sys.executable, "-c", script], cwd=os.path.dirname(os.path.dirname(__file__)))
        deadline = time.time() + 120
        while len(list(tmp_path.iterdir())) < 2 and time.time() < deadline:
            time.sleep(0.2)
        workers = [int(p.name) for p in tmp_path.iterdir()]
        assert len(workers) == 2, "the workers did not start"
        proc.send_signal(sig)
        proc.wait(timeout=30)
        deadline = time.time() + 15
        while any(_alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not any(_alive(w) for w in workers), f"workers left running after {sig.name}"


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its new parent) counts as ended
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False
