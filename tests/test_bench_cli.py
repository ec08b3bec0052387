"""``seqmix bench ...`` options come from the suites' config dataclasses: every field is an option with help, an
unset option takes the chosen preset's value, a set one replaces it."""

from __future__ import annotations

import dataclasses

import pytest
from jsonargparse import CLI

from seqmix.bench.cli import BENCH_COMMANDS, config_command, field_docs, preset_config
from seqmix.bench.dit import DiTBenchConfig
from seqmix.bench.layers import LayerBenchConfig
from seqmix.bench.rollout import RolloutBenchConfig
from seqmix.bench.ttt_kernels import TTTKernelBenchConfig
from seqmix.cli import main

CONFIGS = {"layers": LayerBenchConfig, "dit": DiTBenchConfig, "ttt-kernels": TTTKernelBenchConfig,
           "rollout": RolloutBenchConfig}
NOT_OPTIONS = {"dit": {"reduced"}}  # a label the preset sets, not a knob


@pytest.mark.parametrize("suite", list(CONFIGS))
def test_every_config_field_is_an_option_with_help(suite, capsys):
    cls = CONFIGS[suite]
    with pytest.raises(SystemExit) as e:
        main(["bench", suite, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for f in dataclasses.fields(cls):
        if f.name not in NOT_OPTIONS.get(suite, set()):
            assert f"--{f.name} " in out or f"--{f.name}\n" in out, f"--{f.name} missing from bench {suite} --help"
    assert "--out" in out
    docs = field_docs(cls)
    assert not [f.name for f in dataclasses.fields(cls) if not docs.get(f.name)], "fields without a docstring entry"


def test_grouped_docstring_entries_document_each_field():
    docs = field_docs(LayerBenchConfig)
    assert docs["dim"] == docs["heads"] and docs["dim"].startswith("(dim, heads) ")
    assert docs["batch"] == "sequences per call."  # inherited from BenchConfig


def test_unset_options_take_the_preset_and_set_ones_replace_it():
    calls = []
    cmd = config_command(LayerBenchConfig, lambda given, quick, out: calls.append((given, quick, out)), "Test.",
                         extras=(("out", str | None, None, "where"),))
    CLI({"x": cmd}, args=["x", "--dim", "48", "--quick", "true", "--lengths", "[8, 16]"])
    given, quick, out = calls[-1]
    assert given == {"dim": 48, "lengths": [8, 16]} and quick and out is None
    cfg = preset_config(LayerBenchConfig, given, quick)
    ref = LayerBenchConfig.quick_config()
    assert (cfg.dim, cfg.lengths, cfg.heads, cfg.repeats, cfg.quick) == (48, [8, 16], ref.heads, ref.repeats, True)
    assert preset_config(LayerBenchConfig, {"device": "cuda"}, False).dim == LayerBenchConfig.gpu().dim
    assert preset_config(LayerBenchConfig, {}, False) == LayerBenchConfig()
    assert preset_config(RolloutBenchConfig, {"frames": 7}, True).size == RolloutBenchConfig.quick_config().size


def test_help_shows_the_preset_values():
    doc = BENCH_COMMANDS["layers"].__doc__
    line = next(line for line in doc.splitlines() if line.strip().startswith("dim:"))
    assert "Unset: 256" in line and "--quick: 64" in line and "--device cuda: 3072" in line
