"""On-chip tensor-parallel TTT-MLP scan for Hopper: host wrapper of ``kernels/ttt_tp.cu`` (backend ``"tp"``).

**Status: unvalidated on a GPU.** The kernels compile offline for sm_90a (resource report in
``benchmarks/results/ttt-tp-resources/``), follow the schedule of :mod:`seqmix.kernels.ttt_tp_ref` (tested against
:func:`seqmix.ops.ttt.ttt_scan` in fp64), and the same kernel source, compiled as C++ with one CPU thread per CUDA
thread (:mod:`seqmix.kernels.ttt_tp_hostsim`), matches ``ttt_scan`` through this wrapper at tiny sizes; they have
not yet run on a GPU. The layer backend
``"tp"`` is opt-in (never chosen by ``"auto"``) until a committed GPU result of
``python -m seqmix.bench.ttt_tp_check`` shows it passes.

Design (details at the top of ``ttt_tp.cu``): one thread-block cluster per (batch, head); CTA ``p`` of ``P`` keeps
hidden units ``p F/P .. (p+1) F/P`` of the inner MLP in shared memory for the whole sequence and the cluster
all-reduces partial products through distributed shared memory. Forward cluster of 4, backward of 8; TF32
tensor-core products (wmma) from fp32 shared memory; checkpoints every ``G`` mini-batches for the backward.

Supported: TTT-MLP, non-causal (video) form, head dim 64, inner width 256, mini-batch 64, any ``T`` (ragged last
mini-batch), ``q, k, r`` in bfloat16 or float32 on a compute-capability-9.0 GPU. Anything else raises
``ValueError`` naming what is supported (:func:`check_supported`), before any compilation.

Build: ``torch.utils.cpp_extension.load`` (ninja JIT) of ``ttt_tp.cu`` + ``ttt_tp_binding.cpp`` on first use,
cached by torch in ``$TORCH_EXTENSIONS_DIR`` (or ``SEQMIX_TTT_TP_BUILD_DIR``).
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from seqmix.ops.ttt import check_scan_inputs

from .ttt_ref import default_checkpoint_group

logger = logging.getLogger(__name__)

__all__ = ["HEAD_DIM", "INNER_WIDTH", "MINI_BATCH", "check_supported", "ttt_scan_tp", "TTTTPFunction",
           "load_extension", "nvcc_path", "resource_report", "NVCC_FLAGS"]

HEAD_DIM, INNER_WIDTH, MINI_BATCH = 64, 256, 64
CLUSTER_FWD, CLUSTER_BWD = 4, 8  # must match P_FWD / P_BWD in ttt_tp.cu (the resource test checks)
SMEM_LIMIT = 227 * 1024
_DIR = Path(__file__).resolve().parent
CU_SOURCE = _DIR / "ttt_tp.cu"
BINDING_SOURCE = _DIR / "ttt_tp_binding.cpp"
# (no -std: torch adds its own C++ standard to the nvcc command; nvcc 12/13 default to C++17 anyway)
NVCC_FLAGS = ["-gencode=arch=compute_90a,code=sm_90a", "-O3"]


def check_supported(kind: str, K: int, F: int, mini_batch_size: int, causal: bool, dtype: torch.dtype,
                    device: torch.device) -> str | None:
    """``None`` if the tensor-parallel kernel runs for these settings, else the reason it does not."""
    if kind != "mlp":
        return f"the tensor-parallel kernel is for TTT-MLP only, got kind={kind!r}"
    if causal:
        return "the tensor-parallel kernel implements the non-causal (video) form only; use the triton backend"
    if (K, F, mini_batch_size) != (HEAD_DIM, INNER_WIDTH, MINI_BATCH):
        return (f"the tensor-parallel kernel supports head dim {HEAD_DIM}, inner width {INNER_WIDTH} and mini-batch "
                f"{MINI_BATCH} only, got K={K}, F={F}, mini_batch_size={mini_batch_size}")
    if dtype not in (torch.bfloat16, torch.float32):
        return f"the tensor-parallel kernel takes bfloat16 or float32 q/k/r, got {dtype}"
    if device.type != "cuda":
        return f"the tensor-parallel kernel needs a CUDA device of compute capability 9.0, got {device.type}"
    cc = torch.cuda.get_device_capability(device)
    if cc != (9, 0):
        return f"the tensor-parallel kernel is built for sm_90a (Hopper), this GPU is sm_{cc[0]}{cc[1]}"
    return None


@functools.lru_cache(maxsize=1)
def load_extension():
    """Build (once, cached on disk by torch) and import the extension."""
    from torch.utils.cpp_extension import load

    build_dir = os.environ.get("SEQMIX_TTT_TP_BUILD_DIR")
    kw = {}
    if build_dir:
        Path(build_dir).mkdir(parents=True, exist_ok=True)
        kw["build_directory"] = build_dir
    t0 = time.perf_counter()
    ext = load(name="seqmix_ttt_tp", sources=[str(BINDING_SOURCE), str(CU_SOURCE)], extra_cuda_cflags=NVCC_FLAGS,
               extra_cflags=["-O3"], verbose=False, **kw)
    logger.info("ttt_tp extension ready in %.1f s", time.perf_counter() - t0)
    if (ext.config(0), ext.config(1)) != (CLUSTER_FWD, CLUSTER_BWD):
        raise RuntimeError("ttt_tp.cu cluster sizes do not match seqmix.kernels.ttt_tp")
    return ext


#: Set by the GPU check (poisoned-output test): every buffer the kernels fill is allocated full of NaN, so a value
#: the kernels forget to write shows up as NaN instead of as stale memory.
POISON_OUTPUTS = False


def _empty(*shape, device, dtype=torch.float32) -> torch.Tensor:
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), device=device, dtype=dtype)
    return torch.empty(*shape, device=device, dtype=dtype)


def _state_bufs(BH: int, n: int, device) -> list[torch.Tensor]:
    K, F = HEAD_DIM, INNER_WIDTH
    return [_empty(BH, n, *s, device=device) for s in ((K, F), (F,), (F, K), (K,))]


class TTTTPFunction(torch.autograd.Function):
    """``apply(q, k, r, eta, ln_w, ln_b, opts, *state) -> (z, *state_T)``; ``opts = dict(eps, checkpoint_group)``,
    states ``[B, H, ...]`` (broadcast views are fine)."""

    @staticmethod
    def forward(ctx, q, k, r, eta, ln_w, ln_b, opts, *state):
        B, H, T, K = q.shape
        F, BH, dev = INNER_WIDTH, B * H, q.device
        # opts["ext"]: another build of the same kernels with the extension's fwd / bwd signature (the CPU
        # simulation of seqmix.kernels.ttt_tp_hostsim); default: the CUDA extension
        ext = ctx.ext = opts.get("ext") or load_extension()
        n_mb = -(-T // MINI_BATCH)
        save = any(ctx.needs_input_grad)
        G = opts["checkpoint_group"] if save else n_mb
        n_grp = -(-n_mb // G)
        q3, k3, r3 = (t.contiguous().view(BH, T, K) for t in (q, k, r))
        eta2 = eta.to(torch.float32).contiguous().view(BH, T)
        lw, lb = (t.to(torch.float32).contiguous() for t in (ln_w, ln_b))
        shapes = ((K, F), (F,), (F, K), (K,))
        st = [s.to(torch.float32).expand(B, H, *s.shape[2:]).contiguous().view(BH, *sh) for s, sh in zip(state, shapes)]
        z = _empty(BH, T, K, device=dev)
        fin = [_empty(*s.shape, device=dev) for s in st]
        ck = _state_bufs(BH, n_grp, dev) if save else [torch.empty(1, device=dev, dtype=torch.float32)] * 4
        ext.fwd(q3, k3, r3, eta2, lw, lb, st, z, fin, ck, H, G, save, float(opts["eps"]))
        if save:
            ctx.save_for_backward(q3, k3, r3, eta2, lw, lb, *ck)
            ctx.meta = (B, H, T, G, float(opts["eps"]))
            ctx.dtypes = (q.dtype, k.dtype, r.dtype, eta.dtype, ln_w.dtype, ln_b.dtype, *(s.dtype for s in state))
        out_shapes = [(B, H, K, F), (B, H, 1, F), (B, H, F, K), (B, H, 1, K)]
        return (z.view(B, H, T, K).to(q.dtype), *(f.view(s) for f, s in zip(fin, out_shapes)))

    @staticmethod
    def backward(ctx, dz, *dfinal):
        q3, k3, r3, eta2, lw, lb, *ck = ctx.saved_tensors
        B, H, T, G, eps = ctx.meta
        K, F, BH, dev = HEAD_DIM, INNER_WIDTH, B * H, q3.device
        f32 = dict(device=dev, dtype=torch.float32)
        shapes = ((K, F), (F,), (F, K), (K,))
        dz3 = torch.zeros(BH, T, K, **f32) if dz is None else dz.to(torch.float32).contiguous().view(BH, T, K)
        dfin = [torch.zeros(BH, *s, **f32) if d is None else d.to(torch.float32).contiguous().view(BH, *s)
                for d, s in zip(dfinal, shapes)]
        sc = _state_bufs(BH, G, dev)
        sc[3] = _empty(BH, G, CLUSTER_BWD, K, device=dev)  # scratch b2 is kept per rank (see ttt_tp.cu)
        dq, dk, dr = (_empty(BH, T, K, device=dev) for _ in range(3))
        deta = _empty(BH, T, device=dev)
        dlnw, dlnb = _empty(BH, K, device=dev), _empty(BH, K, device=dev)
        dst = [_empty(BH, *s, device=dev) for s in shapes]
        ctx.ext.bwd(q3, k3, r3, eta2, lw, lb, dz3, ck, dfin, sc, dq, dk, dr, deta, dlnw, dlnb, dst, H, G, eps)
        dt = ctx.dtypes
        grads = [dq.view(B, H, T, K), dk.view(B, H, T, K), dr.view(B, H, T, K), deta.view(B, H, T),
                 dlnw.view(B, H, K).sum(0), dlnb.view(B, H, K).sum(0)]
        grads = [g.to(d) for g, d in zip(grads, dt[:6])]
        st_shapes = [(B, H, K, F), (B, H, 1, F), (B, H, F, K), (B, H, 1, K)]
        return (*grads, None, *(g.view(s).to(d) for g, s, d in zip(dst, st_shapes, dt[6:])))


def _validate(q, k, r, eta, ln_w, ln_b, state, kind, causal, mini_batch_size, dual):
    """Every check that needs no GPU and no build; raises ValueError naming what is allowed."""
    check_scan_inputs(q, k, r, eta, state, kind, mini_batch_size)
    if causal and dual is False:
        raise ValueError("the causal form needs the dual read-out (dual=True or None)")
    B, H, T, K = q.shape
    if T == 0:
        raise ValueError("ttt_scan_tp: empty sequence (T=0)")
    F = state[0].shape[-1]
    reason = check_supported(kind, K, F, mini_batch_size, causal, q.dtype, q.device)
    if reason is not None:
        raise ValueError(f"ttt_scan_tp: {reason}")
    for name, t in (("k", k), ("r", r)):
        if t.dtype != q.dtype:
            raise ValueError(f"ttt_scan_tp: {name} has dtype {t.dtype}, q has {q.dtype}; q, k, r must share one")
    for name, t in (("k", k), ("r", r), ("eta", eta), ("ln_w", ln_w), ("ln_b", ln_b), *(("state", s) for s in state)):
        if t.device != q.device:
            raise ValueError(f"ttt_scan_tp: {name} is on {t.device}, q on {q.device}")
        if not t.is_floating_point():
            raise ValueError(f"ttt_scan_tp: {name} has dtype {t.dtype}; floating point expected")
    if ln_w.shape != (H, K) or ln_b.shape != (H, K):
        raise ValueError(f"ttt_scan_tp: ln_w, ln_b must be [H, K] = {(H, K)}, "
                         f"got {tuple(ln_w.shape)}, {tuple(ln_b.shape)}")
    want = [(K, F), (1, F), (F, K), (1, K)]
    for s, w in zip(state, want):
        try:
            s.expand(B, H, *w)
        except RuntimeError:
            raise ValueError(f"ttt_scan_tp: state shapes {[tuple(s.shape) for s in state]} do not broadcast to "
                             f"{[(B, H, *w) for w in want]}") from None


def ttt_scan_tp(q, k, r, eta, ln_w, ln_b, state, *, kind, causal, mini_batch_size, eps=1e-8, checkpoint_group=0,
                dual=None, token_weights=None):
    """TTT-MLP scan on the tensor-parallel Hopper kernel; same signature and return value as
    :func:`seqmix.ops.ttt.ttt_scan` (``z`` in ``q``'s dtype, fp32 state). Validates before building anything;
    ``token_weights`` (causal form only) are not supported by this non-causal kernel."""
    if token_weights is not None:
        raise ValueError("the tensor-parallel kernel is non-causal: token_weights are not supported")
    _validate(q, k, r, eta, ln_w, ln_b, state, kind, causal, mini_batch_size, dual)
    n_mb = -(-q.shape[2] // mini_batch_size)
    G = int(checkpoint_group) if checkpoint_group and checkpoint_group > 0 else default_checkpoint_group(n_mb)
    opts = dict(eps=float(eps), checkpoint_group=min(G, n_mb))
    B, H, _, K = q.shape
    F = state[0].shape[-1]
    state = tuple(s.expand(B, H, *w) for s, w in zip(state, [(K, F), (1, F), (F, K), (1, K)]))
    z, *final = TTTTPFunction.apply(q, k, r, eta, ln_w, ln_b, opts, *state)
    return z, tuple(final)


# ------------------------------------------------------------------------------------- offline resource report
def nvcc_path() -> str | None:
    return shutil.which("nvcc") or next((str(p) for p in (Path("/usr/local/cuda/bin/nvcc"),) if p.exists()), None)


_PTXAS = re.compile(r"Compiling entry function '(?P<name>[^']+)' for '(?P<arch>sm_\w+)'")
_PROPS = re.compile(r"(?P<stack>\d+) bytes stack frame, (?P<ss>\d+) bytes spill stores, (?P<sl>\d+) bytes spill loads")
_REGS = re.compile(r"Used (?P<regs>\d+) registers(?:, used (?P<bar>\d+) barriers)?(?:, (?P<smem>\d+) bytes smem)?")


def _kernel_label(mangled: str) -> str:
    m = re.search(r"ttt_tp_(fwd|bwd)_kernelILi(\d+)E(13__nv_bfloat16|f)", mangled)
    if not m:
        return mangled
    return f"{m.group(1)}_P{m.group(2)}_{'bf16' if m.group(3) != 'f' else 'fp32'}"


@functools.lru_cache(maxsize=4)
def _resource_report_cached(nvcc: str, source_mtime: float, timeout: float) -> dict:
    return _resource_report(nvcc, timeout)


def resource_report(nvcc: str | None = None, timeout: float = 300.0) -> dict:
    """See :func:`_resource_report`; cached per process for an unchanged source (tests and the smoke check share one
    compile)."""
    nvcc = nvcc or nvcc_path()
    if nvcc is None:
        raise RuntimeError("nvcc not found")
    return _resource_report_cached(nvcc, CU_SOURCE.stat().st_mtime, timeout)


def _resource_report(nvcc: str, timeout: float) -> dict:
    """Compile ``ttt_tp.cu`` for sm_90a with ``ptxas -v`` (no GPU needed) and read per kernel: registers, spills,
    stack, static shared memory, the PTX cluster shape (``.reqnctapercluster``), and the dynamic shared memory per
    CTA from the built library's ``ttt_tp_config``. Returns a JSON-able dict; raises RuntimeError on compile errors.
    """
    version = subprocess.run([nvcc, "--version"], capture_output=True, text=True, check=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        lib = Path(tmp) / "libttt_tp.so"
        keep = Path(tmp) / "keep"
        keep.mkdir()
        cmd = [nvcc, "-gencode=arch=compute_90a,code=sm_90a", "-O3", "-std=c++17", "-Xptxas", "-v", "-shared",
               "-Xcompiler", "-fPIC", "--keep", "--keep-dir", str(keep), "-o", str(lib), str(CU_SOURCE)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"nvcc failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        ptx = "\n".join(p.read_text() for p in keep.glob("*.ptx"))
        so = ctypes.CDLL(str(lib))
        config = {name: so.ttt_tp_config(i) for i, name in enumerate(
            ("cluster_fwd", "cluster_bwd", "smem_fwd_bytes", "smem_bwd_bytes", "K", "F", "N"))}
    kernels: dict[str, dict] = {}
    cur = None
    for line in (proc.stdout + proc.stderr).splitlines():
        if m := _PTXAS.search(line):
            cur = _kernel_label(m.group("name"))
            kernels[cur] = {"arch": m.group("arch")}
        elif cur and (m := _PROPS.search(line)):
            kernels[cur].update(stack_bytes=int(m["stack"]), spill_store_bytes=int(m["ss"]),
                                spill_load_bytes=int(m["sl"]))
        elif cur and (m := _REGS.search(line)):
            kernels[cur].update(registers=int(m["regs"]), static_smem_bytes=int(m["smem"] or 0))
    # cluster shape per entry from the PTX
    for m in re.finditer(r"\.entry (\S+)\((?:.|\n)*?\.reqnctapercluster (\d+), (\d+), (\d+)", ptx):
        lab = _kernel_label(m.group(1))
        if lab in kernels:
            kernels[lab]["cluster_dims"] = [int(m.group(2)), int(m.group(3)), int(m.group(4))]
    for lab, d in kernels.items():
        dyn = config["smem_fwd_bytes"] if lab.startswith("fwd") else config["smem_bwd_bytes"]
        d["dynamic_smem_bytes"] = dyn
        d["smem_per_cta_bytes"] = dyn + d.get("static_smem_bytes", 0)
    return {
        "command": " ".join(["nvcc", *cmd[1:-1], "kernels/ttt_tp.cu"]).replace(str(lib), "libttt_tp.so").replace(
            str(keep), "KEEP"),
        "nvcc_version": version.splitlines()[-2] if len(version.splitlines()) >= 2 else version,
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "compile_seconds": round(seconds, 1),
        "smem_limit_bytes": SMEM_LIMIT,
        "config": config,
        "ptx_uses_mma": "mma.sync" in ptx or "wmma.mma" in ptx,
        "kernels": kernels,
    }


def check_report(rep: dict) -> list[str]:
    """Problems in a :func:`resource_report` (empty list: shared memory within 227 KB, no spills, no stack,
    the designed cluster sizes, all four kernels present)."""
    bad = []
    want = {f"{d}_P{p}_{t}" for d, p in (("fwd", CLUSTER_FWD), ("bwd", CLUSTER_BWD)) for t in ("bf16", "fp32")}
    if set(rep["kernels"]) != want:
        bad.append(f"kernels {sorted(rep['kernels'])} != {sorted(want)}")
    for lab, d in rep["kernels"].items():
        if d.get("smem_per_cta_bytes", 1 << 30) > SMEM_LIMIT:
            bad.append(f"{lab}: {d['smem_per_cta_bytes']} B shared memory per CTA > {SMEM_LIMIT}")
        if d.get("spill_store_bytes", 1) or d.get("spill_load_bytes", 1) or d.get("stack_bytes", 1):
            bad.append(f"{lab}: register spills / stack frame {d}")
        p = CLUSTER_FWD if lab.startswith("fwd") else CLUSTER_BWD
        if d.get("cluster_dims") != [p, 1, 1]:
            bad.append(f"{lab}: cluster dims {d.get('cluster_dims')} != [{p}, 1, 1]")
    if not rep.get("ptx_uses_mma"):
        bad.append("no mma instructions in the PTX")
    return bad
