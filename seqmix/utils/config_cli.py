"""Commands generated from config dataclasses: one mechanism for every ``seqmix bench`` and ``seqmix compare``
command.

A command's options are the fields of its config class: flag names, types and help (the class docstring's
``Attributes:`` section) come from there, so a new field is a new option with no edit in the CLI. An option left
unset takes the value of the preset the command picks (``--quick``: ``quick_config(**given)``; ``--device cuda``:
``gpu(**given)`` where the class has one; otherwise the class defaults); its help lists those values. Options that
are not config fields (an output folder with a computed default, a named preset) are declared as ``extras``.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from typing import Any, Callable

import docstring_parser

__all__ = ["config_command", "field_default", "field_docs", "preset_config"]

_P = inspect.Parameter


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> help from the ``Attributes:`` sections of ``cls`` and its bases (the class's own wins);
    a grouped entry (``dim, heads: ...``) documents each of its fields, prefixed with the group's names."""
    fields = {f.name for f in dataclasses.fields(cls)}
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        for p in docstring_parser.parse(klass.__dict__.get("__doc__") or "").params:
            names = [n.strip() for n in p.arg_name.split(",")]
            if p.args[0] != "attribute" or not p.description or not set(names) <= fields:
                continue
            text = " ".join(p.description.split())
            for name in names:
                docs[name] = f"({p.arg_name}) {text}" if len(names) > 1 else text
    return docs


def _fields(cls: type) -> list[dataclasses.Field]:
    """The suite's own fields first (what a user tunes most), then the shared ones."""
    own = cls.__dict__.get("__annotations__", {})
    fields = dataclasses.fields(cls)
    return [f for f in fields if f.name in own] + [f for f in fields if f.name not in own]


def _presets(cls: type) -> dict[str, Any]:
    """The configs an unset option can take its value from, labelled as the help shows them."""
    presets = {"default": cls(), "--quick": cls.quick_config()}
    if hasattr(cls, "gpu"):
        presets["--device cuda"] = cls.gpu()
    return presets


def preset_config(cls: type, given: dict[str, Any], quick: bool):
    """``cls``'s preset (``quick_config``, ``gpu`` for a CUDA device where the class has one, or the defaults)
    with the ``given`` fields replaced."""
    if quick:
        return cls.quick_config(**given)
    has_device = any(f.name == "device" for f in dataclasses.fields(cls))
    device = str(given.get("device", field_default(cls, "device"))) if has_device else "cpu"
    if device.split(":")[0] == "cuda" and hasattr(cls, "gpu"):
        return cls.gpu(**given)
    return cls(**given)


def field_default(cls: type, name: str) -> Any:
    """The default of ``cls``'s field ``name``."""
    return next(f.default for f in dataclasses.fields(cls) if f.name == name)


def _unset_help(name: str, presets: dict[str, Any]) -> str:
    values = {label: getattr(cfg, name) for label, cfg in presets.items()}
    default = values.pop("default")
    others = "; ".join(f"{label}: {v!r}" for label, v in values.items() if v != default)
    return f"Unset: {default!r}" + (f" ({others})" if others else "") + "."


def config_command(config_cls: type, run: Callable[..., None], summary: str, *,
                   extras: tuple[tuple[str, Any, Any, str], ...] = (), hidden: tuple[str, ...] = ()) -> Callable:
    """A command whose options are ``config_cls``'s fields (each ``None`` = unset) plus ``extras``
    (``(name, type, default, help)``, not config fields) and ``--quick``; it calls ``run(given, quick, **extras)``
    with ``given`` the config fields that were set. ``hidden``: fields that are no options (said why at the call)."""
    hints = typing.get_type_hints(config_cls)
    docs, presets = field_docs(config_cls), _presets(config_cls)
    fields = [f for f in _fields(config_cls) if f.name not in hidden and f.name != "quick"]
    params, helps = [], {}
    for f in fields:
        params.append(_P(f.name, _P.KEYWORD_ONLY, default=None, annotation=typing.Optional[hints[f.name]]))
        helps[f.name] = f"{docs.get(f.name, '')} {_unset_help(f.name, presets)}".strip()
    for name, annotation, default, text in extras:
        params.append(_P(name, _P.KEYWORD_ONLY, default=default, annotation=annotation))
        helps[name] = text
    params.append(_P("quick", _P.KEYWORD_ONLY, default=False, annotation=bool))
    helps["quick"] = docs.get("quick", "a smoke run: small sizes, numbers not meaningful.")
    extra_names = [e[0] for e in extras]

    def command(**kw) -> None:
        quick = bool(kw.pop("quick", False))
        extra = {n: kw.pop(n) for n in extra_names}
        run({k: v for k, v in kw.items() if v is not None}, quick, **extra)

    command.__signature__ = inspect.Signature(params, return_annotation=None)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = summary.strip() + "\n\nArgs:\n" + "".join(f"    {n}: {h}\n" for n, h in helps.items())
    return command
