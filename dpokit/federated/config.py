"""Settings of ``dpokit federated``: a normal run config (model, lora, loss, train: every client's
local training, with the flags of ``dpokit dpo``) plus a ``federated`` section. There is no
``data.train``: each client trains on its own file, which only that client opens."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

from dpokit.config import RunConfig
from dpokit.config.flags import config_flags, spellings
from dpokit.errors import UserError


@dataclass
class FederatedSettings:
    """The rounds: sample clients, train locally from the global adapter, average, evaluate (docs/federated.md)."""

    clients: str = ""
    """The clients' own preference files, comma-separated: one client each (in a simulation on one machine)."""
    num_clients: int = 0
    """Deployment (clients on their own machines, ``dpokit.federated.apps``): how many clients the server
    waits for, instead of ``clients``, whose files only the clients name."""
    client_eval: str = ""
    """Each client's held-out pairs, comma-separated in the order of ``clients`` (default: none; then the
    round's held-out metrics are missing)."""
    rounds: int = 3
    """Rounds of local training and averaging."""
    local_steps: int = 10
    """Optimizer steps of each sampled client's local training per round."""
    fraction: float = 1.0
    """Share of the clients sampled for training each round (at least one)."""
    eval_fraction: float = 1.0
    """Share of the clients (with held-out files) that evaluate each round's global adapter."""
    dp_clip: float = 0.0
    """Differential privacy: each client's update (its adapter minus the global one) is clipped to this L2
    norm on the client (0: no clipping and no noise)."""
    dp_noise: float = 0.0
    """Differential privacy: noise multiplier z; Gaussian noise of standard deviation z·clip/m is added to
    the mean of the m sampled clients' clipped updates. Needs ``dp_clip``."""
    dp_delta: float = 1e-5
    """δ of the (ε, δ) reported for each client and round."""
    secure_aggregation: bool = False
    """Train through Flower's SecAgg+ protocol: the server sees only the sum of the sampled clients'
    (masked, quantised) adapters, never one client's. Needs at least 2 clients per round."""
    secagg_max_weight: float = 1000.0
    """Secure aggregation: the most records a client may hold (its weight is its count over this; the
    mean's precision is about 4e-6·this/records of the round). Under DP every client weighs 1."""
    client_cpus: float = 1.0
    """CPU cores the simulation gives each client (clients train at once where cores allow)."""
    cpus: int = 0
    """CPU cores of the simulation in all (0: every core of the machine)."""

    def client_files(self) -> list[str]:
        return [p.strip() for p in self.clients.split(",") if p.strip()]

    def eval_files(self) -> list[str]:
        return [p.strip() for p in self.client_eval.split(",") if p.strip()]

    def count(self) -> int:
        """The clients of the run."""
        return self.num_clients or len(self.client_files())

    def sampled(self) -> int:
        """Clients trained per round: as Flower's FedAvg counts them."""
        return max(int(self.count() * self.fraction), 1)

    def checks(self) -> list[tuple[bool, str, str]]:
        files, evals = self.client_files(), self.eval_files()
        missing = next((p for p in [*files, *evals] if not Path(p).is_file()), None)
        return [
            (not files and not self.num_clients, "federated.clients", "is required (--clients a.jsonl,b.jsonl,...)"),
            (bool(files) and self.num_clients > 0, "federated.num_clients",
             "is for clients on their own machines; with --clients their number is that of the files"),
            (self.num_clients < 0, "federated.num_clients", "must be ≥ 0"),
            (bool(evals) and len(evals) != len(files), "federated.client_eval",
             f"names {len(evals)} files for {len(files)} clients; give one per client, in the same order"),
            (missing is not None, "federated.clients" if missing in files else "federated.client_eval",
             f"file not found: {missing}"),
            (self.rounds < 1, "federated.rounds", "must be ≥ 1"),
            (self.local_steps < 1, "federated.local_steps", "must be ≥ 1"),
            (not 0 < self.fraction <= 1, "federated.fraction", "must be in (0, 1]"),
            (not 0 < self.eval_fraction <= 1, "federated.eval_fraction", "must be in (0, 1]"),
            (self.dp_clip < 0, "federated.dp_clip", "must be ≥ 0 (0: no differential privacy)"),
            (self.dp_noise < 0, "federated.dp_noise", "must be ≥ 0"),
            (self.dp_noise > 0 and self.dp_clip == 0, "federated.dp_noise",
             "needs --dp-clip: the noise is calibrated to the clipping norm"),
            (not 0 < self.dp_delta < 1, "federated.dp_delta", "must be in (0, 1)"),
            (self.secure_aggregation and self.sampled() < 2, "federated.secure_aggregation",
             f"needs at least 2 clients per round (this run samples {self.sampled()}): a sum of one is the client"),
            (self.secagg_max_weight <= 0, "federated.secagg_max_weight", "must be > 0"),
            (self.client_cpus <= 0, "federated.client_cpus", "must be > 0"),
            (self.cpus < 0, "federated.cpus", "must be ≥ 0 (0: every core)"),
        ]


@dataclass
class FederatedConfig(RunConfig):
    """Every client's local training config, plus the rounds' settings."""

    federated: FederatedSettings = field(default_factory=FederatedSettings)

    def validate(self) -> FederatedConfig:
        """The rounds' checks, then a client's local config as round 1 will run it."""
        for bad, key, msg in self.federated.checks():
            if bad:
                raise UserError(msg, where="config", field=key)
        for bad, key, msg in ((bool(self.data.train), "data.train",
                               "each client trains on its own file; give them with --clients"),
                              (bool(self.data.eval), "data.eval", "each client's held-out file goes in --client-eval"),
                              (self.train.resume, "train.resume", "a federated run starts its rounds afresh"),
                              (self.model.policy != "causal_lm", "model.policy",
                               "federated rounds average LoRA adapters, which only causal_lm has")):
            if bad:
                raise UserError(msg, where="config", field=key)
        self.lora.enabled = True  # the rounds exchange adapters
        files = self.federated.client_files()
        if files:
            self.local_config(files[0], None, str(Path(self.train.output) / "check"), 1, self.lora.init, 0.0)
        return self

    def local_config(self, data: str, eval_data: str | None, output: str, round_no: int, init: str | None,
                     proximal_mu: float) -> RunConfig:
        """One client's validated training config for one round: ``local_steps`` from the adapter ``init``
        (the global one), on its own file, logged once over the whole local run, registering nothing."""
        cfg = RunConfig(**{name: copy.deepcopy(getattr(self, name)) for name in ("model", "lora", "data", "loss",
                                                                                  "train", "guard")})
        cfg.data.train, cfg.data.eval, cfg.lora.init = data, eval_data, init
        t = cfg.train
        t.output, t.max_steps, t.logging_steps, t.proximal_mu = output, self.federated.local_steps, \
            self.federated.local_steps, proximal_mu
        t.eval_steps, t.save_steps, t.registry, t.progress, t.resume = 0, 0, "", False, False
        t.seed = self.train.seed + round_no  # another shuffle each round
        try:
            return cfg.validate()
        except UserError as exc:
            raise UserError(exc.detail, where="config (a client's local training)", field=exc.field) from None


SET_BY_ROUNDS = {"data.train", "data.eval", "train.resume", "train.max_steps", "train.epochs",
                 "train.logging_steps", "train.eval_steps", "train.save_steps", "train.save_best_metric",
                 "train.save_best_mode", "train.save_total_limit", "train.progress", "lora.enabled"}
"""Training settings each round sets itself (no flag)."""

FEDERATED_FLAG_SET = config_flags(FederatedConfig, skip=SET_BY_ROUNDS)
"""The flags of ``dpokit federated``: those of ``dpokit dpo`` (less those the rounds set) and its own."""
FEDERATED_FLAGS: dict[str, str] = spellings(FEDERATED_FLAG_SET)
