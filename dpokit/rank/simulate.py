"""A click simulator with known ground truth, for evaluating rankers without a live system.

The world (seeded): users with latent factors u, items with factors v (close within a genre) and a
price; the true affinity z(u, a) = u·v_a/√dim − price_a and the attractiveness
α(u, a) = sigmoid(2·z − offset). A user sees what the context shows of them (an id and u plus
noise); the item table shows genre, price and v plus noise, so a ranker can learn the affinities.

Clicks: the position-based model (pbm), click at position p = examined (prob. θ_p = p^−η) and
attracted (α), independently per position; or the cascade model, where the user reads the slate
top-down and clicks the first attractive item, then stops.

Slate policies are mixtures of Plackett–Luce distributions over ordered slates (a greedy slate is
the limit of a very sharp one, an epsilon-greedy logger a mixture with the uniform one), so the
probability of any item at any position (the propensity) and every true value below are exact
sums over the ordered prefixes of the slate, not Monte Carlo.

Logged records (one per shown position, ``impression`` groups a slate's records):

    {"impression": 7, "context": {"user": "u3", "x0": ...}, "slate": ["i4", "i9", "i1"],
     "position": 2, "item": "i9", "click": 0, "propensity": 0.083}

``position`` counts from 1; ``propensity`` is π_log(item at that position | context), the marginal
over the whole slate distribution.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import numpy as np

from dpokit.config.rank import SimulateConfig
from dpokit.errors import UserError

GREEDY_GAP = 1e3
"""Logit gap between consecutive ranks of a greedy slate: exp(−1000) is 0 in float64, so the sharp
Plackett–Luce distribution is the deterministic top-k exactly."""
MAX_WALK = 20_000_000
"""Most (prefix, item) cells one step of the exact walk may hold (160 MB of float64)."""
TRUTH = "simulator.json"
Scorer = Callable[[list[dict]], np.ndarray]
"""Contexts -> scores (contexts, items) in the order of the world's item table."""


def greedy_logits(scores: np.ndarray) -> np.ndarray:
    rank = np.empty(len(scores))
    rank[np.argsort(-scores, kind="stable")] = np.arange(len(scores))
    return -GREEDY_GAP * rank


class SlatePolicy:
    """A distribution over ordered slates for each context: greedy (the top items, with an
    ``epsilon`` share of uniform slates) or softmax (Plackett–Luce on score / temperature)."""

    def __init__(self, scorer: Scorer, kind: str = "greedy", temperature: float = 1.0, epsilon: float = 0.0):
        if kind not in ("greedy", "softmax"):
            raise UserError(f"unknown slate policy {kind!r} (greedy or softmax)", where="policy")
        self.scorer, self.kind, self.temperature, self.epsilon = scorer, kind, temperature, epsilon

    def position_probs(self, contexts: list[dict], k: int) -> np.ndarray:
        """π(item at position | context): (contexts, k, items), exact."""
        scores = self.scorer(contexts)
        out = np.zeros((len(contexts), k, scores.shape[1]))
        for i, row in enumerate(scores):
            for weight, logits in self.parts(row):
                out[i] += weight * prefix_walk(logits, k, np.zeros(len(row)))[0]
        return out

    def parts(self, scores: np.ndarray) -> list[tuple[float, np.ndarray]]:
        """(weight, Plackett–Luce logits) of the mixture for one context's scores."""
        if self.kind == "softmax":
            return [(1.0, scores / self.temperature)]
        parts = [(1.0 - self.epsilon, greedy_logits(scores))]
        return parts + [(self.epsilon, np.zeros(len(scores)))] if self.epsilon > 0 else parts


def prefix_walk(logits: np.ndarray, k: int, attract: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact (marginals (k, n), cascade click probability per position (k,)) of Plackett–Luce
    slates of length k: every ordered prefix with its probability, and the probability that a
    cascade user reached it without clicking (Π (1 − α) over the prefix)."""
    n = len(logits)
    if k > n:
        raise UserError(f"slates of {k} need at least {k} items; there are {n}", where="policy", field="slate")
    prob, survive, used = np.ones(1), np.ones(1), np.zeros((1, n), dtype=bool)
    marginals, cascade = np.zeros((k, n)), np.zeros(k)
    for p in range(k):
        masked = np.where(used, -np.inf, logits)
        choice = np.exp(masked - masked.max(1, keepdims=True))
        choice /= choice.sum(1, keepdims=True)  # P(next item | prefix)
        joint = prob[:, None] * choice
        marginals[p] = joint.sum(0)
        cascade[p] = (joint * survive[:, None] * attract).sum()
        if p + 1 < k:  # extend by one item; impossible prefixes (probability 0) are dropped
            s, a = np.nonzero(joint > 0)
            if len(s) * n > MAX_WALK:  # a greedy slate keeps one prefix; a softmax one n·(n−1)···
                raise UserError(f"exact slate probabilities over {n} items and {k} positions need "
                                f"{len(s) * n:.2g} cells at position {p + 2} (at most {MAX_WALK:.0e}): use fewer "
                                "positions or a greedy target", where="policy")
            prob, survive = joint[s, a], survive[s] * (1.0 - attract[a])
            used = used[s].copy()
            used[np.arange(len(a)), a] = True
    return marginals, cascade


class World:
    """Users, items, their true attractiveness, the click model and the logging policy of a config."""

    def __init__(self, cfg: SimulateConfig):
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        centers = rng.normal(0.0, 1.0, (cfg.genres, cfg.dim))
        self.genre = rng.integers(0, cfg.genres, cfg.items)
        self.item_factors = centers[self.genre] + 0.5 * rng.normal(0.0, 1.0, (cfg.items, cfg.dim))
        self.price = rng.uniform(0.0, 1.0, cfg.items)
        self.user_factors = rng.normal(0.0, 1.0, (cfg.users, cfg.dim))
        self.user_seen = self.user_factors + 0.3 * rng.normal(0.0, 1.0, (cfg.users, cfg.dim))
        self.item_seen = self.item_factors + 0.3 * rng.normal(0.0, 1.0, (cfg.items, cfg.dim))
        affinity = self.user_factors @ self.item_factors.T / np.sqrt(cfg.dim) - self.price
        self.attract = 1.0 / (1.0 + np.exp(-(2.0 * affinity - cfg.offset)))  # (users, items)
        self.logger_scores = affinity + cfg.logger_noise * rng.normal(0.0, 1.0, affinity.shape)
        self.examine = np.arange(1, cfg.slate + 1, dtype=float) ** -cfg.eta
        self.item_ids = [f"i{j}" for j in range(cfg.items)]
        self.user_ids = {f"u{u}": u for u in range(cfg.users)}

    # what a ranker sees
    def context(self, u: int) -> dict:
        return {"user": f"u{u}", **{f"x{d}": round(float(x), 4) for d, x in enumerate(self.user_seen[u])}}

    def item_table(self) -> list[dict]:
        return [{"id": self.item_ids[j], "genre": f"g{self.genre[j]}", "price": round(float(self.price[j]), 4),
                 **{f"v{d}": round(float(x), 4) for d, x in enumerate(self.item_seen[j])}}
                for j in range(self.cfg.items)]

    def ranker_columns(self) -> dict:
        """The columns of ``context`` and ``item_table``, as ``write_ranker`` takes them."""
        d = range(self.cfg.dim)
        return {"context_numeric": [f"x{i}" for i in d], "context_categorical": ["user"],
                "item_numeric": ["price", *(f"v{i}" for i in d)], "item_categorical": ["genre"]}

    def user(self, context: dict) -> int:
        if context.get("user") not in self.user_ids:
            raise UserError(f"unknown user {context.get('user')!r} (not one of this simulator's)", "context", "user")
        return self.user_ids[context["user"]]

    def logger(self) -> SlatePolicy:
        scorer = lambda contexts: self.logger_scores[[self.user(c) for c in contexts]]  # noqa: E731
        if self.cfg.logger == "softmax":
            return SlatePolicy(scorer, "softmax", temperature=self.cfg.temperature)
        return SlatePolicy(scorer, "greedy", epsilon=self.cfg.epsilon)

    # exact values
    def walk(self, policy: SlatePolicy, u: int, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(marginals (k, n), cascade clicks (k,)) of ``policy``'s slates for user u."""
        marg, casc = np.zeros((self.cfg.slate, self.cfg.items)), np.zeros(self.cfg.slate)
        for weight, logits in policy.parts(scores):
            m, c = prefix_walk(logits, self.cfg.slate, self.attract[u])
            marg, casc = marg + weight * m, casc + weight * c
        return marg, casc

    def position_clicks(self, u: int, marg: np.ndarray, casc: np.ndarray) -> np.ndarray:
        """Expected click per position (k,) for user u."""
        return casc if self.cfg.click_model == "cascade" else self.examine * (marg @ self.attract[u])

    def true_values(self, policy: SlatePolicy) -> dict:
        """The policy's exact click rate (clicks per shown position, as the log's records count),
        NDCG@k (gains α, discount log2(p + 1)), HR@k (the user's most attractive item shown) and
        the click rate per position, each averaged over the uniformly drawn users."""
        k = self.cfg.slate
        scores = policy.scorer([self.context(u) for u in range(self.cfg.users)])
        discount = 1.0 / np.log2(np.arange(2, k + 2))
        clicks, ndcg, hits = np.zeros(k), 0.0, 0.0
        for u in range(self.cfg.users):
            marg, casc = self.walk(policy, u, scores[u])
            clicks += self.position_clicks(u, marg, casc)
            ideal = np.sort(self.attract[u])[::-1][:k] @ discount
            ndcg += (discount @ (marg @ self.attract[u])) / ideal
            hits += marg[:, int(np.argmax(self.attract[u]))].sum()
        n = self.cfg.users
        return {"click_rate": float(clicks.sum() / (n * k)), f"ndcg@{k}": float(ndcg / n), f"hr@{k}": float(hits / n),
                "click_rate_by_position": [float(c / n) for c in clicks]}

    # sampling
    def sample_log(self, impressions: int, seed: int) -> list[dict]:
        """``impressions`` slates of the logger, each as one record per position (module docstring)."""
        rng = np.random.default_rng([self.cfg.seed, seed])
        logger, k = self.logger(), self.cfg.slate
        scores = logger.scorer([self.context(u) for u in range(self.cfg.users)])
        walks = [self.walk(logger, u, scores[u])[0] for u in range(self.cfg.users)]
        records = []
        for imp in range(impressions):
            u = int(rng.integers(self.cfg.users))
            parts = logger.parts(scores[u])
            _, logits = parts[rng.choice(len(parts), p=[w for w, _ in parts])]
            slate = np.argsort(-(logits + rng.gumbel(size=len(logits))), kind="stable")[:k]  # Gumbel top-k = PL
            clicks = self._clicks(rng, u, slate)
            ctx, ids = self.context(u), [self.item_ids[a] for a in slate]
            records += [{"impression": imp, "context": ctx, "slate": ids, "position": p + 1, "item": ids[p],
                         "click": int(clicks[p]), "propensity": float(walks[u][p, slate[p]])} for p in range(k)]
        return records

    def _clicks(self, rng: np.random.Generator, u: int, slate: np.ndarray) -> np.ndarray:
        attracted = rng.random(len(slate)) < self.attract[u, slate]
        if self.cfg.click_model == "pbm":
            return attracted & (rng.random(len(slate)) < self.examine)
        clicks = np.zeros(len(slate), dtype=bool)
        if attracted.any():  # the cascade user stops at the first attractive item
            clicks[int(np.argmax(attracted))] = True
        return clicks


def ranker_scorer(folder: str | Path, item_ids: list[str]) -> Scorer:
    """A ranker folder's scores for contexts, its columns reordered to ``item_ids``."""
    from dpokit.policies.ranker import load_ranker, score_contexts

    module = load_ranker(str(folder))
    rows = {str(item["id"]): i for i, item in enumerate(module.items)}
    missing = [i for i in item_ids if i not in rows]
    if missing:
        raise UserError(f"the ranker's item table lacks item {missing[0]!r} (and {len(missing) - 1} more)",
                        where=str(folder), field="items.jsonl")
    order = [rows[i] for i in item_ids]
    return lambda contexts: score_contexts(module, contexts, str(folder)).numpy()[:, order].astype(float)


def simulate(cfg: SimulateConfig) -> dict:
    """Write ``log.jsonl``, ``items.jsonl`` and the sidecar ``simulator.json`` (the config and the
    logger's true values) into ``cfg.out``; return the sidecar."""
    if not cfg.out:
        raise UserError("is required (--out)", where="config", field="out")
    from dpokit.rank.logs import write_jsonl

    world = World(cfg)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    records = world.sample_log(cfg.impressions, seed=cfg.log_seed)
    write_jsonl(out / "log.jsonl", records)
    write_jsonl(out / "items.jsonl", world.item_table())
    truth = {"config": asdict(cfg), "columns": world.ranker_columns(), "logger": world.true_values(world.logger()),
             "records": len(records), "observed_click_rate": float(np.mean([r["click"] for r in records] or [0]))}
    (out / TRUTH).write_text(json.dumps(truth, indent=1) + "\n")
    return truth


def world_from_sidecar(path: str | Path) -> World:
    try:
        cfg = SimulateConfig(**json.loads(Path(path).read_text())["config"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"not a simulator sidecar ({TRUTH} written by dpokit rank simulate)", where=str(path)) from None
    return World(cfg.validate())
