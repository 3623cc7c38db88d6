"""Command-line mistakes as one line each: argparse's own errors included.

argparse answers a bad flag with its whole usage block (dozens of lines for ``dpokit dpo``)
before the error. ``OneLineParser`` replaces that with the one line every other user error
gets, ``dpokit: error: WHERE: WHAT``, naming the flag, suggesting the nearest valid one for a
misspelt name, and pointing at ``--help`` (which still prints the full help).
"""

from __future__ import annotations

import argparse
import difflib
import re
from typing import Any, Callable

from dpokit.errors import UserError

_REQUIRED = "the following arguments are required: "
_EXPECTED = {int: "an integer", float: "a number"}


def typed(tp: Callable[[str], Any]) -> Callable[[str], Any]:
    """``tp`` as an argparse type whose failure reads "expected an integer, got 'x'"."""
    if tp not in _EXPECTED:
        return tp

    def convert(text: str) -> Any:
        try:
            return tp(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {_EXPECTED[tp]}, got {text!r}") from None
    convert.__name__ = tp.__name__
    return convert


def _nearest(word: str, candidates) -> str:
    close = difflib.get_close_matches(word, [str(c) for c in candidates], n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a ``UserError`` (one line, exit code 2 from ``main``).

    Subparsers made through ``add_subparsers`` are of this class too (argparse uses the parent's
    class unless told otherwise), so every subcommand answers the same way.
    """

    def error(self, message: str):
        # argparse words it "argument --max-steps: ..."; the flag alone reads like our other errors
        message = re.sub(r"^argument ([^:]+): ", r"\1: ", message)
        if message.startswith(_REQUIRED):
            message = self._missing(message.removeprefix(_REQUIRED).split(", "))
        raise UserError(f"{message} (see {self.prog} --help)")

    def _missing(self, names: list[str]) -> str:
        """Name a missing subcommand by its choices: its destination's name means nothing to a user."""
        commands = {a.dest: a for a in self._actions if isinstance(a, argparse._SubParsersAction)}
        if names[0] in commands:
            return f"missing the command: one of {', '.join(commands[names[0]].choices)}"
        return f"missing required argument{'s' if len(names) > 1 else ''}: {', '.join(names)}"

    def parse_known_args(self, args=None, namespace=None):
        # A subcommand's leftovers would otherwise travel up to the top parser, which no longer
        # knows which subcommand's flags to suggest from; every dpokit parser wants none left.
        ns, extras = super().parse_known_args(args, namespace)
        if extras:
            self._unknown(extras)
        return ns, extras

    def _unknown(self, extras: list[str]) -> None:
        flag = next((x for x in extras if x.startswith("-") and x != "-"), None)
        if flag is None:
            self.error(f"unexpected argument {extras[0]!r}")
        name = flag.split("=", 1)[0]
        self.error(f"{name}: unknown flag{_nearest(name, self._option_string_actions)}")

    def _check_value(self, action, value):
        # argparse's own message lists the choices but does not point at the likely one
        if action.choices is None or value in action.choices:
            return
        choices = f"(choose from {', '.join(map(str, action.choices))}){_nearest(str(value), action.choices)}"
        if isinstance(action, argparse._SubParsersAction):  # its name ("command") would mean nothing here
            raise argparse.ArgumentError(None, f"unknown command {value!r} {choices}")
        raise argparse.ArgumentError(action, f"invalid choice {value!r} {choices}")
