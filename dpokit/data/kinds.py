"""From the record a format gives to the kind a loss (or ``dpokit data convert --to``) asks for.

- pair -> list: a list of two; -> unpaired: chosen desirable, rejected undesirable; -> sft: chosen.
- list -> pair by a pairing strategy (below); -> unpaired: best desirable, worst undesirable
  (the best-worst pair); -> sft: the best answer.
- unpaired -> sft: desirable answers only. Unpaired and SFT records cannot become pairs or lists.

Pairing strategies for a list with scores s (best first; a ranking without scores counts its
positions as scores k-1 ... 0), where a pair (i, j) needs s_i - s_j > ``min_margin``:
``best-worst`` (one pair), ``best-each`` (the best against every other answer), ``all`` (every
such pair).
"""

from __future__ import annotations

from dpokit.data.records import KINDS, Pair, RankedList, Record, SFTExample, Unpaired
from dpokit.data.report import DataReport
from dpokit.errors import UserError

def response_names(kind: str, groups: int) -> list[str]:
    """Names of the real responses of a batch's groups; the unpaired kind's second group is
    another prompt's completion (KTO's reference point), not data, so it is not logged."""
    return {"pair": ["chosen", "rejected"], "sft": ["completion"], "unpaired": ["completion"]}.get(
        kind, [f"rank{g + 1}" for g in range(groups)])


KIND_NAMES = {**{kind: kind for kind in KINDS}, "pairs": "pair"}
"""Each spelling of a record kind -> the kind (``pairs``, as in ``--to pairs``, is the kind ``pair``)."""


def pairs_from_list(rec: RankedList, strategy: str, margin: float) -> list[Pair]:
    k = len(rec.completions)
    scores = rec.scores if rec.scores is not None else [float(k - 1 - i) for i in range(k)]
    if strategy == "best-worst":
        candidates = [(0, k - 1)]
    elif strategy == "best-each":
        candidates = [(0, j) for j in range(1, k)]
    elif strategy == "all":
        candidates = [(i, j) for i in range(k) for j in range(i + 1, k)]
    else:
        raise UserError(f"unknown pairing strategy {strategy!r}", where="config", field="data.pairing")
    return [Pair(rec.prompt, rec.completions[i], rec.completions[j], rec.source, rec.weight, meta=rec.meta)
            for i, j in candidates if scores[i] - scores[j] > margin]


def _cannot(rec: Record, kind: str) -> UserError:
    have = "unpaired examples" if isinstance(rec, Unpaired) else "SFT examples"
    return UserError(f"this data gives {have}, which cannot become {kind} records", where=rec.source.rsplit(":", 1)[0])


def to_kind(rec: Record, kind: str, options, report: DataReport) -> list[Record]:
    """``rec`` as records of ``kind``; what cannot be converted is reported as dropped."""
    if isinstance(rec, Pair):
        if rec.tie and (kind != "pair" or options.ties == "drop"):
            report.drop(rec.source, "a tie (data.ties=drop, or a kind other than pairs)")
            return []
        if kind == "pair":
            return [rec]
        if kind == "list":
            return [RankedList(rec.prompt, rec.completions, rec.source, weight=rec.weight, meta=rec.meta)]
        if kind == "unpaired":
            return [Unpaired(rec.prompt, c, good, rec.source, rec.weight, meta=rec.meta)
                    for c, good in ((rec.chosen, True), (rec.rejected, False))]
        return [SFTExample(rec.prompt, rec.chosen, rec.source, rec.weight, meta=rec.meta)]
    if isinstance(rec, RankedList):
        if kind == "list":
            return [rec]
        if kind == "sft":
            return [SFTExample(rec.prompt, rec.completions[0], rec.source, rec.weight, meta=rec.meta)]
        pairs = pairs_from_list(rec, "best-worst" if kind == "unpaired" else options.pairing, options.min_margin)
        if not pairs:
            report.drop(rec.source, f"no pair: no two answers' scores differ by more than {options.min_margin:g}")
        return pairs if kind == "pair" else [r for p in pairs for r in to_kind(p, kind, options, report)]
    if isinstance(rec, Unpaired) and kind in ("unpaired", "sft"):
        if kind == "unpaired":
            return [rec]
        if not rec.desirable:
            report.drop(rec.source, "undesirable answer (SFT keeps the desirable ones)")
            return []
        return [SFTExample(rec.prompt, rec.completion, rec.source, rec.weight, meta=rec.meta)]
    if isinstance(rec, SFTExample) and kind == "sft":
        return [rec]
    raise _cannot(rec, kind)
