"""One rank of a training layout, run for real in this one process.

A layout of hundreds of GPUs has one number that decides whether it trains: the peak memory of one rank. The plan
(:func:`seqmix.parallel.estimate.estimate`) estimates it; :func:`measure_rank` measures it. It builds the model,
splits it with the real :func:`~seqmix.parallel.plan.parallelize` on torch's fake process group of all the
layout's ranks (every collective returns at once without moving data, so no other rank has to exist; the shapes,
buffers and saved tensors are the real ones) and takes training steps on random data on this machine's device: on
one GPU, the memory and the compute time of one rank of a 256-GPU layout. The values a rank computes are garbage
(its collectives never ran); its memory and its work are not.

:class:`LivePeak` measures the peak of live tensors where the device has no allocator statistics (CPU), also for
tensor-parallel modules, whose swapped head-split parameters torch's ``MemTracker`` cannot follow.
"""

from __future__ import annotations

import contextlib
import logging
import time
import weakref
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from .checks import check_layout

logger = logging.getLogger(__name__)

__all__ = ["PAPER_STAGES", "LivePeak", "RankMeasurement", "example_inputs", "fake_ranks", "measure_rank",
           "training_step", "worldmodel_stack"]

#: The paper's stages: (seconds, steps, trainable parameter groups); 3 s trains everything, later stages the
#: global layers and attention Q/K/V/O (recipes/t2v/paper/stages/*.yaml).
PAPER_STAGES = ((3, 5000, "all"), (9, 5000, "attention+global"), (18, 1000, "attention+global"),
                (30, 500, "attention+global"), (63, 250, "attention+global"))


def worldmodel_stack(mixer: str) -> str:
    """The world model's mixer stack the plan sizes for ``mixer`` (the plan's default, ``ttt_mlp``, is the DiT's:
    for the world model it means the paper's model, ``blockwise_ssm``)."""
    return "blockwise_ssm" if mixer == "ttt_mlp" else mixer


class LivePeak:
    """Peak bytes of live tensor storages while :attr:`mode` is active: every op's outputs (a DTensor's local shard)
    count from their allocation until their storage is freed, starting from ``held``, tensors that exist already
    (counted once, also when an op writes them in place). Inputs made before, and not in ``held``, are not counted.

    A storage can also be resized in place, which no dispatch mode sees: FSDP2 frees a gathered block with
    ``untyped_storage().resize_(0)`` and regrows the same storage for the next gather. So the running total is an
    upper bound between re-reads: whenever it would set a new peak, every live storage's size is read again, and an
    op that writes a known storage updates its size. The peak is exact at every allocation.

    Usage: ``tracker = LivePeak(held); with tracker.mode: step()``; then ``tracker.peak`` (bytes);
    :meth:`of_step` for a training step.
    """

    def __init__(self, held: list[torch.Tensor]):
        tracker = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                tracker._add(out)
                return out

        self.mode = Mode()
        self._live: dict[int, tuple[weakref.ref, int]] = {}  # id(storage) -> (storage, bytes last read)
        self.now = 0
        for t in held:
            self._see(_local(t).untyped_storage())
        self.peak = self._reread()

    @classmethod
    def of_step(cls, step, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
        """The peak bytes of one call of ``step()``, counting ``model``'s parameters and ``optimizer``'s state
        (there before the step: call ``step()`` once first so the state exists)."""
        tracker = cls([*model.parameters(), *(v for st in optimizer.state.values() for v in st.values()
                                              if isinstance(v, torch.Tensor))])
        with tracker.mode:
            step()
        return tracker.peak

    def _see(self, st) -> None:
        key = id(st)
        if key in self._live:
            ref, n = self._live[key]
            if st.nbytes() != n:  # regrown (or shrunk) in place since it was last read
                self._live[key] = (ref, st.nbytes())
                self.now += st.nbytes() - n
        elif st.nbytes():
            self._live[key] = (weakref.ref(st), st.nbytes())
            self.now += st.nbytes()
            weakref.finalize(st, self._free, key)

    def _add(self, out) -> None:
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self._see(_local(t).untyped_storage())
        if self.now > self.peak:
            self.peak = max(self.peak, self._reread())

    def _reread(self) -> int:
        """Every live storage's size read again (those resized in place included); returns the exact total."""
        for key, (ref, _) in list(self._live.items()):
            st = ref()
            if st is not None:
                self._live[key] = (ref, st.nbytes())
        self.now = sum(n for _, n in self._live.values())
        return self.now

    def _free(self, key) -> None:
        _, n = self._live.pop(key)
        self.now -= n


def _local(t: torch.Tensor) -> torch.Tensor:
    return t._local_tensor if isinstance(t, DTensor) else t


@contextlib.contextmanager
def fake_ranks(data_parallel: int, tensor_parallel: int, device_type: str = "cpu"):
    """This process as rank 0 of ``data_parallel x tensor_parallel`` ranks on torch's fake process group; yields
    their ``(data_parallel, tensor_parallel)`` mesh (:func:`~seqmix.parallel.plan.make_mesh`), or None for one rank.
    Collectives return at once without communicating (every rank's shapes are rank 0's). Needs a process without a
    default process group."""
    if data_parallel * tensor_parallel == 1:
        yield None
        return
    if dist.is_initialized():
        raise RuntimeError("one rank of a layout runs on a fake process group and needs a process without a default "
                           "process group; run it before torch.distributed.init_process_group")
    from torch.testing._internal.distributed.fake_pg import FakeStore  # importing it registers the "fake" backend

    from .plan import make_mesh

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=data_parallel * tensor_parallel)
    try:
        yield make_mesh(data_parallel, tensor_parallel, device_type)
    finally:
        dist.destroy_process_group()


@dataclass(frozen=True)
class RankMeasurement:
    """One rank of a layout measured by :func:`measure_rank`: ``peak`` (bytes: parameters, gradients, optimizer
    state and activations at the highest point of a training step; not the step's input batch), ``step_s``
    (seconds of that step: one example's forward, backward and optimizer step on this rank, collectives free; on
    CPU with :class:`LivePeak`'s bookkeeping),
    ``device`` (what ran it)."""

    seconds: int
    tokens: int
    peak: float
    step_s: float
    device: str


def example_inputs(model, layout, device: str | torch.device = "cpu") -> tuple:
    """Forward arguments of one random training example: a :class:`~seqmix.backbones.dit.SegmentedDiT` at
    ``layout`` (a :class:`~seqmix.backbones.layout.VideoLayout`): ``(latents, timestep, text, layout)``; a
    :class:`~seqmix.backbones.worldmodel.WorldModel` at ``layout`` frames: ``(latents, noise_levels, actions)``
    (per-frame noise levels, actions as the model is conditioned)."""
    from seqmix.backbones.dit import SegmentedDiT

    dev = torch.device(device)
    c = model.config
    if isinstance(model, SegmentedDiT):
        return (torch.randn(1, layout.num_frames, c.in_channels, layout.latent_height, layout.latent_width,
                            device=dev),
                torch.tensor([500.0], device=dev), torch.randn(1, layout.text_tokens, c.text_embed_dim, device=dev),
                layout)
    frames = int(layout)
    H, W = (g * c.patch_size for g in c.grid)
    actions = (torch.randint(0, c.num_actions, (1, frames), device=dev) if c.action_kind == "discrete" else
               torch.randn(1, frames, c.action_dim, device=dev) if c.action_kind == "continuous" else None)
    return (torch.randn(1, frames, c.channels, H, W, device=dev), torch.randint(0, 1000, (1, frames), device=dev),
            actions)


def training_step(model, inputs: tuple, device: str | torch.device = "cpu"):
    """A training step of ``model`` (a backbone, parallelized or not) as the tasks take it, on ``inputs``
    (:func:`example_inputs`): bf16 autocast, backward of a squared output, AdamW over the trainable parameters
    grouped by distributed layout (multi-tensor kernels). Returns ``(step, optimizer)``: call ``step()`` once so
    the optimizer's state exists, then measure the next."""
    from .plan import split_by_layout

    dev = torch.device(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": g} for g in split_by_layout(params)], lr=1e-6, foreach=True)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            out = model(*inputs)
        out.float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, opt


def measure_rank(model: str = "dit", *, gpus: int, strategy: str = "fsdp+tp", tp: int | None = None,
                 seconds: int = 3, mixer: str = "ttt_mlp", mixer_config: dict | None = None,
                 trainable: str | None = None, dit_overrides: dict | None = None,
                 layout_overrides: dict | None = None, sequence_parallel: bool = False, fsdp_precision: str = "full",
                 activation_checkpointing: bool = True, latent_fps: int = 4, device: str | torch.device = "cpu",
                 seed: int = 0) -> RankMeasurement:
    """Peak memory and step time of rank 0 of a layout, run for real in this process (see the module doc).

    The model is built as :func:`~seqmix.parallel.estimate.estimate` sizes it: ``dit``, CogVideoX-5B with ``mixer``
    as its global layer (and ``dit_overrides``), its parameter groups of ``trainable`` (default: the paper stage's,
    :data:`PAPER_STAGES`) set to train, one example of the paper layout of ``seconds``
    (with ``layout_overrides``); or ``worldmodel``, its ``paper`` preset with the ``mixer`` stack (``ttt_mlp``, the
    plan's default, means the paper's model, ``blockwise_ssm``), ``seconds x latent_fps`` frames. It is split by
    :func:`~seqmix.parallel.plan.parallelize` as training splits it (``strategy`` over ``gpus`` ranks,
    ``sequence_parallel``, ``fsdp_precision``, per-block activation checkpointing) and trained as the tasks train
    it (:func:`training_step`). The first step creates the optimizer state; the second is measured: on CUDA by the
    allocator's peak, elsewhere by :class:`LivePeak`. ``ddp`` runs the model whole (DDP's gradient buckets are not
    counted).

    Needs a process without a default process group. The model is built on the CPU first: size the depth to the
    host's memory (a 2-block model at the paper's width measures what one block costs; the plan scales).
    """
    from seqmix.backbones.layout import VideoLayout

    from .plan import parallelize

    layout = check_layout(strategy, gpus, tp)
    dev = torch.device(device)
    torch.manual_seed(seed)
    if model == "dit":
        from seqmix.backbones.dit import DiTConfig, SegmentedDiT

        if seconds not in VideoLayout.PAPER_DURATIONS:
            raise ValueError(f"no paper layout for {seconds} s; valid: {sorted(VideoLayout.PAPER_DURATIONS)}")
        lay = VideoLayout.paper(seconds, **(layout_overrides or {}))
        net = SegmentedDiT(DiTConfig(mixer=mixer, mixer_config=dict(mixer_config or {}),
                                     gradient_checkpointing=activation_checkpointing, **(dit_overrides or {})))
        net.set_trainable(trainable or {s: tr for s, _, tr in PAPER_STAGES}[seconds])
        tokens = lay.total_tokens
    elif model == "worldmodel":
        from seqmix.backbones.wm_config import WorldModelConfig
        from seqmix.backbones.worldmodel import WorldModel

        if dit_overrides or layout_overrides or mixer_config:
            raise ValueError("the world model is measured at its paper preset: dit_overrides, layout_overrides and "
                             "mixer_config are the DiT's")
        net = WorldModel(WorldModelConfig.preset("paper", mixers=worldmodel_stack(mixer)))
        net.gradient_checkpointing = activation_checkpointing
        lay = seconds * latent_fps
        tokens = lay * net.config.tokens_per_frame
    else:
        raise ValueError(f"unknown model {model!r}; valid: dit, worldmodel")
    net.to(dev).train()
    parallel = strategy != "ddp"
    with fake_ranks(layout.data_parallel if parallel else 1, layout.tensor_parallel, dev.type) as mesh:
        if mesh is not None:
            parallelize(net, mesh, sequence_parallel=sequence_parallel, fsdp_precision=fsdp_precision,
                        activation_checkpointing=activation_checkpointing)
        inputs = example_inputs(net, lay, dev)
        step, opt = training_step(net, inputs, dev)
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            start = time.perf_counter()
            step()
            torch.cuda.synchronize(dev)
            elapsed = time.perf_counter() - start
            peak = torch.cuda.max_memory_allocated(dev) - sum(t.nbytes for t in inputs if isinstance(t, torch.Tensor))
        else:
            start = time.perf_counter()
            peak = LivePeak.of_step(step, net, opt)
            elapsed = time.perf_counter() - start
    logger.info("one rank of the %s, %s on %d GPUs (tp %s), %d s: peak %.3f GB, step %.2f s on %s", model, strategy,
                gpus, layout.tensor_parallel, seconds, peak / 1e9, elapsed, dev)
    return RankMeasurement(seconds, tokens, float(peak), elapsed, str(dev))
