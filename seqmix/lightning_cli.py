"""The Lightning CLI over a recipe: ``seqmix fit|validate|test|predict --config RECIPE.yaml`` and its programmatic
form ``run_lightning(args, run=False)`` (which ``seqmix compare`` builds its runs with).

Kept apart from :mod:`seqmix.cli` (the console entry, which dispatches here) so that library code such as
:mod:`seqmix.compare` can build runs without importing the command line that in turn calls it.
"""

from __future__ import annotations

import logging
import warnings

import lightning.pytorch as pl
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from seqmix.layers import config_class
from seqmix.utils.errors import seqmix_input_error
from seqmix.training import AtomicCheckpointIO, StopOnNonFiniteLoss

__all__ = ["RecipeError", "SeqmixCLI", "run_lightning"]

# Lightning's "Tip: try installing ..." lines advertise add-on services; seqmix output leaves them out.
_TIP_PREFIX = "\N{ELECTRIC LIGHT BULB} Tip:"


class RecipeError(ValueError):
    """A recipe value that cannot work (reported as one line by ``seqmix fit|validate|test|predict``)."""


class _DropLightningTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_TIP_PREFIX)


class SeqmixCLI(LightningCLI):
    """LightningCLI whose model and data are chosen by ``class_path`` in the recipe; checkpoints are written
    atomically with a digest verified on resume (a kill at any moment leaves the previous checkpoint intact);
    training stops with an error at the first non-finite loss (``--stop_on_nonfinite_loss.enabled=false``)."""

    def add_arguments_to_parser(self, parser):
        parser.add_lightning_class_args(StopOnNonFiniteLoss, "stop_on_nonfinite_loss")

    def before_instantiate_classes(self):
        # Mixer names are checked before anything is built, so a typo is one line, not a chained traceback.
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        for key, name in _mixer_names(cfg.as_dict()):
            try:
                config_class(name)
            except (ValueError, TypeError) as e:
                raise RecipeError(f"{key}: {e}") from None

    def instantiate_classes(self):
        # A recipe value that seqmix rejects while the model or data are built (a misspelled mixer setting, a data
        # path that does not exist) surfaces through jsonargparse and Lightning as a long chained traceback; the
        # user needs seqmix's own one-line message. Anything else (a bug) keeps its traceback.
        try:
            super().instantiate_classes()
        except Exception as e:  # noqa: BLE001 - re-raised unless it is a seqmix input error
            root = seqmix_input_error(e)
            if root is None:
                raise
            raise RecipeError(str(root)) from e

    def instantiate_trainer(self, **kwargs):
        trainer = super().instantiate_trainer(**kwargs)
        if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:  # keep any user-chosen CheckpointIO
            trainer.strategy.checkpoint_io = AtomicCheckpointIO()
        return trainer


def _mixer_names(node, prefix: str = ""):
    """(dotted key, name) for every mixer name in a parsed recipe (keys named ``mixer``: a name or a list)."""
    if isinstance(node, dict):
        for k, v in node.items():
            key = f"{prefix}.{k}" if prefix else k
            if k == "mixer" and v is not None:
                # No mixer (None: local attention only in the DiT) is rendered as "None" by the parsed config.
                yield from ((key, n) for n in (v if isinstance(v, list) else [v]) if n not in (None, "None"))
            else:
                yield from _mixer_names(v, key)


def run_lightning(args: list[str], run: bool = True) -> SeqmixCLI:
    """Build a LightningCLI from ``args`` (e.g. ``["fit", "--config", "recipes/mqar/ttt_mlp.yaml"]``).

    With ``run=False`` the subcommand is not given and nothing runs: the parsed ``cli.model``,
    ``cli.datamodule`` and ``cli.trainer`` are returned for programmatic use (``seqmix compare``).
    """
    with warnings.catch_warnings():
        # Programmatic use passes `args` while sys.argv holds the outer command's arguments; that is intended.
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
        # Notices about Lightning's own dependencies, not about the user's run (tensorboard is optional: seqmix
        # logs CSV without it).
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
        warnings.filterwarnings("ignore", message=".*`tensorboardX` has been removed as a dependency.*")
        tips = logging.getLogger("lightning.pytorch.utilities.rank_zero")
        if not any(isinstance(f, _DropLightningTips) for f in tips.filters):
            tips.addFilter(_DropLightningTips())
        return SeqmixCLI(
            model_class=pl.LightningModule,
            datamodule_class=pl.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            args=args,
            run=run,
            # A programmatic build (seqmix compare) writes nothing of its own: its caller owns the output folder
            # (the recipe's default_root_dir would put a config.yaml under ./runs of the working directory).
            save_config_callback=SaveConfigCallback if run else None,
            save_config_kwargs={"overwrite": True},
        )
