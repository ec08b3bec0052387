"""GPU contract harness: every registry layer x every CUDA backend x {fp32, bf16} against the layer's fp64 twin.

For each case the layer is built with the backend asked for explicitly, and its reference twin (the reference
backend, ``seqmix.bench.gpu_kit.reference_backend``) gets the same weights in fp64. On the same fresh random
input both run forward (with ``return_state=True``: the final state is compared too) and backward of one random
upstream gradient; outputs, every final-state tensor, the input gradient and every parameter gradient must be
within ``gpu_kit.TOLERANCES`` (relative error ||a - b|| / ||b||: fp32 1e-3 (TF32 may be on), bf16 1e-2). NaN never
passes (``assert_close`` rejects non-finite values), and on CUDA the caching allocator is first filled with NaN so
that an output element a kernel forgets to write shows up as NaN.

The cases run wherever their backend runs: on CPU only the PyTorch backends (``torch``, ``sdpa``); the others are
skipped with the reason (they run in ``scripts/gpu_check.sh``, stage ``tests``). Cases are ordered so that the
first pass covers every (layer, backend) once (bf16, default form): under ``SEQMIX_TEST_DEADLINE`` (set by the
kit's stage budget) the cases that no longer fit are skipped, not lost.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time

import pytest
import torch

from seqmix import layers
from seqmix.bench import gpu_kit
from seqmix.utils.testing import rel_err

import contract as C

pytestmark = pytest.mark.gpu

DEV = torch.device("cuda" if torch.cuda.is_available() else "cpu")
# Head dim 64 (the paper's); T odd and not a multiple of any chunk / mini-batch size (shorter on CPU, where the
# fp64 twins' token loops are slow).
DIM, HEADS, BATCH = 128, 2, 2
T = 77 if DEV.type == "cuda" else 21
# A parameter gradient that is (mathematically) ~0, e.g. attention's key bias (softmax is shift-invariant), has no
# meaningful relative error: it is measured against max(its norm, GRAD_FLOOR x the largest gradient's RMS x sqrt(n)).
GRAD_FLOOR = 1e-2


def _forms(name: str) -> list[str]:
    """``default`` and, where the layer has a causal option and is not causal by default, ``causal`` as well; TTT
    also ``video_causal``: its causal default is the LM form, which the Triton kernels decline, and the causal
    kernels implement the opt-in hybrid variant."""
    modes = layers.mixer_class(name).causal_modes
    forms = ["default", "causal"] if modes[0] is False and True in modes else ["default"]
    if "causal" in forms and "variant" in {f.name for f in dataclasses.fields(layers.config_class(name))}:
        forms.append("video_causal")
    return forms


def _cases() -> list:
    plan = gpu_kit.contract_plan()
    cases = []
    for form, dtype in (("default", "bfloat16"), ("default", "float32"), ("causal", "bfloat16"), ("causal", "float32"),
                        ("video_causal", "bfloat16"), ("video_causal", "float32")):
        for name, backend in plan:
            if form in _forms(name):
                cases.append(pytest.param(name, backend, dtype, form, id=f"{name}-{backend}-{dtype}-{form}"))
    return cases


def _config(name: str, form: str) -> dict:
    # the class's kernel sizes over its small config (smaller than some kernels' tiles)
    cls = layers.mixer_class(name)
    cfg = {**cls.Tooling.small_config, **cls.Tooling.kernel_test_config}
    if form in ("causal", "video_causal"):
        cfg["causal"] = True
    if form == "video_causal":
        cfg["variant"] = "video_causal"
    return cfg


def _poison_cuda_allocator() -> None:
    """Fill cached CUDA blocks (small and large pools) with NaN, so later uninitialised allocations hold NaN."""
    if DEV.type != "cuda":
        return
    bufs = [torch.full((2**17,), float("nan"), device=DEV) for _ in range(64)]  # 512 KiB: small pool
    bufs += [torch.full((2**23,), float("nan"), device=DEV) for _ in range(8)]  # 32 MiB: large pool
    torch.cuda.synchronize()
    del bufs


def _state_tensors(state) -> dict[str, torch.Tensor]:
    if state is None:
        return {}
    if isinstance(state, torch.Tensor):
        return {"state": state}
    items = state._asdict().items() if hasattr(state, "_asdict") else enumerate(state)
    return {f"state.{k}": v for k, v in items if isinstance(v, torch.Tensor)}


def _run(layer, x, g):
    """Forward (with the final state where the layer is causal), backward of <y, g>; returns {tensor name: tensor}."""
    x = x.detach().clone().requires_grad_()
    y, state = layer(x, return_state=True) if layer.causal else (layer(x), None)
    y.backward(g)
    out = {"y": y.detach(), **{k: v.detach() for k, v in _state_tensors(state).items()}, "dx": x.grad}
    out.update({f"d{n}": p.grad for n, p in layer.named_parameters() if p.requires_grad})
    return out


@pytest.mark.parametrize("name,backend,dtype,form", _cases())
def test_backend_matches_fp64_twin(name, backend, dtype, form, record_property):
    if DEV.type == "cpu" and dtype == "bfloat16":
        pytest.skip("bf16 cases run on CUDA (CPU bf16 kernels are other code, and slow)")
    deadline = os.environ.get("SEQMIX_TEST_DEADLINE")
    if deadline and time.time() > float(deadline):
        pytest.skip("over the stage's time budget (SEQMIX_TEST_DEADLINE)")
    cfg = _config(name, form)
    torch.manual_seed(0)
    layer = layers.build(name, dim=DIM, num_heads=HEADS, backend=backend, **cfg).to(DEV, getattr(torch, dtype))
    why = gpu_kit.backend_unavailable(layer, backend, DEV)
    if why:
        pytest.skip(f"{backend} does not run here: {why}")
    twin_backend = gpu_kit.reference_backend(type(layer))
    twin = layers.build(name, dim=DIM, num_heads=HEADS, backend=twin_backend, **cfg).to(DEV, torch.float64)
    twin.load_state_dict({k: v.double() for k, v in layer.state_dict().items()})

    # fresh inputs per case (seed from the case id), the same values for both
    seed = int.from_bytes(hashlib.sha256(f"{name}{backend}{dtype}{form}{time.time_ns()}".encode()).digest()[:4], "big")
    gen = torch.Generator(device="cpu").manual_seed(seed)
    n = T - T % layer.step_tokens  # whole causal steps (frames, for frame-input layers)
    x = torch.randn(BATCH, n, DIM, generator=gen).to(DEV, getattr(torch, dtype))
    g = torch.randn(BATCH, n, DIM, generator=gen).to(DEV, getattr(torch, dtype))

    ref = _run(twin, x.double(), g.double())
    _poison_cuda_allocator()
    got = _run(layer, x, g)
    used = getattr(layer, "last_backend", None) or layer.backend_for(DEV)
    if used != backend:
        pytest.skip(f"the call ran on {used!r}, not {backend!r} (a per-call fallback for these shapes / dtype)")

    tol = gpu_kit.TOLERANCES[dtype]
    params = {f"d{n}" for n, _ in layer.named_parameters()}
    rms = [ref[k].norm().item() / ref[k].numel() ** 0.5 for k in params if ref.get(k) is not None]
    max_rms = max(rms, default=0.0)
    errors, problems = {}, []
    for k in sorted(set(ref) | set(got)):
        a, b = got.get(k), ref.get(k)
        if a is None or b is None:
            if (a is None) != (b is None):
                problems.append(f"{k}: present in {'twin' if a is None else 'layer'} only")
            continue
        if a.shape != b.shape:
            problems.append(f"{k}: shape {tuple(a.shape)} != twin {tuple(b.shape)}")
            continue
        finite = bool(torch.isfinite(a).all())
        floor = GRAD_FLOOR * max_rms * b.numel() ** 0.5 if k in params else 0.0
        e = ((a.double() - b).norm().item() / max(b.norm().item(), floor) if floor else rel_err(a.float(), b)) \
            if finite else float("nan")
        errors[k] = e
        if not (finite and e <= tol):  # NaN never passes
            problems.append(f"{k}: " + (f"relative error {e:.3e} > {tol:.0e}" if finite else "non-finite values"))
    record_property("errors", json.dumps({k: round(v, 8) if v == v else None for k, v in errors.items()}))
    record_property("max_error", max((v for v in errors.values() if v == v), default=0.0))
    record_property("twin", twin_backend)
    record_property("seed", seed)
    assert not problems, f"{name} [{backend}, {dtype}, {form}] vs {twin_backend} fp64: " + "; ".join(problems)


def test_cases_cover_every_layer_and_cuda_backend():
    """One case per (layer, CUDA backend) at least, for both dtypes; the plan reads the registry."""
    covered = {(p.values[0], p.values[1], p.values[2]) for p in _cases()}
    for name in layers.available():
        cls = gpu_kit.mixer_class(name)
        for b in gpu_kit.cuda_backends(cls):
            for dt in gpu_kit.TOLERANCES:
                assert (name, b, dt) in covered, f"contract harness misses {name} / {b} / {dt}"
        assert dataclasses.is_dataclass(cls.Config)
