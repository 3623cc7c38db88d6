"""Where dpokit keeps what it computes once per machine: the converted embedded model, hardware
measurements, backend checks, plain copies of models for other engines (``$DPOKIT_CACHE``)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("DPOKIT_CACHE", Path.home() / ".cache" / "dpokit"))
