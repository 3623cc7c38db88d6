"""SIGTERM and SIGINT during training: finish the current optimizer step, save a checkpoint, stop.

The handler only records the signal; the loop asks ``requested`` after each step. A second
SIGINT (Ctrl-C twice) interrupts at once, and a second SIGTERM ends the process as usual.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

import torch

from dpokit.errors import STOP_SIGNALS

SIGNALS = STOP_SIGNALS


class StopRequest:
    def __init__(self) -> None:
        self.signum: int | None = None

    def _handle(self, signum: int, frame) -> None:
        self.signum = signum
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)

    @property
    def name(self) -> str | None:
        return signal.Signals(self.signum).name if self.signum is not None else None

    def requested(self, accelerator) -> bool:
        """Whether any process was asked to stop (all processes agree, so they stop together)."""
        if accelerator.num_processes == 1:
            return self.signum is not None
        asked = accelerator.reduce(torch.tensor(int(self.signum is not None), device=accelerator.device), "sum")
        if asked.item() and self.signum is None:
            self.signum = signal.SIGTERM  # another process was signalled (launchers send SIGTERM)
        return self.signum is not None


@contextlib.contextmanager
def stop_on_signals() -> Iterator[StopRequest]:
    """Catch SIGTERM and SIGINT while the block runs (only in the main thread, where Python
    delivers signals); the previous handlers come back afterwards."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.signal(s, stop._handle) for s in SIGNALS}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
