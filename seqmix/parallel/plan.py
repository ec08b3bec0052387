"""The parallel plan: FSDP2 over data-parallel ranks x DTensor tensor parallelism by heads, for the segmented DiT
(:class:`~seqmix.backbones.dit.SegmentedDiT`) and the world-model backbone
(:class:`~seqmix.backbones.worldmodel.WorldModel`).

Tensor parallel (Megatron's split, written with DTensor): every block's window attention and global-layer mixer
run ``H / P`` heads per rank on the full (replicated) input; Q/K/V (and the mixer's per-head parameters) are split
head-major, the output projection is row parallel (partial products summed over the ranks), the MLP is column /
row parallel. Gates, adaLN linears, embeddings and norms stay replicated; with sequence parallelism the residual
stream is sharded by tokens between blocks and, in the DiT, inside them too (adaLN norms, gates and residual adds
on each rank's tokens; the whole sequence gathered only in front of attention + global layer and the MLP). What
splits in a mixer is declared on its class (:meth:`seqmix.layers.Mixer.head_shard_spec`); a mixer without a spec
(the block-wise TTT) runs whole on every rank. FSDP2 (``fully_shard``) then shards every block and the rest over
the data-parallel ranks; activation checkpointing recomputes each block in backward.

:func:`parallelize` is what ``LightningModule.configure_model`` calls with the strategy's device mesh
(:class:`~seqmix.parallel.lightning.ModelParallel`); it works the same on a mesh built by hand (tests, scripts).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from seqmix.layers.sharding import HeadShardSpec

from .checks import DP, TP, blocks_of, shardable

logger = logging.getLogger(__name__)

__all__ = ["ParallelReport", "clip_grad_norm_", "make_mesh", "parallelize", "shard_heads", "split_by_layout"]


@dataclass
class ParallelReport:
    """What :func:`parallelize` did: sizes, head-sharded modules and modules left whole under TP (by path)."""

    data_parallel: int
    tensor_parallel: int
    head_sharded: list[str]
    replicated: list[str]
    fsdp_units: int
    activation_checkpointing: bool
    fsdp_precision: str = "full"
    sequence_parallel: bool = False


def make_mesh(data_parallel: int, tensor_parallel: int, device_type: str = "cpu") -> DeviceMesh:
    """A ``(data_parallel, tensor_parallel)`` mesh with Lightning's dimension names (needs an initialised group)."""
    return init_device_mesh(device_type, (data_parallel, tensor_parallel), mesh_dim_names=(DP, TP))


def _pad_tokens(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x [B, m, ...]`` zero-padded to ``c`` tokens (dim 1)."""
    return torch.nn.functional.pad(x, (0, 0) * (x.dim() - 2) + (0, c - x.shape[1])).contiguous()


class _GatherTokens(torch.autograd.Function):
    """``[B, c, D]`` this rank's token shard -> ``[B, n, D]`` the whole sequence (all-gather over the group);
    backward keeps this rank's shard of the gradient (the blocks compute replicated, so every rank holds the
    whole gradient): Megatron's gather from the sequence-parallel region."""

    @staticmethod
    def forward(ctx, shard: torch.Tensor, n: int, group) -> torch.Tensor:
        size, rank = dist.get_world_size(group), dist.get_rank(group)
        parts = [torch.empty_like(shard) for _ in range(size)]
        dist.all_gather(parts, shard.contiguous(), group=group)
        ctx.rank, ctx.c = rank, shard.shape[1]
        return torch.cat(parts, dim=1)[:, :n]

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        c, r = ctx.c, ctx.rank
        return _pad_tokens(g[:, r * c:(r + 1) * c], c), None, None


class _SplitTokens(torch.autograd.Function):
    """``[B, n, D]`` whole sequence -> this rank's shard ``[B, ceil(n / P), D]`` (zero-padded at the end); backward
    all-gathers the ranks' gradient shards into the whole gradient: Megatron's scatter to the sequence-parallel
    region."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        size, rank = dist.get_world_size(group), dist.get_rank(group)
        n = x.shape[1]
        c = -(-n // size)  # tokens per rank, the last shard zero-padded
        ctx.n, ctx.group = n, group
        return _pad_tokens(x[:, rank * c:(rank + 1) * c], c)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        parts = [torch.empty_like(g) for _ in range(dist.get_world_size(ctx.group))]
        dist.all_gather(parts, g.contiguous(), group=ctx.group)
        return torch.cat(parts, dim=1)[:, :ctx.n], None


class TokenShards:
    """Sequence parallelism's pair over the tensor-parallel ``group``: :meth:`split` (whole sequence -> this rank's
    token shard) and :meth:`gather` (shard -> whole sequence), autograd-exact for replicated computation between
    them (see :class:`_SplitTokens`, :class:`_GatherTokens`)."""

    def __init__(self, group):
        self.group = group

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, n, D]`` -> ``[B, ceil(n / P), D]`` (the last shards zero-padded)."""
        return _SplitTokens.apply(x, self.group)

    def gather(self, shard: torch.Tensor, n: int) -> torch.Tensor:
        """``[B, ceil(n / P), D]`` -> ``[B, n, D]``."""
        return _GatherTokens.apply(shard, n, self.group)


def _sequence_parallel_blocks(blocks: list[nn.Module], streams: tuple[int, ...], group) -> None:
    """Shard the residual stream (the blocks' positional arguments and outputs at ``streams``: the DiT's video and
    text tokens, the world model's frame tokens) over the tensor-parallel ranks.

    A block class that declares ``token_shards`` (the DiT's) gets the pair and keeps the stream sharded inside
    too: its norms, gates and residual adds run on the shards and it gathers the whole sequence only in front of its
    tensor-parallel regions (Megatron's sequence parallelism); the first block splits the whole stream it is given
    and the last gathers what it returns. Any other block (the world model's layers) gathers its shards, computes as
    before and keeps its own shard of the output; the first takes and the last returns the whole stream. Either
    way what activation checkpointing saves per block (its inputs) is ``1 / P`` on every rank, and the model's
    embedding and output layers (and a rollout's carried states, computed inside the blocks on the whole stream)
    are unchanged. Gradients stay exact (tested against one process)."""
    tokens = TokenShards(group)
    lengths: dict[int, int] = {}
    last = len(blocks) - 1
    for i, block in enumerate(blocks):
        inside = hasattr(type(block), "token_shards")
        if inside:
            block.token_shards = tokens
            for name, replicated in type(block).token_shard_modules.items():
                _sum_grads(block.get_submodule(name), replicated, group)
        inner = block.forward

        def forward(*args, _inner=inner, _i=i, _inside=inside):
            args = list(args)
            for k in streams:
                if _i == 0:
                    lengths[k] = args[k].shape[1]
                    if _inside:
                        args[k] = tokens.split(args[k])
                elif not _inside:
                    args[k] = tokens.gather(args[k], lengths[k])
            out = list(_inner(*args))
            for k in streams:
                if _inside and _i == last:
                    out[k] = tokens.gather(out[k], lengths[k])
                elif not _inside and _i != last:
                    out[k] = tokens.split(out[k])
            return tuple(out)

        block.forward = forward


class _SumGrad(torch.autograd.Function):
    """Identity forward; backward sums the gradient over the group (Megatron's ``f``): for a replicated tensor
    that each rank uses with only its own heads."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        g = g.contiguous().clone()
        dist.all_reduce(g, group=ctx.group)
        return g, None


def _sum_grads(module: nn.Module, inputs: tuple[int, ...], group) -> None:
    """``module`` runs on this rank's token shard with replicated parameters and replicated inputs at positions
    ``inputs``: their gradients cover this rank's tokens only, so each forward swaps the parameters (and passes
    those inputs) through :class:`_SumGrad`, which sums the gradients over ``group`` in backward."""
    params = [(owner, leaf) for owner in module.modules() for leaf, p in owner._parameters.items() if p is not None]
    stack: list[list] = []

    def pre(mod, args):
        saved = []
        for owner, leaf in params:
            p = owner._parameters[leaf]
            saved.append((owner, leaf, p))
            owner._parameters[leaf] = _SumGrad.apply(p, group)
        stack.append(saved)
        return tuple(_SumGrad.apply(a, group) if k in inputs and isinstance(a, torch.Tensor) else a
                     for k, a in enumerate(args))

    def post(mod, args, out):
        for owner, leaf, p in stack.pop():
            owner._parameters[leaf] = p

    module.register_forward_pre_hook(pre)
    module.register_forward_hook(post, always_call=True)


def _owner(module: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, leaf = name.rpartition(".")
    owner = module.get_submodule(path) if path else module
    if leaf not in owner._parameters or owner._parameters[leaf] is None:
        raise ValueError(f"{type(module).__name__}.head_shard_spec names {name!r}, which is not a parameter")
    return owner, leaf


def shard_heads(module: nn.Module, spec: HeadShardSpec, tp_mesh: DeviceMesh, token_tail: bool = False) -> None:
    """Split ``module`` over the ranks of ``tp_mesh`` by heads as ``spec`` describes (see :class:`HeadShardSpec`).

    The head-split parameters become ``Shard(dim)`` DTensors (checkpoints keep their full shapes); during
    ``module``'s forward they are swapped for their local slices, and the module's floating-point positional
    inputs pass through :class:`_SumGrad`, so that input gradients from the ranks' heads add up. With
    ``token_tail`` (sequence parallelism) the part after a head gather that declares ``tail_end`` runs on each
    rank's tokens (:func:`_token_tail`) instead of whole on every rank.
    """
    P = tp_mesh.size()
    group = tp_mesh.get_group()
    for a in spec.head_attrs:
        v = getattr(module, a)
        if v % P:
            raise ValueError(f"{type(module).__name__}.{a}={v} is not divisible by the tensor-parallel size {P}")
    groups = {a: spec.local_count(getattr(module, a), P) for a in spec.group_attrs}
    sharded = []
    for name, dim in spec.head_params.items():
        owner, leaf = _owner(module, name)
        p = owner._parameters[leaf]
        if p.shape[dim] % P:
            raise ValueError(f"{type(module).__name__}.{name} {tuple(p.shape)}: dim {dim} not divisible by {P}")
        new = nn.Parameter(distribute_tensor(p.data, tp_mesh, [Shard(dim)]), requires_grad=p.requires_grad)
        new.__dict__.update(p.__dict__)  # markers such as _no_weight_decay
        owner._parameters[leaf] = new
        sharded.append((owner, leaf))
    local = [_owner(module, name) for name in spec.head_local]
    rank = tp_mesh.get_local_rank()
    segments = [(*_owner(module, name), dim, torch.tensor(spec.local_rows(name, rank, P)))
                for name, (dim, _) in spec.segments.items()]
    for a in spec.head_attrs:
        setattr(module, a, getattr(module, a) // P)
    for a, v in groups.items():
        setattr(module, a, v)
    for name in spec.rowwise:
        parallelize_module(module.get_submodule(name), tp_mesh, RowwiseParallel())
    if token_tail and spec.tail_end is not None and spec.gather_inputs:
        _token_tail(module, spec, group)
    else:
        for name in spec.gather_inputs:
            module.get_submodule(name).register_forward_pre_hook(_gather_heads(tp_mesh))
    stack: list[list] = []

    def pre(mod, args, kwargs):
        saved = []
        for owner, leaf in sharded:
            p = owner._parameters[leaf]
            saved.append((owner, leaf, p))
            owner._parameters[leaf] = p.to_local()
        for owner, leaf in local:
            p = owner._parameters[leaf]
            saved.append((owner, leaf, p))
            owner._parameters[leaf] = _SumGrad.apply(p, group)
        for owner, leaf, dim, rows in segments:  # this rank's rows of a fused parameter (a copy; grads summed)
            p = owner._parameters[leaf]
            saved.append((owner, leaf, p))
            owner._parameters[leaf] = _SumGrad.apply(p, group).index_select(dim, rows.to(p.device))
        stack.append(saved)
        args = tuple(_SumGrad.apply(a, group) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                     for a in args)
        return args, kwargs

    def post(mod, args, out):
        for owner, leaf, p in stack.pop():
            owner._parameters[leaf] = p

    module.register_forward_pre_hook(pre, with_kwargs=True)
    module.register_forward_hook(post, always_call=True)
    module._seqmix_head_sharded = P


class _HeadsToTokens(torch.autograd.Function):
    """``[B, n, ..., F / P]`` this rank's heads (features, head-major) of every token -> ``[B, ceil(n / P), ..., F]``
    every head of this rank's tokens (zero-padded at the end): one all-to-all over the ranks (each sends its heads
    of rank r's tokens to rank r). Backward: the reverse all-to-all."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        size = dist.get_world_size(group)
        n = x.shape[1]
        c = -(-n // size)
        ctx.n, ctx.group = n, group
        send = [t.contiguous() for t in _pad_tokens(x, c * size).split(c, dim=1)]  # rank r's tokens, my heads
        recv = [torch.empty_like(send[0]) for _ in range(size)]  # my tokens, rank r's heads
        dist.all_to_all(recv, send, group=group)
        return torch.cat(recv, dim=-1)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        size = dist.get_world_size(ctx.group)
        send = [t.contiguous() for t in g.chunk(size, dim=-1)]  # my tokens, rank r's heads
        recv = [torch.empty_like(send[0]) for _ in range(size)]  # rank r's tokens, my heads
        dist.all_to_all(recv, send, group=ctx.group)
        return torch.cat(recv, dim=1)[:, :ctx.n].contiguous(), None


def _token_tail(module: nn.Module, spec: HeadShardSpec, group) -> None:
    """Run ``module``'s part from ``spec.gather_inputs`` to ``spec.tail_end`` (TTT's post-norm and ``wo``, Mamba2's
    gated norm and ``out_proj``) on this rank's token shard: its head-split inputs go through :class:`_HeadsToTokens`
    (every head of this rank's tokens), ``tail_end``'s output is all-gathered back to the whole sequence
    (:class:`_GatherTokens`), and the tail's replicated parameters, which see only this rank's tokens, get their
    gradients summed over the ranks. What the tail saves for backward, and its compute, divide by P; the gather of
    the heads becomes an all-to-all (1 / P of its traffic) and the layer's output is all-gathered."""
    length: list[int] = [0]

    def to_tokens(mod, args):
        floats = [a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()]
        length[0] = floats[0].shape[1]
        return tuple(_HeadsToTokens.apply(a, group) if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                     for a in args)

    def to_whole(mod, args, out):
        return _GatherTokens.apply(out, length[0], group)

    for name in spec.gather_inputs:
        module.get_submodule(name).register_forward_pre_hook(to_tokens)
    for name in (*spec.gather_inputs, spec.tail_end):
        _sum_grads(module.get_submodule(name), (), group)
    module.get_submodule(spec.tail_end).register_forward_hook(to_whole)


def _gather_heads(tp_mesh: DeviceMesh):
    """Forward pre-hook: every floating-point positional input, split head-major (last dim) over ``tp_mesh``, is
    gathered whole; in backward each rank keeps its slice of the (replicated) gradient."""

    def pre(mod, args):
        return tuple(DTensor.from_local(a, tp_mesh, [Shard(a.dim() - 1)], run_check=False).full_tensor()
                     if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)

    return pre


def _mlp_plan(mlp: nn.Module) -> dict[str, object]:
    # FeedForward (net.0.proj, net.2) or a plain Sequential(Linear, GELU, Linear)
    if hasattr(mlp, "net"):
        return {"net.0.proj": ColwiseParallel(), "net.2": RowwiseParallel()}
    return {"0": ColwiseParallel(), "2": RowwiseParallel()}


def _split_mesh(mesh: DeviceMesh) -> tuple[DeviceMesh | None, DeviceMesh | None]:
    names = mesh.mesh_dim_names or ()
    if mesh.ndim == 2 and set(names) == {DP, TP}:
        return mesh[DP], mesh[TP]
    if mesh.ndim == 1:
        return mesh, None
    raise ValueError(f"expected a 1-D data-parallel mesh or a 2-D mesh named {(DP, TP)}, got dims {names}")


#: FSDP2 precisions (:func:`parallelize` ``fsdp_precision``): the dtype parameters are gathered and computed in
#: (None: their own) and the dtype gradients are reduced in; master weights and optimizer state keep the
#: parameters' dtype.
FSDP_PRECISIONS = {"full": (None, None), "bf16": (torch.bfloat16, torch.float32)}


def parallelize(model: nn.Module, mesh: DeviceMesh, *, fsdp: bool | None = None,
                activation_checkpointing: bool | None = None, reshard_after_forward: bool = True,
                fsdp_precision: str = "full", sequence_parallel: bool = False) -> ParallelReport:
    """Apply the plan to ``model`` (a SegmentedDiT or WorldModel) in place, on every rank with the same seed.

    Args:
        mesh: a 2-D ``(data_parallel, tensor_parallel)`` mesh (Lightning's ModelParallelStrategy mesh,
            :func:`make_mesh`) or a 1-D data-parallel mesh.
        fsdp: shard with FSDP2 over the data-parallel dimension; default: when it has more than one rank.
        activation_checkpointing: recompute every block in backward; default: the model config's
            ``gradient_checkpointing``.
        reshard_after_forward: FSDP2's option (free the gathered block weights after its forward).
        fsdp_precision: ``"full"`` (gather and compute in the parameters' dtype) or ``"bf16"`` (FSDP2's
            ``MixedPrecisionPolicy``: bf16 parameter gather and compute, fp32 gradient reduction; fp32 master
            weights and optimizer state stay sharded): half the gather traffic and gathered-weight memory.
        sequence_parallel: shard the residual stream over the tensor-parallel ranks between blocks (the backbone's
            ``token_streams``; nothing to do without tensor parallelism): what activation checkpointing keeps per
            block divides by the tensor-parallel size, for one all-gather per block and direction.

    Returns:
        A :class:`ParallelReport`.
    """
    if getattr(model, "_seqmix_parallel", None) is not None:
        return model._seqmix_parallel  # configure_model may run more than once (fit, then test)
    if fsdp_precision not in FSDP_PRECISIONS:
        raise ValueError(f"fsdp_precision must be one of {list(FSDP_PRECISIONS)}, got {fsdp_precision!r}")
    dp_mesh, tp_mesh = _split_mesh(mesh)
    dp = dp_mesh.size() if dp_mesh is not None else 1
    tp = tp_mesh.size() if tp_mesh is not None else 1
    blocks = blocks_of(model)
    streams = getattr(type(model), "token_streams", None)
    if sequence_parallel and not streams:
        raise ValueError(f"sequence_parallel shards a backbone's residual stream between its blocks; "
                         f"{type(model).__name__} declares no token_streams (SegmentedDiT and WorldModel do)")
    sequence_parallel = sequence_parallel and tp > 1  # one tensor-parallel rank: the stream is already whole
    sharded, whole = [], []
    if tp > 1:
        for path, module, spec in shardable(model):
            if spec is None:
                whole.append(path)
            else:
                shard_heads(module, spec, tp_mesh, token_tail=sequence_parallel)
                sharded.append(path)
        for block in blocks:
            mlp = block.ff if hasattr(block, "ff") else block.mlp
            parallelize_module(mlp, tp_mesh, _mlp_plan(mlp))
        if sequence_parallel:
            _sequence_parallel_blocks(blocks, streams, tp_mesh.get_group())
        if whole:
            logger.info("tensor parallel x%d: %d module(s) without a head split run whole on every rank: %s", tp,
                        len(whole), ", ".join(sorted({type(model.get_submodule(p)).__name__ for p in whole})))
    if activation_checkpointing is not None:
        if not hasattr(model, "gradient_checkpointing"):
            raise ValueError(f"{type(model).__name__} has no per-block activation checkpointing "
                             "(gradient_checkpointing); pass activation_checkpointing=None")
        model.gradient_checkpointing = bool(activation_checkpointing)
    use_fsdp = dp > 1 if fsdp is None else fsdp
    units = 0
    if use_fsdp:
        param_dtype, reduce_dtype = FSDP_PRECISIONS[fsdp_precision]
        kw = dict(mesh=dp_mesh, reshard_after_forward=reshard_after_forward)
        # Only the root casts its floating-point inputs to param_dtype; the blocks get activations already in it.
        # A block's other inputs (the DiT's plan: fp64 RoPE angles) must keep their precision: cast to bf16, an angle
        # of 100 rad would be off by 0.4.
        for block in blocks:
            fully_shard(block, **kw, mp_policy=MixedPrecisionPolicy(param_dtype, reduce_dtype,
                                                                    cast_forward_inputs=False))
        fully_shard(model, **kw, mp_policy=MixedPrecisionPolicy(param_dtype, reduce_dtype))
        units = len(blocks) + 1
    elif fsdp_precision != "full":
        raise ValueError(f"fsdp_precision={fsdp_precision!r} needs FSDP2 (a data-parallel mesh of more than one rank "
                         "or fsdp=True)")
    report = ParallelReport(dp, tp, sharded, whole, units, bool(getattr(model, "gradient_checkpointing", False)),
                            fsdp_precision if use_fsdp else "full", sequence_parallel)
    model._seqmix_parallel = report
    logger.info("parallel plan: %s", report)
    return report


@torch.no_grad()
def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for a model whose gradients mix DTensors of several meshes / placements
    (FSDP2 x TP) and plain tensors (replicated): the norm of each group is taken where it lives, then combined.
    Returns the total norm (a plain scalar tensor, equal on every rank)."""
    from torch.nn.utils import get_total_norm

    groups = split_by_layout([p.grad for p in parameters if p.grad is not None])
    if not groups:
        return torch.tensor(0.0)
    norms = []
    for grads in groups:
        n = get_total_norm(grads, norm_type, foreach=False)
        norms.append(n.full_tensor() if isinstance(n, DTensor) else n)
    total = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]), norm_type)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for grads in groups:
        for g in grads:
            g.mul_(coef.item())
    return total


def split_by_layout(tensors: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """``tensors`` split by distributed layout (plain tensors; DTensors per mesh and placements), in first-seen
    order.

    Under model parallelism a model's parameters are DTensors of two meshes (FSDP2 x TP, FSDP2 only) and plain
    tensors (replicated). Multi-tensor kernels (AdamW's foreach path, norms) cannot mix them, so each layout gets its
    own list: tasks give each its own optimizer parameter group (same hyperparameters) and the fast path stays on."""
    parts: dict[object, list[torch.Tensor]] = {}
    for t in tensors:
        key = (id(t.device_mesh), tuple(t.placements)) if isinstance(t, DTensor) else None
        parts.setdefault(key, []).append(t)
    return list(parts.values())
