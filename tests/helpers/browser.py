"""A real headless Chromium for the tests of pages dpokit writes or serves, driven by Playwright.

Chromium is Debian's package (``apt-get install chromium``, which ``.ci/run`` does); Playwright's
own browser download is never used. ``$DPOKIT_CHROMIUM`` names another executable. Where none is
installed the tests that ask for ``browser`` skip and say why.
"""

from __future__ import annotations

import os
import shutil


def chromium_path() -> str | None:
    for candidate in (os.environ.get("DPOKIT_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def why_not() -> str | None:
    """The reason no browser test can run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    if chromium_path() is None:
        return "no Chromium executable (apt-get install chromium, or set DPOKIT_CHROMIUM)"
    return None
