"""Model versions: a registry folder in which every finished model is a version with its lineage.

```
REGISTRY/
  versions/v1.json, v2.json ...   one record per version
  index.json                      the history of current versions (the last one is current)
```

A record holds the id, the creation time (UTC), the model folder (``final/`` of a run) with the
digest of its manifest, the run folder, the parent (the version, if any, whose model training
started from, and that model's path), the reference model (and its version), the data files
with their sha256 and the hash of the tokenized records, loss, steps, the resolved config, the
final train and eval metrics, and an evaluation report when one is attached.

``promote`` makes a version current after checking its model folder against its manifest;
``rollback`` makes the previous current version current again; ``diff`` compares two versions.
Records and the index are replaced atomically, and a new id is claimed with a hard link, so two
runs finishing at once never take the same id.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path

from dpokit.errors import UserError
from dpokit.store.atomic import folder_digest, verify, write_text_atomic

REGISTRY_PREFIX = "registry:"
REGISTRY_ENV = "DPOKIT_REGISTRY"
_ID = re.compile(r"v(\d+)")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def abs_path(path: str | None) -> str | None:
    """An existing local path made absolute; anything else (``builtin:...``, a hub id) as given."""
    return str(Path(path).resolve()) if path and Path(path).exists() else path


class Registry:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.folder = self.root / "versions"

    def _read_json(self, path: Path) -> dict:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read the registry: {exc}", where=str(path)) from None

    def require(self) -> Registry:
        if not self.root.is_dir():
            raise UserError("registry folder not found", where=str(self.root))
        return self

    def ids(self) -> list[str]:
        found = [(int(m.group(1)), p.stem) for p in self.folder.glob("v*.json") if (m := _ID.fullmatch(p.stem))]
        return [vid for _, vid in sorted(found)]

    def get(self, vid: str) -> dict:
        if not _ID.fullmatch(vid):
            raise UserError("not a version id (v1, v2, ...)", where=vid)
        path = self.folder / f"{vid}.json"
        if not path.is_file():
            raise UserError(f"no such version in {self.root} (known: {', '.join(self.ids()) or 'none'})", where=vid)
        return self._read_json(path)

    def records(self) -> list[dict]:
        return [self.get(vid) for vid in self.ids()]

    def add(self, record: dict) -> str:
        """Store ``record`` under the next free id and return the id."""
        n = max((int(vid[1:]) for vid in self.ids()), default=0) + 1
        tmp = self.folder / f".new-{uuid.uuid4().hex}"
        while True:
            vid = f"v{n}"
            write_text_atomic(tmp, json.dumps({"id": vid, **record}, indent=1))
            try:
                os.link(tmp, self.folder / f"{vid}.json")  # fails if another run took this id
                return vid
            except FileExistsError:
                n += 1
            except OSError as exc:
                raise UserError(f"could not register a version: {exc.strerror}", where=str(self.folder)) from None
            finally:
                with contextlib.suppress(OSError):
                    tmp.unlink()

    def update(self, record: dict) -> None:
        write_text_atomic(self.folder / f"{record['id']}.json", json.dumps(record, indent=1))

    def history(self) -> list[str]:
        path = self.root / "index.json"
        return self._read_json(path).get("history", []) if path.is_file() else []

    def current(self) -> str | None:
        history = self.history()
        return history[-1] if history else None

    def set_history(self, history: list[str], action: str, details: dict | None = None) -> None:
        self._write_index(history, action, details)

    def add_event(self, action: str, details: dict | None = None) -> None:
        """Record something decided about the registry that leaves the current version as it is."""
        self._write_index(self.history(), action, details)

    def events(self) -> list[dict]:
        path = self.root / "index.json"
        return self._read_json(path).get("events", []) if path.is_file() else []

    def last_event(self) -> dict:
        events = self.events()
        return events[-1] if events else {}

    def _write_index(self, history: list[str], action: str, details: dict | None) -> None:
        path = self.root / "index.json"
        index = self._read_json(path) if path.is_file() else {}
        event = {"time": utc_now(), "action": action, "current": history[-1] if history else None, **(details or {})}
        index.setdefault("events", []).append(event)
        index["history"] = history
        write_text_atomic(path, json.dumps(index, indent=1))

    def find_model(self, path: str | None) -> str | None:
        """The newest version whose model is this folder (same path, or same manifest digest)."""
        if not path:
            return None
        path = pin_version(path)  # registry:... forms name a version's folder
        resolved, digest = abs_path(path), folder_digest(Path(path)) if Path(path).is_dir() else None
        for record in reversed(self.records()):
            if record["model"] == resolved or (digest and record.get("model_sha256") == digest):
                return record["id"]
        return None


# -- attaching an evaluation ----------------------------------------------------------------------

def attach_eval(registry: Registry, report: dict, model: str, ref_model: str | None = None,
                version: str | None = None, required: bool = True) -> str | None:
    """Store an evaluation report in a version: ``version``, or the one whose model is ``model``;
    when no version has that model, None if not ``required``."""
    vid = version or registry.require().find_model(model)
    if vid is None and not required:
        return None
    if vid is None:
        raise UserError(f"no version in {registry.root} has this model; name one with --version", where=model)
    record = registry.get(vid)
    record["eval"] = {"report": report, "source": "dpokit eval", "model": abs_path(model),
                      "reference_model": abs_path(ref_model), "added": utc_now()}
    registry.update(record)
    return vid


# -- the commands: list, show, promote, rollback, diff ----------------------------------------------

def model_problem(record: dict) -> str | None:
    """Why a version's model folder cannot be used as it is, or None."""
    path = Path(record["model"])
    if not path.is_dir():
        return f"model folder {path} is missing"
    reason = verify(path)
    if reason is None and folder_digest(path) != record.get("model_sha256"):
        reason = "it holds a different model than the one registered"
    return f"model folder {path} fails verification: {reason}" if reason else None


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def metrics_of(record: dict) -> dict[str, float]:
    """Train metrics, ``eval/`` metrics and ``report/`` values of the attached evaluation."""
    report = (record.get("eval") or {}).get("report") or {}
    out = {k: v for k, v in (record.get("metrics") or {}).items() if _number(v)}
    out.update({f"eval/{k}": v for k, v in (record.get("eval_metrics") or {}).items() if _number(v)})
    out.update({f"report/{k}": v for k, v in report.items() if _number(v)})
    return out


def _flatten(d, prefix: str = "") -> dict:
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def list_versions(registry: Registry) -> str:
    records, current = registry.require().records(), registry.current()
    if not records:
        return f"no versions in {registry.root}"
    lines = [f"  {'id':6s}{'created':27s}{'parent':8s}{'loss':10s}{'steps':>6s}  {'update':9s}model"]
    for r in records:
        mark = "*" if r["id"] == current else " "
        lines.append(f"{mark} {r['id']:6s}{r['created']:27s}{r['parent'] or '-':8s}{r['loss']:10s}{r['steps']:>6d}  "
                     f"{_decision(r):9s}{r['model']}")
    history = registry.history()
    lines.append(f"current: {current or 'none'}" + (f" (history: {' -> '.join(history)})" if history else ""))
    return "\n".join(lines)


def show_version(registry: Registry, vid: str | None = None, as_json: bool = False) -> str:
    vid = vid or registry.require().current()
    if vid is None:
        raise UserError("no version is current; name one (dpokit versions list)", where=str(registry.root))
    r = registry.get(vid)
    if as_json:
        return json.dumps(r, indent=1)
    ref = r.get("reference") or {}
    lines = [f"{vid}{' (current)' if vid == registry.current() else ''}",
             f"created    {r['created']}",
             f"model      {r['model']} [{model_problem(r) or 'verified'}]",
             f"parent     {r['parent'] or '-'} ({r['parent_model']})",
             f"reference  {ref.get('model') or '-'}" + (f" ({ref['version']})" if ref.get("version") else ""),
             f"loss       {r['loss']}, {r['steps']} steps"]
    for name, d in r["data"].items():
        lines.append(f"data       {name} {d['path']} sha256 {str(d['sha256'])[:12]} "
                     f"tokens {str(d['tokens_sha256'])[:12]}")
    lines += _update_lines(r)
    lines += ["metrics", *(f"  {k:32s}{v:12.5g}" for k, v in metrics_of(r).items())]
    return "\n".join(lines)


def _decision(record: dict) -> str:
    """What ``dpokit update`` decided about a version: promoted, refused, pending (not yet
    decided), or ``-`` for a version no update made."""
    update = record.get("update")
    if not update:
        return "-"
    decision = update.get("decision")
    return "pending" if decision is None else "promoted" if decision["promoted"] else "refused"


def _update_lines(record: dict) -> list[str]:
    update = record.get("update")
    if not update:
        return []
    lines = [f"update     {update['id']}: challenger of {update['champion']} (reference: {update['reference']}), "
             f"{_decision(record)}"]
    decision = update.get("decision")
    if decision:
        lines.append(f"decision   {decision['summary']}")
        lines += [f"  refused: {reason}" for reason in decision["reasons"]]
        for name, acc in update["figures"].get("pairs", {}).items():
            lines.append(f"  held-out pairs {name}: accuracy {acc['champion']:.3f} (champion) -> "
                         f"{acc['challenger']:.3f}")
    return lines


def promote(registry: Registry, vid: str, action: str | None = None) -> str:
    record, history = registry.require().get(vid), registry.history()
    if history and history[-1] == vid:
        return f"{vid} is already current"
    problem = model_problem(record)
    if problem:
        raise UserError(f"not promoted: {problem}", where=vid)
    registry.set_history([*history, vid], action or f"promote {vid}")
    return f"{vid} is now current (was {history[-1] if history else 'none'})"


def rollback(registry: Registry, action: str | None = None, details: dict | None = None) -> str:
    history = registry.require().history()
    if len(history) < 2:
        raise UserError("nothing to roll back to: no version was current before "
                        f"{history[-1] if history else 'now'}", where=str(registry.root))
    problem = model_problem(registry.get(history[-2]))
    if problem:
        raise UserError(f"cannot roll back to {history[-2]}: {problem}", where=str(registry.root))
    registry.set_history(history[:-1], action or f"rollback {history[-1]}", details)
    return f"{history[-2]} is current again (was {history[-1]})"


def diff_versions(registry: Registry, a: str, b: str) -> str:
    from dpokit.config.flags import RENAMED_FIELDS  # at call time: the config package reads this module

    ra, rb = registry.require().get(a), registry.get(b)
    ma, mb = metrics_of(ra), metrics_of(rb)
    lines = [f"{'metric':34s}{a:>12s}{b:>12s}{'change':>12s}"]
    for k in sorted(ma.keys() | mb.keys()):
        va, vb = ma.get(k), mb.get(k)
        change = f"{vb - va:+12.5g}" if va is not None and vb is not None else f"{'':>12s}"
        lines.append(f"{k:34s}{_cell(va)}{_cell(vb)}{change}")
    for title, part in (("config", "config"), ("lineage", ("parent", "parent_model", "reference", "data"))):
        fa, fb = (_flatten(r[part] if isinstance(part, str) else {k: r.get(k) for k in part}) for r in (ra, rb))
        if part == "config":  # a version saved before a field was renamed compares under the new name
            fa, fb = ({RENAMED_FIELDS.get(k, k): v for k, v in f.items()} for f in (fa, fb))
        changed = [f"  {k}: {fa.get(k)!r} -> {fb.get(k)!r}" for k in sorted(fa.keys() | fb.keys())
                   if fa.get(k) != fb.get(k)]
        lines += [f"{title}: {len(changed)} difference(s)", *changed]
    return "\n".join(lines)


def _cell(v: float | None) -> str:
    return f"{v:12.5g}" if v is not None else f"{'-':>12s}"


# -- registry:DIR@vN arguments ------------------------------------------------------------------------------

def pin_version(spec: str | None) -> str | None:
    """A ``registry:...`` argument as the folder it names now, for what must not move when another
    version is promoted later (a run's lineage, an online run's initial model); others as given."""
    return registry_model(spec) if spec and spec.startswith(REGISTRY_PREFIX) else spec


def registry_model(spec: str) -> str:
    """The model folder of ``registry:[DIR][@VERSION]`` (VERSION: ``vN`` or ``current``, the default),
    checked against the manifest it was registered with."""
    rest = spec[len(REGISTRY_PREFIX):]
    root, _, version = rest.rpartition("@") if "@" in rest else (rest, "", "current")
    root = root or os.environ.get(REGISTRY_ENV, "")
    if not root:
        raise UserError("names no registry folder and DPOKIT_REGISTRY is not set (registry:DIR@vN)", where=spec)
    registry = Registry(root).require()
    vid = registry.current() if version in ("", "current") else version
    if vid is None:
        raise UserError(f"no version of {root} is current (promote one, or name it: registry:{root}@vN)", where=spec)
    record = registry.get(vid)
    if problem := model_problem(record):
        raise UserError(f"version {vid}: {problem}", where=spec)
    return record["model"]
