"""Training: the Keras trainer, Caffe's optimisation, the run loop and model loading."""

from tf_segunravel.training.checkpoints import load_network
from tf_segunravel.training.config import TrainConfig
from tf_segunravel.training.loop import train
from tf_segunravel.training.trainer import SegmentationTrainer

__all__ = ["SegmentationTrainer", "TrainConfig", "load_network", "train"]
