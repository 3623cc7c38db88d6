"""SIGTERM and SIGINT stop every long command cleanly: the work in hand is finished (a training
step) or abandoned (sampling, judging, evaluation), what resumes is saved, one line says how to
continue, the exit code is the signal's (143, 130), and running the same command again finishes
the job. The signals are real, sent to this process (or the CLI's) at the moment under test."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import helpers.judges
from dpokit.errors import Stopped, stops_raise
from helpers.online import tiny_online

ROOT = Path(__file__).resolve().parents[1]


class SignalAt:
    """Send this process ``signum`` at the first module forward after a log line containing
    ``after`` (the start of the stage under test): the stop lands inside that stage's work."""

    def __init__(self, after: str, signum: int = signal.SIGTERM):
        self.after, self.signum, self.armed, self.sent, self.lines = after, signum, False, False, []
        self.hook = torch.nn.modules.module.register_module_forward_hook(self._forward)

    def log(self, line: str) -> None:
        self.lines.append(line)
        self.armed = self.armed or self.after in line

    def _forward(self, module, args, output):
        if self.armed and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)

    def close(self):
        self.hook.remove()


def stopped_online(tmp_path: Path, out: Path, after: str, **extra) -> SignalAt:
    at = SignalAt(after)
    try:
        with pytest.raises(Stopped) as stop, stops_raise("continue"):
            tiny_online(tmp_path, out, log=at.log, online__rounds=2, **extra)
    finally:
        at.close()
    assert at.sent and stop.value.exit_code == 143
    return at


def finish_online(tmp_path: Path, out: Path, **extra) -> list[str]:
    lines: list[str] = []
    result = tiny_online(tmp_path, out, log=lines.append, online__rounds=2, **extra)
    assert [e["round"] for e in result.rounds] == [1, 2]
    return lines


def test_online_stopped_while_sampling_reruns_the_round(tmp_path):
    out = tmp_path / "run"
    stopped_online(tmp_path, out, "[online] round 2/2")
    assert (out / "round-1" / "final").is_dir() and not (out / "round-2" / "sampling.json").exists()
    lines = finish_online(tmp_path, out)
    assert "[online] rounds 1–1 are finished" in lines


def test_online_stopped_in_training_resumes_from_its_checkpoint(tmp_path):
    out = tmp_path / "run"
    stopped_online(tmp_path, out, "candidates discarded")  # logged just before round 1 trains
    assert list((out / "round-1").glob("checkpoint-*")) and not (out / "round-1" / "final").exists()
    lines = finish_online(tmp_path, out)
    assert any(line.startswith("[resume] from") for line in lines)


def test_online_stopped_while_judging_keeps_the_judgements_made(tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(helpers.judges, "_calls", 0)
    monkeypatch.setenv("STOP_JUDGE_AT", "7")
    with pytest.raises(Stopped), stops_raise("continue"):
        tiny_online(tmp_path, out, online__rounds=2, online__judge="helpers.judges:count_e_then_stop")
    # the judge is asked once per prompt for its distinct answers: the first prompt's were kept,
    # the second's (asked when the stop came) were not
    kept = len(json.loads((out / "judge_cache.json").read_text()))
    assert 0 < kept < 7 and not (out / "round-1" / "sampling.json").exists()
    monkeypatch.delenv("STOP_JUDGE_AT")
    finish_online(tmp_path, out, online__judge="helpers.judges:count_e_then_stop")
    sampling = json.loads((out / "round-1" / "sampling.json").read_text())
    assert sampling["judge"]["cache_hits"] >= kept  # the same answers are sampled again, their scores read back


def cli(*args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "dpokit.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}", **(env or {})})


def test_eval_stopped_inside_judging_exits_143_with_one_line(tmp_path):
    from helpers.online import write_prompts
    from helpers import tiny_model_dir

    model, prompts = tiny_model_dir(tmp_path), write_prompts(tmp_path / "p.jsonl", 4)
    args = ("eval", "--model", str(model), "--ref-model", str(model), "--prompts", str(prompts),
            "--judge", "helpers.judges:count_e_then_stop", "--max-new-tokens", "6", "--output", str(tmp_path / "ev"))
    proc = cli(*args, env={"STOP_JUDGE_AT": "3"})
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("dpokit: stopped by SIGTERM; ") and "run the same command" in last
    assert "Traceback" not in err and not (tmp_path / "ev" / "eval_report.json").exists()
    proc = cli(*args)
    assert proc.communicate(timeout=300) and proc.returncode == 0
    assert json.loads((tmp_path / "ev" / "eval_report.json").read_text())["prompts"] == 4


def test_quickstart_stopped_by_ctrl_c_continues_on_a_rerun(tmp_path):
    out = tmp_path / "qs"
    proc = cli("quickstart", "--tiny", "--output", str(out))
    deadline = time.monotonic() + 240
    while not (out / "sft" / "metrics.jsonl").is_file():  # a first SFT step is done
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1]
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1].startswith("dpokit: stopped by SIGINT; ") and "Traceback" not in err
    proc = cli("quickstart", "--tiny", "--output", str(out))
    stdout, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert "[resume] from" in stdout or "finished before" in stdout
    assert "judge win rate vs SFT" in stdout
