"""``dpokit update`` end to end on the tiny model: a champion's own answers judged by a rule (more
letters ``e`` is better) make the new feedback; the challenger trained on it wins the A/B test and is
promoted, one trained on flipped labels is refused; a rerun never trains or promotes twice; a held
lock, an unwritable update folder and SIGKILL at random moments leave the champion serving."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpokit.cli import main
from dpokit.store.versions import Registry
from dpokit.train import train
from helpers import config, tiny_model_dir
from dpokit.tasks.drift import feedback, more_e, write_prompts

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A registry whose current version v1 is a tiny model after two SFT steps, and feedback on v1's answers."""
    tmp = tmp_path_factory.mktemp("update")
    model = tiny_model_dir(tmp)
    feedback(str(model), tmp / "seed.jsonl", more_e, 16, 9000)
    reg = tmp / "registry"
    train(config(model, tmp / "seed.jsonl", tmp / "sft", loss__name="sft", train__max_steps=2,
                 train__registry=str(reg)))
    assert main(["versions", "promote", "v1", "--registry", str(reg)]) == 0
    v1 = str(tmp / "sft" / "final")
    files = {"day": feedback(v1, tmp / "day.jsonl", more_e, 96, 0),
             "flipped": feedback(v1, tmp / "flipped.jsonl", more_e, 96, 1000, flip=True),
             "held": feedback(v1, tmp / "held.jsonl", more_e, 32, 500, seed=7),
             "prompts": write_prompts(tmp / "prompts.jsonl", 64, 2000)}
    return tmp, reg, files


def update_args(reg: Path, files: dict, data: str, *extra: str) -> list[str]:
    return ["update", "--registry", str(reg), "--data", str(files[data]), "--eval-prompts", str(files["prompts"]),
            "--judge", "dpokit.tasks.drift:more_e", "--eval-pairs", str(files["held"]), "--acc-drop", "0.2",
            "--max-steps", "24", "--lr", "2e-3", "--batch-size", "8", "--max-new-tokens", "12",
            "--max-length", "48", "--max-prompt-length", "16", "--no-progress", *extra]


def copy_registry(reg: Path, to: Path) -> Path:
    """A second registry with the same versions (records name the same model folders)."""
    shutil.copytree(reg, to, ignore=shutil.ignore_patterns("updates"))
    return to


def test_a_better_challenger_is_promoted_once(world, capsys):
    tmp, reg, files = world
    assert main(update_args(reg, files, "day")) == 0
    out = capsys.readouterr().out
    registry = Registry(reg)
    assert registry.history() == ["v1", "v2"], out
    record = registry.get("v2")
    assert record["parent"] == "v1" and record["reference"]["version"] == "v1"  # the champion as the reference
    decision, figures = record["update"]["decision"], record["update"]["figures"]
    assert decision["promoted"] and decision["reasons"] == [] and figures["win_low"] > 0.52
    assert figures["prompts"] == 64 and 0 < figures["kl"] < 5
    assert set(figures["pairs"][str(files["held"])]) == {"challenger", "champion", "challenger_vs_champion"}
    assert "v2 promoted over v1" in out and registry.last_event()["action"] == "update v1 -> v2: promoted"

    assert main(update_args(reg, files, "day")) == 0  # the same update again: reported, not redone
    assert "already done" in capsys.readouterr().out
    assert registry.ids() == ["v1", "v2"] and registry.history() == ["v1", "v2"]
    assert main(["versions", "list", "--registry", str(reg)]) == 0
    listing = capsys.readouterr().out
    assert "promoted" in listing.splitlines()[2] and listing.splitlines()[2].startswith("* v2")
    assert main(["versions", "show", "v2", "--registry", str(reg)]) == 0
    assert "decision   v2 promoted over v1: win rate" in capsys.readouterr().out
    assert main(check_args(reg, files)) == 0  # the canary check: v2 holds up, nothing changes
    assert "v2 holds up against v1" in capsys.readouterr().out
    assert registry.history() == ["v1", "v2"] and registry.get("v2")["checks"][-1]["reasons"] == []


def check_args(reg: Path, files: dict, action: str = "check", *extra: str) -> list[str]:
    return ["versions", action, "--registry", str(reg), "--prompts", str(files["prompts"]), "--judge",
            "dpokit.tasks.drift:more_e", "--pairs", str(files["held"]), "--max-new-tokens", "12", "--max-length", "48",
            "--max-prompt-length", "16", *extra]


def test_check_and_watch_roll_back_a_broken_version(world, capsys, tmp_path):
    tmp, reg, files = world
    reg = copy_registry(reg, tmp_path / "registry")
    before = Registry(reg).history()
    assert main(update_args(reg, files, "flipped")) == 0  # refused ...
    bad = Registry(reg).ids()[-1]
    assert main(["versions", "promote", bad, "--registry", str(reg)]) == 0  # ... and promoted by hand anyway
    capsys.readouterr()
    assert main(check_args(reg, files)) == 0
    out = capsys.readouterr().out
    registry = Registry(reg)
    assert registry.history() == before and "loses to the previous version" in out
    assert registry.last_event()["action"] == f"check: rollback {bad}"
    assert registry.get(bad)["checks"][-1]["rolled_back"]

    assert main(["versions", "promote", bad, "--registry", str(reg)]) == 0
    (Path(registry.get(bad)["model"]) / "model.safetensors").write_bytes(b"broken")  # damaged after promotion
    assert main(check_args(reg, files, "watch", "--times", "1", "--interval", "0")) == 0
    assert "fails verification" in capsys.readouterr().out and registry.history() == before

    page = tmp_path / "report.html"  # the run report shows the registry's timeline, reasons escaped
    run_folder = Path(registry.get(bad)["run"])
    assert main(["report", str(run_folder), "-o", str(page), "--registry", str(reg)]) == 0
    html = page.read_text()
    timeline = html[html.index('<section id="timeline">'):]
    assert f"update {before[-1]} -&gt; {bad}: refused" in timeline and f"check: rollback {bad}" in timeline
    assert "loses to the previous version: win-rate interval high" in timeline and "&lt; 0.5 - margin" in timeline


def test_flipped_labels_are_refused_and_the_champion_keeps_serving(world, capsys, tmp_path):
    tmp, reg, files = world
    reg = copy_registry(reg, tmp_path / "registry")
    before = Registry(reg).history()
    assert main(update_args(reg, files, "flipped")) == 0
    out = capsys.readouterr().out
    registry = Registry(reg)
    new = registry.ids()[-1]
    record = registry.get(new)
    assert registry.history() == before and not record["update"]["decision"]["promoted"]
    reasons = record["update"]["decision"]["reasons"]
    assert any(r.startswith("win-rate interval low") for r in reasons), out
    assert record["update"]["figures"]["win_rate"] < 0.5
    event = registry.last_event()
    assert event["action"] == f"update {before[-1]} -> {new}: refused" and event["reasons"] == reasons
    assert main(["versions", "show", new, "--registry", str(reg)]) == 0
    assert "refused: win-rate interval low" in capsys.readouterr().out


HOLDER = "import sys,time; from dpokit.update.lock import registry_lock\n" \
         "with registry_lock(sys.argv[1]):\n print('held', flush=True); time.sleep(60)\n"


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": f"{TESTS.parent}{os.pathsep}{TESTS}", "OMP_NUM_THREADS": "1"}


def test_a_second_update_exits_2_while_one_holds_the_registry(world, capsys):
    tmp, reg, files = world
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(reg)], stdout=subprocess.PIPE, text=True, env=_env())
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(update_args(reg, files, "flipped")) == 2
        assert f"another update holds this registry (pid {holder.pid})" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


def test_a_write_error_leaves_the_champion_serving(world, capsys, tmp_path):
    tmp, reg, files = world
    reg = copy_registry(reg, tmp_path / "registry")
    (reg / "updates").write_text("in the way")  # the update cannot make its folder
    before = Registry(reg).history()
    assert main(update_args(reg, files, "flipped")) == 2
    err = capsys.readouterr().err
    assert "the update failed" in err and f"{before[-1]} is still current" in err and "Traceback" not in err
    assert Registry(reg).history() == before


def test_sigkill_at_random_moments_never_half_writes_or_promotes_twice(world, tmp_path):
    tmp, reg, files = world
    reg = copy_registry(reg, tmp_path / "registry")
    before, old = Registry(reg).history(), set(Registry(reg).ids())
    command = [sys.executable, "-m", "dpokit.cli", *update_args(reg, files, "day", "--seed", "3")]
    rng = random.Random(0)
    for _ in range(3):
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
        while not list(reg.glob("updates/*/journal.json")) and proc.poll() is None:
            time.sleep(0.05)  # the update has started: its journal exists
        time.sleep(rng.uniform(0.0, 2.0))  # then anywhere in training, evaluation or the decision
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        registry = Registry(reg)
        for path in [reg / "index.json", *reg.glob("versions/*.json"), *reg.glob("updates/*/journal.json")]:
            json.loads(path.read_text())  # every file whole
        history = registry.history()
        assert history[:len(before)] == before and len(history) <= len(before) + 1
    done = subprocess.run(command, capture_output=True, text=True, env=_env())
    assert done.returncode == 0, done.stderr[-2000:]
    registry = Registry(reg)
    made = [vid for vid in registry.ids() if vid not in old]
    assert len(made) == 1, made  # one challenger however often it was killed
    promoted = registry.get(made[-1])["update"]["decision"]["promoted"]
    assert registry.history() == ([*before, made[-1]] if promoted else before)


def _small_files() -> None:
    """In the child: writes past 256 KB fail (EFBIG), as on a full disk, instead of killing the process."""
    import resource

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))


def test_a_full_disk_mid_update_leaves_the_champion_serving(world, tmp_path):
    tmp, reg, files = world
    reg = copy_registry(reg, tmp_path / "registry")
    before = Registry(reg).history()
    r = subprocess.run([sys.executable, "-m", "dpokit.cli", *update_args(reg, files, "day", "--seed", "5")],
                       capture_output=True, text=True, env=_env(), preexec_fn=_small_files)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "File too large" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    assert f"{before[-1]} is still current" in r.stderr and Registry(reg).history() == before
