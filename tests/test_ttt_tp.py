"""Tensor-parallel TTT-MLP kernel (seqmix.kernels.ttt_tp): the emulation of its sharded schedule against ttt_scan
in fp64, the host wrapper's validation (no GPU, no build), the offline sm_90a compile's resource report, the
``--smoke`` check entry point, the layer's opt-in backend; GPU-only: the kernel against ttt_scan."""

import json
import os

import pytest
import torch

from seqmix import layers
from seqmix.bench import ttt_tp_check
from seqmix.kernels import ttt_tp
from seqmix.kernels import ttt_tp_hostsim as hostsim
from seqmix.kernels.ttt_tp_ref import ttt_scan_tp_emulated
from seqmix.ops import ttt as ops
from seqmix.utils.testing import assert_close

CUDA = torch.cuda.is_available()
HOPPER = CUDA and torch.cuda.get_device_capability() == (9, 0)
needs_hopper = pytest.mark.skipif(not HOPPER, reason="needs a CUDA GPU of compute capability 9.0 (Hopper)")
needs_nvcc = pytest.mark.skipif(ttt_tp.nvcc_path() is None, reason="nvcc not installed (the offline compile needs it)")
inputs, run_scan = ttt_tp_check.scan_inputs, ttt_tp_check.run_scan


# ------------------------------------------------------------------------------------------- emulation (CPU)
@pytest.mark.parametrize("causal", [False, True], ids=["video", "causal"])
@pytest.mark.parametrize("P", [1, 2, 4])
@pytest.mark.parametrize("T,N,G", [(21, 4, 0), (24, 4, 2), (3, 4, 1)])
def test_emulation_matches_ttt_scan_fp64(causal, P, T, N, G):
    """Forward, final state and every gradient, ragged and full T, checkpoint groups, P shards."""
    leaves = inputs(2, 2, T, 8, 32, seed=T + P)
    ref = run_scan(ops.ttt_scan, leaves, causal=causal, N=N)
    got = run_scan(lambda *a, **kw: ttt_scan_tp_emulated(*a, shards=P, **kw), leaves, causal=causal, N=N, G=G)
    for name, a, b in zip(ttt_tp_check.NAMES, got, ref):
        assert_close(name, a, b, 1e-10)


def test_emulation_rejects_linear_and_indivisible_width():
    L = [t.detach() for t in inputs(1, 1, 8, 8, 32)]
    with pytest.raises(ValueError, match="TTT-MLP only"):
        ttt_scan_tp_emulated(*L[:6], tuple(L[6:8]), kind="linear", causal=False, mini_batch_size=4)
    with pytest.raises(ValueError, match="not divisible"):
        ttt_scan_tp_emulated(*L[:6], tuple(L[6:]), causal=False, mini_batch_size=4, shards=3)


# -------------------------------------------------------------------------------------- wrapper validation (CPU)
def test_wrapper_validation_raises_clear_errors_without_building(monkeypatch):
    def no_build():
        raise AssertionError("validation must fail before the extension is built")

    monkeypatch.setattr(ttt_tp, "load_extension", no_build)
    res = ttt_tp_check.part_validation()
    assert res["pass"], res["checks"]
    assert len(res["checks"]) >= 5


def test_check_supported_reasons():
    cpu = torch.device("cpu")
    ok = dict(kind="mlp", K=64, F=256, mini_batch_size=64, causal=False, dtype=torch.bfloat16)
    assert "CUDA" in ttt_tp.check_supported(**ok, device=cpu)
    assert "head dim 64" in ttt_tp.check_supported(**{**ok, "K": 128, "F": 512}, device=cpu)
    assert "non-causal" in ttt_tp.check_supported(**{**ok, "causal": True}, device=cpu)
    assert "bfloat16 or float32" in ttt_tp.check_supported(**{**ok, "dtype": torch.float16}, device=cpu)


def test_layer_backend_is_opt_in_and_degrades_with_one_warning(caplog):
    lay = layers.build("ttt_mlp", dim=128, num_heads=2)
    assert lay.backends[0] == "tp"
    assert lay.backend != "tp"  # auto never picks it (unvalidated)
    assert "opt-in" in lay.backend_supports("tp", "cuda")
    lin = layers.build("ttt_linear", dim=32, num_heads=2)
    assert "tp" not in lin.backends
    if not HOPPER:
        explicit = layers.build("ttt_mlp", dim=128, num_heads=2, backend="tp")
        with caplog.at_level("WARNING"):
            assert explicit.backend != "tp"
            assert explicit.backend != "tp"
        assert sum("backend 'tp' unavailable" in r.message for r in caplog.records) <= 1
        x = torch.randn(1, 70, 128)
        assert explicit(x).shape == x.shape


# ----------------------------------------------------------------------------------- offline compile (nvcc)
@needs_nvcc
def test_offline_compile_resources():
    """sm_90a compile: shared memory per CTA within 227 KB, no spills / stack, cluster sizes 4 (fwd) and 8 (bwd)."""
    rep = ttt_tp.resource_report()
    assert ttt_tp.check_report(rep) == [], rep
    assert rep["config"]["cluster_fwd"] == ttt_tp.CLUSTER_FWD and rep["config"]["cluster_bwd"] == ttt_tp.CLUSTER_BWD


def test_committed_resource_report_is_current():
    """The committed report names the command and nvcc version and passes the same checks."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks/results/ttt-tp-resources/resources.json"
    rep = json.loads(path.read_text())
    assert ttt_tp.check_report(rep) == []
    assert rep["command"].startswith("nvcc ") and "sm_90a" in rep["command"] and rep["nvcc_version"]


def test_check_entry_point_smoke(tmp_path):
    """``python -m seqmix.bench.ttt_tp_check --smoke`` (called in-process) writes a valid bench document."""
    from seqmix.bench import validate

    rc = ttt_tp_check.main(["--out", str(tmp_path), "--smoke", "--lengths", "18048"])
    doc = json.loads((tmp_path / "results.json").read_text())
    validate(doc)
    parts = doc["summary"]["parts"]
    assert rc == 0 and doc["summary"]["status"] == "pass", parts
    assert parts["emulation"]["pass"] and parts["validation"]["pass"]
    assert ("resources" in parts) == (ttt_tp.nvcc_path() is not None)
    assert all(r["status"] == "skipped" for r in doc["records"])
    assert (tmp_path / "results.md").exists()


# --------------------------------------------------------------------------- host simulation of the kernels (CPU)
@pytest.mark.slow
@pytest.mark.skipif(hostsim.gxx_path() is None, reason="g++ not installed (the host simulation needs C++20)")
def test_kernel_host_simulation_matches_ttt_scan():
    """The CUDA kernels compiled as C++ with one CPU thread per CUDA thread (ttt_tp_sim.h), through the same
    wrapper: one full and one ragged mini-batch in one checkpoint group (recompute step, carried gradients, ragged
    pass-through), fp32 products so the comparison with fp64 is tight. ~1 min on 2 cores (2048 threads)."""
    leaves64 = inputs(1, 1, 100, 64, 256, seed=3, eta_scale=0.5)
    ref = run_scan(ops.ttt_scan, leaves64, causal=False, N=64)
    leaves = [t.detach().float().requires_grad_() for t in leaves64]
    got = run_scan(lambda *a, **kw: hostsim.ttt_scan_tp_hostsim(*a, tf32=False, **kw), leaves, causal=False, N=64,
                   G=2)
    for name, a, b in zip(ttt_tp_check.NAMES, got, ref):
        assert_close(name, a, b, 2e-5)


# ----------------------------------------------------------------------------------------------- GPU only
@pytest.mark.gpu
@needs_hopper
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 5e-3), (torch.bfloat16, 1e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("B,H,T,G", [(1, 2, 337, 2), (2, 1, 40, 0), (1, 1, 256, 3)])
def test_kernel_matches_ttt_scan_fp64(dtype, tol, B, H, T, G):
    leaves64 = inputs(B, H, T, 64, 256, device="cuda", seed=T, eta_scale=0.5)
    for i in range(3):  # the reference sees the inputs rounded as the kernel does
        leaves64[i] = leaves64[i].detach().to(dtype).double().requires_grad_()
    ref = run_scan(ops.ttt_scan, leaves64, causal=False, N=64)
    leaves = [t.detach().to(dtype if i < 3 else torch.float32).requires_grad_() for i, t in enumerate(leaves64)]
    got = run_scan(ttt_tp.ttt_scan_tp, leaves, causal=False, N=64, G=G)
    for name, a, b in zip(ttt_tp_check.NAMES, got, ref):
        assert_close(name, a, b, tol)


@pytest.mark.gpu
@needs_hopper
def test_kernel_writes_every_output(monkeypatch):
    """Outputs allocated full of NaN come back finite and equal to a plain run."""
    leaves = [t.detach().float().cuda().requires_grad_() for t in inputs(1, 2, 150, 64, 256, eta_scale=0.5)]
    plain = run_scan(ttt_tp.ttt_scan_tp, leaves, causal=False, N=64, G=2)
    monkeypatch.setattr(ttt_tp, "POISON_OUTPUTS", True)
    pois = run_scan(ttt_tp.ttt_scan_tp, leaves, causal=False, N=64, G=2)
    for name, a, b in zip(ttt_tp_check.NAMES, pois, plain):
        assert_close(name, a, b, 1e-5)


@pytest.mark.gpu
@needs_hopper
def test_layer_tp_backend_matches_torch():
    torch.manual_seed(0)
    lay = layers.build("ttt_mlp", dim=128, num_heads=2, backend="tp").cuda()
    ref = layers.build("ttt_mlp", dim=128, num_heads=2, backend="torch").cuda()
    ref.load_state_dict(lay.state_dict())
    assert lay.backend == "tp"
    x = torch.randn(1, 150, 128, device="cuda")
    assert_close("layer", lay(x), ref(x), 5e-3)


def test_check_entry_point_gpu_flow_with_fakes(tmp_path, monkeypatch):
    """The GPU branch of the check (build, correctness, bench with roofline numbers, sanitizer, targets, document)
    end to end on CPU, with every GPU call replaced by a stand-in: the document must validate and the tables render."""
    import time as _time

    from seqmix.bench import validate
    from seqmix.bench.core import measure_peaks
    from seqmix.bench.report import start_run as real_start_run

    C = ttt_tp_check
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda *a, **k: None)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda *a, **k: 0)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 1 << 20)
    monkeypatch.setattr(C, "measure_peaks", lambda dev: measure_peaks("cpu", quick=True, repeats=1))
    monkeypatch.setattr(C, "time_call", lambda fn, **kw: [fn() or 1e-3 for _ in range(kw.get("repeats", 3))])
    monkeypatch.setattr(C, "start_run", lambda device: real_start_run("cpu"))
    for var in ("SEQMIX_TTT_NUM_WARPS", "SEQMIX_TTT_BLOCK_F"):  # main() pins the Triton config: undo after the test
        monkeypatch.setenv(var, os.environ.get(var, ""))
        monkeypatch.delenv(var)
    monkeypatch.setattr(C, "part_build", lambda: {"pass": True, "seconds": 0.0})
    monkeypatch.setattr(C, "part_correctness", lambda: {"pass": True, "cases": [{"max_rel_err": 1e-3}]})
    monkeypatch.setattr(C, "part_sanitizer", lambda s: {"pass": None, "skipped": "stand-in"})

    def fake_bench_fn(backend, mode, B, H, T, K):
        if backend == "fla_chunk":
            raise ImportError("no fla here")
        if backend == "flex" and T > 20000:
            raise RuntimeError("stand-in failure")
        return lambda: _time.sleep(0) or 1e-3 * T / 18048

    monkeypatch.setattr(C, "_bench_fn", fake_bench_fn)
    rc = C.main(["--out", str(tmp_path), "--lengths", "18048", "51456", "--max-call-s", "1e9"])
    doc = json.loads((tmp_path / "results.json").read_text())
    validate(doc)
    recs = {(r["backend"], r["mode"], r["T"]): r for r in doc["records"]}
    assert recs[("tp", "fwd", 18048)]["status"] == "ok" and recs[("tp", "fwd", 18048)]["frac_matmul_peak"] > 0
    assert recs[("fla_chunk", "fwd", 18048)]["status"] == "skipped"
    assert recs[("flex", "fwd", 51456)]["status"] == "error"
    assert doc["summary"]["by_T"]["18048"]["tp_fwdbwd_speedup_vs_triton"] is not None
    assert set(doc["summary"]["parts"]) >= {"build", "correctness", "bench", "sanitizer"}
    assert rc == 0 and "| tp | fwd | 18048 | ok |" in (tmp_path / "results.md").read_text()
