"""How a command ends early: a mistake the user can fix (``UserError``), or a stop asked for
with SIGTERM or SIGINT (``Stopped``).

The CLI turns a ``UserError`` into a one-line message and exit code 2, and a ``Stopped`` into
one line saying what was kept and how to continue, with the exit code the signal would give
(143, 130); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator


class UserError(Exception):
    """A problem with the user's input, reported without a traceback.

    ``where`` names the place (``file:line``, ``file``, ``--flag``, ``config key``) and
    ``field`` the field at fault, so every message reads the same way.
    """

    def __init__(self, message: str, where: str | None = None, field: str | None = None):
        self.where, self.field, self.detail = where, field, message
        parts = [p for p in (where, f"field '{field}'" if field else None) if p]
        super().__init__(f"{': '.join(parts)}: {message}" if parts else message)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """A command stopped by a signal; the message says what was kept and how to continue. Like
    ``KeyboardInterrupt`` it is no ``Exception``: code that survives a failing judge or record
    (``except Exception``) must not survive a stop."""

    def __init__(self, signame: str, hint: str):
        super().__init__(f"stopped by {signame}; {hint}")
        self.signame = signame

    @property
    def exit_code(self) -> int:
        return 128 + int(getattr(signal, self.signame))  # as the signal itself would end the process


@contextlib.contextmanager
def stops_raise(hint: str) -> Iterator[None]:
    """While the block runs (in the main thread), SIGTERM and SIGINT raise ``Stopped(hint)`` at
    once. Sampling, judging and evaluation write their results only when complete, so what a stop
    abandons is redone by a rerun and nothing else is; a training run inside installs its own
    handler (finish the step, save a checkpoint, ``dpokit.train.signals``) while it runs. Only the
    first signal raises: the previous handlers are back for a second, so a stuck clean-up can
    still be ended."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame) -> None:
        for s in STOP_SIGNALS:
            signal.signal(s, previous[s])
        raise Stopped(signal.Signals(signum).name, hint)

    previous = {s: signal.signal(s, handle) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def warn(message: str) -> None:
    """One line on stderr for something that works but should change (a deprecated spelling)."""
    import sys

    print(f"dpokit: warning: {message}", file=sys.stderr)
