"""The ``seqmix`` command line as a new user meets it: help, version, recipe typos, clean fit output, the layer
table, and data-preparation defaults that match the recipes."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from seqmix import layers
from seqmix.cli import main, prepare_storyboards

ROOT = Path(__file__).resolve().parents[1]


def _run_main(args, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    out = capsys.readouterr()
    return e.value.code, out.out, out.err


def test_help_lists_every_subcommand_with_a_description(capsys):
    code, out, _ = _run_main(["--help"], capsys)
    assert code == 0
    for sub in ("fit", "validate", "test", "predict"):
        assert f"\n  {sub} " in out, f"{sub} missing from --help"
    lines = out.splitlines()
    for sub in ("layers", "bench", "compare", "prepare"):
        i = next(i for i, line in enumerate(lines) if line.strip().startswith(sub))
        assert len(lines[i].split()) > 1, f"{sub} has no description in --help"


def test_version(capsys):
    import seqmix

    code, out, _ = _run_main(["--version"], capsys)
    assert code == 0 and out.strip() == f"seqmix {seqmix.__version__}"


def test_misspelled_mixer_in_a_recipe_is_one_line(tmp_path, capsys):
    recipe = yaml.safe_load((ROOT / "recipes/mqar/full_attn.yaml").read_text())
    recipe["model"]["init_args"]["model"]["mixer"] = "full_atn"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(recipe))
    code, _, err = _run_main(["fit", "--config", str(bad), "--trainer.max_steps=1",
                              f"--trainer.default_root_dir={tmp_path}"], capsys)
    assert code == 2
    assert [line for line in err.strip().splitlines() if "Seed set to" not in line] == [
        "seqmix fit: error: model.init_args.model.mixer: unknown mixer 'full_atn'; valid names: "
        + ", ".join(layers.available())
    ]


def test_recipe_without_a_mixer_passes_the_name_check(tmp_path, capsys):
    """The t2v base recipe (mixer null: local attention only, the comparison's "none" baseline) is not a typo."""
    main(["fit", "--config", str(ROOT / "recipes/base/t2v.yaml"), "--trainer.fast_dev_run=1", "--trainer.logger=false",
          f"--trainer.default_root_dir={tmp_path}"])  # a RecipeError would exit with code 2
    assert "unknown mixer" not in capsys.readouterr().err


def test_fit_output_has_no_advertising_or_dependency_notices(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TRITON_INTERPRET", None)
    r = subprocess.run([sys.executable, "-m", "seqmix.cli", "fit", "--config", str(ROOT / "recipes/mqar/full_attn.yaml"),
                        "--trainer.max_steps=1", "--data.init_args.num_train=16", "--data.init_args.num_val=8",
                        "--data.init_args.batch_size=8", "--model.init_args.model.dim=16",
                        f"--trainer.default_root_dir={tmp_path}"],
                       env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout + r.stderr
    for noise in ("Tip:", "litlogger", "litmodels", "LeafSpec", "deprecated", "tensorboardX"):
        assert noise not in out, f"{noise!r} in fit output:\n{out[-3000:]}"


def test_layers_table_shows_params_and_state_at_a_width(capsys):
    main(["layers", "--dim", "64", "--num_heads", "2", "--seq_len", "100"])
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(rows) == set(layers.available())
    for name in layers.available():
        cls = layers.mixer_class(name)
        no_default = {f.name for f in dataclasses.fields(cls.Config) if f.default is dataclasses.MISSING}
        required = {k: v for k, v in cls.Tooling.small_config.items() if k in no_default}  # a frame layer's grid, block
        layer = layers.build(name, dim=64, num_heads=2, **required)
        params = sum(p.numel() for p in layer.parameters())
        assert rows[name][1:3] == [f"{params:,}", f"{layer.state_size(100):,}"], name


def test_missing_dataset_points_to_an_existing_command(tmp_path):
    from seqmix.data.shards import LatentShards

    with pytest.raises(FileNotFoundError, match="seqmix prepare storyboards") as e:
        LatentShards(tmp_path)
    assert "scripts/" not in str(e.value)


def test_prepare_storyboards_defaults_are_the_t2v_recipes_data(tmp_path, capsys):
    from seqmix.data.storyboard import StoryboardConfig
    from seqmix.tasks import StoryboardVideoData

    data = yaml.safe_load((ROOT / "recipes/t2v/ttt_mlp.yaml").read_text())["data"]["init_args"]
    defaults = {k: p.default for k, p in inspect.signature(prepare_storyboards).parameters.items()}
    module_defaults = {k: p.default for k, p in inspect.signature(StoryboardVideoData).parameters.items()}
    for key in ("char_size", "num_appearances", "num_segments"):
        assert defaults[key] == data[key] == getattr(StoryboardConfig(), key) == module_defaults[key], key
    main(["prepare", "storyboards", str(tmp_path / "ds"), "--num_examples", "2"])
    cfg = json.loads((tmp_path / "ds" / "index.json").read_text())["layout"]["config"]
    assert (cfg["char_size"], cfg["num_appearances"]) == (data["char_size"], data["num_appearances"])


def test_lightning_names_still_importable_from_the_cli_module():
    """run_lightning / SeqmixCLI / RecipeError live in seqmix.lightning_cli (seqmix.compare uses them without
    importing the command line); the names users imported from seqmix.cli keep working."""
    import seqmix.cli
    from seqmix import lightning_cli

    for name in ("run_lightning", "SeqmixCLI", "RecipeError"):
        assert getattr(seqmix.cli, name) is getattr(lightning_cli, name)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        seqmix.cli.nope  # noqa: B018


def test_layers_with_an_impossible_width_is_one_error(capsys):
    from seqmix.cli import main

    with pytest.raises(SystemExit) as e:
        main(["layers", "--dim", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["seqmix layers: error: --dim 0: must be a positive int"], err


def test_plan_with_the_default_strategy_needs_no_tp(capsys):
    """`seqmix plan dit --gpus 8 --gpu-memory 80GB` (default strategy fsdp+tp) plans with tp = one node."""
    from seqmix.cli import main

    main(["plan", "dit", "--gpus", "8", "--gpu-memory", "80GB", "--duration", "3"])
    out = capsys.readouterr().out
    assert "3 s" in out and "error" not in out


def test_compare_quick_writes_only_under_out_and_prints_no_warnings(tmp_path):
    """From an empty working directory: everything goes under --out (no ./runs/...), and no warning is printed."""
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    r = subprocess.run([sys.executable, "-m", "seqmix.cli", "compare", "mqar", "--quick", "--out", str(out)],
                       cwd=work, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert list(work.iterdir()) == [], list(work.rglob("*"))
    assert (out / "results.json").is_file()
    noisy = [line for line in r.stderr.splitlines() if "Warning" in line or "deprecated" in line]
    assert not noisy, noisy


@pytest.mark.parametrize("argv, message", [
    (["fit", "--config", "mqar/gated_deltanet", "--model.init_args.model.mixer_config={chunk_sise: 4}"],
     "unknown config key(s) ['chunk_sise'] for mixer 'gated_deltanet'"),
    (["fit", "--config", "t2v/ttt_linear", "--data=seqmix.tasks.LatentVideoData", "--data.init_args.path=/no/such/dir"],
     "does not exist"),
    (["fit", "--config", "worldmodel/blockwise_ssm", "--data.init_args.generate=null", "--data.init_args.path=/no/such/dir"],
     "holds no maze dataset"),
    (["bench", "layers", "--layers", "[nope]"], "unknown layer 'nope'"),
], ids=["fit-mixer-key", "fit-latent-path", "fit-maze-data", "bench-layer"])
def test_user_input_errors_are_one_line(argv, message):
    """Errors in what the user asked for print seqmix's message in one line (exit 2), no traceback."""
    extra = ["--trainer.max_steps=1"] if argv[0] == "fit" else []
    r = subprocess.run([sys.executable, "-m", "seqmix.cli", *argv, *extra], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT)
    assert r.returncode == 2, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and message in errors[0], r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


def test_compare_commands_are_generated_from_their_config_classes():
    """One CLI mechanism: every field of a comparison's config class is an option of its command (a new field needs
    no edit in the command line), with the class docstring's help."""
    import dataclasses
    import inspect

    from seqmix.cli import _compare_commands
    from seqmix.compare import MQARSweep, VideoComparison
    from seqmix.compare.worldmodel import WorldModelComparison

    commands = _compare_commands()
    for name, cls in (("video", VideoComparison), ("mqar", MQARSweep), ("worldmodel", WorldModelComparison)):
        params = inspect.signature(commands[name]).parameters
        fields = {f.name for f in dataclasses.fields(cls)}
        assert fields <= set(params), f"{name}: not options: {sorted(fields - set(params))}"
        undocumented = [f for f in fields if "Unset:" in commands[name].__doc__.split(f"    {f}: ", 1)[-1][:7]]
        assert not undocumented, f"{name}: fields without help in {cls.__name__}'s docstring: {undocumented}"
    assert "preset" in inspect.signature(commands["mqar"]).parameters


def test_top_level_usage_names_the_lightning_subcommands(capsys):
    from seqmix.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert "{fit,validate,test,predict}" in usage and "compare" in usage
