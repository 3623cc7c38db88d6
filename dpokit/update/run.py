"""``dpokit update``: new feedback in, a challenger trained from the champion, A/B-tested against
it, promoted or refused, with the decision and its figures in the registry.

An update is a journal (``REGISTRY/updates/ID/journal.json``) that moves through train →
evaluate → decide → done, each step's result written atomically before the next starts. ID is a
digest of what the update is asked to do (the data files' contents and every setting), so the
same command run again finds its journal: after a crash it continues at the step that did not
finish, and after a finished update it reports the decision instead of training again. A
version is made current only by the last step, so a failure anywhere before it (a kill, a full
disk, a permission error) leaves the champion serving.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import random
import shutil
from pathlib import Path
from typing import Iterator

from dpokit.config import RunConfig
from dpokit.data.sources import iter_rows
from dpokit.errors import UserError
from dpokit.store.atomic import file_sha256, verify, write_text_atomic
from dpokit.store.versions import Registry, promote, utc_now
from dpokit.update.config import UpdateConfig
from dpokit.update.decision import decide
from dpokit.update.lock import registry_lock

UPDATES = "updates"


def update(cfg: UpdateConfig, log=print) -> dict:
    """Run (or continue) the update ``cfg`` asks for; returns its finished journal."""
    with update_session(cfg.train.registry, cfg.update.wait, lambda: update_key(cfg)) as (registry, key, folder):
        return _run(cfg, registry, key, folder, log)


@contextlib.contextmanager
def update_session(root: str, wait: bool, key_of) -> Iterator[tuple[Registry, str, Path]]:
    """(registry, update id, its folder) with the registry's update lock held, and any failure
    inside reported with the champion still serving (``champion_kept``)."""
    registry = Registry(root).require()
    with registry_lock(registry.root, wait=wait):
        key = key_of()
        folder = registry.root / UPDATES / key
        with champion_kept(registry, folder):
            yield registry, key, folder


@contextlib.contextmanager
def champion_kept(registry: Registry, folder: Path) -> Iterator[None]:
    """Any failure inside as one UserError that names the champion still serving."""
    try:
        yield
    except OSError as exc:  # disk full, permissions: nothing was made current
        raise UserError(f"the update failed ({exc.strerror or exc}){_serving(registry)}",
                        where=str(exc.filename or folder)) from None
    except UserError as exc:
        raise UserError(f"{exc.detail}{_serving(registry)}", exc.where, exc.field) from None


def _serving(registry: Registry) -> str:
    """What a failed update leaves: the champion it did not replace."""
    current = registry.current()
    return f"; {current} is still current" if current else ""


def open_journal(registry: Registry, key: str, folder: Path, log) -> tuple[Path, dict]:
    """(journal path, state): a new journal naming the current version as the champion, or the one
    an earlier run of the same update left (its step says where to continue; ``done``: finished)."""
    journal = folder / "journal.json"
    state = json.loads(journal.read_text()) if journal.is_file() else None
    if state is None:
        champion = registry.current()
        if champion is None:
            raise UserError("no version is current: register and promote one first (dpokit versions promote vN)",
                            where=str(registry.root))
        folder.mkdir(parents=True, exist_ok=True)
        state = {"id": key, "started": utc_now(), "champion": champion, "step": "train"}
        save_journal(journal, state)
        log(f"[update] {key}: challenger of {champion}")
    elif state["step"] == "done":
        log(f"[update] {key} was already done: {state['decision']['summary']}")
    else:
        log(f"[update] {key}: continuing at {state['step']}")
    return journal, state


def _run(cfg: UpdateConfig, registry: Registry, key: str, folder: Path, log) -> dict:
    journal, state = open_journal(registry, key, folder, log)
    if state["step"] == "done":
        return state
    if state["step"] == "train":
        state["data"], data = mixed_data(cfg, folder, log)
        state["challenger"] = train_challenger(cfg, registry, state, folder, data, log)
        advance(journal, state, "evaluate")
    if state["step"] == "evaluate":
        from dpokit.update.ab import ab_figures

        state["figures"] = ab_figures(cfg, registry, state, folder, log)
        advance(journal, state, "decide")
    conclude(cfg, registry, state)
    advance(journal, state, "done")
    return state


def save_journal(journal: Path, state: dict) -> None:
    write_text_atomic(journal, json.dumps(state, indent=1))


def advance(journal: Path, state: dict, step: str) -> None:
    state["step"] = step
    save_journal(journal, state)


def update_key(cfg: UpdateConfig) -> str:
    """A digest of what the update does: its files' contents and its settings (less where the
    registry is and whether to wait for its lock)."""
    settings = cfg.to_dict()
    settings["train"].pop("registry")
    settings["update"].pop("wait")
    u = cfg.update
    return settings_key(settings, [cfg.data.train, *(p for p, _ in u.replay()), u.eval_prompts, *u.pair_files()])


def settings_key(settings: dict, files: list[str]) -> str:
    """An update's id: a digest of its settings and of its files' contents."""
    digests = {p: file_sha256(Path(p)) if Path(p).is_file() else p for p in files}
    blob = json.dumps({"settings": settings, "files": digests}, sort_keys=True, default=str)
    return "u-" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def lineage_base(registry: Registry, vid: str) -> str:
    """The model the lineage of ``vid`` started from: the first ancestor's starting model."""
    record, seen = registry.get(vid), set()
    while record.get("parent") and record["parent"] not in seen:
        seen.add(record["id"])
        record = registry.get(record["parent"])
    return record["parent_model"]


def run_config(cfg: UpdateConfig, registry: Registry, state: dict, folder: Path, data: str) -> RunConfig:
    """The challenger's training run: from the champion, on ``data``, in the update's folder."""
    champion = registry.get(state["champion"])
    ref = lineage_base(registry, champion["id"]) if cfg.update.reference == "base" else None
    run = RunConfig(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(RunConfig)})
    run = dataclasses.replace(
        run, model=dataclasses.replace(cfg.model, path=champion["model"], ref_path=ref),
        data=dataclasses.replace(cfg.data, train=data), train=dataclasses.replace(cfg.train, output=str(folder / "run")))
    return run.validate()


def train_challenger(cfg: UpdateConfig, registry: Registry, state: dict, folder: Path, data: str, log) -> str:
    """The challenger's version id: trained (or its training continued) and registered once."""
    return train_registered(lambda: run_config(cfg, registry, state, folder, data), registry, state, folder,
                            {"reference": cfg.update.reference}, log)


def train_registered(make_run, registry: Registry, state: dict, folder: Path, info: dict, log) -> str:
    """The version id of the run ``make_run()`` gives (its output ``folder/run``, its registry
    ``registry``): trained, or continued, and its record marked with the update (and ``info``) once."""
    from dpokit.train.loop import train_within

    found = [r["id"] for r in registry.records() if (r.get("update") or {}).get("id") == state["id"]]
    if found:
        return found[0]
    final = folder / "run" / "final"
    vid = registry.find_model(str(final)) if final.is_dir() and verify(final) is None else None
    if vid is None:
        if final.exists():  # finished but never registered (a kill in between): train it again
            shutil.rmtree(final)
        train_within(make_run(), "the challenger's training", log)
        vid = registry.find_model(str(final))
    record = registry.get(vid)
    record["update"] = {"id": state["id"], "champion": state["champion"], "data": state["data"], **info}
    registry.update(record)
    return vid


def mixed_data(cfg: UpdateConfig, folder: Path, log) -> tuple[dict, str]:
    """(records per source, the training file): the new data as it is, or with the replay
    shares of earlier data drawn into one file (seeded, so a rerun draws the same records)."""
    replay = cfg.update.replay()
    new = cfg.data.train
    if not replay:
        return {new: None}, new
    rows = [obj for _, obj in iter_rows(new)]
    if not rows:
        raise UserError("no records", where=new)
    rng = random.Random(cfg.train.seed)
    want = len(rows) / (1 - sum(s for _, s in replay))
    counts, mixed = {new: len(rows)}, list(rows)
    for path, share in replay:
        old = [obj for _, obj in iter_rows(path)]
        if not old or set(old[0]) != set(rows[0]):
            raise UserError(f"replay data must have the fields of {new} ({', '.join(sorted(rows[0]))})", where=path)
        k = round(share * want)
        drawn = rng.sample(old, k) if k <= len(old) else rng.choices(old, k=k)  # fewer than asked: repeats
        counts[path] = k
        mixed += drawn
    rng.shuffle(mixed)
    out = folder / "train.jsonl"
    write_text_atomic(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in mixed))
    log("[update] training data: " + ", ".join(f"{n} from {p}" for p, n in counts.items()))
    return counts, str(out)


def conclude(cfg: UpdateConfig, registry: Registry, state: dict) -> None:
    """Decide by the rule, record the decision in the challenger's version, then promote or refuse."""
    promoted, reasons = decide(cfg.update.rule(), state["figures"])
    f = state["figures"]
    settle(registry, state, promoted, reasons, f"win rate {f['win_rate']:.1%} [{f['win_low']:.1%}, "
           f"{f['win_high']:.1%}], KL {f['kl']:.3f}", dataclasses.asdict(cfg.update.rule()))


def settle(registry: Registry, state: dict, promoted: bool, reasons: list[str], details: str, rule: dict) -> None:
    """Record a decision (and ``state["figures"]``) in the challenger's version and the index,
    then promote or refuse; a current version that changed meanwhile refuses."""
    champion, challenger = state["champion"], state["challenger"]
    current = registry.current()
    if current not in (champion, challenger):
        promoted, reasons = False, [*reasons, f"the current version changed from {champion} to {current} "
                                              "while the challenger was trained"]
    summary = f"{challenger} {'promoted over' if promoted else 'refused against'} {champion}: {details}"
    state["decision"] = {"promoted": promoted, "reasons": reasons, "summary": summary, "rule": rule,
                         "time": utc_now()}
    record = registry.get(challenger)
    record["update"] = {**record.get("update", {}), "decision": state["decision"], "figures": state["figures"]}
    registry.update(record)
    action = f"update {champion} -> {challenger}: " + ("promoted" if promoted else "refused")
    if promoted:
        promote(registry, challenger, action)
    elif registry.last_event().get("action") != action:  # a rerun after a kill records it once
        registry.add_event(action, {"reasons": reasons})
