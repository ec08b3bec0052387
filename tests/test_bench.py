"""Benchmark suite (seqmix.bench): the smoke runs of both suites produce schema-valid documents, the analytic cost
model grows as it must (full attention ~T^2, everything else ~T), the fit helper, the validator, the gates."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import pytest
import torch

from seqmix import layers as L
from seqmix.bench import SchemaError, fit_exponent, validate
from seqmix.bench import costs
from seqmix.bench.core import SeriesBudget
from seqmix.bench.gates import GATES, gate
from seqmix.bench.layers import MODES
from seqmix.bench.schema import META_FIELDS, RECORD_FIELDS
from seqmix.cli import main
from seqmix.ops.attention import visibility_mask

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ smoke runs
@pytest.fixture(scope="module")
def layers_doc(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "layers"
    main(["bench", "layers", "--quick", "--out", str(out)])
    assert (out / "results.md").exists() and (out / "results.png").exists()
    return json.loads((out / "results.json").read_text())


@pytest.fixture(scope="module")
def dit_doc(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "dit"
    main(["bench", "dit", "--quick", "--out", str(out)])
    assert (out / "results.md").exists() and (out / "results.png").exists()
    md = (out / "results.md").read_text()
    assert "REDUCED SCALE" in md  # the CPU scale is said in the output
    return json.loads((out / "results.json").read_text())


def test_layers_quick_validates_and_covers_every_layer(layers_doc):
    validate(layers_doc)
    assert layers_doc["suite"] == "layers" and layers_doc["schema"] == "seqmix.bench/v2"
    recs = layers_doc["records"]
    ok = [r for r in recs if r["status"] == "ok"]
    for name in L.sequence_mixers():
        for mode in MODES:  # every layer is causal or has a causal option, so every mode runs on some backend
            assert any(r["name"] == name and r["mode"] == mode for r in ok), f"no measurement for {name} {mode}"
    for r in ok:
        assert r["median_s"] > 0 and r["tokens_per_s"] > 0 and r["gate"]
        assert r["flops"] is not None and r["bytes"] > 0
        if r["mode"] == "decode":
            assert r["unit"] == "token" and r["tokens_per_unit"] == 1
    # the CPU run times only the PyTorch paths and says why the others were not timed
    fla = [r for r in recs if r["name"] == "gated_deltanet" and r["backend"] == "fla"]
    assert fla and all(r["status"] == "skipped" and "CPU" in r["reason"] for r in fla)
    assert {r["backend"] for r in ok} <= {"torch", "sdpa"}
    peaks = layers_doc["peaks"]
    assert peaks["matmul"]["dtype"] == "float32" and peaks["copy"]["bytes_per_s"] > 0
    assert any(r["frac_matmul_peak"] is not None for r in ok)
    ex = layers_doc["summary"]["exponents"]
    assert {(e["name"], e["mode"]) for e in ex} >= {(n, "fwd") for n in L.sequence_mixers()}


def test_layers_compile_times_the_compiled_layer_and_its_compilation(tmp_path):
    """``--compile true``: each point's first (compiling) call is timed on its own (``compile_seconds``), the
    timed calls run the compiled graph (a recompilation for the backward, not an eager fallback), and the
    document validates."""
    import torch._dynamo.utils as dyn_utils

    out = tmp_path / "compiled"
    dyn_utils.counters.clear()
    main(["bench", "layers", "--quick", "--layers", "[swa]", "--modes", "[fwd, fwd+bwd]", "--lengths", "[32]",
          "--backends", "[auto]", "--compile", "true", "--out", str(out)])
    doc = json.loads((out / "results.json").read_text())
    ok = [r for r in doc["records"] if r["status"] == "ok"]
    assert {r["mode"] for r in ok} == {"fwd", "fwd+bwd"}
    # the compiling call outlasts a compiled one (even with inductor's caches warm from earlier tests)
    assert all(r["extra"]["compile_seconds"] > r["median_s"] for r in ok), [(r["extra"], r["median_s"]) for r in ok]
    assert dyn_utils.counters["stats"]["unique_graphs"] == 2  # no grad, then with autograd
    assert "## torch.compile (dynamic=False)" in (out / "results.md").read_text()


def test_dit_quick_validates_and_reports_ratios(dit_doc):
    validate(dit_doc)
    rel = dit_doc["summary"]["relative"]
    assert {r["name"] for r in rel} >= {"local", "full_window", "full_attn", "ttt_mlp", "gated_deltanet"}
    for r in rel:
        assert r["relative_to_local"] > 0
        if r["name"] == "local":
            assert r["relative_to_local"] == pytest.approx(1.0)
    recs = {(r["name"], r["extra"]["seconds"], r["mode"]): r for r in dit_doc["records"]}
    # full attention = the same tokens as the segmented layout, in one window
    for sec in (3, 9):
        assert recs[("full_window", sec, "fwd")]["T"] == recs[("local", sec, "fwd")]["T"]
        assert recs[("full_window", sec, "fwd")]["extra"]["window_tokens"] == recs[("local", sec, "fwd")]["T"]
    assert recs[("local", 9, "fwd")]["extra"]["segments"] == 3
    assert any("REDUCED" in n for n in dit_doc["meta"]["notes"])


# ------------------------------------------------------------------------------------------------ cost model
def _layer(name: str, **over) -> L.Mixer:
    cfg = {**L.mixer_class(name).Tooling.bench_config, **over}
    return L.build(name, dim=256, num_heads=4, **cfg)


@pytest.mark.parametrize("name", [n for n in L.sequence_mixers() if n != "identity"])
def test_cost_model_growth_exponents(name):
    Ts = [16384, 32768, 65536]
    layer = _layer(name)
    fl = [costs.mode_cost(layer, "fwd", T).flops for T in Ts]
    e = fit_exponent(Ts, fl)
    want = 2.0 if name == "full_attn" else 1.0
    assert e == pytest.approx(want, abs=0.05), f"{name}: FLOP exponent {e:.3f}, expected ~{want}"
    by = [costs.mode_cost(layer, "fwd", T).bytes for T in Ts]
    assert fit_exponent(Ts, by) == pytest.approx(1.0, abs=0.1)  # activations / state traffic are linear
    assert costs.mode_cost(layer, "fwd+bwd", Ts[0]).flops == pytest.approx(3 * fl[0])
    # decode: a fixed-state layer costs the same per token at any context; full attention's KV cache grows
    causal = _layer(name, causal=True) if "causal" in {f for f in L.config_class(name).__dataclass_fields__} \
        else layer
    dec = [costs.mode_cost(causal, "decode", T, steps=4).flops for T in Ts]
    assert fit_exponent(Ts, dec) == pytest.approx(1.0 if name == "full_attn" else 0.0, abs=0.1)


def test_identity_costs_no_flops():
    c = costs.mode_cost(L.build("identity", dim=64), "fwd", 100)
    assert c.flops == 0 and c.bytes == 2 * 4 * 100 * 64


@pytest.mark.parametrize("kind,window", [("full", None), ("swa", 1), ("swa", 5), ("local", 4), ("local", 7)])
@pytest.mark.parametrize("causal", [False, True], ids=["sym", "causal"])
def test_attention_pairs_match_the_visibility_masks(kind, window, causal):
    for T in (1, 6, 13, 29):
        assert costs.attention_pairs(kind, window, causal, T) == int(visibility_mask(kind, window, causal, T, T).sum())
    if causal:  # queries after a carried context
        for ctx, n in ((5, 1), (11, 4), (0, 9), (17, 13)):
            want = int(visibility_mask(kind, window, True, n, ctx + n).sum())
            assert costs.attention_pairs(kind, window, True, n, ctx) == want


def test_ttt_cost_counts_the_dual_form_and_refed_tokens():
    lin = L.build("ttt_linear", dim=64, num_heads=2, mini_batch_size=16)
    cau = L.build("ttt_linear", dim=64, num_heads=2, mini_batch_size=16, causal=True)
    assert costs.layer_cost(cau, 64).flops > costs.layer_cost(lin, 64).flops  # the s x s products
    # one decode token after 5 pending tokens re-feeds them: costs more than one after a full mini-batch
    assert costs.layer_cost(cau, 1, ctx=21).flops > costs.layer_cost(cau, 1, ctx=16).flops


# ------------------------------------------------------------------------------------------------ helpers
def test_aligned_lact_cost_counts_one_update_per_span():
    """LaCT with chunks aligned to the layout: one update (Newton-Schulz included) per span when the layout is given,
    ceil(n / chunk_size) without it; in the DiT's cost the global layer gets the layout's spans."""
    from seqmix.backbones.dit import DiTConfig, SegmentedDiT
    from seqmix.backbones.layout import VideoLayout
    from seqmix.layers.spans import TokenSpans

    spans = TokenSpans((0, 40, 80, 120), (0, 120))
    frame = L.build("lact", dim=32, num_heads=2, chunk_align="frame", chunk_size=100)
    seg = L.build("lact", dim=32, num_heads=2, chunk_align="segment", chunk_size=100)
    # 3 updates vs 1: the difference is two updates' cost
    per_update = (frame.core_cost(120, 0, 1, 4, layout=spans).flops - seg.core_cost(120, 0, 1, 4, layout=spans).flops) / 2
    assert per_update > 0
    assert frame.core_cost(120, 0, 1, 4).flops == frame.core_cost(120, 0, 1, 4, layout=TokenSpans(
        (0, 60, 120), (0, 120))).flops  # no layout: ceil(120 / 100) = 2 updates, as two spans
    assert frame.cost(120, layout=spans).flops - seg.cost(120, layout=spans).flops == pytest.approx(2 * per_update)
    lay = VideoLayout.paper(9, text_len=2, latent_height=2, latent_width=4)
    tiny = dict(num_attention_heads=2, attention_head_dim=16, in_channels=4, out_channels=4, text_embed_dim=8,
                time_embed_dim=8, num_layers=1, patch_size=2)
    by_frame, by_segment = (SegmentedDiT(DiTConfig(**tiny, mixer="lact", mixer_config={"chunk_align": u}))
                            for u in ("frame", "segment"))
    d = costs.dit_cost(by_frame, lay).flops - costs.dit_cost(by_segment, lay).flops
    assert d == pytest.approx(2 * (lay.num_frames - lay.num_segments) * per_update)  # 2 passes, 37 vs 3 updates each


def test_fit_exponent():
    Ts = [256, 512, 1024, 2048]
    assert fit_exponent(Ts, [3e-6 * t**2 for t in Ts]) == pytest.approx(2.0)
    assert fit_exponent(Ts, [5.0 * t for t in Ts]) == pytest.approx(1.0)
    assert fit_exponent(Ts, [7.0 for _ in Ts]) == pytest.approx(0.0, abs=1e-12)
    noisy = [t * (1.05 if i % 2 else 0.95) for i, t in enumerate(Ts)]
    assert fit_exponent(Ts, noisy) == pytest.approx(1.0, abs=0.1)
    assert math.isnan(fit_exponent([100], [1.0]))
    assert math.isnan(fit_exponent([100, 200], [0.0, -1.0]))


def test_series_budget_predicts_and_propagates_skips():
    b = SeriesBudget(max_call_seconds=1.0, memory_bytes=10**6)
    key = ("x", "torch", "fwd")
    assert b.check(key, 100) is None
    b.record(key, 100, 0.3, 1000, flops=1e6)
    assert b.check(key, 200, flops=2e6) is None
    assert "budget" in b.check(key, 400, flops=16e6)  # 0.3 s x 16 > 1 s
    b.record(key, 200, 0.3, 10**5, flops=2e6)  # memory grows ~x100 per doubling -> capped exponent 2
    assert "memory" in b.check(key, 800, flops=2e6)
    b.kill(key, 800, "out of memory")
    assert "shorter" in b.check(key, 1600)


def _doc(layers_doc):
    return copy.deepcopy(layers_doc)


def test_validate_rejects_broken_documents(layers_doc):
    with pytest.raises(SchemaError, match="schema"):
        validate({**_doc(layers_doc), "schema": "other/v9"})
    d = _doc(layers_doc)
    ok = next(i for i, r in enumerate(d["records"]) if r["status"] == "ok")
    d["records"][ok]["median_s"] = None
    del d["records"][ok]["gate"]
    d["records"][ok]["mystery"] = 1
    sk = next(i for i, r in enumerate(d["records"]) if r["status"] == "skipped")
    d["records"][sk]["reason"] = ""
    del d["meta"]["versions"]
    with pytest.raises(SchemaError) as e:
        validate(d)
    text = "\n".join(e.value.problems)
    for needle in ("median_s", "'gate'", "mystery", "needs a reason", "versions"):
        assert needle in text


def test_validate_accepts_the_stored_results():
    docs = sorted((ROOT / "benchmarks" / "results").glob("*/results.json"))
    # Comparison tables (seqmix.compare.*) stored beside the benchmarks have their own documents.
    bench = [d for d in (json.loads(p.read_text()) for p in docs) if str(d.get("schema", "")).startswith("seqmix.bench/")]
    assert bench, "no stored benchmark results"
    for doc in bench:
        validate(doc)


def test_schema_md_documents_every_field():
    text = (ROOT / "benchmarks" / "SCHEMA.md").read_text()
    for name in [*RECORD_FIELDS, *META_FIELDS]:
        assert f"`{name}`" in text, f"benchmarks/SCHEMA.md does not document {name!r}"


def test_every_gate_names_an_existing_test():
    ids = {t for ts in GATES.values() for t in ts} | set(gate("layers", "mamba2", "fla", "decode"))
    for node in ids:
        if "{name}" in node:
            node = node.format(name="mamba2")
        path, _, rest = node.partition("::")
        f = ROOT / path
        assert f.exists(), f"gate {node}: no file {path}"
        func = re.sub(r"\[.*\]$", "", rest)
        if func:
            assert re.search(rf"^def {func}\(", f.read_text(), re.M), f"gate {node}: no test function {func}"
        m = re.search(r"\[(.*)\]$", rest)
        if m:
            assert m.group(1) in L.available()


def test_backend_plan_never_times_triton_paths_on_cpu():
    from seqmix.bench.layers import LayerBenchConfig, _backend_plan

    cfg = LayerBenchConfig.quick_config()
    for name in ("gated_deltanet", "mamba2", "swa"):
        auto, plan = _backend_plan(name, cfg)
        assert auto in ("torch", "sdpa")
        timed = [b for b, reason in plan if reason is None]
        assert timed == [auto], f"{name}: {plan}"
        assert all("CPU" in reason for b, reason in plan if b != auto)
    _, plan = _backend_plan("mamba2", LayerBenchConfig.quick_config(backends=["reference"]))
    assert [b for b, _ in plan] == ["naive"]
