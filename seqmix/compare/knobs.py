"""Per-layer knobs in a comparison's sweep grid: config fields a layer declares on its class
(:attr:`seqmix.layers.Mixer.Tooling.sweep_knobs`) or that the command line names, tried beside the outer learning
rate so a layer is compared at its best setting."""

from __future__ import annotations

import dataclasses
import itertools
import json

from seqmix.compare.common import recipe_dir, recipe_overrides

__all__ = ["knob_args", "knob_grid", "parse_knobs"]


def parse_knobs(spec) -> dict | str | None:
    """``None`` / ``"none"``: no knobs; ``"declared"``: each layer's :attr:`sweep_knobs`; a mapping (or its YAML/JSON
    text) ``{layer: {field: [values]}}``: those grids (layers not named keep their recipe's setting)."""
    if spec is None or spec == "none":
        return None
    if spec == "declared":
        return "declared"
    if isinstance(spec, str):
        import yaml

        spec = yaml.safe_load(spec)
    if not isinstance(spec, dict) or not all(isinstance(v, dict) for v in spec.values()):
        raise ValueError(f"knobs must be 'none', 'declared' or a mapping {{layer: {{field: [values]}}}}, got {spec!r}")
    return {layer: {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in grid.items()}
            for layer, grid in spec.items()}


def knob_grid(layer: str, spec) -> list[dict]:
    """Every knob setting of ``layer`` (the product of its knob values), ``[{}]`` without knobs. Knob names must be
    fields of the layer's config."""
    from seqmix import layers as L

    spec = parse_knobs(spec)
    if spec is None:
        return [{}]
    cls = L.mixer_class(layer)
    grid = dict(cls.Tooling.sweep_knobs) if spec == "declared" else spec.get(layer, {})
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    bad = sorted(set(grid) - fields)
    if bad:
        raise ValueError(f"{layer}: unknown knob(s) {bad}; config fields: {', '.join(sorted(fields))}")
    if not grid:
        return [{}]
    names = sorted(grid)
    return [dict(zip(names, vals)) for vals in itertools.product(*(tuple(grid[n]) for n in names))]


def knob_args(task: str, layer: str | None, setting: dict) -> list[str]:
    """The argument that sets ``layer``'s mixer config to its recipe's config updated with ``setting`` (none for an
    empty setting); later arguments win, so this goes after :func:`seqmix.compare.common.layer_args`."""
    if not setting or layer is None:
        return []
    own = recipe_dir() / task / f"{layer}.yaml"
    base = {}
    if own.is_file():
        doc = recipe_overrides(task, own)
        if doc.get("model.init_args.model.mixer", layer) == layer:
            base = dict(doc.get("model.init_args.model.mixer_config") or {})
    return [f"--model.init_args.model.mixer_config={json.dumps({**base, **setting})}"]
