"""World-model rollout benchmark (seqmix.bench.rollout): the smoke run is schema-valid, records every model (those
whose layers are not registered as skipped, with the reason), labels stand-ins, and its memory grows for the
full-context Transformer only."""

from __future__ import annotations

import json

import pytest

from seqmix import layers as L
from seqmix.bench import validate
from seqmix.backbones.wm_config import world_model_names
from seqmix.bench.rollout import RolloutBenchConfig, model_config
from seqmix.cli import main

STAND_INS = {"blockwise_ssm": "mamba2", "frame_local_attn": "swa", "blockwise_ttt": "ttt_mlp"}


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    root = tmp_path_factory.mktemp("rollout")
    out = {}
    for kind, extra in (("plain", []), ("stand-in", ["--stand_ins", json.dumps(STAND_INS)])):
        d = root / kind
        main(["bench", "rollout", "--quick", "--frames", "8", "--out", str(d), *extra])
        assert (d / "results.md").exists() and (d / "results.png").exists()
        out[kind] = json.loads((d / "results.json").read_text())
    return out


def test_quick_run_is_valid_and_records_every_model(docs):
    doc = validate(docs["plain"])
    assert doc["suite"] == "rollout"
    names = {r["extra"]["model"] for r in doc["records"]}
    assert names == set(world_model_names(rollout=True))
    for r in doc["records"]:
        missing = [n for layer in model_config(RolloutBenchConfig.quick_config(), r["extra"]["model"])[0].mixers
                   for n, _ in layer] if r["status"] == "ok" else None
        if r["status"] == "skipped":
            assert "not registered" in r["reason"]
        else:
            assert r["status"] == "ok" and missing and all(n in L.available() for n in missing)
            assert r["unit"] == "frame" and r["mode"] == "decode-frame" and r["gate"]
    ok = [r for r in doc["records"] if r["status"] == "ok"]
    assert {r["extra"]["model"] for r in ok} >= {"causal_transformer"}
    s = doc["summary"]["models"]["causal_transformer"]
    assert len(s["frame_s"]) == 8 and s["state_bytes"][-1] > s["state_bytes"][-2] > s["state_bytes"][1]


def test_stand_ins_are_labelled_and_fixed_state_models_keep_their_state(docs):
    doc = validate(docs["stand-in"])
    assert any("STAND-INS" in n for n in doc["meta"]["notes"])
    models = doc["summary"]["models"]
    for m in ("blockwise_ssm", "blockwise_ttt", "frame_local_attn"):
        label = m if all(n in L.available() for n in ("blockwise_ssm", "blockwise_ttt", "frame_local_attn")) \
            else f"{m} (stand-in)"
        r = models[label]
        assert r["status"] == "ok", r
        if m == "frame_local_attn" or "stand-in" not in label:
            assert r["state_bytes"][-1] == r["state_bytes"][-2] > 0, (m, r["state_bytes"])  # window full: constant


def test_bad_config():
    with pytest.raises(ValueError, match="unknown world model"):
        RolloutBenchConfig(models=["nope"])
    with pytest.raises(ValueError, match="window"):
        RolloutBenchConfig(frames=10, window=20)
