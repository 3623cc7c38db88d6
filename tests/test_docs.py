"""The docs are true: every ``dpokit`` command in README.md and docs/*.md parses with today's CLI,
every flag they name exists, every ``section.field`` they name is a config field, and the
defaults they state are the defaults the configs hold. A renamed or removed flag fails here."""

from __future__ import annotations

import argparse
import itertools
import re
import shlex
from pathlib import Path

import pytest

from dpokit.cli import DATA_FLAGS, EVAL_FLAGS, RANK_FLAG_SETS, build_parser
from dpokit.config import FLAG_FIELDS, EvalConfig, RunConfig
from dpokit.config.rank import RankCheckConfig, RankUpdateConfig
from dpokit.errors import UserError
from dpokit.online.config import ONLINE_FLAGS, OnlineConfig
from dpokit.config.flags import spellings
from dpokit.update.canary import CANARY_FLAG_SET, CanaryConfig
from dpokit.update.config import UPDATE_FLAG_SET, UpdateConfig

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_BLOCKS = ("bash", "sh", "shell", "console")
LAUNCHERS = {  # flags of torchrun, accelerate, srun, pip and Flower's commands, which the docs also show
    "--nproc_per_node", "--config_file", "--num_processes", "--num_machines", "--machine_rank", "--main_process_ip",
    "--main_process_port", "--mpirun_hostfile", "--cpu", "--no-deps", "--ntasks-per-node", "--index-url",
    "--insecure", "--superlink", "--node-config", "--run-config", "--host", "--port", "--stream"}


def _blocks(path: Path):
    """(first line number, text) of each shell code block, continuation lines joined."""
    text = path.read_text(encoding="utf-8")
    for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        if m.group(1) in SHELL_BLOCKS:
            yield text.count("\n", 0, m.start()) + 2, m.group(2)


def _commands(path: Path):
    """(place, argv after ``dpokit``) of each dpokit command in the file's shell blocks."""
    for start, body in _blocks(path):
        lines = body.split("\n")
        number = start
        while lines:
            line, first = lines.pop(0), number
            number += 1
            while line.endswith("\\") and lines:  # a command continued on the next line
                line, number = line[:-1] + " " + lines.pop(0), number + 1
            tokens = shlex.split(line, comments=True)
            for segment in _segments(tokens):
                yield f"{path.name}:{first}", segment


def _segments(tokens: list[str]):
    """The dpokit argv of each command in a shell line: ``dpokit ...`` as a command (after any
    ``VAR=value`` and ``&&``), or ``-m dpokit.cli ...`` under a launcher."""
    command: list[str] = []
    for token in tokens + ["&&"]:
        if token not in ("&&", "||", "|", ";"):
            command.append(token)
            continue
        while command and re.match(r"^[A-Z_]+=", command[0]):
            command.pop(0)
        if command[:1] == ["dpokit"]:
            yield command[1:]
        elif "dpokit.cli" in command and command[command.index("dpokit.cli") - 1] == "-m":
            yield command[command.index("dpokit.cli") + 1:]
        command = []


def _synopsis(argv: list[str]) -> list[list[str]]:
    """A synopsis line as concrete commands: ``[--flag VALUE]`` kept, ``[...]`` placeholders
    (``[any data flag]``, ``[--pairing ...]``) dropped, ``a|b`` alternatives each tried."""
    text = " ".join(argv)
    text = re.sub(r"\[(--[a-z-]+ (?!\.\.\.)[^\]\s]+)\]", r"\1", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    options = [t.split("|") if re.fullmatch(r"\w+(\|\w+)+", t) else [t] for t in text.split()]
    return [list(c) for c in itertools.product(*options)]


def _parser_for(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.ArgumentParser:
    """The (sub)parser that reads the flags of ``argv``."""
    for token in argv:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or token not in subs[0].choices:
            break
        parser = subs[0].choices[token]
    return parser


COMMANDS = [(place, argv) for path in DOCS for place, argv in _commands(path)]


def test_the_docs_show_commands():
    assert len(COMMANDS) > 25  # the extraction itself works: README and docs hold dozens


@pytest.mark.parametrize("place, argv", COMMANDS, ids=[p for p, _ in COMMANDS])
def test_doc_command_parses(place, argv):
    parser = build_parser()
    for concrete in _synopsis(argv):
        try:
            parser.parse_args(concrete)
        except UserError as exc:
            pytest.fail(f"{place}: dpokit {' '.join(concrete)}: {exc}")
        known = _parser_for(parser, concrete)._option_string_actions
        inexact = [t.split("=")[0] for t in concrete if t.startswith("--") and t.split("=")[0] not in known]
        assert not inexact, f"{place}: {inexact} are abbreviations or other commands' flags"


def _all_flags() -> set[str]:
    flags: set[str] = set()
    todo = [build_parser()]
    while todo:
        parser = todo.pop()
        flags |= set(parser._option_string_actions)
        todo += [p for a in parser._actions if isinstance(a, argparse._SubParsersAction) for p in a.choices.values()]
    return flags


def _prose(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def _benchmark_flags() -> set[str]:
    """The flags the benchmark scripts define (the docs show how they were run)."""
    flags = set()
    for script in (ROOT / "benchmarks").glob("*.py"):
        flags |= set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", script.read_text(encoding="utf-8")))
    return flags


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_flag_named_exists(path):
    known = _all_flags() | LAUNCHERS | _benchmark_flags()
    prose = re.sub(r"--[a-z-]+: unknown flag", "", _prose(path))  # the example of a mistyped flag
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9_-]*[a-z0-9]", prose))
    assert sorted(named - known) == []


def _fields() -> set[str]:
    import dataclasses

    out = set()
    for root in (OnlineConfig(), EvalConfig()):
        for section in dataclasses.fields(root):
            value = getattr(root, section.name)
            if dataclasses.is_dataclass(value):
                out |= {f"{section.name}.{f.name}" for f in dataclasses.fields(value)}
    return out


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_config_field_named_exists(path):
    sections = "model|lora|data|loss|train|guard|online"
    named = {name for name in re.findall(rf"`((?:{sections})\.[a-z_]+)`", _prose(path))
             if not name.endswith((".safetensors", ".json", ".yaml", ".py"))}  # file names such as model.safetensors
    assert sorted(named - _fields()) == []


def _defaults() -> dict[str, set[str]]:
    """Each flag's default as the docs would write it (a flag of several commands may have several)."""
    out: dict[str, set[str]] = {}
    for flags, root in ((FLAG_FIELDS, RunConfig()), (ONLINE_FLAGS, OnlineConfig()), (EVAL_FLAGS, EvalConfig()),
                        (DATA_FLAGS, RunConfig()), (spellings(UPDATE_FLAG_SET), UpdateConfig()),
                        (spellings(CANARY_FLAG_SET), CanaryConfig()),
                        (spellings(RANK_FLAG_SETS["update"]), RankUpdateConfig()),
                        (spellings(RANK_FLAG_SETS["check"]), RankCheckConfig())):
        for flag, dotted in flags.items():
            value = root
            for part in dotted.split("."):
                value = getattr(value, part)
            out.setdefault("--" + flag.replace("_", "-"), set()).add(str(value))
    sweep = _parser_for(build_parser(), ["sweep"])  # its own flags, not config fields: argparse's defaults
    for action in sweep._actions:
        for option in action.option_strings:
            out.setdefault(option, set()).add(str(action.default))
    return out


DEFAULT_PATTERNS = (
    r"`(--[a-z][a-z0-9-]*) ([\w.-]+)` ?[(,] ?(?:its |the )?default\b(?! [\w`])",  # `--votes majority` (default)
    r"`(--[a-z][a-z0-9-]*)(?: [^`]*)?`[^`()]{0,20}[(,] ?default (?=`|\d)`?([\w.-]+)",  # `--dtype`, default `auto`
    r"\(`(--[a-z][a-z0-9-]*)`\): `([\w.-]+)` \(default\)",  # (`--ref`): `precomputed` (default)
)


def test_stated_defaults_are_the_defaults():
    defaults, stated = _defaults(), []
    for path in DOCS:
        text = " ".join(_prose(path).split())
        stated += [(path.name, flag, value) for pattern in DEFAULT_PATTERNS for flag, value in re.findall(pattern, text)]
    assert len(stated) >= 8
    wrong = [(name, flag, value, defaults.get(flag)) for name, flag, value in stated
             if value not in defaults.get(flag, ())]
    assert wrong == []
