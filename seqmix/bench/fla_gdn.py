"""fla's chunked Gated DeltaNet scan as a reference point for the TTT kernel benchmark (backend ``fla_gdn``).

The same (B, T, H, K) as the TTT scan: ``q, k, v [B, T, H, K]`` (V = K, unit-norm q, k as the layer gives them),
log-decay ``g`` and write strength ``beta [B, T, H]``, no initial state; ``fwd+bwd`` backpropagates one fixed
upstream gradient into every input. FLOPs follow the Gated DeltaNet cost model of :mod:`seqmix.bench.costs`
(chunks of C = 64 tokens).
"""

from __future__ import annotations

import math

import torch

__all__ = ["CHUNK", "gdn_point", "gdn_record", "gdn_scan_bytes", "gdn_scan_flops", "gdn_unavailable"]

CHUNK = 64  # fla's chunk size for chunk_gated_delta_rule


def gdn_scan_flops(*, batch: int, heads: int, T: int, head_dim: int, mode: str = "fwd") -> float:
    """Matmul FLOPs of the chunked delta rule (as ``seqmix.bench.costs``), ``fwd+bwd`` = 3x ``fwd``."""
    K = V = head_dim
    C = min(CHUNK, T)
    fwd = math.ceil(T / C) * heads * (C * C * (5.0 * K + 3.0 * V) + 6.0 * C * K * V) * batch
    return fwd * (3.0 if mode == "fwd+bwd" else 1.0)


def gdn_scan_bytes(*, batch: int, heads: int, T: int, head_dim: int, in_bytes: int, mode: str = "fwd") -> float:
    """Compulsory traffic: q, k, v, g, beta read and o written, plus one fp32 state per chunk boundary."""
    K = head_dim
    per = heads * (in_bytes * T * 4 * K + 4 * T * 2 + 4 * K * K * math.ceil(T / CHUNK))
    return batch * per * (3.0 if mode == "fwd+bwd" else 1.0)


def gdn_unavailable(dtype: torch.dtype, device: torch.device) -> str | None:
    """Why the fla op cannot be timed here, or None."""
    if device.type != "cuda" and not (device.type == "cpu" and dtype in (torch.float32, torch.float16)):
        return f"fla's Triton kernels do not run on {device.type} with {dtype}"
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule  # noqa: F401
    except ImportError as e:
        return f"fla is not installed ({e})"
    return None


def gdn_point(*, batch: int, heads: int, T: int, head_dim: int, dtype: torch.dtype, device: torch.device,
              grad: bool):
    """A closure timing one call of ``chunk_gated_delta_rule`` (inputs made once, outside the timed calls)."""
    from seqmix.utils.triton_compat import patch_triton_interpreter

    patch_triton_interpreter()  # CPU smoke runs (Triton interpreter) only; a no-op on GPU
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule

    g = torch.Generator(device=device).manual_seed(T)
    B, H, K = batch, heads, head_dim

    def rn(*s):
        return torch.randn(*s, generator=g, device=device, dtype=torch.float32)

    q = torch.nn.functional.normalize(rn(B, T, H, K), dim=-1).to(dtype)
    k = torch.nn.functional.normalize(rn(B, T, H, K), dim=-1).to(dtype)
    v = rn(B, T, H, K).to(dtype)
    logdecay = torch.nn.functional.logsigmoid(rn(B, T, H) + 4.0)  # decays near 1, as trained layers have
    beta = torch.sigmoid(rn(B, T, H)).to(dtype)
    leaves = [q, k, v, logdecay, beta]
    if not grad:
        def fn():
            with torch.no_grad():
                return chunk_gated_delta_rule(q, k, v, logdecay, beta)
        return fn
    for t in leaves:
        t.requires_grad_()
    do = rn(B, T, H, K).to(dtype)

    def fn():
        o, _ = chunk_gated_delta_rule(q, k, v, logdecay, beta)
        torch.autograd.backward([o], [do])
        for t in leaves:
            t.grad = None
    return fn


def gdn_record(loop, mode: str, T: int, gate: list[str]):
    """Measure one ``fla_gdn`` point of the TTT kernel benchmark run ``loop`` (a :class:`seqmix.bench.driver.PointLoop`
    whose config gives B, H, K and the input dtype) and return its record (skipped / error with the reason)."""
    import gc

    cfg = loop.cfg
    dtype = getattr(torch, cfg.dtype)
    rec = loop.record("gated_deltanet", mode, T, "fla_gdn", dtype=cfg.dtype, gate=list(gate), unit="call",
                      tokens_per_unit=T)
    sizes = dict(batch=cfg.batch, heads=cfg.heads, T=T, head_dim=cfg.head_dim)
    rec.flops = gdn_scan_flops(**sizes, mode=mode)
    rec.bytes = gdn_scan_bytes(**sizes, in_bytes=torch.finfo(dtype).bits // 8, mode=mode)
    rec.extra = {"heads": cfg.heads, "head_dim": cfg.head_dim, "chunk_size": CHUNK,
                 "op": "fla.ops.gated_delta_rule.chunk_gated_delta_rule"}
    why = gdn_unavailable(dtype, loop.device)
    if why:
        rec.status, rec.reason = "skipped", why
        return rec
    key = ("gdn", "fla_gdn", mode)
    if loop.over_budget(rec, key, T, rec.flops):
        return rec
    loop.time(rec, key, T, lambda: gdn_point(**sizes, dtype=dtype, device=loop.device, grad=mode == "fwd+bwd"),
              flops=rec.flops, label=f"gated_deltanet/fla_gdn {mode} T={T}", cleanup=gc.collect)
    return rec
