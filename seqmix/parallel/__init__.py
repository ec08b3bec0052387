"""Scale-out: the FSDP2 x tensor-parallel plan of the backbones (:mod:`.plan`), its checks before any process
starts (:mod:`.checks`), the Lightning strategy that runs it (:mod:`.lightning`) and the per-GPU memory / step-time
estimate behind ``seqmix plan`` (:mod:`.estimate`).

torch.distributed is imported only by :mod:`.plan` (and :mod:`.lightning`); the checks and the estimate need none.
"""

from .checks import DP, STRATEGIES, TP, Layout, check_layout, check_model, shardable

__all__ = ["DP", "STRATEGIES", "TP", "Layout", "check_layout", "check_model", "shardable"]
