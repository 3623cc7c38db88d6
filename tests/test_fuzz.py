"""Fuzzing: over a thousand malformed or hostile data files and configs, generated from a seed,
through the real command line (``dpokit.cli.main``).

Every data file holds valid records and at most one hostile one (wrong types, missing fields, NaN
and Infinity literals, invalid UTF-8, lone surrogates, deep nesting, huge strings, binary junk,
truncated or empty files) in JSON Lines, JSON arrays, CSV and gzip; Parquet files get the
file-level junk (empty files, random bytes). ``dpokit data check`` must end with exit code 2 and
name the file and the record (line or record), or with 0 for an input that is in fact valid; ``dpokit data convert --on-error skip`` must skip and count the
record. Configs get the same: ``dpokit dpo --config BAD.yaml`` ends with exit code 2 and one line.
Any other exception is a failure. A sample runs as real processes: no traceback, no hang, and
bounded memory for a 10 MB line and deep nesting.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import os
import random
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

from dpokit.cli import main

ROOT = Path(__file__).resolve().parents[1]
SEED = 2026

VALID = [
    {"prompt": "Rate the film.", "chosen": "Lovely and warm.", "rejected": "Dull."},
    {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello!"}],
     "rejected": [{"role": "assistant", "content": "Go away."}]},
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: No."},
    {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
    {"prompt": "Q", "completions": ["best", "middle", "worst"], "scores": [3, 2, 1]},
    {"prompt": "Q", "ranking": ["first", "second"]},
    {"prompt": "Q", "response_a": "a", "response_b": "b", "winner": "model_a"},
    {"prompt": "Q", "completion": "fine", "label": True},
    {"prompt": "Q", "completion": "an answer"},
    {"prompt": "Q", "items": ["x", "y", "z"], "clicks": [1]},
]
"""One valid record of each format; a file repeats one of them with varied text."""

WRONG = [None, 0, -1, 3.5, True, False, [], {}, [1, 2], [None], {"role": "user"}, [{"role": 1, "content": 2}],
         [{"role": "user", "content": {"type": "image"}}], [[[]]], {"a": {"b": {"c": []}}}]
"""Values that no text field accepts."""


@dataclass
class Case:
    name: str
    suffix: str
    content: bytes
    bad: bool
    """Must fail (exit 2); otherwise 0 or 2 are both acceptable (e.g. a huge but valid answer)."""
    at: str | None
    """Where the error must point, after the file name (``:3``, ``:record 2``, ``:row 2``); None: the file."""


def _varied(rec: dict, i: int) -> dict:
    rec = json.loads(json.dumps(rec))
    for key in ("chosen", "rejected", "completion", "prompt"):
        if isinstance(rec.get(key), str) and not rec[key].startswith("\n"):
            rec[key] = f"{rec[key]} {i}"
    return rec


def _deep(depth: int, leaf: str = "1") -> str:
    return "[" * depth + leaf + "]" * depth


def _hostile_line(rng: random.Random, base: dict) -> tuple[str, bytes, bool]:
    """(kind, the hostile JSON Lines line, whether it must be rejected)."""
    rec = json.loads(json.dumps(base))
    fields = [k for k in rec if k not in ("scores",)]
    kind = rng.choice(["wrong_type", "missing", "nan", "infinity", "big_number", "utf8", "surrogate", "deep",
                       "junk", "truncated", "not_object", "huge", "nul", "weight", "extra_data", "deep_field"])
    if kind == "wrong_type":
        rec[rng.choice(fields)] = rng.choice(WRONG)
        return kind, json.dumps(rec).encode(), True
    if kind == "missing":
        for key in [k for k in fields if rng.random() < 0.7] or fields[:1]:
            del rec[key]
        return kind, json.dumps(rec).encode(), True
    if kind in ("nan", "infinity", "big_number"):
        literal = {"nan": "NaN", "infinity": rng.choice(["Infinity", "-Infinity"]), "big_number": "1e999"}[kind]
        key = rng.choice(fields + ["weight"])
        rec[key] = "@@"
        return kind, json.dumps(rec).replace('"@@"', literal).encode(), True
    if kind == "utf8":
        text = json.dumps(rec).encode()
        at = rng.randrange(1, len(text) - 1)
        return kind, text[:at] + rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"]) + \
            text[at:], True
    if kind == "surrogate":  # valid JSON escapes, but not a character: no UTF-8 encoding exists
        key = rng.choice([k for k in fields if isinstance(rec[k], str)] or fields)
        rec[key] = "@@"
        return kind, json.dumps(rec).replace('"@@"', rng.choice(['"\\ud800"', '"a\\udfff b"'])).encode(), True
    if kind == "deep":
        return kind, _deep(rng.choice([1000, 100_000])).encode(), True
    if kind == "deep_field":
        rec[rng.choice(fields)] = "@@"
        return kind, json.dumps(rec).replace('"@@"', _deep(rng.choice([50, 5000]), '"x"')).encode(), True
    if kind == "junk":
        return kind, bytes(rng.randrange(256) for _ in range(rng.randint(1, 200))).replace(b"\n", b" "), True
    if kind == "truncated":
        text = json.dumps(rec)
        return kind, text[:rng.randrange(1, len(text) - 1)].encode(), True
    if kind == "not_object":
        return kind, rng.choice([b"[]", b"1", b'"text"', b"null", b"true", b"[{}]"]), True
    if kind == "huge":  # a few MB in one answer: valid, must not blow up
        key = rng.choice([k for k in fields if isinstance(rec[k], str)] or fields)
        rec[key] = "word " * rng.randint(200_000, 600_000)
        return kind, json.dumps(rec).encode(), False
    if kind == "nul":
        key = rng.choice([k for k in fields if isinstance(rec[k], str)] or fields)
        rec[key] = "\x00\x01 control \x1b[31m"
        return kind, json.dumps(rec).encode(), False
    if kind == "weight":
        rec["weight"] = rng.choice([-1, "heavy", [1], {"w": 1}, True])
        return kind, json.dumps(rec).encode(), True
    return kind, json.dumps(rec).encode() + b" " + json.dumps(rec).encode(), True  # extra_data


def _jsonl_case(rng: random.Random, i: int) -> Case:
    base = rng.choice(VALID)
    n = rng.randint(1, 6)
    lines = [json.dumps(_varied(base, j)).encode() for j in range(n)]
    kind, bad_line, bad = _hostile_line(rng, base)
    at = rng.randrange(n + 1)
    lines.insert(at, bad_line)
    if kind == "huge" and rng.random() < 0.02:
        lines[at] = json.dumps(_varied(base, 0) | {"prompt": "x" * 10_000_000}).encode()  # a 10 MB line
    suffix = rng.choice([".jsonl"] * 4 + [".jsonl.gz"])
    content = b"\n".join(lines) + b"\n"
    return Case(f"{i}-{kind}{suffix}", suffix, content, bad, f":{at + 1}")


def _json_case(rng: random.Random, i: int) -> Case:
    base = rng.choice(VALID)
    items = [_varied(base, j) for j in range(rng.randint(1, 5))]
    kind = rng.choice(["wrong_type", "missing", "not_object", "nan", "deep", "truncated"])
    at = rng.randrange(len(items) + 1)
    if kind == "wrong_type":
        bad = dict(base)
        bad[rng.choice(list(base))] = rng.choice(WRONG)
        items.insert(at, bad)
    elif kind == "missing":
        items.insert(at, {k: v for k, v in base.items() if rng.random() < 0.3 and k not in ("chosen", "prompt")})
    elif kind == "not_object":
        items.insert(at, rng.choice([1, "x", None, [base]]))
    if kind in ("wrong_type", "missing", "not_object"):
        return Case(f"{i}-array-{kind}.json", ".json", json.dumps(items).encode(), True, f":record {at + 1}")
    text = json.dumps(items, indent=1)
    if kind == "nan":
        text = text.replace("[", "[NaN, ", 1)
    elif kind == "deep":
        text = _deep(rng.choice([3000, 200_000]))
    else:
        text = text[:rng.randrange(1, len(text) - 1)]
    return Case(f"{i}-array-{kind}.json", ".json", text.encode(), True, None)


def _csv_case(rng: random.Random, i: int) -> Case:
    kind = rng.choice(["too_many", "empty_cell", "utf8", "quote", "deep_json", "bad_list", "nul"])
    if kind in ("deep_json", "bad_list"):  # lists in cells, as JSON: a rated file
        rows = [["prompt", "completions", "scores"]] + [[f"p{j}", '["a", "b"]', "[2, 1]"] for j in range(3)]
    else:
        rows = [["prompt", "chosen", "rejected"]] + [[f"p{j}", f"good {j}", f"bad {j}"]
                                                     for j in range(rng.randint(1, 5))]
    at = rng.randrange(1, len(rows) + 1)
    if kind == "too_many":
        rows.insert(at, ["p", "c", "r", "extra", "more"])
    elif kind == "empty_cell":  # an empty answer is valid input (cleaning drops it)
        rows.insert(at, ["p", "", "r"])
    elif kind == "deep_json":
        rows.insert(at, ["p", _deep(rng.choice([50, 100_000]), '"x"'), "[1, 2]"])
    elif kind == "bad_list":
        rows.insert(at, ["p", rng.choice(['["a", ', "[NaN]", '[1, 2]', "[[]]"]), rng.choice(["[1, 2]", "[NaN, 1]", "x"])])
    elif kind == "nul":
        rows.insert(at, ["p", "c\x00", "r"])
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    data = buffer.getvalue().encode()
    if kind == "utf8":
        data = data.replace(b"bad", b"b\xffd", 1)
    elif kind == "quote":
        data += b'"p,"never closed\n'
    suffix = rng.choice([".csv", ".csv", ".csv.gz"])
    bad = kind in ("too_many", "utf8", "quote", "deep_json", "bad_list")
    at_text = f":{at + 1}" if kind in ("too_many", "deep_json", "bad_list") else None
    return Case(f"{i}-{kind}{suffix}", suffix, data, bad, at_text)


def _file_case(rng: random.Random, i: int) -> Case:
    kind = rng.choice(["empty", "blank", "bom", "junk", "bad_gzip", "nul_bytes"])
    suffix = rng.choice([".jsonl", ".json", ".csv", ".jsonl.gz", ".parquet"])
    content = {"empty": b"", "blank": b"\n \n\t\n", "bom": b"\xef\xbb\xbf\n",
               "junk": bytes(rng.randrange(256) for _ in range(rng.randint(1, 4000))),
               "bad_gzip": b"\x1f\x8b\x08\x00" + bytes(rng.randrange(256) for _ in range(50)),
               "nul_bytes": b"\x00" * rng.randint(1, 5000)}[kind]
    return Case(f"{i}-file-{kind}{suffix}", suffix, content, True, None)


def data_cases() -> list[Case]:
    rng = random.Random(SEED)
    makers = [_jsonl_case] * 6 + [_json_case] * 2 + [_csv_case] * 2 + [_file_case]
    return [rng.choice(makers)(rng, i) for i in range(900)]


def _write(folder: Path, case: Case) -> Path:
    path = folder / case.name
    content = case.content
    if case.suffix.endswith(".gz") and not case.name.split("-")[1].startswith(("file", "bad_gzip")):
        content = gzip.compress(content, mtime=0)
    path.write_bytes(content)
    return path


def run_main(args: list[str]) -> tuple[int | None, str, str | None]:
    """(exit code, stdout + stderr, traceback of an unexpected exception)."""
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(args)
    except SystemExit as exc:  # argparse
        code = exc.code
    except BaseException:  # noqa: BLE001 - anything else is what the fuzzer looks for
        return None, out.getvalue() + err.getvalue(), traceback.format_exc(limit=-3)
    return code, out.getvalue() + err.getvalue(), None


def test_hostile_data_files(tmp_path):
    cases = data_cases()
    failures: list[str] = []
    skip_checked = skip_counted = 0
    for case in cases:
        path = _write(tmp_path, case)
        code, text, crash = run_main(["data", "check", str(path)])
        if crash:
            failures.append(f"{case.name}: crashed\n{crash}")
        elif code not in (0, 2) or (case.bad and code != 2):
            failures.append(f"{case.name}: exit code {code}\n{text[-500:]}")
        elif code == 2 and f"{path}{case.at or ''}" not in text:
            failures.append(f"{case.name}: the message does not name {path}{case.at or ''}\n{text[-500:]}")
        elif case.bad and case.at and len(case.content) < 100_000 and int(case.name.split("-")[0]) % 5 == 0:
            # Under --on-error skip the one bad record is skipped and counted; the rest are written.
            out = tmp_path / f"{path.name}.out.jsonl"
            code, text, crash = run_main(["data", "convert", str(path), str(out), "--to", "pairs",
                                          "--on-error", "skip", "--dedup", "off", "--no-drop-identical",
                                          "--no-drop-conflicts", "--no-drop-leaks", "--no-drop-empty"])
            report = json.loads((tmp_path / f"{path.name}.out.report.json").read_text()) if code == 0 else {}
            if crash or code not in (0, 2) or (code == 0 and sum(report["skipped"].values()) != 1):
                failures.append(f"{case.name} (--on-error skip): exit code {code}, "
                                f"skipped {report.get('skipped')}\n{crash or text[-500:]}")
            skip_checked += 1
            skip_counted += code == 0  # 2: the records left cannot become pairs (e.g. an SFT file)
        path.unlink()
    assert len(cases) >= 900 and skip_checked >= 80, skip_checked
    assert skip_counted >= skip_checked // 2, (skip_checked, skip_counted)
    assert not failures, f"{len(failures)} of {len(cases)} cases failed; the first ones:\n" + "\n".join(failures[:5])


BASE_CONFIG = {"model": {"path": "/nonexistent/model"}, "data": {"train": "/nonexistent/train.jsonl"},
               "train": {"max_steps": 2, "lr": 1e-5, "save_steps": 1}, "loss": {"name": "sigmoid"}}
CONFIG_VALUES = [None, -1, 0, 1e300, ".nan", ".inf", "-.inf", "text", True, [], {}, [1, [2, [3]]],
                 {"nested": {"deeper": 1}}, "x" * 100_000, 2**80]
FIELDS = ["model.path", "model.trust_remote_code", "lora.r", "lora.enabled", "data.max_length",
          "data.max_prompt_length", "data.format", "data.columns", "data.pair_margin", "data.on_error",
          "loss.name", "loss.beta", "loss.label_smoothing", "loss.tdpo_variant", "train.lr", "train.batch_size",
          "train.max_steps", "train.adam_betas", "train.max_grad_norm", "train.scheduler", "train.ref",
          "train.save_best_metric", "guard.lr_factor", "guard.max_kl", "guard.max_bad_steps", "guard.enabled"]


FLOATS = {"data.pair_margin", "loss.beta", "loss.label_smoothing", "train.lr", "train.max_grad_norm",
          "guard.lr_factor", "guard.max_kl"}


def config_cases() -> list[tuple[str, bytes, str | None]]:
    """(file name, content, the field the error must name, if known)."""
    rng = random.Random(SEED + 1)
    cases = []
    for i in range(300):
        kind = rng.choice(["value", "value", "value", "unknown", "section", "top", "yaml", "bytes"])
        cfg = json.loads(json.dumps(BASE_CONFIG))
        field = None
        if kind == "value":
            section, key = rng.choice(FIELDS).split(".")
            value = rng.choice(CONFIG_VALUES)
            cfg.setdefault(section, {})[key] = "@@" if isinstance(value, str) and value.startswith((".", "-.")) \
                else value
            text = json.dumps(cfg).replace('"@@"', value if isinstance(value, str) else "")
            if f"{section}.{key}" in FLOATS and value in (".nan", ".inf", "-.inf"):
                field = f"{section}.{key}"  # NaN and infinities are no numbers for a setting
        elif kind == "unknown":
            cfg.setdefault(rng.choice(["model", "train", "guard", "nope"]), {})[f"typo_{i}"] = 1
            text = json.dumps(cfg)
        elif kind == "section":
            cfg[rng.choice(["model", "data", "train", "guard", "loss"])] = rng.choice(CONFIG_VALUES[:12])
            text = json.dumps(cfg)
        elif kind == "top":
            text = rng.choice(["[1, 2]", "just text", "42", "- a\n- b", "null", _deep(rng.choice([100, 20_000]))])
        elif kind == "yaml":
            text = rng.choice(["a: [unclosed", "key: value: other", "!!python/object/apply:os.system ['true']",
                               "a: &x [*x]", "\t- tab", "model: {path: !!binary aGVsbG8=}",
                               "x: " + "{a: " * 5000 + "1" + "}" * 5000, "a: b\na: c\n" * 3])
        else:
            text = None
        content = bytes(rng.randrange(256) for _ in range(rng.randint(0, 300))) if text is None else text.encode()
        cases.append((f"{i}-{kind}.yaml", content, field))
    return cases


def test_hostile_configs(tmp_path):
    failures = []
    cases = config_cases()
    for name, content, field in cases:
        path = tmp_path / name
        path.write_bytes(content)
        code, text, crash = run_main(["dpo", "--config", str(path), "--output", str(tmp_path / "run")])
        lines = [ln for ln in text.splitlines() if ln.startswith("dpokit: error:")]
        if crash or code != 2 or len(lines) != 1 or (field and f"field '{field}'" not in lines[0]):
            failures.append(f"{name}: exit code {code}\n{crash or text[-400:]}")
    assert len(cases) >= 300
    assert not failures, f"{len(failures)} of {len(cases)} configs failed; the first ones:\n" + "\n".join(failures[:5])


def test_sample_in_real_processes(tmp_path):
    """A sample of the cases, each in its own process, side by side (few, as each process spends
    seconds importing torch): exit code 2, no traceback, no hang; a 10 MB line and 100,000-deep
    nesting stay within a few hundred MB (the imports alone take about 250 MB)."""
    rng = random.Random(SEED + 2)
    cases = rng.sample([c for c in data_cases() if c.bad and len(c.content) < 100_000], 2)
    big = {"prompt": "x" * 10_000_000, "chosen": 1, "rejected": "r"}
    cases += [Case("big.jsonl", ".jsonl", json.dumps(big).encode() + b"\n", True, ":1"),
              Case("deep.jsonl", ".jsonl", _deep(100_000).encode() + b"\n", True, ":1")]
    procs = []
    for case in cases:
        path = _write(tmp_path, case)
        with open(f"{path}.out", "wb") as out, open(f"{path}.err", "wb") as err:
            procs.append((case, path, subprocess.Popen([sys.executable, "-c", PEAK_MEMORY, "data", "check", str(path)],
                                                       stdout=out, stderr=err, env={**os.environ, "PYTHONPATH": str(ROOT)})))
    for case, path, proc in procs:
        try:
            code = proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"{case.name}: no answer after 120 s")
        stderr = Path(f"{path}.err").read_text(errors="replace")
        text = Path(f"{path}.out").read_text(errors="replace") + stderr
        assert code == 2, (case.name, text[-500:])
        assert "Traceback" not in stderr, (case.name, text[-2000:])
        assert f"{path}{case.at or ''}" in text, (case.name, text[-500:])
        peak = int(stderr.rsplit("peak memory ", 1)[1].split()[0])
        assert peak < 500 * 1024, f"{case.name}: peak memory {peak // 1024} MB"


PEAK_MEMORY = """import atexit, runpy, sys
def peak():  # VmHWM: this process's own peak (a child's ru_maxrss counts the parent's memory at fork)
    kb = next(line.split()[1] for line in open("/proc/self/status") if line.startswith("VmHWM"))
    print(f"peak memory {kb} kB", file=sys.stderr)
atexit.register(peak)
sys.argv[0] = "dpokit"
runpy.run_module("dpokit.cli", run_name="__main__")
"""
"""``python -m dpokit.cli ARGS`` that reports its peak memory on exit."""
