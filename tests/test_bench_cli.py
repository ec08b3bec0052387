"""``seqmix bench ...`` options come from the suites' config dataclasses: every field is an option with help, an
unset option takes the chosen preset's value, a set one replaces it."""

from __future__ import annotations

import dataclasses

import pytest
from jsonargparse import CLI

from seqmix.bench.cli import BENCH_COMMANDS
from seqmix.utils.config_cli import config_command, field_docs, preset_config
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


def test_layer_sizes_come_from_the_mixer_class_with_run_overrides_on_top():
    from seqmix import layers as L
    from seqmix.bench.driver import mixer_bench_config

    assert mixer_bench_config("swa", "bench", {}) == L.mixer_class("swa").Tooling.bench_config == {"window": 1024}
    assert mixer_bench_config("swa", "quick", {"swa": {"window": 5}}) == {"window": 5}
    assert mixer_bench_config("ttt_mlp", "defaults", {}) == {}
    assert mixer_bench_config("ttt_mlp", "paper", {}) == {"scan_checkpoint_group": 16}
    with pytest.raises(ValueError, match="choose one of defaults, bench, quick, paper"):
        mixer_bench_config("swa", "cpu", {})
    assert LayerBenchConfig().layer_sizes == "bench" and LayerBenchConfig.gpu().layer_sizes == "paper"
    # the DiT rescales a paper-sized token window (SWA's 8192 tokens = 6.07 frames of 1350) to its own frames
    dit = DiTBenchConfig()
    assert dit.mixer_config("swa") == {"window": round(8192 / 1350 * dit.tokens_per_frame)}
    assert DiTBenchConfig.gpu().mixer_config("swa") == {"window": 8192}
    assert DiTBenchConfig(mixer_configs={"swa": {"window": 7}}).mixer_config("swa") == {"window": 7}
    # a class's dit_config applies under every preset (LaCT: chunks follow the 3 s segments), run overrides on top
    assert dit.mixer_config("lact")["chunk_align"] == "segment"
    assert DiTBenchConfig.gpu().mixer_config("lact") == {"chunk_align": "segment", "chunk_size": 1350}
