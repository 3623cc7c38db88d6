"""What the data pipeline did: every record it skipped, dropped, altered or added, and why.

Counts are kept by (action, reason). The events themselves (one per record) go to a temporary
file rather than a list, so a conversion of millions of records keeps its memory flat; they are
read back when the report is written.

Actions: ``skipped`` (an input record that could not be read, with ``on_error=skip``),
``dropped`` (a record removed by a rule), ``altered`` (a record kept in a changed form),
``added`` (a copy made by over-sampling).
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from typing import Any, Iterator


class Agreement:
    """Inter-annotator agreement over pairwise votes (categories a / b / tie).

    ``observed``: the share of annotator pairs on an item that agree, averaged over items
    with two or more votes. ``fleiss_kappa``: (P̄ − Pₑ) / (1 − Pₑ) with Pₑ = Σⱼ pⱼ² from the
    overall share pⱼ of each category (Fleiss 1971; items may have different vote counts).
    """

    def __init__(self) -> None:
        self.items = self.votes = self.unanimous = 0
        self.agree_sum = 0.0
        self.category = Counter()  # all votes by choice
        self.rated = Counter()  # votes of items with two or more votes (what kappa compares)

    def add(self, votes: list[str]) -> None:
        counts = Counter(votes)
        self.votes += len(votes)
        self.category.update(counts)
        if len(votes) < 2:
            return
        n = len(votes)
        self.rated.update(counts)
        self.items += 1
        self.unanimous += len(counts) == 1
        self.agree_sum += sum(c * (c - 1) for c in counts.values()) / (n * (n - 1))

    def summary(self) -> dict[str, Any] | None:
        if not self.votes:
            return None
        out: dict[str, Any] = {"votes": self.votes, "items_with_2+_votes": self.items,
                               "votes_by_choice": dict(sorted(self.category.items()))}
        if self.items:
            observed = self.agree_sum / self.items
            total = sum(self.rated.values())
            chance = sum((c / total) ** 2 for c in self.rated.values())
            out.update(observed=round(observed, 4), unanimous=round(self.unanimous / self.items, 4),
                       fleiss_kappa=round((observed - chance) / (1 - chance), 4) if chance < 1 else None)
        return out


class DataReport:
    """Counts and events of one input file's trip through the pipeline."""

    def __init__(self, source: str = "") -> None:
        self.source, self.format, self.kind = source, "", ""
        self.rows = 0
        self.records_out = 0
        self.counts: Counter = Counter()
        self.agreement = Agreement()
        self._events: Any = None  # a temporary file, opened with the first event

    def event(self, action: str, where: str, reason: str) -> None:
        self.counts[action, reason] += 1
        if self._events is None:
            self._events = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
        self._events.write(json.dumps({"record": where, "action": action, "reason": reason}) + "\n")

    def skip(self, where: str, reason: str) -> None:
        self.event("skipped", where, reason)

    def drop(self, where: str, reason: str) -> None:
        self.event("dropped", where, reason)

    def alter(self, where: str, reason: str) -> None:
        self.event("altered", where, reason)

    def add(self, where: str, reason: str) -> None:
        self.event("added", where, reason)

    def total(self, action: str) -> int:
        return sum(n for (a, _), n in self.counts.items() if a == action)

    def events(self) -> Iterator[dict]:
        if self._events is None:
            return
        self._events.flush()
        self._events.seek(0)
        for line in self._events:
            yield json.loads(line)
        self._events.seek(0, 2)  # back to the end: more events may follow

    def summary(self) -> dict[str, Any]:
        by_action: dict[str, dict[str, int]] = {}
        for (action, reason), n in sorted(self.counts.items()):
            by_action.setdefault(action, {})[reason] = n
        out = {"input": self.source, "format": self.format, "kind": self.kind, "rows_read": self.rows,
               "records_out": self.records_out, **{a: by_action.get(a, {}) for a in
                                                   ("skipped", "dropped", "altered", "added")}}
        if (agreement := self.agreement.summary()) is not None:
            out["annotator_agreement"] = agreement
        return out

    def write_json(self, path, extra: dict | None = None) -> None:
        """The summary (plus ``extra``) and every event, streamed into one JSON object."""
        with open(path, "w", encoding="utf-8") as f:
            head = json.dumps({**self.summary(), **(extra or {})}, indent=1)
            f.write(head.removesuffix("\n}") + ',\n "events": [')  # reopen the object for the events
            for i, event in enumerate(self.events()):
                f.write(("\n  " if i == 0 else ",\n  ") + json.dumps(event))
            f.write("\n ]\n}\n")

    def lines(self) -> list[str]:
        """The summary as a few readable lines (counts by reason)."""
        out = [f"{self.source}: format {self.format or '?'}, {self.rows} input records -> "
               f"{self.records_out} {self.kind or 'records'}"]
        width = max((len(r) for _, r in self.counts), default=0)
        for (action, reason), n in sorted(self.counts.items()):
            out.append(f"  {action:8s} {reason:{width}s} {n:>8d}")
        if (agreement := self.agreement.summary()) and "observed" in agreement:
            out.append(f"  annotator agreement: {agreement['observed']:.1%} of annotator pairs agree, "
                       f"Fleiss' kappa {agreement['fleiss_kappa']}, {agreement['unanimous']:.1%} unanimous")
        return out

    def write_table(self, path) -> None:
        """The readable report: the summary lines, then one line per event."""
        with open(path, "w", encoding="utf-8") as f:
            f.write("\n".join(self.lines()) + "\n\nrecord\taction\treason\n")
            for e in self.events():
                f.write(f"{e['record']}\t{e['action']}\t{e['reason']}\n")
