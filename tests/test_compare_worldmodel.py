"""`seqmix compare worldmodel --quick`: every output is written and the table holds every model."""

import json

import pytest

from seqmix.compare.worldmodel import WorldModelComparison, model_overrides, recipe_models, run_worldmodel_comparison


def test_quick_comparison_writes_table_plot_gifs(tmp_path):
    cmp = WorldModelComparison(recipes="worldmodel", out=str(tmp_path / "cmp"),
                               models=["frame_local_attn", "causal_transformer"]).quick()
    res = run_worldmodel_comparison(cmp, progress=False)
    doc = json.loads((tmp_path / "cmp/results.json").read_text())
    assert set(doc["summary"]) == {"frame_local_attn", "causal_transformer"} and doc["window"] == 4
    assert set(doc["references"]) == {"mean training frame", "last context frame"}
    assert len(doc["runs"]) == 2 and all(len(r["psnr"]) == 2 * 4 for r in doc["runs"])
    assert "| frame_local_attn |" in res["markdown"] and (tmp_path / "cmp/results.md").is_file()
    assert res["paths"]["png"] is None or res["paths"]["png"].is_file()
    assert len(list((tmp_path / "cmp/gifs").glob("*.gif"))) == 2
    mem = doc["summary"]["frame_local_attn"]["memory"]  # the memory metric beside its model-free references
    assert set(mem) == {"model", "mean_frame", "last_context", "best_window"}
    run = doc["runs"][0]  # each run's own memory figures, flat: {"model", "seed", "psnr_within", ...}
    assert {"model", "seed", "psnr_within", "psnr_beyond", "ssim_within", "ssim_beyond", "params", "steps"} <= set(run)
    assert "Memory (the metric that isolates it)" in res["markdown"]


def test_resume_keeps_finished_runs_and_trains_the_missing(tmp_path):
    """``resume``: runs logged in ``runs.jsonl`` by an earlier call with the same settings are kept (not trained
    again); a model added to the call is trained; without ``resume`` the log starts over."""
    import dataclasses

    first = WorldModelComparison(out=str(tmp_path / "cmp"), models=["frame_local_attn"]).quick()
    kept = run_worldmodel_comparison(first, progress=False)["records"][0]
    more = dataclasses.replace(first, models=["frame_local_attn", "causal_transformer"], resume=True)
    recs = {r["model"]: r for r in run_worldmodel_comparison(more, progress=False)["records"]}
    assert recs["frame_local_attn"]["train_seconds"] == kept["train_seconds"]  # the logged record, not a new run
    assert set(recs) == {"frame_local_attn", "causal_transformer"}
    assert len((tmp_path / "cmp/runs.jsonl").read_text().splitlines()) == 2


def test_bad_selection_and_recipes(tmp_path):
    assert recipe_models()[0] == "blockwise_ssm" and len(recipe_models()) == 6
    with pytest.raises(ValueError, match="unknown world model.*valid"):
        WorldModelComparison(models=["nope"]).validate()
    with pytest.raises(ValueError, match="seeds must be >= 1"):
        WorldModelComparison(seeds=0).validate()
    from seqmix.compare import recipe_dir

    bad = tmp_path / "bad.yaml"
    bad.write_text((recipe_dir() / "worldmodel/blockwise_ssm.yaml").read_text().replace("lr: 2.0e-3", "lr: 1.0e-2"))
    with pytest.raises(ValueError, match="differs in"):
        model_overrides(bad)


def test_memory_recipe_set_matches_parameters_and_builds():
    """The memory study's recipe set: the paper's model, frame-local attention only, Mamba2, block-wise TTT and the
    full-context Transformer, each its base recipe with only mixers and MLP width changed, parameter counts
    within 0.2%; unknown sets and models outside the set are refused."""
    from seqmix.backbones.worldmodel import WorldModel
    from seqmix.lightning_cli import run_lightning

    models = recipe_models("worldmodel/memory")
    assert models == ["blockwise_ssm", "blockwise_ttt", "frame_local_attn", "causal_transformer", "mamba2"]
    cmp = WorldModelComparison(recipes="worldmodel/memory")
    assert cmp.models == models
    counts = {}
    for m in models:
        model_overrides(cmp.recipe(m), "worldmodel/memory")
        cli = run_lightning(["--config", str(cmp.recipe(m)), "--data.init_args.path=/nonexistent",
                             "--trainer.logger=false"], run=False)
        assert isinstance(cli.model.model, WorldModel)
        counts[m] = cli.model.model.num_params()
    assert max(counts.values()) / min(counts.values()) < 1.002, counts
    with pytest.raises(ValueError, match="unknown recipe set"):
        recipe_models("nope")
    with pytest.raises(ValueError, match="no recipe in recipes/worldmodel/memory"):
        WorldModelComparison(recipes="worldmodel/memory", models=["mamba2_fla"]).validate()
