"""Preference losses: pure functions over log-prob tensors, one registry.

Adding a loss = one function with ``@register`` in a module imported here (its ``params``: the
``LossConfig`` fields it reads, its defaults and the values allowed), and its tests.
"""

from dpokit.logps import Logps
from dpokit.losses import diffusion, dpo, kto, listwise, margin, pairwise, ratios, reference_free, sft, ties, token, transport  # noqa: F401  (registers)
from dpokit.losses.base import (
                                LossContext,
                                LossOutput,
                                LossSpec,
                                Param,
                                all_losses,
                                all_params,
                                get_loss,
                                losses_for,
                                register,
)

__all__ = ["LossContext", "Logps", "LossOutput", "LossSpec", "Param", "all_losses", "all_params", "get_loss",
           "losses_for", "register"]
