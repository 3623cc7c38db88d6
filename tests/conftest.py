"""Small shared fixtures: the tokenizer shipped with dpokit and a tiny random Llama (no mocks, offline)."""

from __future__ import annotations

import os

import pytest

from dpokit.policies.lm.tiny import tiny_model as _tiny_model
from dpokit.policies.lm.tiny import tiny_tokenizer as _tiny_tokenizer
from helpers.browser import chromium_path, why_not

# Exactness tests (accumulation, resume, cached vs live reference to 1e-5) need fp32, and the
# same results on every CPU: `--dtype auto` would pick bf16 on a CPU that has it. Set for the
# whole session, subprocesses included; the tests of auto itself unset it.
os.environ["DPOKIT_DTYPE"] = "fp32"


@pytest.fixture
def tiny_tokenizer():
    """The real byte-level BPE tokenizer at dpokit/assets/tiny_tokenizer (ChatML, EOS <|im_end|>)."""
    return _tiny_tokenizer()


@pytest.fixture
def tiny_model(tiny_tokenizer):
    """A tiny random-initialised Llama (seed 0) sized to the tiny tokenizer, fp32, eval mode."""
    return _tiny_model(len(tiny_tokenizer), seed=0).float().eval()


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium (Debian's) under Playwright, shared by the session; skips where none runs."""
    reason = why_not()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    """A fresh page (its own context: cookies and storage) at a laptop's size."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    yield context.new_page()
    context.close()
