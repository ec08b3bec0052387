"""Where the built-in recipes are: ``recipes/`` of a checkout (editable install or ``PYTHONPATH``), or the package
data ``seqmix/recipes/`` of an installed wheel. Never the working directory: an unrelated ``./recipes`` must not
change what ``seqmix compare`` runs. A recipe path a user gives (``seqmix fit --config my.yaml``) is used as given;
a name of a built-in one (``mqar/full_attn.yaml``, ``recipes/mqar/full_attn.yaml``) that is not a file there is
found here."""

from __future__ import annotations

from pathlib import Path

__all__ = ["builtin_recipe", "recipe_dir", "resolve_recipe"]

_PKG = Path(__file__).resolve().parents[1]


def recipe_dir() -> Path:
    """The built-in recipe folder (``seqmix/recipes`` when installed from a wheel, else the checkout's ``recipes/``)."""
    inside = _PKG / "recipes"
    return inside if inside.is_dir() else _PKG.parent / "recipes"


def builtin_recipe(name: str | Path) -> Path:
    """The built-in recipe ``name`` (``"mqar/full_attn.yaml"``, with or without ``recipes/`` and ``.yaml``).

    Raises FileNotFoundError naming the folder and the recipes of the nearest folder that exists."""
    parts = Path(name).parts
    if parts and parts[0] == "recipes":
        parts = parts[1:]
    path = recipe_dir().joinpath(*parts) if parts else recipe_dir()
    if path.suffix != ".yaml":
        path = path.with_name(path.name + ".yaml")
    if not path.is_file():
        near = path.parent if path.parent.is_dir() else recipe_dir()
        have = sorted(str(p.relative_to(recipe_dir())) for p in near.glob("*.yaml"))
        raise FileNotFoundError(f"no built-in recipe {name!r} (looked for {path}); recipes there: {have}")
    return path


def resolve_recipe(path: str) -> str:
    """``path`` if it names a file; else the built-in recipe of that name if there is one; else ``path`` unchanged
    (the caller reports it missing)."""
    if Path(path).is_file():
        return path
    try:
        return str(builtin_recipe(path))
    except FileNotFoundError:
        return path
