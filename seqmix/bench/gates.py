"""Which correctness tests gate which benchmark entry (fla's benchmark-registry convention).

A timing is only meaningful for code that computes the right thing: every benchmark record carries, in its
``gate`` field, the pytest node ids that must pass for that (suite, entry, backend, mode): pass them to ``pytest``
as they are (``gate('layers', 'mamba2')`` gives the same list).

A layer's own gates are declared on its class (``Mixer.Tooling.gates`` on every backend,
``Mixer.Tooling.backend_gates`` per backend); the shared contract tests of the layer are always added.
:data:`GATES` holds the entries that are no layer: ``"<suite>/<entry>"``, ``"layers/*/decode"`` for the decode
modes (carried state must equal one full pass).
"""

from __future__ import annotations

__all__ = ["GATES", "gate"]

_CONTRACT = "tests/test_contract.py::{test}[{name}]"


def _contract(name: str) -> list[str]:
    return [_CONTRACT.format(test=t, name=name) for t in ("test_shape_dtype", "test_backward",
                                                         "test_reports_state_and_backend")]


#: entry -> pytest node ids (file, file::function, or file::function[param]) for what is not a registry layer.
GATES: dict[str, list[str]] = {
    "layers/*/decode": ["tests/test_contract.py::test_state_carry_equals_full_pass[{name}]",
                        "tests/test_contract.py::test_causal_form_leaks_nothing[{name}]"],
    "dit/*": ["tests/test_dit.py::test_windows_match_diffusers_block_loop",
              "tests/test_dit.py::test_global_layer_order_and_gates",
              "tests/test_dit.py::test_nine_second_forward_backward_checkpointing"],
    "dit/full_window": ["tests/test_dit.py::test_one_window_matches_diffusers"],
}


def gate(suite: str, entry: str, backend: str | None = None, mode: str | None = None,
         mixer: str | None = None) -> list[str]:
    """The node ids gating one benchmark entry (deduplicated, in order). For ``dit`` entries with a global layer,
    ``mixer`` adds that layer's own gate."""
    from seqmix import layers

    ids: list[str] = []
    ids += GATES.get(f"{suite}/{entry}", [])
    if backend:
        ids += GATES.get(f"{suite}/{entry}/{backend}", [])
    if suite == "layers" and entry in layers.available():
        cls = layers.mixer_class(entry)
        ids += [*cls.Tooling.gates, *_contract(entry)]
        if backend:
            ids += cls.Tooling.backend_gates.get(backend, ())
    if suite == "layers" and mode in ("decode", "decode-frame"):
        ids += [t.format(name=entry) for t in GATES["layers/*/decode"]]
    if suite == "dit":
        ids += GATES["dit/*"]
        if mixer:
            ids += gate("layers", mixer)
    return list(dict.fromkeys(ids))
