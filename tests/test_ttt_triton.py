"""TTT-Linear / TTT-MLP Triton kernels (seqmix.kernels.ttt_triton) against the reference scans.

On CPU the kernels run under the Triton interpreter (conftest sets TRITON_INTERPRET=1 first), in fp32, on tiny
grids; GPU-only cases (bf16, paper shapes) are skipped without CUDA. The plain-PyTorch twin with the kernels'
loop structure and hand-written backward (seqmix.kernels.ttt_ref) is checked against autograd in fp64.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from seqmix import layers  # noqa: E402
from seqmix.kernels import ttt_ref  # noqa: E402
from seqmix.ops import ttt as ops  # noqa: E402
from seqmix.utils.testing import assert_close  # noqa: E402

CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"
_skip_without_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")


def needs_cuda(test):
    """CUDA-only: skipped on CPU, enrolled by the GPU kit (``pytest -m gpu``)."""
    return pytest.mark.gpu(_skip_without_cuda(test))
NAMES = ["q", "k", "r", "eta", "ln_w", "ln_b", "W1", "b1", "W2", "b2"]


def _kernels():
    from seqmix.kernels import ttt_triton

    return ttt_triton


def _inputs(kind, B=1, H=2, T=21, K=16, dtype=torch.float32, seed=0, device=DEV, expansion=4):
    """Fresh random scan inputs (leaves requiring grad); a non-zero initial state per sequence."""
    g = torch.Generator().manual_seed(seed)
    Fd = K if kind == "linear" else expansion * K
    rn = lambda *s, sc=1.0: sc * torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    q = F.normalize(rn(B, H, T, K), dim=-1)
    k = F.normalize(rn(B, H, T, K), dim=-1)
    r = rn(B, H, T, K)
    eta = torch.rand(B, H, T, generator=g, dtype=torch.float64)
    lw, lb = 1 + rn(H, K, sc=0.1), rn(H, K, sc=0.1)
    P = [rn(B, H, K, Fd, sc=0.3), rn(B, H, 1, Fd, sc=0.1)]
    if kind == "mlp":
        P += [rn(B, H, Fd, K, sc=0.3), rn(B, H, 1, K, sc=0.1)]
    return [t.to(device=device, dtype=dtype).requires_grad_() for t in (q, k, r, eta, lw, lb, *P)]


def _run(fn, leaves, *, kind, causal, N, G=0, dual=None, seed=1):
    """z, final state and the gradients of <z, w> + sum_i <state_i, v_i> (random w, v: non-zero state grads)."""
    q, k, r, eta, lw, lb, *P = leaves
    z, fs = fn(q, k, r, eta, lw, lb, tuple(P), kind=kind, causal=causal, mini_batch_size=N, checkpoint_group=G,
               dual=dual)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(z.shape, generator=g, dtype=torch.float64).to(z)
    vs = [torch.randn(s.shape, generator=g, dtype=torch.float64).to(s) for s in fs]
    loss = (z * w).sum() + sum((s * v).sum() for s, v in zip(fs, vs))
    return z, fs, torch.autograd.grad(loss, leaves)


def _compare(got, ref, tol, what=""):
    (z, fs, gr), (z0, fs0, gr0) = got, ref
    assert_close(f"{what} z", z, z0, tol)
    for i, (a, b) in enumerate(zip(fs, fs0)):
        assert_close(f"{what} state[{i}]", a, b, tol)
    for name, a, b in zip(NAMES, gr, gr0):
        assert_close(f"{what} grad {name}", a, b, tol)


# ------------------------------------------------------------------------------------ the torch twin (fp64)
@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
@pytest.mark.parametrize("T,G", [(21, 2), (3, 0), (26, 3)], ids=lambda v: str(v))
def test_manual_backward_matches_autograd(kind, causal, T, G):
    """The hand-derived backward (kernel loop structure, in torch) == autograd through ttt_scan, fp64."""
    leaves = _inputs(kind, B=2, T=T, K=8, dtype=torch.float64, device="cpu")
    got = _run(ttt_ref.ttt_scan_manual, leaves, kind=kind, causal=causal, N=4, G=G)
    ref = _run(ops.ttt_scan, leaves, kind=kind, causal=causal, N=4)
    _compare(got, ref, 1e-10)


def test_gelu_derivatives():
    x = torch.linspace(-6, 6, 101, dtype=torch.float64, requires_grad=True)
    (d1,) = torch.autograd.grad(ops.gelu_tanh(x).sum(), x, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), x)
    assert_close("gelu", ttt_ref.gelu(x), ops.gelu_tanh(x), 1e-14)
    assert_close("gelu'", ttt_ref.gelu_d1(x), d1, 1e-14)
    assert_close("gelu''", ttt_ref.gelu_d2(x), d2, 1e-12)


# ------------------------------------------------------------------------------------- kernels vs reference
# (kind, causal, T, K, N, G): ragged T = N k + r, T < N, checkpoint groups that do / do not divide #mini-batches.
# TTT-MLP with K = 32 (F = 128) streams its hidden units in two chunks under the interpreter (BF = 64).
KERNEL_CASES = [
    ("linear", False, 21, 16, 4, 2),  # 6 mini-batches (last ragged), G | 6; B = 2
    ("linear", True, 21, 16, 4, 4),  # G does not divide 6
    ("linear", False, 32, 16, 8, 0),  # T multiple of N, default G
    ("linear", True, 3, 16, 4, 0),  # T < N: only a ragged mini-batch, state untouched
    ("linear", True, 40, 32, 16, 1),
    ("mlp", False, 21, 16, 4, 2),  # B = 2
    ("mlp", True, 17, 16, 4, 3),  # G does not divide 5
    ("mlp", False, 24, 16, 8, 0),  # T multiple of N
    ("mlp", True, 3, 16, 4, 0),
    ("mlp", True, 19, 32, 8, 2),  # two hidden chunks, ragged
    ("mlp", False, 36, 32, 16, 2),  # two hidden chunks, ragged (36 = 2 * 16 + 4)
    ("linear", True, 70, 16, 64, 0),  # paper-size mini-batches (64, 32)
    ("mlp", False, 40, 16, 32, 0),
]


def _case_id(c):
    kind, causal, T, K, N, G = c
    return f"{kind}-{'causal' if causal else 'noncausal'}-T{T}-K{K}-N{N}-G{G}"


@pytest.mark.parametrize("case", KERNEL_CASES, ids=_case_id)
def test_kernel_matches_scan(case):
    """Outputs, boundary state and ALL input gradients == ttt_scan in fp64 (kernel in fp32), rel. err <= 1e-4."""
    kind, causal, T, K, N, G = case
    leaves = _inputs(kind, B=2 if T == 21 and not causal else 1, H=2, T=T, K=K)  # B = 2: ln grads sum over B
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    got = _run(_kernels().ttt_scan_triton, leaves, kind=kind, causal=causal, N=N, G=G)
    ref = _run(ops.ttt_scan, leaves64, kind=kind, causal=causal, N=N)
    _compare(got, ref, 1e-4, _case_id(case))


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_kernel_matches_naive_fp32(kind):
    """Against the autograd-based naive twin, both in fp32 (the tolerance of the issue)."""
    leaves = _inputs(kind, B=1, H=1, T=11, K=16)
    got = _run(_kernels().ttt_scan_triton, leaves, kind=kind, causal=True, N=4, G=2)
    ref = _run(ops.ttt_scan_naive, leaves, kind=kind, causal=True, N=4)
    _compare(got, ref, 1e-4)


@pytest.mark.parametrize("kind,causal,N", [("linear", True, 16), ("mlp", False, 8)], ids=["linear", "mlp"])
def test_kernel_head_dim_64(kind, causal, N):
    """Paper head dim (K = 64; TTT-MLP hidden 256)."""
    leaves = _inputs(kind, B=1, H=1, T=N + 3, K=64)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    got = _run(_kernels().ttt_scan_triton, leaves, kind=kind, causal=causal, N=N, G=2)
    ref = _run(ops.ttt_scan, leaves64, kind=kind, causal=causal, N=N)
    _compare(got, ref, 1e-4)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_mlp_expansion_one_and_dual_flag(kind):
    """TTT-MLP with expansion 1 (F = K), and dual=True in the non-causal form (same math, accepted)."""
    leaves = _inputs(kind, B=1, H=2, T=13, K=16, expansion=1)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    got = _run(_kernels().ttt_scan_triton, leaves, kind=kind, causal=False, N=4, dual=True)
    ref = _run(ops.ttt_scan, leaves64, kind=kind, causal=False, N=4, dual=True)
    _compare(got, ref, 1e-4)


def test_no_grad_forward_and_broadcast_state():
    """Inference path (no checkpoints written) and an [H, ...] -> [B, H, ...] broadcast initial state."""
    kt = _kernels()
    q, k, r, eta, lw, lb, *P = (t.detach() for t in _inputs("mlp", B=2, H=2, T=17, K=16))
    P = [p[:1].expand_as(p) for p in P]  # the same initial model for every sequence, as init_state gives
    with torch.no_grad():
        z, fs = kt.ttt_scan_triton(q, k, r, eta, lw, lb, tuple(P), kind="mlp", causal=True, mini_batch_size=4)
    z0, fs0 = ops.ttt_scan(q.double(), k.double(), r.double(), eta.double(), lw.double(), lb.double(),
                           tuple(p.double() for p in P), kind="mlp", causal=True, mini_batch_size=4)
    assert not z.requires_grad and z.dtype == q.dtype
    assert all(s.dtype == torch.float32 for s in fs)
    assert_close("z", z, z0, 1e-4)
    for a, b in zip(fs, fs0):
        assert_close("state", a, b, 1e-4)


def test_noncontiguous_inputs():
    """Inputs laid out [B, T, H, K] and viewed as [B, H, T, K] (as projections give) give the same results."""
    kt = _kernels()
    leaves = _inputs("linear", B=1, H=2, T=11, K=16)
    q, k, r, eta, lw, lb, *P = leaves
    nc = [t.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_() for t in (q, k, r)]
    eta_nc = eta.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    assert not nc[0].is_contiguous() and not eta_nc.is_contiguous()
    got = _run(kt.ttt_scan_triton, [*nc, eta_nc, lw, lb, *P], kind="linear", causal=True, N=4)
    ref = _run(kt.ttt_scan_triton, leaves, kind="linear", causal=True, N=4)
    _compare(got, ref, 1e-6)


@pytest.mark.skipif(CUDA, reason="CPU interpreter twin of the GPU half-precision test")
def test_fp16_inputs_interpreter():
    """fp16 q, k, r, eta are cast to fp32 on load; compare with ttt_scan on the same rounded values."""
    kt = _kernels()
    q, k, r, eta, lw, lb, *P = (t.detach() for t in _inputs("mlp", B=1, H=2, T=12, K=16))
    h = [t.half() for t in (q, k, r, eta)]
    z, fs = kt.ttt_scan_triton(*h, lw, lb, tuple(P), kind="mlp", causal=False, mini_batch_size=4)
    z0, fs0 = ops.ttt_scan(*(t.double() for t in h), lw.double(), lb.double(), tuple(p.double() for p in P),
                           kind="mlp", causal=False, mini_batch_size=4)
    assert z.dtype == torch.float16
    assert_close("z fp16", z, z0, 2e-3)
    assert_close("state fp16", fs[0], fs0[0], 1e-5)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_launch_that_does_not_fit_falls_back_to_torch_twin(kind, monkeypatch, caplog):
    """A kernel launch over the GPU's shared memory / registers (OutOfResources) runs the PyTorch twin instead,
    forward and backward, with one warning: same results."""
    kt = _kernels()

    def too_big(*args, **kwargs):
        raise kt.OutOfResources(300000, 232448, "shared memory")

    for name in (f"_ttt_{kind}_fwd_kernel", f"_ttt_{kind}_bwd_kernel"):
        monkeypatch.setattr(getattr(kt, name), "run", too_big)
    monkeypatch.setattr(kt, "_FALLBACK_WARNED", set())
    leaves = _inputs(kind, B=2, H=2, T=13, K=16)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    with caplog.at_level("WARNING", logger=kt.__name__):
        got = _run(kt.ttt_scan_triton, leaves, kind=kind, causal=True, N=4, G=2)
    ref = _run(ops.ttt_scan, leaves64, kind=kind, causal=True, N=4)
    _compare(got, ref, 1e-4)
    assert caplog.text.count("does not fit") == 1  # once per shape, though both kernels fell back


# ---------------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_clear_errors():
    kt = _kernels()
    q, k, r, eta, lw, lb, *P = (t.detach() for t in _inputs("linear", B=1, H=2, T=8, K=16))
    kw = dict(kind="linear", causal=True, mini_batch_size=4)
    with pytest.raises(ValueError, match="head dim 8"):
        a = [t[..., :8] for t in (q, k, r)]
        kt.ttt_scan_triton(*a, eta, lw[:, :8], lb[:, :8], (P[0][..., :8, :8], P[1][..., :8]), **kw)
    with pytest.raises(ValueError, match="float64"):
        kt.ttt_scan_triton(q.double(), k.double(), r.double(), eta.double(), lw, lb, tuple(P), **kw)
    with pytest.raises(ValueError, match="dual"):
        kt.ttt_scan_triton(q, k, r, eta, lw, lb, tuple(P), kind="linear", causal=True, mini_batch_size=4, dual=False)
    with pytest.raises(ValueError, match=r"ln_w, ln_b must be \[H, K\]"):
        kt.ttt_scan_triton(q, k, r, eta, lw[:1], lb, tuple(P), **kw)
    with pytest.raises(ValueError, match="state shapes"):
        kt.ttt_scan_triton(q, k, r, eta, lw, lb, (P[0], torch.zeros(1, 2, 3, 16)), **kw)
    with pytest.raises(ValueError, match="state for kind"):
        kt.ttt_scan_triton(q, k, r, eta, lw, lb, tuple(P), kind="mlp", causal=True, mini_batch_size=4)
    with pytest.raises(ValueError, match="mini_batch_size"):
        kt.ttt_scan_triton(q, k, r, eta, lw, lb, tuple(P), kind="linear", causal=True, mini_batch_size=256)
    with pytest.raises(ValueError, match="inner width"):
        W1, b1 = torch.zeros(1, 2, 16, 48), torch.zeros(1, 2, 1, 48)
        kt.ttt_scan_triton(q, k, r, eta, lw, lb, (W1, b1, torch.zeros(1, 2, 48, 16), torch.zeros(1, 2, 1, 16)),
                           kind="mlp", causal=True, mini_batch_size=4)
    if not CUDA:
        with pytest.raises(ValueError, match="bfloat16"):
            kt.ttt_scan_triton(q.bfloat16(), k.bfloat16(), r.bfloat16(), eta, lw, lb, tuple(P), **kw)


# ---------------------------------------------------------------------------------------------- the layer
@pytest.mark.parametrize("name", ["ttt_linear", "ttt_mlp"])
@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_layer_triton_backend_matches_torch(name, causal):
    torch.manual_seed(0)
    # the causal kernels implement the video layer made causal (opt-in variant 'video_causal')
    kw = dict(dim=32, num_heads=2, mini_batch_size=4, causal=causal, variant="video_causal" if causal else None)
    ref = layers.build(name, **kw, backend="torch").to(DEV)
    lay = layers.build(name, **kw, backend="triton", scan_checkpoint_group=2).to(DEV)
    lay.load_state_dict(ref.state_dict())
    assert lay.backend == "triton" and ref.backend == "torch"
    x = torch.randn(1, 11, 32, device=DEV, requires_grad=True)
    y, y0 = lay(x), ref(x)
    assert_close("layer output", y, y0, 1e-4)
    gx, *gp = torch.autograd.grad(y.square().sum(), [x, *lay.parameters()])
    gx0, *gp0 = torch.autograd.grad(y0.square().sum(), [x, *ref.parameters()])
    assert_close("grad x", gx, gx0, 1e-4)
    for (n, _), a, b in zip(lay.named_parameters(), gp, gp0):
        assert_close(f"grad {n}", a, b, 1e-4)


@pytest.mark.parametrize("name", ["ttt_linear", "ttt_mlp"])
def test_layer_state_carry_with_triton(name):
    """Two calls with a carried state (pending tokens of an unfinished mini-batch) == one full pass."""
    torch.manual_seed(0)
    lay = layers.build(name, dim=32, num_heads=2, mini_batch_size=4, causal=True, backend="triton").to(DEV)
    x = torch.randn(1, 11, 32, device=DEV)
    with torch.no_grad():
        full = lay(x)
        y1, st = lay(x[:, :6], return_state=True)
        y2, st2 = lay(x[:, 6:], state=st, return_state=True)
        ref_full = layers.build(name, dim=32, num_heads=2, mini_batch_size=4, causal=True, backend="torch").to(DEV)
        ref_full.load_state_dict(lay.state_dict())
        y_ref = ref_full(x)
    assert st.pending_k.shape[2] == 2 and st2.pending_k.shape[2] == 11 % 4
    assert_close("chunked vs full", torch.cat([y1, y2], dim=1), full, 1e-5)
    assert_close("triton vs torch", full, y_ref, 1e-4)


def test_backend_resolution(monkeypatch):
    lin = layers.build("ttt_linear", dim=32, num_heads=2)
    assert lin.backends[0] == "triton"
    if not CUDA:
        assert lin.backend == "torch"  # auto never picks the interpreter
        assert layers.build("ttt_linear", dim=32, num_heads=2, backend="triton").backend == "triton"
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        assert layers.build("ttt_mlp", dim=32, num_heads=2, backend="triton").backend == "torch"  # warns once
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    else:
        assert lin.cuda().backend == "triton"
    # unsupported shapes / dtypes degrade to the torch backend
    assert layers.build("ttt_mlp", dim=16, num_heads=2, backend="triton").backend == "torch"  # head dim 8
    assert layers.build("ttt_linear", dim=32, num_heads=2, backend="triton").double().backend == "torch"
    assert layers.build("ttt_linear", dim=32, num_heads=2, mini_batch_size=256, backend="triton").backend == "torch"


def test_import_seqmix_does_not_load_kernels():
    code = (
        "import sys, torch, seqmix\n"
        "from seqmix import layers\n"
        "layers.build('ttt_mlp', dim=32, num_heads=2)(torch.randn(1, 5, 32))\n"
        "import seqmix.kernels\n"
        "assert 'seqmix.kernels.ttt_triton' not in sys.modules, 'kernels imported eagerly'\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


# --------------------------------------------------------------------------------------------- GPU only
@needs_cuda
@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_gpu_kernels_fp32_level_products(kind, causal, monkeypatch):
    """On the GPU with TF32x3 products (fp32-level): the same 1e-4 agreement as under the interpreter, and the
    kernels (not the PyTorch fallback) ran."""
    kt = _kernels()
    monkeypatch.setenv("SEQMIX_TTT_DOT_PRECISION", "tf32x3")
    monkeypatch.setattr(kt, "_FALLBACK_WARNED", set())
    leaves = _inputs(kind, B=2, H=2, T=16 * 5 + 7, K=32)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    got = _run(kt.ttt_scan_triton, leaves, kind=kind, causal=causal, N=16, G=2)
    ref = _run(ops.ttt_scan, leaves64, kind=kind, causal=causal, N=16)
    assert not kt._FALLBACK_WARNED, "the kernels did not fit; the PyTorch twin ran"
    _compare(got, ref, 1e-4)


@needs_cuda
@pytest.mark.parametrize("kind,N", [("linear", 16), ("mlp", 64)])
@pytest.mark.parametrize("causal", [False, True], ids=["noncausal", "causal"])
def test_gpu_paper_shapes_tf32(kind, N, causal):
    """K = 64 (TTT-MLP hidden 256), 8 mini-batches + a ragged tail, fp32 inputs, default TF32 products (relative
    error ~1e-3 per product; a wrong formula gives O(1) errors). Causal TTT-MLP at N = 64 may not fit an H100's
    shared memory: then the PyTorch twin runs (warned) and must agree too."""
    leaves = _inputs(kind, B=1, H=4, T=8 * N + 5, K=64)
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    got = _run(_kernels().ttt_scan_triton, leaves, kind=kind, causal=causal, N=N)
    ref = _run(ops.ttt_scan, leaves64, kind=kind, causal=causal, N=N)
    _compare(got, ref, 2e-2)


@needs_cuda
@pytest.mark.parametrize("kind,N", [("linear", 16), ("mlp", 64)])
def test_gpu_bf16_inputs(kind, N):
    """bf16 q/k/r/eta (fp32 state): compare with ttt_scan on the same rounded inputs in fp64."""
    leaves = _inputs(kind, B=2, H=4, T=16 * N + 7, K=64)
    q, k, r, eta, lw, lb, *P = leaves
    h = [t.detach().bfloat16().requires_grad_() for t in (q, k, r, eta)]
    got = _run(_kernels().ttt_scan_triton, [*h, lw, lb, *P], kind=kind, causal=False, N=N)
    ref64 = [t.detach().double().requires_grad_() for t in (*h, lw, lb, *P)]
    ref = _run(ops.ttt_scan, ref64, kind=kind, causal=False, N=N)
    assert got[0].dtype == torch.bfloat16
    _compare(got, ref, 2e-2)


@needs_cuda
@pytest.mark.parametrize("name", ["ttt_linear", "ttt_mlp"])
def test_gpu_layer_bf16_autocast(name):
    torch.manual_seed(0)
    ref = layers.build(name, dim=256, num_heads=4, backend="torch").cuda()
    lay = layers.build(name, dim=256, num_heads=4).cuda()
    lay.load_state_dict(ref.state_dict())
    assert lay.backend == "triton" and ref.backend == "torch"
    x = torch.randn(2, 1000, 256, device="cuda", requires_grad=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y, y0 = lay(x), ref(x)
    assert_close("bf16 layer output", y.float(), y0.float(), 2e-2)
    g, g0 = (torch.autograd.grad(v.float().square().mean(), x)[0] for v in (y, y0))
    assert_close("bf16 layer grad x", g, g0, 5e-2)


# ------------------------------------------------------------------------------------------------ benchmark
@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_bench_flop_count_matches_flop_counter(kind):
    """The benchmark's scan FLOPs == torch's FlopCounterMode over ttt_scan in the non-causal form (whose matrix
    products are exactly those of the kernels), ragged last mini-batch included."""
    from torch.utils.flop_counter import FlopCounterMode

    from seqmix.bench.ttt_kernels import ttt_scan_flops

    B, H, T, K, N = 2, 3, 21, 8, 4
    q, k, r, eta, lw, lb, *P = (t.detach() for t in _inputs(kind, B=B, H=H, T=T, K=K, device="cpu"))
    with FlopCounterMode(display=False) as fc:
        ops.ttt_scan(q, k, r, eta, lw, lb, tuple(P), kind=kind, causal=False, mini_batch_size=N)
    F_ = P[0].shape[-1]
    assert ttt_scan_flops(kind, causal=False, batch=B, heads=H, T=T, head_dim=K, inner_dim=F_,
                          mini_batch_size=N) == fc.get_total_flops()
    fb = ttt_scan_flops(kind, causal=True, batch=B, heads=H, T=T, head_dim=K, inner_dim=F_, mini_batch_size=N,
                        mode="fwd+bwd")
    assert fb > 3 * fc.get_total_flops()  # causal adds the N x N products; fwd+bwd counts 3x
    # The PyTorch dual form computes the causal read-out with one more product per inner layer: its named form
    # counts exactly what it executes.
    with FlopCounterMode(display=False) as fc:
        ops.ttt_scan(q, k, r, eta, lw, lb, tuple(P), kind=kind, causal=True, mini_batch_size=N)
    assert ttt_scan_flops(kind, causal=True, batch=B, heads=H, T=T, head_dim=K, inner_dim=F_, mini_batch_size=N,
                          form="torch") == fc.get_total_flops()


def test_bench_quick_run_writes_report(tmp_path):
    """A seconds-long run of the kernel benchmark (interpreter on CPU): records, ratios, files."""
    import json

    from seqmix.bench.ttt_kernels import TTTKernelBenchConfig, run_ttt_kernel_bench, write_report

    cfg = TTTKernelBenchConfig.quick_config(kinds=["linear"], lengths=[8], peaks=False,
                                            device=DEV, mini_batch={"linear": 8})
    res = run_ttt_kernel_bench(cfg, progress=False)
    assert {(m.backend, m.mode) for m in res.records} == {(b, m) for b in ("triton", "torch")
                                                          for m in ("fwd", "fwd+bwd")}
    assert all(m.ok and m.flops > 0 and m.tokens_per_s > 0 for m in res.records), [m.reason for m in res.records]
    paths = write_report(res, tmp_path)
    doc = json.loads(paths["json"].read_text())
    assert doc["suite"] == "ttt-kernels" and len(doc["records"]) == 4
    from seqmix.bench import validate

    validate(doc)  # the same schema check as every suite
    assert "triton vs torch" in paths["md"].read_text()
