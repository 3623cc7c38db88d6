"""Every shipped config loads and validates."""

from pathlib import Path

import pytest

from dpokit.config import RunConfig, load_config

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def test_examples_exist():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig) and cfg.model.path and cfg.data.train
    assert (Path(__file__).resolve().parents[1] / cfg.data.train).is_file()


def test_flag_overrides_yaml():
    cfg = load_config(EXAMPLES[0], {"train.max_steps": 3, "loss.beta": 0.5})
    assert cfg.train.max_steps == 3 and cfg.loss.beta == 0.5
