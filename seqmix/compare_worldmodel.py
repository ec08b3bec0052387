"""World-model comparison (``seqmix compare worldmodel``)."""

from __future__ import annotations

from pathlib import Path

from seqmix.compare import _flat, recipe_dir

#: Keys (dotted) a model recipe may change relative to ``recipes/base/worldmodel.yaml``.
MODEL_KEYS = ("model.init_args.model.mixers", "trainer.default_root_dir")


def model_overrides(recipe: str | Path) -> dict:
    """What a model recipe changes relative to the world-model base recipe, as ``{dotted key: value}``; anything
    but :data:`MODEL_KEYS` raises (the base recipe is the one place that sets what every model shares)."""
    import yaml

    base_path = recipe_dir() / "base" / "worldmodel.yaml"
    base = _flat(yaml.safe_load(base_path.read_text()))
    doc = _flat(yaml.safe_load(Path(recipe).read_text()))
    missing = sorted(set(base) - set(doc))
    diff = {k: v for k, v in doc.items() if k not in base or base[k] != v}
    extra = sorted(set(diff) - set(MODEL_KEYS))
    if missing or extra:
        raise ValueError(f"{recipe}: a world-model recipe must be {base_path} with only {', '.join(MODEL_KEYS)} "
                         f"changed; differs in {extra}, lacks {missing}")
    return diff
