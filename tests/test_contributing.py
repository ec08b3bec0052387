"""The mixer example in CONTRIBUTING.md is complete: run as written, it passes the whole layer contract."""

import re
from pathlib import Path

import pytest

from seqmix import layers
from seqmix.layers.base import _REGISTRY

import contract as C

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def example_mixer():
    text = (ROOT / "CONTRIBUTING.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    namespace: dict = {"__name__": "seqmix.layers.ema"}
    exec(compile(code, "CONTRIBUTING.md", "exec"), namespace)
    yield "ema"
    _REGISTRY.pop("ema")  # leave the registry as the other tests expect it


def test_contributing_example_passes_the_contract(example_mixer):
    assert example_mixer in layers.available()
    C.check_all(example_mixer)
    layer = layers.build(example_mixer, dim=16)
    assert layer.causal and layer.state_size() == 16 and layer.backend == "torch"
    with pytest.raises(ValueError, match="Bidirectional"):
        layers.build(example_mixer, dim=16, causal=False)


def test_contributing_table_names_every_class_declaration():
    """Every attribute a mixer class may declare (the ClassVars of Mixer, and its overridable hooks) has a row in
    CONTRIBUTING.md's table, so a mixer author sees all of them."""
    import typing

    from seqmix.layers.base import Mixer

    text = (ROOT / "CONTRIBUTING.md").read_text()
    table = text[text.index("### What the class may declare"):]
    table = table[: table.index("\n\n", table.index("|"))]
    hints = typing.get_type_hints(Mixer, include_extras=False)
    declared = {n for n, t in hints.items() if typing.get_origin(t) is typing.ClassVar}
    internal = {"name", "Config", "backends"}  # set by register() / derived from backend_table
    missing = sorted(n for n in declared - internal if f"`{n}" not in table)
    assert not missing, f"CONTRIBUTING.md's table lacks {missing}"
