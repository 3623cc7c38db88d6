"""Training: one loop on accelerate, shared by SFT and every preference loss."""

from dpokit.train.loop import TrainResult, evaluate, train

__all__ = ["TrainResult", "evaluate", "train"]
