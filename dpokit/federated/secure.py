"""Secure aggregation (``federated.secure_aggregation``): the training rounds run through Flower's
SecAgg+ protocol, so the server learns only the weighted sum of the clients' adapters, never one
client's adapter.

Each sampled client quantises ``w·adapter`` (w its weight: its record count over ``max_weight``) to
integers, adds pairwise masks agreed with its neighbours (which cancel in the sum) and a private mask
(whose seed it secret-shares with them), and uploads only that. Once every masked vector is in, the
clients hand over the shares needed to remove the private masks of the ones that answered, and the
server recovers Σ w·adapter and Σ w, hence the weighted mean. Flower's workflow then gives the
strategy every client's ``FitRes`` carrying that mean in place of its adapter: ``RoundKeeper`` and
FedAvg/FedProx (and the DP wrapper, which adds its noise to the mean) work on as before.

With DP the client clips its update before masking (``fixedclipping_mod`` runs inside the SecAgg+
mod), and weighs 1 instead of its record count, since the DP noise is calibrated to a plain mean.
"""

from __future__ import annotations

import numpy as np

from dpokit.errors import UserError

CLIPPING_RANGE = 8.0
"""SecAgg+ quantises ``w·weight`` within ±this (Flower's default); a client whose values leave it is
refused rather than clipped in silence."""
QUANTIZATION_RANGE = 2**22
"""Integer levels over that range: the mean is exact to about 2·8/2²²/Σw ≈ 4e-6/Σw per weight."""


def fit_workflow(cfg):
    """Flower's SecAgg+ fit workflow for this run's settings: every sampled client a neighbour of every
    other (the runs here have few clients), any half of them (at least 2) able to unmask a dropout."""
    from flwr.server.workflow import SecAggPlusWorkflow

    f = cfg.federated
    return SecAggPlusWorkflow(num_shares=1.0, reconstruction_threshold=0.5,
                              max_weight=1.0 if f.dp_clip > 0 else float(f.secagg_max_weight),
                              clipping_range=CLIPPING_RANGE, quantization_range=QUANTIZATION_RANGE)


def run_rounds(cfg, keeper, grid, context) -> None:
    """A ServerApp main: Flower's default rounds over ``keeper``, training through SecAgg+ where asked."""
    from flwr.server import ServerConfig
    from flwr.server.compat import LegacyContext
    from flwr.server.workflow import DefaultWorkflow

    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=cfg.federated.rounds), strategy=keeper)
    fit = fit_workflow(cfg) if cfg.federated.secure_aggregation else None
    DefaultWorkflow(fit_workflow=fit)(grid, legacy)


def secure_sum_mod(msg, ctxt, call_next):
    """Flower's ``secaggplus_mod`` on the messages of the SecAgg+ protocol (others pass through): a
    ClientApp with it takes part in rounds with and without secure aggregation alike."""
    from flwr.app.message_type import MessageType
    from flwr.client.mod import secaggplus_mod
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    if msg.metadata.message_type != MessageType.TRAIN or RECORD_KEY_CONFIGS not in msg.content.config_records:
        return call_next(msg, ctxt)
    return secaggplus_mod(msg, ctxt, lambda m, c: _checked(m, c, call_next))


def _checked(msg, ctxt, call_next):
    """The client's training reply as SecAgg+ will quantise it: weight 1 under DP (the server's DP
    wrapper sent a clipping norm), and refused where a value would leave the quantisation range."""
    import flwr.compat.common.recorddict_compat as compat
    from flwr.common import parameters_to_ndarrays
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_STATE

    dp = "clipping_norm" in compat.recorddict_to_fitins(msg.content, keep_input=True).config
    out = call_next(msg, ctxt)
    if out.has_error():
        return out
    res = compat.recorddict_to_fitres(out.content, keep_input=True)
    state = ctxt.state.config_records[RECORD_KEY_STATE]
    if dp:
        res.num_examples = 1
    ratio = res.num_examples / float(state["max_weight"])
    largest = max((float(np.abs(a).max()) for a in parameters_to_ndarrays(res.parameters) if a.size), default=0.0)
    if ratio > 1:
        raise UserError(f"this client holds {res.num_examples} records, more than federated.secagg_max_weight "
                        f"({state['max_weight']:g}): raise it to the largest client's count", where="secure aggregation")
    if largest * ratio > float(state["clipping_range"]):
        raise UserError(f"an adapter weight of {largest:.3g} leaves SecAgg+'s range ±{state['clipping_range']:g}",
                        where="secure aggregation")
    out.content = compat.fitres_to_recorddict(res, keep_input=True)
    return out
