"""A mixer written as one class, using only the documented base contract, is picked up by every consumer: the
contract harness, ``seqmix bench layers``, ``seqmix bench dit`` and both comparisons (tiny smoke sizes)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from seqmix import layers
from seqmix.bench import validate
from seqmix.cli import main
from seqmix.layers import Mixer, MixerConfig
from seqmix.layers.base import _REGISTRY

import contract as C

NAME = "cumulative_mean"


class CumulativeMean(Mixer):
    """``y_t = W (mean_{s <= t} x_s)``: a causal running mean of the tokens, then a linear map. State: the running
    sum [B, D] and the token count."""

    causal_modes = (True,)  # causal by construction (a default-valued capability; the LM comparison needs it)

    @dataclass(kw_only=True)
    class Config(MixerConfig):
        bias: bool = True

    def __init__(self, dim: int, num_heads: int, config: Config):
        super().__init__(dim, num_heads, config)
        self.proj = nn.Linear(dim, dim, bias=config.bias)

    def state_size(self, seq_len: int | None = None) -> int:
        return self.dim + 1

    def _forward(self, x, *, layout, positions, state, return_state):
        B, T, D = x.shape
        s0, n0 = (x.new_zeros(B, D), 0) if state is None else state
        csum = s0.unsqueeze(1) + x.cumsum(1)  # [B, T, D]
        count = n0 + torch.arange(1, T + 1, device=x.device, dtype=x.dtype).view(1, T, 1)
        y = self.proj(csum / count)
        return y, ((csum[:, -1], n0 + T) if return_state else None)


@pytest.fixture(scope="module")
def registered():
    layers.register(NAME)(CumulativeMean)
    yield NAME
    _REGISTRY.pop(NAME)  # leave the registry as the other tests expect it


def test_contract_harness(registered):
    assert registered in layers.available()
    C.check_all(registered)


def test_bench_layers(registered, tmp_path):
    main(["bench", "layers", "--quick", "--layers", f'["{NAME}"]', "--lengths", "[16, 32]",
          "--modes", '["fwd", "decode"]', "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "results.json").read_text())
    validate(doc)
    ok = {(r["name"], r["mode"]) for r in doc["records"] if r["status"] == "ok"}
    assert {(NAME, "fwd"), (NAME, "decode")} <= ok
    assert all(r["gate"] for r in doc["records"])


def test_bench_dit(registered, tmp_path):
    main(["bench", "dit", "--quick", "--variants", f'["local", "{NAME}"]', "--durations", "[3]",
          "--modes", '["fwd"]', "--out", str(tmp_path)])
    doc = json.loads((tmp_path / "results.json").read_text())
    validate(doc)
    assert any(r["name"] == NAME and r["status"] == "ok" for r in doc["records"])


def test_mqar_comparison(registered, tmp_path):
    from seqmix.compare import MQARSweep, run_mqar_sweep

    assert NAME in MQARSweep().layers  # a default layer of the comparison
    res = run_mqar_sweep(MQARSweep(layers=[NAME], widths=[16], lrs=[1e-3], max_steps=1, jobs=1, out=str(tmp_path)),
                         progress=False)
    assert [r["mixer"] for r in res["best"]] == [NAME]


def test_video_comparison(registered, tmp_path):
    from seqmix.compare import VideoComparison, run_video_comparison

    assert NAME in VideoComparison().layers
    res = run_video_comparison(VideoComparison(layers=[NAME], max_steps=1, num_train=8, samples=0, jobs=1,
                                               out=str(tmp_path)), progress=False)
    assert [r["mixer"] for r in res["rows"]] == [NAME]
