"""(ε, δ) of the released global adapters, for each client after each round, from opacus's RDP
accountant (Mironov 2017; Mironov, Talwar, Zhang 2019 for the subsampled Gaussian).

The mechanism (Flower's ``DifferentialPrivacyClientSideFixedClipping``): each sampled client's update
is clipped to norm C, and the server adds N(0, (z·C/m)²) to the mean of the m clipped updates, so one
client's whole data set changes the released mean by at most C/m: a Gaussian mechanism of noise
multiplier z at the level of a client (all of its records at once), once per round it takes part in.

Two figures per client and round:
- ``epsilon``: with amplification by sampling, each round a subsampled Gaussian of rate q = m/N. The
  accountant assumes each client is drawn independently with probability q (Poisson); Flower draws
  exactly m without replacement, so this is the usual approximation, not a proof;
- ``epsilon_no_sampling``: no amplification, the rounds the client actually took part in, each a full
  Gaussian mechanism: a bound that holds whatever the sampling (it is never below the first).
"""

from __future__ import annotations

import math


def _epsilon(noise: float, rate: float, steps: int, delta: float) -> float:
    if steps == 0:
        return 0.0
    if noise <= 0:
        return math.inf
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(noise, rate, steps)]
    return float(accountant.get_epsilon(delta))


def client_epsilons(noise: float, sampled: int, clients: int, round_no: int, participations: dict[str, int],
                    delta: float) -> dict[str, dict]:
    """Each client's ε after ``round_no`` rounds (``participations``: the rounds it took part in so far)."""
    amplified = _epsilon(noise, sampled / clients, round_no, delta)
    return {cid: {"epsilon": amplified, "epsilon_no_sampling": _epsilon(noise, 1.0, k, delta), "rounds_taken": k,
                  "delta": delta} for cid, k in participations.items()}
