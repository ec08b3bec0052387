"""Equal-budget comparisons of registry layers: the MQAR sweep (accuracy against state size) and the text-to-video
baselines.

A comparison takes layer names (default: every registry layer that mixes tokens) and builds every run from ONE base
recipe per task (``recipes/base/<task>.yaml``) plus the layer's name and config: the documented overrides of
``recipes/<task>/<layer>.yaml`` where that file exists (see :func:`recipe_overrides`), the layer's defaults
otherwise. Every run is trained through the same LightningCLI path as ``seqmix fit --config RECIPE`` with only the
swept fields overridden (model width, learning rate, step budget), so a comparison is a set of recipe runs that
anyone can re-run one by one (the command of each is stored with its record).

Modules: :mod:`~seqmix.compare.common` (recipes, layer arguments, parallel workers), :mod:`~seqmix.compare.seeds`
(seeds and their aggregation into rows with intervals), :mod:`~seqmix.compare.curves` (learning curves),
:mod:`~seqmix.compare.knobs` (per-layer sweep knobs), :mod:`~seqmix.compare.mqar`, :mod:`~seqmix.compare.video`,
:mod:`~seqmix.compare.worldmodel` (retrieval on mazes).
"""

from seqmix.compare.common import _LAYER_KEYS, base_recipe, layer_args, recipe_dir, recipe_overrides, token_mixers
from seqmix.compare.curves import LearningCurve
from seqmix.compare.mqar import PRESETS, MQARSweep, run_mqar_sweep
from seqmix.compare.seeds import aggregate, parse_seeds, ranking, seed_args
from seqmix.compare.video import VideoComparison, run_video_comparison

__all__ = ["PRESETS", "LearningCurve", "MQARSweep", "VideoComparison", "aggregate", "base_recipe", "layer_args",
           "parse_seeds", "ranking", "recipe_dir", "recipe_overrides", "run_mqar_sweep", "run_video_comparison",
           "seed_args", "token_mixers"]
