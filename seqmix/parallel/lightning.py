"""Lightning's ModelParallelStrategy (FSDP2 x DTensor tensor parallel) with seqmix's layout checks run in the
launching process, before any other process starts.

Recipes name it ``strategy: {class_path: seqmix.parallel.lightning.ModelParallel, init_args:
{tensor_parallel_size: 4}}``; the LightningModule's ``configure_model`` applies :func:`seqmix.parallel.plan.parallelize`
with the strategy's ``(data_parallel, tensor_parallel)`` mesh.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from lightning.pytorch.strategies import ModelParallelStrategy
from lightning.pytorch.strategies.launchers.launcher import _Launcher

from .checks import Layout, check_layout, check_model

logger = logging.getLogger(__name__)

__all__ = ["MixedLayoutClipping", "ModelParallel"]


def _size(name: str, v: Any) -> Any:
    if v != "auto" and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
        raise ValueError(f"ModelParallel: {name} must be 'auto' or a positive int, got {v!r}")
    return v


class ModelParallel(ModelParallelStrategy):
    """:class:`lightning.pytorch.strategies.ModelParallelStrategy` that checks the layout first.

    Args:
        data_parallel_size: FSDP2 group size; ``"auto"``: world size / tensor_parallel_size.
        tensor_parallel_size: ranks that split every block by heads (1: FSDP2 only); ``"auto"``: devices per node.
        **kwargs: the other ModelParallelStrategy arguments.

    The check (world size divisible, every head count divisible by the tensor-parallel size) runs when the
    trainer launches its processes, in the launching process, and again in every process before the mesh is
    built (for processes started by a cluster launcher).
    """

    def __init__(self, data_parallel_size: int | Literal["auto"] = "auto",
                 tensor_parallel_size: int | Literal["auto"] = "auto", **kwargs: Any):
        super().__init__(_size("data_parallel_size", data_parallel_size),
                         _size("tensor_parallel_size", tensor_parallel_size), **kwargs)

    def layout(self) -> Layout:
        """Sizes this strategy will use, checked against the world size and the model's head counts."""
        world = self.num_processes * self.num_nodes
        tp = self.num_processes if self._tensor_parallel_size == "auto" else self._tensor_parallel_size
        if self._data_parallel_size == "auto":
            dp = world // tp if tp and world % tp == 0 else 0
        else:
            dp = self._data_parallel_size
        if dp * tp != world:
            raise ValueError(f"ModelParallel: data_parallel_size={self._data_parallel_size} x tensor_parallel_size="
                             f"{self._tensor_parallel_size} must equal the world size {world} (devices x num_nodes)")
        layout = check_layout("fsdp+tp" if tp > 1 else "fsdp", world, tp)
        if self.lightning_module is not None:
            check_model(self.lightning_module, tp)
        return layout

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if self._launcher is not None:
            self._launcher = _CheckedLauncher(self._launcher, self)

    def setup_environment(self) -> None:
        layout = self.layout()
        self._data_parallel_size, self._tensor_parallel_size = layout.data_parallel, layout.tensor_parallel
        super().setup_environment()


class _CheckedLauncher(_Launcher):
    """Runs the strategy's layout check in the launching process, then the wrapped launcher."""

    def __init__(self, inner: _Launcher, strategy: ModelParallel):
        self.inner, self.strategy = inner, strategy

    @property
    def is_interactive_compatible(self) -> bool:
        return self.inner.is_interactive_compatible

    def launch(self, function, *args: Any, trainer=None, **kwargs: Any) -> Any:
        self.strategy.layout()
        return self.inner.launch(function, *args, trainer=trainer, **kwargs)

    def kill(self, signum) -> None:
        self.inner.kill(signum)


class MixedLayoutClipping:
    """LightningModule mixin for tasks that run under :class:`ModelParallel`: gradient-norm clipping over
    gradients that mix DTensors of two meshes (FSDP2 x TP) and plain tensors, which torch's clip cannot norm at
    once (:func:`seqmix.parallel.plan.clip_grad_norm_`); Lightning's own clipping otherwise."""

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if self.device_mesh is None or not gradient_clip_val or gradient_clip_algorithm not in (None, "norm"):
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        from seqmix.parallel.plan import clip_grad_norm_

        clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], gradient_clip_val)
