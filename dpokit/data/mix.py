"""Several data sources in one run: ``--data chat.jsonl:0.6,summaries.parquet:0.3,safety.jsonl:0.1``,
or a ``data.sources`` list in YAML whose entries also carry their own reading and cleaning settings::

    data:
      sources:
        - {path: chat.jsonl, weight: 0.6, format: sharegpt}
        - {path: alpaca.parquet, weight: 0.3, columns: "prompt=instruction+input,chosen=good,rejected=bad"}
        - {path: votes.csv, weight: 0.1, columns: "votes=ann1+ann2+ann3", vote_codes: "1=a,2=b,0=tie"}

Each source is read by the policy kind on its own (its format, columns, pairing and cleaning), with its
own data report. The training set is then mixed. With weights, each source makes that share of
a set as large as all sources together: a source with fewer records than its share is repeated
(drawn with replacement), and one with more is sampled, seeded. Without weights, the sources are
concatenated, unless ``data.mix_temperature`` T ≠ 1 sets the shares ∝ size^(1/T) (T > 1 evens them
out). Held-out data (``data.eval``, the same syntax) is never resampled. Its metrics are reported per
source as well (``eval/SOURCE/...``).
"""

from __future__ import annotations

import dataclasses
import json
import random
import typing
from dataclasses import dataclass
from pathlib import Path

from dpokit.errors import UserError

SOURCE_KEYS = ("path", "weight")
"""Keys of a ``data.sources`` entry besides the data settings it overrides."""
NOT_PER_SOURCE = ("train", "eval", "sources", "max_length", "max_prompt_length", "cache", "cache_dir",
                  "mix_temperature")
"""Data settings that apply to the whole run, never to one source."""


@dataclass
class Source:
    path: str
    weight: float | None
    options: dict
    """Data settings this source sets for itself (``DataConfig`` fields)."""

    @property
    def label(self) -> str:
        return Path(self.path).stem


def parse_spec(spec: str, field: str) -> list[Source]:
    """``a.jsonl:0.6,b.jsonl:0.4`` (or plain paths) -> sources; weights all given or none."""
    out = []
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        path, sep, weight = item.rpartition(":")
        try:
            value = float(weight) if sep and path else None
        except ValueError:
            value = None
        out.append(Source(path, value, {}) if value is not None else Source(item, None, {}))
    return _checked(out, field)


def parse_entries(entries: list, field: str = "data.sources") -> list[Source]:
    """The YAML ``data.sources`` list: mappings with ``path``, optional ``weight`` and data settings."""
    from dpokit.config.data import DataConfig
    from dpokit.config.load import coerce

    hints = typing.get_type_hints(DataConfig)
    if not isinstance(entries, list) or not entries:
        raise UserError("must be a non-empty list of {path, weight, ...} mappings", where="config", field=field)
    out = []
    for i, entry in enumerate(entries):
        key = f"{field}[{i}]"
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not entry["path"]:
            raise UserError("must be a mapping with a 'path'", where="config", field=key)
        weight = entry.get("weight")
        if weight is not None:
            weight = coerce(weight, float, "config", f"{key}.weight")
        options = {}
        for name, value in entry.items():
            if name in SOURCE_KEYS:
                continue
            if name not in hints or name in NOT_PER_SOURCE:
                allowed = ", ".join(k for k in hints if k not in NOT_PER_SOURCE)
                raise UserError(f"unknown setting for one source (known: path, weight, {allowed})", where="config",
                                field=f"{key}.{name}")
            options[name] = coerce(value, hints[name], "config", f"{key}.{name}")
        out.append(Source(entry["path"], weight, options))
    return _checked(out, field)


def _checked(sources: list[Source], field: str) -> list[Source]:
    weighted = [s.weight is not None for s in sources]
    if any(weighted) and not all(weighted):
        raise UserError("give a weight to every source or to none", where="config", field=field)
    for s in sources:
        if s.weight is not None and not s.weight > 0:
            raise UserError(f"weights must be > 0; got {s.weight:g} for {s.path}", where="config", field=field)
    labels = [s.label for s in sources]
    if len(set(labels)) < len(labels):
        raise UserError("two sources share a file name; rename one so that their metrics can be told apart",
                        where="config", field=field)
    return sources


def sources_of(data, which: str) -> list[Source]:
    """The sources of ``data.train`` (``which="train"``, or ``data.sources``) or ``data.eval``."""
    if which == "train" and data.sources:
        return parse_entries(data.sources)
    return parse_spec(getattr(data, which) or "", f"data.{which}")


def shares(sizes: list[int], weights: list[float | None], temperature: float) -> list[float] | None:
    """Each source's share of the mixed set, or None to concatenate the sources as they are."""
    if weights[0] is not None:
        total = sum(weights)
        return [w / total for w in weights]
    if temperature == 1.0:
        return None
    scaled = [n ** (1.0 / temperature) for n in sizes]
    return [s / sum(scaled) for s in scaled]


def mix(parts: list[list], fractions: list[float] | None, seed: int) -> list[list]:
    """Each source's records as they enter the mixed set: ``fractions`` of a set the sources' total size."""
    if fractions is None:
        return parts
    rng, total = random.Random(seed), sum(map(len, parts))
    out = []
    for records, share in zip(parts, fractions):
        want = max(1, round(share * total))
        if want <= len(records):
            out.append([records[i] for i in sorted(rng.sample(range(len(records)), want))])
        else:  # fewer than its share: every record once, the rest drawn again
            out.append(records + [records[i] for i in rng.choices(range(len(records)), k=want - len(records))])
    return out


def read_dataset(kind, data, which: str, input_kind: str, seed: int, out: Path, log) -> tuple[list, dict[str, list]]:
    """(records, {source label: indices into records}) of ``data.train`` or ``data.eval``: one
    source read as before, several read one by one and mixed; the mix and its counts are written
    to ``OUT/data_sources_<which>.json``."""
    sources = sources_of(data, which)
    if len(sources) == 1 and sources[0].weight is None and not sources[0].options:
        records = kind.records(sources[0].path, input_kind, which, log)
        return records, {}
    parts = [kind.records(s.path, input_kind, f"{which}-{s.label}", log,
                          dataclasses.replace(data, **s.options) if s.options else None) for s in sources]
    fractions = shares([len(p) for p in parts], [s.weight for s in sources], data.mix_temperature) \
        if which == "train" else None
    mixed = mix(parts, fractions, seed)
    records, groups, summary = [], {}, []
    for s, part, used in zip(sources, parts, mixed):
        groups[s.label] = list(range(len(records), len(records) + len(used)))
        records += used
        summary.append({"source": s.path, "label": s.label, "weight": s.weight, "options": s.options,
                        "records": len(part), "in_mix": len(used)})
        log(f"[data:{which}] source {s.label}: {len(part)} records -> {len(used)} in the mix"
            + (f" (weight {s.weight:g})" if s.weight is not None else ""))
    if len({r.responses for r in records}) > 1:
        raise UserError("every source must give records with the same number of responses (pairs with pairs)",
                        where=f"data.{which}")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"data_sources_{which}.json").write_text(json.dumps(summary, indent=1))
    return records, groups
