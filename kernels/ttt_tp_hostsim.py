"""The kernels of ``ttt_tp.cu`` compiled as plain C++ and run on CPU threads (``ttt_tp_sim.h``): an offline check of
their indexing, shared-memory layouts, barriers and cluster (DSMEM) exchanges, through the same host wrapper
(:class:`seqmix.kernels.ttt_tp.TTTTPFunction`) the GPU path uses.

One ``std::thread`` per CUDA thread (256 per CTA, 4 or 8 CTAs per cluster, one cluster at a time): slow, for tiny
shapes only (K = 64, F = 256, mini-batch 64 are fixed by the kernels). fp32 inputs; products rounded to TF32 as the
tensor cores do (``tf32=False``: plain fp32 products, to compare tightly against an fp64 reference). Needs ``g++``
with C++20 (``std::barrier``); nothing here needs CUDA.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from . import ttt_tp

__all__ = ["gxx_path", "build_hostsim", "HostSimExt", "ttt_scan_tp_hostsim"]

_SIM_HEADER = Path(__file__).resolve().parent / "ttt_tp_sim.h"


def gxx_path() -> str | None:
    return shutil.which("g++")


@functools.lru_cache(maxsize=2)
def build_hostsim(cache_dir: str | None = None) -> ctypes.CDLL:
    """Compile (cached by source hash) and load the simulation library."""
    gxx = gxx_path()
    if gxx is None:
        raise RuntimeError("g++ not found (the host simulation of the TP kernel needs a C++20 compiler)")
    src = ttt_tp.CU_SOURCE
    digest = hashlib.sha256(src.read_bytes() + _SIM_HEADER.read_bytes()).hexdigest()[:16]
    root = Path(cache_dir or os.environ.get("SEQMIX_TTT_TP_BUILD_DIR") or Path(tempfile.gettempdir()) / "seqmix_ttt_tp")
    root.mkdir(parents=True, exist_ok=True)
    lib = root / f"ttt_tp_hostsim_{digest}.so"
    if not lib.exists():
        tmp = lib.with_suffix(f".{os.getpid()}.tmp")
        cmd = [gxx, "-std=c++20", "-O2", "-pthread", "-shared", "-fPIC", "-DTTT_TP_HOST_SIM", "-x", "c++", str(src),
               f"-I{src.parent}", "-o", str(tmp)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"host simulation build failed:\n{proc.stderr[-4000:]}")
        os.replace(tmp, lib)  # atomic: a concurrent build never sees a half-written library
    so = ctypes.CDLL(str(lib))
    for name in ("ttt_tp_sim_fwd", "ttt_tp_sim_bwd"):
        getattr(so, name).restype = ctypes.c_int
    return so


def _p(t: torch.Tensor) -> ctypes.c_void_p:
    if t.device.type != "cpu" or t.dtype != torch.float32 or not t.is_contiguous():
        raise ValueError("the host simulation takes contiguous float32 CPU tensors")
    return ctypes.c_void_p(t.data_ptr())


class HostSimExt:
    """Drop-in for the CUDA extension's ``fwd`` / ``bwd`` (same arguments), running the simulation."""

    def __init__(self, tf32: bool = True):
        self.so = build_hostsim()
        self.tf32 = tf32

    def fwd(self, q, k, r, eta, lnw, lnb, init, z, fin, ck, H, G, save, eps):
        self.so.ttt_tp_sim_set_tf32(int(self.tf32))
        BH, T = q.shape[:2]
        self.so.ttt_tp_sim_fwd(*map(_p, (q, k, r, eta, lnw, lnb, *init, z, *fin, *ck)), BH, T, int(H), int(G),
                               int(save), ctypes.c_float(eps))

    def bwd(self, q, k, r, eta, lnw, lnb, dz, ck, dfin, sc, dq, dk, dr, deta, dlnw, dlnb, dst, H, G, eps):
        self.so.ttt_tp_sim_set_tf32(int(self.tf32))
        BH, T = q.shape[:2]
        self.so.ttt_tp_sim_bwd(*map(_p, (q, k, r, eta, lnw, lnb, dz, *ck, *dfin, *sc, dq, dk, dr, deta, dlnw, dlnb,
                                         *dst)), BH, T, int(H), int(G), ctypes.c_float(eps))


def ttt_scan_tp_hostsim(q, k, r, eta, ln_w, ln_b, state, *, kind="mlp", causal=False, mini_batch_size=64, eps=1e-8,
                        checkpoint_group=0, dual=None, tf32: bool = True):
    """:func:`seqmix.kernels.ttt_tp.ttt_scan_tp` on the CPU simulation (float32 CPU inputs, same validation except
    the device / GPU checks)."""
    B, H, T, K = q.shape
    F = state[0].shape[-1]
    if kind != "mlp" or causal or (K, F, mini_batch_size) != (ttt_tp.HEAD_DIM, ttt_tp.INNER_WIDTH, ttt_tp.MINI_BATCH):
        raise ValueError("the host simulation runs what the kernel supports: non-causal TTT-MLP, K=64, F=256, N=64")
    if q.dtype != torch.float32:
        raise ValueError("the host simulation takes float32 q, k, r")
    n_mb = -(-T // mini_batch_size)
    G = int(checkpoint_group) if checkpoint_group and checkpoint_group > 0 else ttt_tp.default_checkpoint_group(n_mb)
    opts = dict(eps=float(eps), checkpoint_group=min(G, n_mb), ext=HostSimExt(tf32))
    state = tuple(s.expand(B, H, *w) for s, w in zip(state, [(K, F), (1, F), (F, K), (1, K)]))
    z, *final = ttt_tp.TTTTPFunction.apply(q, k, r, eta, ln_w, ln_b, opts, *state)
    return z, tuple(final)
