"""Lightning tasks (LightningModule + LightningDataModule pairs) driven by the ``seqmix`` CLI recipes."""

from .lm import LMTask, MQARData

__all__ = ["LMTask", "MQARData"]
