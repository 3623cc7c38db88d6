"""Live experiment trackers (``--report-to``): a tiny run reports to every tracker installed here, and
what each one wrote, read back from its own files, holds the numbers of metrics.jsonl at the same
steps and the run's config. Bad names and missing packages are one-line errors."""

from __future__ import annotations

import json
import math
import re
import sqlite3
import struct
import sys
from pathlib import Path

import pytest
import yaml

from dpokit.cli import main
from dpokit.config.flags import field_info
from dpokit.config.trackers import TRACKERS, report_to_problem, tracker_names
from dpokit.config.train import TrainConfig
from helpers import config, metrics, tiny_model_dir, write_pairs

INSTALLED = [name for name in TRACKERS if report_to_problem(name) is None]
STEPS = 4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``dpokit dpo --report-to <all installed>``: 4 steps, eval every 2, through the CLI."""
    if not INSTALLED:
        pytest.skip('no tracker installed (pip install "dpokit[trackers]")')
    # trackio reads its folder ($TRACKIO_DIR) when first imported: only a fresh import writes in tmp
    names = [n for n in INSTALLED if n != "trackio" or "trackio" not in sys.modules]
    tmp = tmp_path_factory.mktemp("trackers")
    model, data = tiny_model_dir(tmp), write_pairs(tmp / "pairs.jsonl", n=12)
    out = tmp / "run"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TRACKIO_DIR", str(tmp / "trackio"))
        env.setenv("WANDB_SILENT", "true")
        for key in ("WANDB_MODE", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_ID"):
            env.delenv(key, raising=False)
        assert main(["dpo", "--model", str(model), "--data", str(data), "--eval-data", str(data), "--output",
                     str(out), "--max-steps", str(STEPS), "--eval-steps", "2", "--batch-size", "4", "--lr", "1e-3",
                     "--no-progress", "--max-length", "64", "--max-prompt-length", "32", "--registry", "",
                     "--run-name", "tiny-dpo", "--report-to", ",".join(names)]) in (0, None)
    return tmp, out, names


def expected(out: Path) -> dict[tuple[str, int], float]:
    """(metric, step) -> value for every number metrics.jsonl holds (training windows and eval/)."""
    found = {}
    for record in metrics(out):
        assert "event" not in record
        for key, value in record.items():
            if key != "step":
                found[(key, record["step"])] = value
    return found


def assert_same(logged: dict[tuple[str, int], float], out: Path) -> None:
    want = expected(out)
    assert {k for k, _ in want} >= {"loss", "rewards/accuracies", "epoch", "lr", "eval/loss", "eval/kl/approx"}
    assert sorted({s for _, s in want}) == list(range(1, STEPS + 1))
    missing = sorted(set(want) - set(logged))
    assert not missing, missing
    for key, value in want.items():
        assert math.isclose(logged[key], value, rel_tol=1e-6, abs_tol=1e-7), (key, logged[key], value)


def assert_config(params: dict, out: Path, what: str) -> None:
    """Every setting of the run's resolved config.yaml, under its ``section.field`` key (MLflow keeps
    values as text, W&B and trackio as JSON, TensorBoard's hparams.yml as YAML)."""
    saved = flat(yaml.safe_load((out / "config.yaml").read_text()))
    assert saved["train.run_name"] == "tiny-dpo" and saved["train.max_steps"] == STEPS
    for key, value in saved.items():
        assert key in params, (what, key)
        assert canonical(params[key]) == canonical(value), (what, key, params[key], value)


def flat(d: dict, prefix: str = "") -> dict:
    items = {}
    for k, v in d.items():
        items.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return items


def canonical(value) -> str:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return value
    return str(value)


@pytest.mark.skipif("tensorboard" not in INSTALLED, reason="tensorboard is not installed")
def test_tensorboard_event_files_hold_the_metrics_and_config(run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, out, _ = run
    folder = out / "trackers" / "tensorboard" / "tiny-dpo" / "dpokit"
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    events.Reload()
    logged = {(tag, e.step): e.value for tag in events.Tags()["scalars"] for e in events.Scalars(tag)}
    assert_same(logged, out)
    (hparams,) = folder.glob("*/hparams.yml")
    assert_config(yaml.safe_load(hparams.read_text()), out, "tensorboard")


@pytest.mark.skipif("mlflow" not in INSTALLED, reason="mlflow is not installed")
def test_mlflow_sqlite_store_holds_the_metrics_and_config(run):
    from mlflow import MlflowClient

    _, out, _ = run
    client = MlflowClient(f"sqlite:///{out / 'trackers' / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("dpokit").experiment_id])
    assert found.info.run_name == "tiny-dpo" and found.info.status == "FINISHED"
    logged = {(key, m.step): m.value for key in found.data.metrics
              for m in client.get_metric_history(found.info.run_id, key)}
    assert_same(logged, out)
    assert_config(found.data.params, out, "mlflow")


@pytest.mark.skipif("wandb" not in INSTALLED, reason="wandb is not installed")
def test_wandb_offline_run_holds_the_metrics_and_config(run):
    from wandb.proto import wandb_internal_pb2

    _, out, _ = run
    (log,) = (out / "trackers" / "wandb").glob("offline-run-*/run-*.wandb")
    logged, params = {}, {}
    for data in wandb_records(log.read_bytes()):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):
                    logged[(key, record.history.step.num)] = json.loads(item.value_json)
        elif kind == "run":
            assert record.run.display_name == "tiny-dpo" and record.run.project == "dpokit"
            params = {u.key: json.loads(u.value_json) for u in record.run.config.update}
    assert_same(logged, out)
    assert_config(params, out, "wandb")


def wandb_records(raw: bytes) -> list[bytes]:
    """The records of W&B's offline log: a 7-byte header, then LevelDB's log format (32 KiB blocks
    of chunks, each with a 7-byte header: CRC, length, type full/first/middle/last)."""
    assert raw[:4] == b":W&B"
    block, pos, records, partial = 32768, 7, [], b""
    while pos + 7 <= len(raw):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        chunk, pos = raw[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 2):
            partial = chunk
        elif kind in (3, 4):
            partial += chunk
        if kind in (1, 4) and partial:
            records.append(partial)
            partial = b""
    return records


@pytest.mark.skipif("trackio" not in INSTALLED, reason="trackio is not installed")
def test_trackio_database_holds_the_metrics_and_config(run):
    tmp, out, names = run
    if "trackio" not in names:
        pytest.skip("trackio was imported before the run, so it writes to the folder it read then")
    db = sqlite3.connect(tmp / "trackio" / "dpokit.db")
    logged = {}
    for name, step, values in db.execute("select run_name, step, metrics from metrics"):
        assert name == "tiny-dpo"
        logged.update({(k, step): v for k, v in json.loads(values).items()})
    assert_same(logged, out)
    (params,) = [json.loads(c) for (c,) in db.execute("select config from configs")]
    assert_config(params, out, "trackio")


def test_the_help_names_every_tracker_of_the_registry():
    help_text = field_info(TrainConfig, "report_to")[1]
    assert all(name in help_text for name in TRACKERS), help_text


def test_names_are_read_in_order_once():
    assert tracker_names("none") == [] and tracker_names("") == []
    assert tracker_names(" TensorBoard, wandb,tensorboard ") == ["tensorboard", "wandb"]


@pytest.mark.parametrize("value, needle", [
    ("tensorbord", "unknown tracker 'tensorbord'; known: tensorboard, wandb, mlflow, trackio"),
    ("none,wandb", "'none' cannot be combined"),
])
def test_a_bad_tracker_is_one_line_naming_the_field(tmp_path, capsys, value, needle):
    model, data = tmp_path / "no-model", write_pairs(tmp_path / "pairs.jsonl", n=2)
    assert main(["dpo", "--model", str(model), "--data", str(data), "--output", str(tmp_path / "o"),
                 "--report-to", value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.report_to" in err and needle in err, err


def test_a_missing_tracker_package_names_the_extra(tmp_path, capsys, monkeypatch):
    """An import blocked the way Python blocks one (None in sys.modules) is a package not installed."""
    monkeypatch.setitem(sys.modules, "wandb", None)
    data = write_pairs(tmp_path / "pairs.jsonl", n=2)
    assert main(["dpo", "--model", "m", "--data", str(data), "--output", str(tmp_path / "o"),
                 "--report-to", "tensorboard,wandb"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "train.report_to" in err, err
    assert 'wandb is not installed: pip install "dpokit[trackers]"' in err


@pytest.mark.skipif("mlflow" not in INSTALLED, reason="mlflow is not installed")
def test_a_missing_helper_package_is_named(tmp_path, monkeypatch):
    from dpokit.errors import UserError

    monkeypatch.setitem(sys.modules, "alembic", None)
    with pytest.raises(UserError, match=r"mlflow needs alembic \(not installed\): pip install \"dpokit\[trackers\]\""):
        config(tmp_path / "m", write_pairs(tmp_path / "p.jsonl", n=2), tmp_path / "o", train__report_to="mlflow")


@pytest.mark.parametrize("name", ["a/b", "..", " "])
def test_a_run_name_must_be_a_plain_name(tmp_path, name):
    from dpokit.errors import UserError

    with pytest.raises(UserError, match="train.run_name"):
        config(tmp_path / "m", write_pairs(tmp_path / "p.jsonl", n=2), tmp_path / "o", train__run_name=name)


@pytest.mark.skipif(not {"tensorboard", "mlflow"} <= set(INSTALLED), reason="tensorboard or mlflow is not installed")
def test_an_online_run_reports_each_round_beside_its_training_runs(tmp_path, monkeypatch):
    """Two rounds: the online run's own tracker run holds each round's report figures at step = the
    round, and each round's training run reports beside it (MLflow: as its child)."""
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from helpers.online import tiny_online

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "online"
    tiny_online(tmp_path, out, online__rounds=2, train__report_to="tensorboard,mlflow", train__run_name="loop")
    report = json.loads((out / "online_report.json").read_text())["rounds"]
    boards = out / "trackers" / "tensorboard"
    assert sorted(p.name for p in boards.iterdir()) == ["loop", "loop-round-1", "loop-round-2"]
    events = EventAccumulator(str(boards / "loop" / "dpokit"), size_guidance={"scalars": 0})
    events.Reload()
    for key in ("win_rate", "kl_sampled", "pairs", "mean_length", "train_steps"):
        assert [(e.step, e.value) for e in events.Scalars(key)] == [
            (r["round"], pytest.approx(r[key], rel=1e-6)) for r in report], key
    lows = [e.value for e in events.Scalars("win_rate_ci95/low")]
    assert lows == [pytest.approx(r["win_rate_ci95"][0], rel=1e-6) for r in report]

    client = MlflowClient(f"sqlite:///{out / 'trackers' / 'mlflow.db'}")
    runs = {r.info.run_name: r for r in client.search_runs([client.get_experiment_by_name("dpokit").experiment_id])}
    assert sorted(runs) == ["loop", "loop-round-1", "loop-round-2"]
    parent = runs["loop"].info.run_id
    for r in (1, 2):
        child = runs[f"loop-round-{r}"]
        assert child.data.tags["mlflow.parentRunId"] == parent
        losses = [(m.step, m.value) for m in client.get_metric_history(child.info.run_id, "loss")]
        assert losses == [(m["step"], pytest.approx(m["loss"], rel=1e-6))
                          for m in metrics(out / f"round-{r}") if "loss" in m]
    assert [(m.step, m.value) for m in client.get_metric_history(parent, "win_rate")] == [
        (r["round"], pytest.approx(r["win_rate"], rel=1e-6)) for r in report]


def test_the_extras_install_what_each_tracker_imports():
    """``dpokit[trackers]`` has a package for every module the registry checks, and the test extra
    has all of them, so CI runs the tests above rather than skipping them."""
    import tomllib

    extras = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())[
        "project"]["optional-dependencies"]
    names = {re.split(r"[<>=!,\[ ]", req)[0].lower() for req in extras["trackers"]}
    distribution = {"mlflow": "mlflow-skinny"}  # the module mlflow comes in the lighter distribution
    assert {distribution.get(m, m) for modules in TRACKERS.values() for m in modules} == names
    assert set(extras["trackers"]) <= set(extras["test"])
