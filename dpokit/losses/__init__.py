"""Preference losses: pure functions over log-prob tensors, one registry.

Adding a loss = one function with ``@register`` in a module imported here, and a test file.
"""

from dpokit.losses import dpo, sft  # noqa: F401  (importing registers the losses)
from dpokit.losses.base import Logps, LossOutput, LossSpec, all_losses, get_loss, register

__all__ = ["Logps", "LossOutput", "LossSpec", "all_losses", "get_loss", "register"]
