"""Online iterative preference training: sample, judge, pair, train, evaluate, round after round."""

from dpokit.online.config import ONLINE_FLAGS, OnlineConfig, OnlineSettings
from dpokit.online.loop import OnlineResult, online

__all__ = ["ONLINE_FLAGS", "OnlineConfig", "OnlineResult", "OnlineSettings", "online"]
