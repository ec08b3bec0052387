"""Which correctness tests gate which benchmark entry (fla's benchmark-registry convention).

A timing is only meaningful for code that computes the right thing: every benchmark record carries, in its
``gate`` field, the pytest node ids that must pass for that (suite, entry, backend, mode). Run them with
``pytest $(python -c "from seqmix.bench.gates import gate; print(' '.join(gate('layers', 'mamba2')))")``.

Keys: ``"<suite>/<entry>"`` for an entry on every backend, ``"<suite>/<entry>/<backend>"`` for the tests of one
backend, ``"<suite>/*/decode"`` for the decode modes (carried state must equal one full pass).
"""

from __future__ import annotations

__all__ = ["GATES", "gate"]

_CONTRACT = "tests/test_contract.py::{test}[{name}]"


def _contract(name: str) -> list[str]:
    return [_CONTRACT.format(test=t, name=name) for t in ("test_shape_dtype", "test_backward",
                                                         "test_reports_state_and_backend")]


#: entry -> pytest node ids (file, file::function, or file::function[param]).
GATES: dict[str, list[str]] = {
    "layers/ttt_linear": ["tests/test_ttt.py", *_contract("ttt_linear")],
    "layers/ttt_mlp": ["tests/test_ttt.py", *_contract("ttt_mlp")],
    "layers/ttt_linear/triton": ["tests/test_ttt_triton.py"],
    "layers/ttt_mlp/triton": ["tests/test_ttt_triton.py"],
    "layers/mamba2": ["tests/test_mamba2.py", *_contract("mamba2")],
    "layers/mamba2/fla": ["tests/test_mamba2.py::test_fla_chunk_simple_gla_is_ssd",
                          "tests/test_mamba2.py::test_layer_fla_backend_matches_torch"],
    "layers/mamba2/mamba_ssm": ["tests/test_mamba2.py::test_mamba_chunk_scan_combined_is_ssd"],
    "layers/gated_deltanet": ["tests/test_gated_deltanet.py", *_contract("gated_deltanet")],
    "layers/gated_deltanet/fla": ["tests/test_gated_deltanet.py::test_layer_fla_matches_torch",
                                  "tests/test_gated_deltanet.py::test_state_carry_fla_and_across_backends"],
    "layers/swa": ["tests/test_attention.py", *_contract("swa")],
    "layers/swa/flash_attn": ["tests/test_attention.py::test_flash_attn_mapping_with_a_stand_in"],
    "layers/swa/flex": ["tests/test_attention.py::test_flex_forward_on_cpu_matches_sdpa"],
    "layers/full_attn": ["tests/test_attention.py", *_contract("full_attn")],
    "layers/full_attn/flash_attn": ["tests/test_attention.py::test_flash_attn_mapping_with_a_stand_in"],
    "layers/full_attn/flex": ["tests/test_attention.py::test_flex_forward_on_cpu_matches_sdpa"],
    "layers/local_attn": ["tests/test_attention.py", *_contract("local_attn")],
    "layers/local_attn/flash_attn": ["tests/test_attention.py::test_flash_attn_mapping_with_a_stand_in"],
    "layers/local_attn/flex": ["tests/test_attention.py::test_flex_forward_on_cpu_matches_sdpa"],
    "layers/identity": ["tests/test_attention.py::test_identity_returns_zeros_and_carries_trivial_state",
                        *_contract("identity")],
    "layers/lact": ["tests/test_lact_ops.py", "tests/test_lact.py", *_contract("lact")],
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
    ids: list[str] = []
    ids += GATES.get(f"{suite}/{entry}", [])
    if backend:
        ids += GATES.get(f"{suite}/{entry}/{backend}", [])
    if suite == "layers" and mode in ("decode", "decode-frame"):
        ids += [t.format(name=entry) for t in GATES["layers/*/decode"]]
    if suite == "dit":
        ids += GATES["dit/*"]
        if mixer:
            ids += gate("layers", mixer)
    return list(dict.fromkeys(ids))
