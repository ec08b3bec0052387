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
    section = text[text.index("### What the class may declare"):]
    first = section[: section.index("\n\n", section.index("|"))]
    start = section.index("| `Tooling.` attribute")
    tooling = section[start: section.index("\n\n", start)]

    def class_vars(cls) -> set[str]:
        hints = typing.get_type_hints(cls, include_extras=False)
        return {n for n, t in hints.items() if typing.get_origin(t) is typing.ClassVar}

    internal = {"name", "Config", "backends"}  # set by register() / derived from backend_table
    missing = sorted(n for n in class_vars(Mixer) - internal if f"`{n}" not in first)
    missing += sorted(f"Tooling.{n}" for n in class_vars(Mixer.Tooling) if f"`{n}`" not in tooling)
    assert not missing, f"CONTRIBUTING.md's tables lack {missing}"


def test_a_tooling_block_must_extend_its_parents():
    """A mixer's nested Tooling derives from its parent class's, so undeclared fields are inherited; one that
    does not is refused when the class is defined, with the line to write."""
    from seqmix.layers import Mixer
    from seqmix.layers.ttt import TTTMLP

    assert TTTMLP.Tooling.gates == ("tests/test_ttt.py",)  # inherited from the TTT base's Tooling
    assert "tp" in TTTMLP.Tooling.backend_gates and "tp" not in layers.mixer_class("ttt_linear").Tooling.backend_gates
    with pytest.raises(TypeError, match=r"class Tooling\(TTTMLP.Tooling\)"):
        class _Bad(TTTMLP):
            class Tooling(Mixer.Tooling):
                small_config = {}


_REF = re.compile(r"^- (?P<names>[\w /]+), (?P<form>\w+): (?P<ref>.+); (?P<test>tests/[\w/]+\.py::\w+)$")
#: The task forms a reference can be for: language tasks (MQAR, the causal LM), the video DiT, the world model.
FORMS = ("lm", "video", "worldmodel")


def _references() -> dict[str, list[dict]]:
    """Registry name -> the ``References`` entries of its module docstring (one bullet each, continued lines
    joined)."""
    import importlib

    out: dict[str, list[dict]] = {}
    for module in sorted({layers.mixer_class(n).__module__ for n in layers.available()}):
        doc = importlib.import_module(module).__doc__ or ""
        if "\nReferences (" not in doc:
            continue
        block = doc.split("\nReferences (", 1)[1].split("\n", 1)[1]
        bullets = re.split(r"\n(?=- )", block.strip())
        for b in bullets:
            m = _REF.match(" ".join(line.strip() for line in b.splitlines()))
            assert m, f"{module}: a References entry is not '- names, form: public code; tests/...::test': {b!r}"
            for name in m["names"].split(" / "):
                out.setdefault(name.strip(), []).append(m.groupdict())
    return out


def test_every_layer_names_its_public_reference_per_task_and_a_test_holds_it():
    """Each registry layer's module docstring names, per task form, the public code it equals and the test that
    holds it there; every layer with a causal form names its language-task reference; the tests exist."""
    from seqmix.compare.common import token_mixers

    refs = _references()
    root = Path(__file__).resolve().parent
    missing = [n for n in layers.available() if n not in refs]
    assert not missing, f"layers without a References entry in their module docstring: {missing}"
    no_lm = [n for n in token_mixers(causal=True) if not any(r["form"] == "lm" for r in refs[n])]
    assert not no_lm, f"causal layers (language tasks) without an 'lm' reference: {no_lm}"
    for name, entries in refs.items():
        assert name in layers.available(), f"References name {name!r}, not a registry layer"
        for r in entries:
            assert r["form"] in FORMS, f"{name}: form {r['form']!r} not one of {FORMS}"
            path, test = r["test"].split("::")
            src = root.parent / path
            assert src.is_file() and re.search(rf"^def {test}\(", src.read_text(), re.M), \
                f"{name}: the reference test {r['test']} does not exist"
