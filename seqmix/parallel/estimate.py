"""Per-GPU memory and step-time estimate of a training layout (``seqmix plan``): the paper's five stages of the
7.2B DiT (or the world-model backbone) under ddp / fsdp / tp / fsdp+tp, before renting a single GPU.

Counts come from the model itself, instantiated on the meta device (no memory): parameters (which ones tensor
parallel splits, from the same :func:`~seqmix.parallel.checks.shardable` walk the plan uses; which ones train at
each stage, from the task's parameter groups) and FLOPs (the analytic costs, :func:`seqmix.bench.costs.dit_cost`,
each mixer's ``cost``). Memory, per GPU, in the layout :func:`seqmix.parallel.plan.parallelize` builds:

* parameters: fp32, split by TP where the plan splits them, then sharded over the data-parallel ranks (fsdp*),
  plus FSDP2's gathered copies in the gather dtype (fp32, or bf16 with ``fsdp_precision="bf16"``): the root's
  parameters (gathered for its forward and kept through backward) and two blocks (one and the prefetched next);
  ddp keeps a full copy;
* gradients: fp32 of the trainable parameters, split / sharded as the parameters, plus FSDP2's unsharded ones of
  the block in backward, in the gather dtype, and their fp32 reduce-scatter input (the root's are reduced at the end
  of backward, when the activations are gone);
* optimizer: AdamW's two fp32 moments of the trainable parameters, split / sharded as the parameters; the total is
  the larger of the training step's peak (all of the above plus activations) and the optimizer step's (the sharded
  parameters, gradients and moments plus AdamW's multi-tensor temporaries, one fp32 copy of its largest group);
* activations (per example): with activation checkpointing, every block's inputs plus what autograd saves in one
  block's forward, recomputed in backward; without checkpointing what every block saves. DiT: those bytes are
  MEASURED from the code, not counted by hand, for ONE tensor-parallel rank of the layout the code builds: a
  1-block model (2 with sequence parallelism, whose second block, fed token shards, is measured) is built under
  ``FakeTensorMode`` (shapes only, no memory) and, for P > 1, split by the real :func:`~seqmix.parallel.plan.
  parallelize` on torch's fake process group of P ranks (collectives return without communicating), then runs
  forward under bf16 autocast at one 3 s segment with a hook on autograd's saved tensors (each storage once,
  parameters excluded). So a rank's share is what the code keeps on it: its heads' mixer and MLP activations, the
  whole-sequence inputs every rank holds in front of a head-split region, the token shards of the residual stream
  with sequence parallelism. A longer layout scales it by its tokens (every part is linear in the segments).
  ``tests/test_scale_out.py`` checks the result against real steps' peaks on CPU, one process and two
  tensor-parallel processes. World model: an analytic count, ``T D (R + S / P)`` with R = 4 + 4 per token-mixing
  pass and S = 8 (MLP hidden) + 12 per split pass, bf16, doubled for the working set's gradients.

Step time: analytic FLOPs (forward + backward = 3 forwards, + 1 forward recomputed under checkpointing) of
``batch / data-parallel`` examples per rank, split by P, at ``mfu`` of the peak bf16 rate, plus collectives at the
given link speeds (FSDP: all-gather fp32 parameters twice, reduce-scatter fp32 gradients; TP: two all-reduces of
``T D`` per token-mixing pass and MLP, forward and backward). These are ESTIMATES
(:func:`seqmix.parallel.measure.measure_rank` runs one rank of a layout for real, ``seqmix plan --measure``; the GPU
kit checks the memory figure against one rank of the paper layout); they are meant for choosing a layout, not for
reporting speed.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from .checks import blocks_of, check_layout, check_model, meta_model, shardable
from .measure import PAPER_STAGES, RankMeasurement, fake_ranks, worldmodel_stack

__all__ = ["PAPER_STAGES", "PLAN_SCHEMA", "Plan", "PlanRow", "estimate", "markdown", "parse_bytes"]

_GB = 1e9


def parse_bytes(s: str | int | float) -> float:
    """``"80GB"`` / ``"80GiB"`` / ``"141 GB"`` / a number of bytes -> bytes."""
    if isinstance(s, (int, float)):
        return float(s)
    t = s.strip().upper().replace(" ", "")
    for suffix, mult in (("GIB", 2**30), ("GB", 1e9), ("MIB", 2**20), ("MB", 1e6), ("TB", 1e12)):
        if t.endswith(suffix):
            return float(t[: -len(suffix)]) * mult
    try:
        return float(t)
    except ValueError:
        raise ValueError(f"cannot read a memory size from {s!r}; write e.g. 80GB or 141GiB") from None


@dataclass
class PlanRow:
    """One stage (duration) of the estimate; memory in bytes per GPU, times in seconds; ``measured``: one rank of
    the layout run for real (``seqmix plan --measure``), if it was."""

    seconds: int
    tokens: int
    trainable: str
    params: float
    grads: float
    optimizer: float
    activations: float
    total: float
    fits: bool
    step_s: float
    compute_s: float
    comm_s: float
    steps: int | None = None
    stage_h: float | None = None
    measured: RankMeasurement | None = None


#: The ``schema`` name of :meth:`Plan.to_json` documents.
PLAN_SCHEMA = "seqmix.plan/1"


@dataclass
class Plan:
    model: str
    strategy: str
    gpus: int
    data_parallel: int
    tensor_parallel: int
    gpu_memory: float
    batch: int
    num_params: int
    tp_split_params: int
    rows: list[PlanRow] = field(default_factory=list)
    fsdp_precision: str = "full"
    sequence_parallel: bool = False
    mixer_config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> dict:
        """The estimate for machines: the layout, and per stage memory in GB (1e9 bytes) per GPU, whether it fits,
        and times: ``{"model": ..., "stages": [{"stage": "63 s", "total_gb": ..., "fits": true, ...}]}``."""
        gb = lambda b: round(b / _GB, 3)  # noqa: E731
        head = {k: v for k, v in self.to_dict().items() if k != "rows"}
        head["gpu_memory_gb"] = gb(head.pop("gpu_memory"))
        stages = []
        for r in self.rows:
            st = {"stage": f"{r.seconds} s", "seconds": r.seconds, "tokens": r.tokens, "trainable": r.trainable,
                  "params_gb": gb(r.params), "grads_gb": gb(r.grads), "optimizer_gb": gb(r.optimizer),
                  "activations_gb": gb(r.activations), "total_gb": gb(r.total), "fits": r.fits,
                  "step_s": r.step_s, "compute_s": r.compute_s, "comm_s": r.comm_s, "steps": r.steps,
                  "stage_h": r.stage_h}
            if r.measured is not None:  # one rank run for real: its peak, over the estimate, and its step
                m = r.measured
                st.update(measured_gb=gb(m.peak), measured_over_estimate=round(m.peak / r.total, 4),
                          measured_step_s=m.step_s, measured_device=m.device)
            stages.append(st)
        return {"schema": PLAN_SCHEMA, **head, "stages": stages}


def _split_params(model: nn.Module) -> set[int]:
    """ids of the parameters the TP plan splits: the head-split parameters and row-parallel weights of every
    declared spec, and the MLPs' weights (+ the first bias)."""
    out: set[int] = set()
    for _, m, spec in shardable(model):
        if spec is None:
            continue
        out |= {id(m.get_parameter(name)) for name in spec.head_params}
        out |= {id(m.get_submodule(name).weight) for name in spec.rowwise}
    for block in blocks_of(model):
        mlp = block.ff if hasattr(block, "ff") else block.mlp
        lins = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
        out |= {id(m.weight) for m in lins}
        if lins[0].bias is not None:
            out.add(id(lins[0].bias))
    return out


def _passes(model: nn.Module) -> tuple[int, int]:
    """Token-mixing passes per block: (all, split by TP) - the DiT's window attention + two global passes."""
    total = split = 0
    for path, _, spec in shardable(model):
        k = 2 if ".global_layer." in f".{path}." else 1  # the bidirectional wrapper runs its mixer twice
        total += k
        split += k if spec is not None else 0
    nb = len(blocks_of(model))
    return total // nb, split // nb


@functools.lru_cache(maxsize=4)  # read-only use; building the 7.2B model on meta still takes seconds
def _dit(mixer: str, mixer_config: tuple, overrides: tuple = ()):
    from seqmix.backbones.dit import DiTConfig, SegmentedDiT

    return meta_model(lambda: SegmentedDiT(DiTConfig(mixer=mixer, mixer_config=dict(mixer_config),
                                                     gradient_checkpointing=True, **dict(overrides))))


@dataclass(frozen=True)
class BlockActivations:
    """Bytes one example keeps for one block on one tensor-parallel rank in training (bf16 autocast): ``inputs``
    (what a checkpointed block keeps: its input activations, token shards under sequence parallelism),
    ``replicated`` and ``split`` (what autograd saves in the block's forward outside / inside the head-split
    mixers and the MLP; ``split`` includes the whole-sequence inputs those regions keep on every rank)."""

    inputs: float
    replicated: float
    split: float

    def scaled(self, factor: float) -> "BlockActivations":
        return BlockActivations(self.inputs * factor, self.replicated * factor, self.split * factor)

    @property
    def saved(self) -> float:
        """What one forward of the block saves for backward (the recomputed working set under checkpointing)."""
        return self.replicated + self.split


def measure_block_activations(build, layout, block: int = 0) -> BlockActivations:
    """What autograd saves in block ``block`` of ``build()`` (a segmented DiT, split over tensor-parallel ranks or
    not) for one example of ``layout``, on this rank.

    The model is built and run under ``FakeTensorMode`` (no memory, no compute: every op runs its shape function),
    forward under bf16 autocast as training runs, with activation checkpointing off so the block's saved tensors are
    visible; a ``saved_tensors_hooks`` pack hook records each saved storage once (parameters excluded), tagged by
    whether it was saved inside a head-split mixer (``head_shard_spec``) or the MLP. Returns
    :class:`BlockActivations` in bytes.
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    with mode:
        model = build().train()
    model.gradient_checkpointing = False
    # The layout's index tensors have data-dependent shapes: computed for real, outside the fake mode (and cached
    # on the model), then read as constants by the fake forward.
    model._plan(layout, torch.device("cpu"))
    params = {(p.to_local() if isinstance(p, DTensor) else p).untyped_storage()._cdata for p in model.parameters()}
    the_block = blocks_of(model)[block]
    split_mods = [m for _, m, spec in shardable(model) if spec is not None and _inside(m, the_block)]
    split_mods.append(the_block.ff if hasattr(the_block, "ff") else the_block.mlp)
    depth, inside, saved, inputs = [0], [False], {}, [0.0]

    def enter(_m, args):
        depth[0] += 1

    def leave(_m, _args, _out):
        depth[0] -= 1

    def block_in(_m, args):
        inside[0] = True
        inputs[0] = float(sum(a.numel() * a.element_size() for a in args if isinstance(a, torch.Tensor)))

    def block_out(_m, _args, _out):
        inside[0] = False

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = (t.to_local() if isinstance(t, DTensor) else t).untyped_storage()
        if inside[0] and st._cdata not in params and st._cdata not in saved:
            saved[st._cdata] = (st.nbytes(), depth[0] > 0)
        return t

    handles = [m.register_forward_pre_hook(enter) for m in split_mods]
    handles += [m.register_forward_hook(leave) for m in split_mods]
    handles += [the_block.register_forward_pre_hook(block_in), the_block.register_forward_hook(block_out)]
    try:
        with mode, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), \
                torch.autocast("cpu", dtype=torch.bfloat16):
            c = model.config
            latents = torch.randn(1, layout.num_frames, c.in_channels, layout.latent_height, layout.latent_width)
            text = torch.randn(1, layout.text_tokens, c.text_embed_dim)
            model(latents, torch.tensor([500.0]), text, layout)
    finally:
        for h in handles:
            h.remove()
    split = sum(n for n, s in saved.values() if s)
    return BlockActivations(inputs[0], sum(n for n, _ in saved.values()) - split, split)


def _inside(m: nn.Module, block: nn.Module) -> bool:
    return any(m is x for x in block.modules())


@functools.lru_cache(maxsize=16)
def _dit_block_activations(mixer: str, mixer_config: tuple, overrides: tuple, layout_kw: tuple,
                           tensor_parallel: int = 1, sequence_parallel: bool = False) -> BlockActivations:
    """:func:`measure_block_activations` of one rank of ``tensor_parallel`` running a copy of the DiT at one 3 s
    segment, per token (cached). One block; with sequence parallelism two, the second measured (the first block
    takes the whole stream; every later one its token shards), the first without its global layer (it only makes
    the second one's input, and the global scan is most of the measurement's time)."""
    from seqmix.backbones.dit import DiTConfig, SegmentedDiT
    from seqmix.backbones.layout import VideoLayout

    from .plan import parallelize

    cfg = DiTConfig(mixer=mixer, mixer_config=dict(mixer_config),
                    **{**dict(overrides), "num_layers": 2 if sequence_parallel else 1})
    one = VideoLayout.paper(3, **dict(layout_kw))
    with fake_ranks(1, tensor_parallel) as mesh:
        def build():
            model = SegmentedDiT(cfg)
            if mesh is not None:
                parallelize(model, mesh, sequence_parallel=sequence_parallel)
            if sequence_parallel:
                blocks_of(model)[0].global_layer = None
            return model

        b = measure_block_activations(build, one, block=1 if sequence_parallel else 0)
    return b.scaled(1 / one.total_tokens)


@functools.lru_cache(maxsize=4)
def _worldmodel(mixers: str):
    from seqmix.backbones.wm_config import WorldModelConfig
    from seqmix.backbones.worldmodel import WorldModel

    return meta_model(lambda: WorldModel(WorldModelConfig.preset("paper", mixers=mixers)))


def estimate(model: str = "dit", *, gpus: int, strategy: str = "fsdp+tp", tp: int | None = None,
             gpu_memory: float | str = "80GB", durations: list[int] | None = None, batch: int = 64,
             mixer: str = "ttt_mlp", mixer_config: dict | None = None, activation_checkpointing: bool = True,
             tflops: float = 790.0, mfu: float = 0.4, nvlink_gbs: float = 450.0, network_gbs: float = 50.0,
             latent_fps: int = 4, dit_overrides: dict | None = None, fsdp_precision: str = "full",
             layout_overrides: dict | None = None, sequence_parallel: bool = False) -> Plan:
    """Estimate per-GPU memory and step time for each duration (default: the paper's five stages).

    Args:
        model: ``dit`` (CogVideoX-5B + ``mixer``, 7.2B with TTT-MLP) or ``worldmodel`` (its ``paper`` preset with
            the ``mixer`` stack name, default ``blockwise_ssm``, the paper's model).
        gpus, strategy, tp: the layout (checked as :func:`seqmix.parallel.checks.check_layout`, and the model's
            head counts against ``tp``).
        gpu_memory: memory per GPU (``"80GB"``).
        durations: seconds of video per example (DiT: paper layouts, 3/9/18/30/63; world model: ``latent_fps``
            latent frames per second of 64 tokens each).
        batch: global batch (examples per optimizer step; paper: 64) - split over the data-parallel ranks.
        tflops, mfu: peak bf16 rate per GPU (TFLOP/s; 790 is the measured dense bf16 rate of this project's H100 /
            H200) and the assumed fraction reached.
        nvlink_gbs, network_gbs: per-GPU bandwidth of the TP links (inside a node) and of the FSDP links (GB/s).
        dit_overrides: other DiTConfig fields (e.g. ``num_layers`` for a shallow model measured on one GPU).
        fsdp_precision: ``"full"`` (FSDP2 gathers fp32 parameters) or ``"bf16"`` (gathers them in bf16, as
            :func:`seqmix.parallel.plan.parallelize` does with that option): the gathered block buffers halve.
        layout_overrides: other :class:`~seqmix.backbones.layout.VideoLayout` fields of every stage (e.g. a smaller
            ``latent_height`` / ``latent_width`` for a step measured on CPU).
        sequence_parallel: the residual stream sharded over the tensor-parallel ranks by tokens
            (:func:`~seqmix.parallel.plan.parallelize`'s option; in the DiT inside the blocks too): the checkpointed
            block inputs divide by P, for three all-gathers of the stream per block (forward, recompute, backward)
            and per tensor-parallel region in the DiT (two).
    """
    from seqmix.backbones.layout import VideoLayout
    from seqmix.bench.costs import dit_cost, layer_cost

    layout = check_layout(strategy, gpus, tp)
    P, dp = layout.tensor_parallel, layout.data_parallel
    if fsdp_precision not in ("full", "bf16"):
        raise ValueError(f"fsdp_precision must be 'full' or 'bf16', got {fsdp_precision!r}")
    gather_bytes = 2 if fsdp_precision == "bf16" else 4  # per gathered parameter
    mem = parse_bytes(gpu_memory)
    if model == "dit":
        m = _dit(mixer, tuple(sorted((mixer_config or {}).items())), tuple(sorted((dit_overrides or {}).items())))
    elif model == "worldmodel":
        m = _worldmodel(worldmodel_stack(mixer))
    else:
        raise ValueError(f"unknown model {model!r}; valid: dit, worldmodel")
    check_model(m, P)
    if batch % dp:
        raise ValueError(f"global batch {batch} is not divisible by the {dp} data-parallel ranks")
    n_all = sum(p.numel() for p in m.parameters())
    split = _split_params(m) if P > 1 else set()
    n_split = sum(p.numel() for p in m.parameters() if id(p) in split)
    blocks = blocks_of(m)
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    first_block = {id(p) for p in blocks[0].parameters()}
    root = [(n, p) for n, p in m.named_parameters() if id(p) not in in_blocks]  # FSDP2's root unit
    block = [(n, p) for n, p in m.named_parameters() if id(p) in first_block]
    passes, split_passes = _passes(m)
    fsdp = strategy in ("fsdp", "fsdp+tp") and dp > 1  # parallelize shards with FSDP2 when there are data ranks
    shard = dp if fsdp else 1

    def per_gpu(numel_all: int, numel_split: int) -> float:
        return (numel_all - numel_split + numel_split / P) / shard

    def on_rank(named, names=None) -> float:  # numel on one tensor-parallel rank, unsharded (of ``names`` only)
        return sum(p.numel() / P if id(p) in split else p.numel() for n, p in named if names is None or n in names)

    sequence_parallel = sequence_parallel and P > 1
    plan = Plan(model, strategy, gpus, dp, P, mem, batch, n_all, n_split, fsdp_precision=fsdp_precision,
                sequence_parallel=sequence_parallel, mixer_config=dict(mixer_config or {}))
    stages = {s: (steps, tr) for s, steps, tr in PAPER_STAGES}
    for sec in durations or [s for s, _, _ in PAPER_STAGES]:
        if model == "dit":
            lay = VideoLayout.paper(sec, **(layout_overrides or {})) if sec in VideoLayout.PAPER_DURATIONS else None
            if lay is None:
                raise ValueError(f"no paper layout for {sec} s; valid: {sorted(VideoLayout.PAPER_DURATIONS)}")
            T, D = lay.total_tokens, m.config.inner_dim
            steps, trainable = stages[sec]
            groups = m.param_groups()
            train_names = {n for g in m.TRAINABLE[trainable] for n in groups[g]}
            flops = dit_cost(m, lay, "fwd").flops
        else:
            frames = sec * latent_fps
            T, D = frames * m.config.tokens_per_frame, m.config.dim
            steps, trainable, train_names = None, "all", {n for n, _ in m.named_parameters()}
            flops = sum(layer_cost(mx, T, 0, 1).flops for b in blocks for mx in b.mixers)
            flops += sum(2.0 * p.numel() * T for b in blocks for n, p in b.named_parameters()
                         if "mixers" not in n and p.dim() == 2)
        tr_all = sum(p.numel() for n, p in m.named_parameters() if n in train_names)
        tr_split = sum(p.numel() for n, p in m.named_parameters() if n in train_names and id(p) in split)
        params = 4 * per_gpu(n_all, n_split)
        grads = 4 * per_gpu(tr_all, tr_split)
        optim = 8 * per_gpu(tr_all, tr_split)
        # the optimizer step can be the peak where activations are small: the sharded state plus AdamW's multi-tensor
        # temporaries (one fp32 tensor per parameter of a group; its groups are the layouts: split by TP or not)
        at_step = params + grads + optim + 4 * max(tr_split / P, tr_all - tr_split) / shard
        if fsdp:  # FSDP2's unsharded buffers, in the gather dtype: the root's parameters (gathered for its forward
            # and kept through backward), a block's and the prefetched next one's; in backward a block's unsharded
            # gradients with their fp32 reduce-scatter input (measured on one rank: seqmix.parallel.measure)
            params += gather_bytes * (on_rank(root) + 2 * on_rank(block))
            block_tr = on_rank(block, train_names)
            grads += gather_bytes * block_tr + 4 * block_tr
        nb = len(blocks)
        if model == "dit":  # measured from the code on one rank of this layout, scaled to this layout's tokens
            b = _dit_block_activations(mixer, tuple(sorted((mixer_config or {}).items())),
                                       tuple(sorted((dit_overrides or {}).items())),
                                       tuple(sorted((layout_overrides or {}).items())), P,
                                       sequence_parallel).scaled(T)
            kept, work = b.inputs, b.saved
            every_block = nb * work
        else:
            R, S = 4 + 4 * passes, 8 + 12 * split_passes
            work = T * D * 2 * (R + (S + 12 * (passes - split_passes)) / P) * 2
            kept, every_block = T * D * 2 / (P if sequence_parallel else 1), nb * work / 2  # a layer's bf16 input
        acts = (nb * kept + work) if activation_checkpointing else every_block
        total = max(params + grads + optim + acts, at_step)
        # time: forward + backward (3x) + recompute (1x) per example; examples per rank = batch / dp
        per_example = flops * (4.0 if activation_checkpointing else 3.0) / P
        compute = per_example * (batch // dp) / (tflops * 1e12 * mfu)
        comm = 0.0
        if fsdp and dp > 1:
            comm += (2 * 4 * n_all / P + 4 * tr_all / P) * (dp - 1) / dp / (network_gbs * _GB)
        if P > 1:
            ar = 2 * (P - 1) / P * T * D * 2 / (nvlink_gbs * _GB)  # one ring all-reduce of T D bf16
            comm += ar * 2 * (passes + 1) * nb * (batch // dp) * (3 if activation_checkpointing else 2) / 2
            if sequence_parallel:  # all-gathers of the stream (half a ring all-reduce each) per block: forward,
                # recompute and backward, in front of each of the DiT's two tensor-parallel regions
                comm += ar / 2 * 3 * (2 if model == "dit" else 1) * nb * (batch // dp)
        step = compute + comm
        plan.rows.append(PlanRow(sec, T, trainable, params, grads, optim, acts, total, total <= mem, step, compute,
                                 comm, steps, None if steps is None else steps * step / 3600))
    return plan


def markdown(plan: Plan) -> str:
    """The estimate as a Markdown table (GB = 1e9 bytes)."""
    g = lambda b: f"{b / _GB:.1f}"  # noqa: E731
    t = lambda x: f"{x:.1f}" if x >= 1 else f"{x:.2g}"  # noqa: E731
    head = (f"{plan.model}: {plan.num_params / 1e9:.2f}B parameters ({plan.tp_split_params / 1e9:.2f}B split by TP); "
            f"{plan.strategy} on {plan.gpus} GPUs = {plan.data_parallel} data-parallel x {plan.tensor_parallel} "
            f"tensor-parallel; {plan.gpu_memory / _GB:.0f} GB per GPU; global batch {plan.batch}; FSDP2 gather "
            f"{'bf16' if plan.fsdp_precision == 'bf16' else 'fp32'}; sequence parallel "
            f"{'on' if plan.sequence_parallel else 'off'}"
            + (f"; global layer {plan.mixer_config}" if plan.mixer_config else "") + "\n\n")
    measured = any(r.measured is not None for r in plan.rows)
    lines = ["| stage | tokens | trains | params GB | grads GB | AdamW GB | activations GB | total GB | fits | "
             "step s (compute + comm) | stage h |" + (" measured GB (/ estimate) | measured step s |" if measured
                                                      else ""),
             "|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|" + ("---:|---:|" if measured else "")]
    for r in plan.rows:
        stage_h = "" if r.stage_h is None else f"{r.stage_h:.1f}"
        m = r.measured
        lines.append(f"| {r.seconds} s | {r.tokens:,} | {r.trainable} | {g(r.params)} | {g(r.grads)} | "
                     f"{g(r.optimizer)} | {g(r.activations)} | {g(r.total)} | {'yes' if r.fits else 'NO'} | "
                     f"{t(r.step_s)} ({t(r.compute_s)} + {t(r.comm_s)}) | {stage_h} |"
                     + ("" if not measured else " |  |" if m is None else
                        f" {m.peak / _GB:.3g} ({m.peak / r.total:.2f}) on {m.device} | {t(m.step_s)} |"))
    hours = [r.stage_h for r in plan.rows if r.stage_h is not None]
    tail = f"\n\nall stages: {sum(hours):.1f} h" if len(hours) == len(PAPER_STAGES) else ""
    return head + "\n".join(lines) + tail
