"""Training: one loop on accelerate, shared by SFT and every preference loss."""

from dpokit.train.loop import TrainResult, train, train_within

__all__ = ["TrainResult", "train", "train_within"]
