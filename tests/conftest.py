"""Small shared fixtures: the tokenizer shipped with dpokit and a tiny random Llama (no mocks, offline)."""

from __future__ import annotations

import os

import pytest

from dpokit.policies.lm.tiny import tiny_model as _tiny_model
from dpokit.policies.lm.tiny import tiny_tokenizer as _tiny_tokenizer

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
