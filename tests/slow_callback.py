"""A test-only Lightning callback that slows training down, so a test can kill a run in the middle of an epoch."""

import time

from lightning.pytorch.callbacks import Callback


class Sleep(Callback):
    def __init__(self, seconds: float = 0.3):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        time.sleep(self.seconds)
