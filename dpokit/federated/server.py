"""The server side: Flower's FedAvg (FedProx with ``--proximal-mu``), wrapped in Flower's client-side
fixed-clipping DP strategy where asked, inside ``RoundKeeper``, which sees what every round received
and released: it writes each round's global adapter as a folder, registers it as a version with the
round's aggregated metrics and each client's (ε, δ), and logs the shapes and metric names it received
(the audit trail of what left the clients)."""

from __future__ import annotations

import json
from pathlib import Path

from flwr.common import FitRes, Parameters, parameters_to_ndarrays
from flwr.server.strategy import (DifferentialPrivacyClientSideFixedClipping, FedAvg, FedProx, Strategy)

from dpokit.federated.adapters import write_round
from dpokit.federated.client import KEYS
from dpokit.federated.privacy import client_epsilons
from dpokit.store.atomic import folder_digest, write_text_atomic
from dpokit.store.versions import Registry, abs_path, utc_now


def weighted_means(results: list[tuple[int, dict]]) -> dict[str, float]:
    """Each metric averaged over the clients that sent it, weighted by their record counts."""
    out = {}
    for key in sorted({k for _, m in results for k in m}):
        pairs = [(n, float(m[key])) for n, m in results if key in m]
        out[key] = sum(n * v for n, v in pairs) / max(sum(n for n, _ in pairs), 1)
    return out


def build_strategy(cfg, names: list[str], initial: list, out: Path, base_folder: Path) -> RoundKeeper:
    f = cfg.federated
    evaluators = len(f.eval_files()) if f.client_files() else f.count()  # deployed clients name their own
    common = dict(fraction_fit=f.fraction, min_fit_clients=f.sampled(), min_available_clients=f.count(),
                  fraction_evaluate=f.eval_fraction if evaluators else 0.0,
                  min_evaluate_clients=max(int(evaluators * f.eval_fraction), 1) if evaluators else 0,
                  initial_parameters=_params(initial),
                  on_fit_config_fn=lambda r: {"server_round": r, KEYS: ",".join(names)},
                  on_evaluate_config_fn=lambda r: {"server_round": r, KEYS: ",".join(names)},
                  fit_metrics_aggregation_fn=weighted_means, evaluate_metrics_aggregation_fn=weighted_means)
    mu = cfg.train.proximal_mu
    inner: Strategy = FedProx(proximal_mu=mu, **common) if mu > 0 else FedAvg(**common)
    if f.dp_clip > 0:
        inner = DifferentialPrivacyClientSideFixedClipping(inner, f.dp_noise, f.dp_clip, f.sampled())
    return RoundKeeper(inner, cfg, names, out, base_folder)


def _params(arrays: list) -> Parameters:
    from flwr.common import ndarrays_to_parameters

    return ndarrays_to_parameters(arrays)


class RoundKeeper(Strategy):
    """Delegates every decision to ``inner``; after each round's aggregation saves the global adapter
    (``OUTPUT/global/round-R``) and registers it (``train.registry``); the round's held-out metrics are
    added to that version after its evaluation."""

    def __init__(self, inner: Strategy, cfg, names: list[str], out: Path, template: Path):
        super().__init__()
        self.inner, self.cfg, self.names, self.out, self.template = inner, cfg, names, out, template
        self.registry = Registry(cfg.train.registry) if cfg.train.registry else None
        self.rounds: list[dict] = []
        self.participations: dict[str, int] = {}
        self.previous_version: str | None = None
        # Under DP the server adds noise calibrated to a client's share C/m of a *uniform* mean: a client
        # weighted by its record count would move the mean by more than that.
        self.uniform = cfg.federated.dp_clip > 0

    def initialize_parameters(self, client_manager):
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(self, server_round, parameters, client_manager):
        for cid in client_manager.all():
            self.participations.setdefault(cid, 0)
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
        received = [self._audit(proxy.cid, res) for proxy, res in results]
        for proxy, _ in results:
            self.participations[proxy.cid] = self.participations.get(proxy.cid, 0) + 1
        if self.uniform:
            results = [(p, FitRes(r.status, r.parameters, 1, r.metrics)) for p, r in results]
        params, metrics = self.inner.aggregate_fit(server_round, results, failures)
        entry = {"round": server_round, "received": received, "failures": len(failures), "fit": metrics}
        if params is not None:
            folder = self.out / "global" / f"round-{server_round}"
            write_round(folder, self.template, self.names, parameters_to_ndarrays(params),
                        {"round": server_round, "clients": [r["client"] for r in received]})
            entry["model"] = str(folder)
        entry["privacy"] = self._privacy(server_round)
        self.rounds.append(entry)
        if params is not None:
            self._register(entry)
        self._write_report()
        return params, metrics

    def _audit(self, cid: str, res: FitRes) -> dict:
        """What one client sent: the shapes and dtypes of its arrays, its record count, its metric names.
        Under secure aggregation it sent a masked vector: the arrays here are already the round's mean."""
        arrays = parameters_to_ndarrays(res.parameters)
        return {"client": cid, "num_examples": res.num_examples,
                "arrays": [[list(a.shape), str(a.dtype)] for a in arrays],
                "sent": "masked (SecAgg+)" if self.cfg.federated.secure_aggregation else "adapter",
                "metrics": {k: type(v).__name__ for k, v in res.metrics.items()}}

    def _privacy(self, server_round: int) -> dict | None:
        f = self.cfg.federated
        if f.dp_clip <= 0:
            return None
        return {"clip": f.dp_clip, "noise_multiplier": f.dp_noise, "sampled_per_round": f.sampled(),
                "clients": client_epsilons(f.dp_noise, f.sampled(), f.count(), server_round,
                                           self.participations, f.dp_delta)}

    def configure_evaluate(self, server_round, parameters, client_manager):
        return self.inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round, results, failures):
        loss, metrics = self.inner.aggregate_evaluate(server_round, results, failures)
        entry = self._entry(server_round)
        if entry is not None:
            entry["eval"] = {**metrics, "loss": loss, "clients": len(results), "failures": len(failures)}
            if entry.get("version"):  # the version registered at aggregation gets its held-out metrics
                record = self.registry.get(entry["version"])
                record["eval_metrics"] = {k: v for k, v in entry["eval"].items() if isinstance(v, float)}
                self.registry.update(record)
            self._write_report()
        return loss, metrics

    def evaluate(self, server_round, parameters):
        return self.inner.evaluate(server_round, parameters)

    def _entry(self, server_round: int) -> dict | None:
        return next((e for e in self.rounds if e["round"] == server_round and "model" in e), None)

    def _register(self, entry: dict) -> None:
        """The round's global adapter as a version: its lineage is the previous round's version."""
        if self.registry is None:
            return
        cfg, folder = self.cfg, Path(entry["model"])
        base = abs_path(cfg.model.path)
        record = {
            "created": utc_now(), "model": abs_path(str(folder)), "model_sha256": folder_digest(folder),
            "run": abs_path(str(self.out)), "parent": self.previous_version,
            "parent_model": abs_path(str(self.out / "global" / f"round-{entry['round'] - 1}")),
            "reference": {"model": base, "version": None},
            "data": {},  # the server never sees the clients' files: see "federated" for what it received
            "loss": cfg.loss.name, "steps": entry["round"] * cfg.federated.local_steps,
            "config": cfg.to_dict(),
            "metrics": entry["fit"], "eval_metrics": {},
            "eval": None,
            "federated": {"round": entry["round"], "received": entry["received"], "privacy": entry["privacy"]},
        }
        entry["version"] = self.previous_version = self.registry.add(record)

    def _write_report(self) -> None:
        write_text_atomic(self.out / "federated_report.json", json.dumps({"rounds": self.rounds}, indent=1))
