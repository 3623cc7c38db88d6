"""The update's promote-or-refuse rule and its per-registry lock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dpokit.errors import UserError
from dpokit.update.decision import DecisionRule, decide
from dpokit.update.lock import LOCK_NAME, registry_lock

RULE = DecisionRule(win_margin=0.02, max_kl=1.0, acc_drop=0.05)
GOOD = {"win_low": 0.6, "kl": 0.3, "pairs": {"new.jsonl": {"challenger": 0.8, "champion": 0.82},
                                             "old.jsonl": {"challenger": 0.9, "champion": 0.9}}}


def _pairs(new: float | None, old: float | None = 0.82) -> dict:
    return {"pairs": {**GOOD["pairs"], "new.jsonl": {"challenger": new, "champion": old}}}


def test_a_challenger_passing_every_test_is_promoted():
    assert decide(RULE, GOOD) == (True, [])


@pytest.mark.parametrize("change, words", [
    ({"win_low": 0.52}, "win-rate interval low 0.520 <= 0.5 + margin 0.02"),  # 0.52 is not above 0.52
    ({"kl": 1.0}, "KL to champion 1.000 >= bound 1"),
    (_pairs(0.76), "on new.jsonl fell 0.060"),  # 0.82 - 0.76 = 0.06 > 0.05
    ({"win_low": float("nan")}, "no win-rate interval"),
    ({"kl": None}, "no sampled KL"),
    (_pairs(0.8, None), "on new.jsonl missing for one side"),
])
def test_each_failed_test_refuses_with_its_reason(change, words):
    promote, reasons = decide(RULE, {**GOOD, **change})
    assert not promote and len(reasons) == 1 and words in reasons[0]


def test_all_reasons_are_kept_and_pair_accuracy_is_optional():
    promote, reasons = decide(RULE, {"win_low": 0.4, "kl": 9.0})
    assert not promote and len(reasons) == 2
    assert decide(RULE, {"win_low": 0.53, "kl": 0.1}) == (True, [])  # no held-out pairs given


HOLDER = "import sys,time; from dpokit.update.lock import registry_lock\n" \
         "with registry_lock(sys.argv[1]):\n print('held', flush=True); time.sleep(60)\n"


def _holder(root: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_update_is_refused_and_a_killed_holder_frees_the_lock(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(UserError, match=f"pid {proc.pid}.*--wait"):
            with registry_lock(tmp_path):
                pass
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert (tmp_path / LOCK_NAME).exists()  # the file stays behind, yet it locks nothing
    with registry_lock(tmp_path):
        assert (tmp_path / LOCK_NAME).read_text() == str(os.getpid())


def test_wait_blocks_until_the_holder_is_gone(tmp_path):
    proc = _holder(tmp_path)
    killer = subprocess.Popen([sys.executable, "-c", f"import os,time; time.sleep(0.5); os.kill({proc.pid}, 9)"])
    with registry_lock(tmp_path, wait=True):
        assert proc.poll() is not None or proc.wait(timeout=5) == -signal.SIGKILL
    killer.wait()


def test_an_unwritable_registry_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="cannot open the update lock"):
        with registry_lock(tmp_path / "missing"):
            pass
