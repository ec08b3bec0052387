"""Lightning tasks (LightningModule + LightningDataModule pairs) driven by the ``seqmix`` CLI recipes."""

from .lm import LMTask, MQARData
from .video import LatentVideoData, StoryboardVideoData, VideoDiffusionTask
from .worldmodel import MazeData, WorldModelTask

__all__ = ["LMTask", "LatentVideoData", "MQARData", "MazeData", "StoryboardVideoData", "VideoDiffusionTask",
           "WorldModelTask"]
