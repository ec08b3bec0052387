"""Equal-budget comparisons of registry layers: the MQAR sweep (accuracy against state size) and the text-to-video
baselines.

A comparison takes layer names (default: every registry layer that mixes tokens) and builds every run from ONE base
recipe per task (``recipes/base/<task>.yaml``) plus the layer's name and config: the documented overrides of
``recipes/<task>/<layer>.yaml`` where that file exists (see :func:`recipe_overrides`), the layer's defaults
otherwise. Every run is trained through the same LightningCLI path as ``seqmix fit --config RECIPE`` with only the
swept fields overridden (model width, learning rate, step budget), so a comparison is a set of recipe runs that
anyone can re-run one by one (the command of each is stored with its record).

Modules: :mod:`~seqmix.compare.common` (recipes, layer arguments, parallel workers), :mod:`~seqmix.compare.mqar`,
:mod:`~seqmix.compare.video`.
"""

from seqmix.compare.common import _LAYER_KEYS, base_recipe, layer_args, recipe_dir, recipe_overrides, token_mixers
from seqmix.compare.mqar import MQARSweep, run_mqar_sweep
from seqmix.compare.video import VideoComparison, run_video_comparison

__all__ = ["MQARSweep", "VideoComparison", "base_recipe", "layer_args", "recipe_dir", "recipe_overrides",
           "run_mqar_sweep", "run_video_comparison", "token_mixers"]
