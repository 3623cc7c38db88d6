"""One update at a time per registry.

The lock is ``fcntl.flock`` on ``REGISTRY/.update.lock``: the kernel releases it when the holder's
file is closed, so a holder killed with SIGKILL leaves no stale lock to clean up by hand (a lock
*file* whose existence is the lock would stay behind). The holder's pid is written inside only to
name it in the message a second process gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from dpokit.errors import UserError

LOCK_NAME = ".update.lock"


@contextlib.contextmanager
def registry_lock(root: str | Path, wait: bool = False) -> Iterator[None]:
    """Hold the registry's update lock; without ``wait``, a UserError when another process holds it."""
    path = Path(root) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise UserError(f"cannot open the update lock: {exc.strerror}", where=str(path)) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise UserError(f"another update holds this registry (pid {holder}); "
                            "rerun with --wait to wait for it", where=str(root)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the flock
