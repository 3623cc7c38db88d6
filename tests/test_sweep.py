"""``dpokit sweep`` on a real Optuna study: the space checked against the config fields, trials
that are real training runs on the tiny model, the outputs read back from disk, a sweep killed
with SIGKILL mid-trial that a rerun finishes with no trial lost or run twice, pruning of an
absurd learning rate, and a constrained multi-objective study with a programmatic judge."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from dpokit.cli import main
from dpokit.config import load_config
from dpokit.errors import UserError
from dpokit.sweep import SweepSettings, open_study, read_space, sweep
from dpokit.sweep.study import fail_dead_trials
from helpers import tiny_model_dir, write_pairs

optuna = pytest.importorskip("optuna")  # the test extra installs it; dpokit[sweep] for users

SPACE = "loss.beta: {low: 0.05, high: 0.5, log: true}\ntrain.lr: {low: 1.0e-4, high: 1.0e+3, log: true}\n"


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A folder with the tiny model, train/held-out pairs, a 4-step base config evaluated at steps
    2 and 4, a space over β and the learning rate, and short evaluation settings."""
    root = tmp_path_factory.mktemp("sweep")
    model = tiny_model_dir(root)
    write_pairs(root / "train.jsonl", 16)
    write_pairs(root / "heldout.jsonl", 8, seed=1)
    cfg = {"model": {"path": str(model)},
           "data": {"train": str(root / "train.jsonl"), "eval": str(root / "heldout.jsonl"), "max_length": 64,
                    "max_prompt_length": 32},
           "train": {"max_steps": 4, "eval_steps": 2, "batch_size": 4, "lr": 1e-3, "progress": False,
                     "ref_cache_dir": str(root / "refcache")}}
    (root / "base.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
    (root / "space.yaml").write_text(SPACE, encoding="utf-8")
    (root / "eval.yaml").write_text("max_new_tokens: 8\nnum_prompts: 4\nbatch_size: 4\n", encoding="utf-8")
    return root


def _args(base: Path, out: Path, *extra: str) -> list[str]:
    return ["sweep", "--config", str(base / "base.yaml"), "--space", str(base / "space.yaml"), "--output", str(out),
            "--eval-config", str(base / "eval.yaml"), *extra]


def _study(out: Path):
    return optuna.load_study(study_name=out.name, storage=f"sqlite:///{out / 'study.db'}")


def _csv(out: Path) -> list[dict]:
    with (out / "trials.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("text, message", [
    ("train.lrr: {low: 0.1, high: 1.0}\n", r"space.yaml:1: field 'train.lrr': unknown config field"),
    ("loss.beta: {low: 0.1, high: 1.0}\ntrain.batch_size: {choices: [4, eight]}\n",
     r"space.yaml:2: field 'train.batch_size': must be int; got str 'eight'"),
    ("loss.name: {low: 1, high: 3}\n", r"space.yaml:1: field 'loss.name': is not a number; give choices"),
    ("train.lr: {low: 0.1, high: 0.01}\n", r"space.yaml:1: field 'train.lr': low must be below high"),
    ("train.lr: {low: 0, high: 1.0, log: true}\n", r"field 'train.lr': a log range needs low > 0"),
    ("train.epochs: {low: 1.5, high: 3}\n", r"field 'train.epochs': must be int; got float 1.5"),
    ("train.lr: [0.1, 0.2]\n", r"field 'train.lr': must be a mapping with low/high"),
])
def test_a_bad_space_is_one_line_naming_the_file_line_and_field(tmp_path, text, message):
    path = tmp_path / "space.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(UserError, match=message) as info:
        read_space(path)
    assert "\n" not in str(info.value)


def test_the_grid_sampler_needs_points_for_a_float_range(tmp_path, base, capsys):
    path = tmp_path / "space.yaml"
    path.write_text("train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\ntrain.epochs: {low: 1, high: 3}\n")
    with pytest.raises(UserError, match=r"space.yaml:1: field 'train.lr': the grid sampler needs grid"):
        read_space(path, grid=True)
    path.write_text("train.lr: {low: 1.0e-4, high: 1.0e-2, grid: [1.0e-4, 1.0e-3]}\ntrain.epochs: {low: 1, high: 3}\n")
    assert [p.values for p in read_space(path, grid=True)] == [(1e-4, 1e-3), (1, 2, 3)]
    # through the command: exit 2 and one line, before any trial runs
    args = ["sweep", "--config", str(base / "base.yaml"), "--space", str(path), "--trials", "2",
            "--objective", "accuracy", "--sampler", "grid", "--output", str(tmp_path / "out")]
    path.write_text("train.lr: {low: 1.0e-4, high: 1.0e-2}\n")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "space.yaml:1: field 'train.lr': the grid sampler needs grid" in err
    assert not (tmp_path / "out" / "trial-0").exists()


def test_a_bound_the_config_refuses_names_the_space_file(tmp_path, base, capsys):
    path = tmp_path / "space.yaml"
    path.write_text("loss.beta: {choices: [0.1, 0.2]}\ntrain.batch_size: {low: 0, high: 8}\n")
    assert main(["sweep", "--config", str(base / "base.yaml"), "--space", str(path), "--trials", "2",
                 "--objective", "accuracy", "--output", str(tmp_path / "out")]) == 2
    assert capsys.readouterr().err == (f"dpokit: error: {path}:2: field 'train.batch_size': 0 is refused by the "
                                       "config: must be ≥ 1\n")


def test_a_missing_optuna_names_the_extra(monkeypatch):
    from dpokit.sweep.study import load_optuna

    monkeypatch.setitem(sys.modules, "optuna", None)  # what an environment without it imports
    with pytest.raises(UserError, match=r'pip install "dpokit\[sweep\]"'):
        load_optuna()


def _running(out: Path) -> bool:
    """A trial of the study is past training start-up (its metrics file exists) and still running."""
    if not (out / "study.db").is_file():
        return False
    try:
        trials = _study(out).get_trials(deepcopy=False)
    except (KeyError, optuna.exceptions.OptunaError, OSError):  # the study is being created
        return False
    return any(t.state.name == "RUNNING" and (out / f"trial-{t.number}" / "metrics.jsonl").is_file() for t in trials)


def test_a_sweep_killed_mid_trial_resumes_with_no_trial_lost_or_run_twice(base, tmp_path, capsys):
    """Two TPE trials (with a KL bound, which TPE takes as a constraint); a rerun asking for four
    killed with SIGKILL inside its first trial; the same command again finishes the study, then
    writes the table, best.yaml and the plot."""
    out = tmp_path / "resume"
    args = _args(base, out, "--trials", "2", "--objective", "accuracy", "--sampler", "tpe", "--max-kl", "1000")
    assert main(args) == 0
    args[args.index("--trials") + 1] = "4"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path),
           "DPOKIT_TEST_WRITE_PAUSE": "30"}  # the trial holds still while it writes its final model
    proc = subprocess.Popen([sys.executable, "-m", "dpokit.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while not _running(out) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert [t.number for t in _study(out).trials if t.state.name == "RUNNING"] == [2]
    capsys.readouterr()
    assert main([*args, "--keep", "best"]) == 0  # the same command (keeping only the best folder)
    printed = capsys.readouterr().out
    trials = _study(out).trials
    assert {t.number: t.state.name for t in trials} == {0: "COMPLETE", 1: "COMPLETE", 2: "FAIL", 3: "COMPLETE",
                                                         4: "COMPLETE"}
    done = [t for t in trials if t.state.name == "COMPLETE"]
    params = [tuple(sorted(t.params.items())) for t in done]
    assert len(set(params)) == 4  # no setting ran twice (a resumed seeded sampler must not repeat itself) ...
    assert tuple(sorted(trials[2].params.items())) == params[2]  # ... and the killed one was not lost:
    assert trials[3].system_attrs.get("failed_trial") == 2  # trial 3 is Optuna's retry of it
    for t in done:  # the constraint Optuna's sampler recorded: KL less the bound, ≤ 0 where feasible
        assert t.constraints == {"kl": t.user_attrs["kl"] - 1000}
    _check_outputs(out, done, printed)


def _check_outputs(out: Path, done: list, printed: str) -> None:
    """The table is the study, best.yaml loads as the best trial's config, the plot is a PNG, and
    only the best trial's folder is left."""
    table = [r for r in _csv(out) if r["state"] == "COMPLETE"]
    assert [int(r["trial"]) for r in table] == [t.number for t in done]
    for t, row in zip(done, table):
        assert float(row["train.lr"]) == t.params["train.lr"] and float(row["accuracy"]) == t.value
        assert float(row["kl"]) == t.user_attrs["kl"] and float(row["seconds"]) > 0
        # the objective is the run's own last held-out accuracy, as its metrics.jsonl logged it
        assert t.value == t.user_attrs["eval_metrics"]["rewards/accuracies"]
    best = max(done, key=lambda t: (t.value, -t.user_attrs["kl"], -t.number))
    assert f"[sweep] best: trial {best.number} " in printed
    cfg = load_config(out / "best.yaml")  # what `dpokit dpo --config best.yaml` loads
    assert cfg.train.lr == best.params["train.lr"] and cfg.loss.beta == best.params["loss.beta"]
    assert cfg.train.output == str(out / "best-run") and cfg.train.max_steps == 4
    assert (out / "reward_kl.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    left = sorted(p.name for p in out.iterdir() if p.name.startswith(("trial-", ".deleting")))
    assert left == [f"trial-{best.number}"]
    assert (out / f"trial-{best.number}" / "final" / "model.safetensors").is_file()


def test_an_absurd_learning_rate_is_pruned(base, tmp_path):
    """Two sound trials, then lr = 1000: its held-out accuracy at step 2 falls below theirs (the
    policy collapses to a uniform distribution), so the median pruner stops it there."""
    out = tmp_path / "prune"
    s = SweepSettings(str(base / "base.yaml"), str(base / "space.yaml"), str(out), 3, ["accuracy"], "random",
                      eval_config=str(base / "eval.yaml"), prune_startup_trials=2)
    study = open_study(s, read_space(s.space))
    for lr in (1e-3, 2e-3, 1e3):
        study.enqueue_trial({"train.lr": lr, "loss.beta": 0.1})
    sweep(s, log=lambda *_: None)
    trials = _study(out).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE", "PRUNED"]
    bad = trials[2]
    assert bad.params["train.lr"] == 1e3 and bad.user_attrs["pruned_at"] == 2
    assert bad.intermediate_values[2] < min(t.intermediate_values[2] for t in trials[:2])
    assert not (out / "trial-2" / "final").exists()  # stopped there: no final model
    steps = [line for line in (out / "trial-2" / "metrics.jsonl").read_text().splitlines() if '"eval/' in line]
    assert len(steps) == 1  # one evaluation, at step 2, and no more training
    row = next(r for r in _csv(out) if r["trial"] == "2")
    assert row["state"] == "PRUNED" and row["accuracy"] == "" and row["pruned_at"] == "2"


def test_a_constrained_multi_objective_grid_sweep_with_a_judge(base, tmp_path):
    """Win rate under a programmatic judge and the sampled KL, on a 2-point grid of the learning
    rate, with a KL bound: the Pareto front and the feasibility read back match the table."""
    space = tmp_path / "grid.yaml"
    space.write_text("train.lr: {low: 1.0e-4, high: 1.0e-1, log: true, grid: [1.0e-4, 1.0e-1]}\n")
    out = tmp_path / "grid"
    args = ["sweep", "--config", str(base / "base.yaml"), "--space", str(space), "--output", str(out),
            "--eval-config", str(base / "eval.yaml"), "--trials", "2", "--sampler", "grid",
            "--objective", "win_rate", "--objective", "kl", "--judge", "helpers.judges:count_e", "--max-kl", "50"]
    assert main(args) == 0
    study = _study(out)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert sorted(t.params["train.lr"] for t in study.trials) == [1e-4, 1e-1]
    rows = _csv(out)
    for t, row in zip(study.trials, rows):
        report = yaml.safe_load((out / f"trial-{t.number}" / "eval" / "eval_report.json").read_text())
        assert t.values == [report["win_rate"], report["kl_sampled"]] == [float(row["win_rate"]), float(row["kl"])]
        assert row["feasible"] == str(report["kl_sampled"] <= 50)
    feasible = [(float(r["win_rate"]), float(r["kl"]), int(r["trial"])) for r in rows if r["feasible"] == "True"]
    front = sorted(n for w, k, n in feasible
                   if not any(w2 >= w and k2 <= k and (w2 > w or k2 < k) for w2, k2, _ in feasible))
    best = load_config(out / "best.yaml")
    assert best.train.lr in {study.trials[n].params["train.lr"] for n in front}
    assert (out / "reward_kl.png").is_file()


def test_jobs_run_trials_in_separate_processes_on_one_storage(base, tmp_path):
    out = tmp_path / "jobs"
    assert main(_args(base, out, "--trials", "2", "--objective", "eval_loss", "--sampler", "random",
                      "--jobs", "2")) == 0
    trials = _study(out).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    owners = {t.user_attrs["owner"][1] for t in trials}
    assert len(owners) == 2 and os.getpid() not in owners  # two worker processes, neither this one
    assert trials[0].params != trials[1].params
    for t in trials:  # the objective is each run's own final held-out loss
        assert t.value == t.user_attrs["eval_metrics"]["loss"] and (out / f"trial-{t.number}" / "final").is_dir()


def test_a_trial_of_another_machine_that_went_silent_is_failed_and_run_again(base, tmp_path):
    """A RUNNING trial owned by another host is left alone while its heartbeat is fresh, and once
    it is older than the grace period (3 heartbeats) Optuna fails it and queues its values again."""
    out = tmp_path / "stale"
    s = SweepSettings(str(base / "base.yaml"), str(base / "space.yaml"), str(out), 1, ["eval_loss"], "random",
                      eval_config=str(base / "eval.yaml"), heartbeat=1)
    params = read_space(s.space)
    study = open_study(s, params)
    with pytest.warns(UserWarning, match="Heartbeat"):  # Optuna's note that ask() itself sends no heartbeat
        lost = study.ask({p.name: optuna.distributions.FloatDistribution(p.low, p.high, log=True) for p in params})
    lost.set_user_attr("owner", ["a-node-that-died", 1])
    study._storage.record_heartbeat(lost._trial_id)
    assert not fail_dead_trials(study)  # not this machine's: the heartbeat decides
    time.sleep(4.5)  # past the 3 s grace period by more than SQLite's clock resolution (1 s)
    sweep(s, log=lambda *_: None)
    trials = _study(out).trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].params == lost.params and trials[1].system_attrs["failed_trial"] == 0
