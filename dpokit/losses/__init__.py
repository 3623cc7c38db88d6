"""Preference losses: pure functions over log-prob tensors, one registry.

Adding a loss = one function with ``@register`` in a module imported here, and its tests.
"""

from dpokit.losses import dpo, kto, listwise, margin, reference_free, sft, token  # noqa: F401  (registers)
from dpokit.losses.base import LossContext, LossOutput, LossSpec, Logps, all_losses, get_loss, register

__all__ = ["LossContext", "Logps", "LossOutput", "LossSpec", "all_losses", "get_loss", "register"]
