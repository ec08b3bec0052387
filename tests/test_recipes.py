"""Per-layer recipes are the task's base recipe plus the layer's documented overrides (the base stays the one place
that sets what every layer of a comparison shares)."""

from pathlib import Path

import pytest

from seqmix.compare import _LAYER_KEYS, base_recipe, layer_args, recipe_overrides

ROOT = Path(__file__).resolve().parents[1]
PER_LAYER = sorted((t, p) for t in ("mqar", "t2v") for p in (ROOT / "recipes" / t).glob("*.yaml"))


@pytest.mark.parametrize("task,recipe", PER_LAYER, ids=[f"{t}/{p.stem}" for t, p in PER_LAYER])
def test_per_layer_recipe_is_base_plus_layer_overrides(task, recipe):
    diff = recipe_overrides(task, recipe)
    assert set(diff) <= set(_LAYER_KEYS)


def test_a_recipe_changing_shared_settings_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(base_recipe("mqar").read_text().replace("lr: 3.0e-3", "lr: 1.0e-2"))
    with pytest.raises(ValueError, match="differs in"):
        recipe_overrides("mqar", bad)


def test_layer_args_take_the_documented_overrides():
    args = layer_args("mqar", "swa")
    assert args[:2] == ["--config", str(base_recipe("mqar"))]
    assert "--model.init_args.model.mixer=swa" in args and '--model.init_args.model.mixer_config={"window": 8}' in args
    assert "--model.init_args.model.num_heads=1" in args
    # a layer without its own recipe gets the base + its name and default config
    assert layer_args("t2v", "full_attn")[2:] == ["--model.init_args.model.mixer_config={}",
                                                  "--model.init_args.model.mixer=full_attn"]
    # block-local attention's t2v run follows the segments (its token window would cover the whole CPU video)
    assert '--model.init_args.model.mixer_config={"block_align": "segment"}' in layer_args("t2v", "local_attn")
    # no layer: the base recipe's `mixer: null` stands, and the run builds a DiT without a global layer
    assert not any("model.mixer=" in a for a in layer_args("t2v", None))
    from seqmix.lightning_cli import run_lightning

    assert run_lightning(layer_args("t2v", None), run=False).model.dit.config.mixer is None
