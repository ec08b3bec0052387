"""A test-only Lightning callback that poisons one weight with NaN at a given step (a stand-in for a diverged run)."""

import torch
from lightning.pytorch.callbacks import Callback


class PoisonWeights(Callback):
    def __init__(self, step: int = 2):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.parameters()).fill_(float("nan"))
