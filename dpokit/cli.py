"""Command line: ``dpokit sft|dpo|online|sweep|update|federated|eval|versions|data|label|report|rank|quickstart|losses``.
Each subcommand builds a config and calls the library; a user error ends with one message and exit
code 2, never a traceback."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from dpokit.cli_errors import OneLineParser
from dpokit.config import (DATA_COMMAND_NOT_FLAGS, TRAIN_FLAG_SET, DataCommandConfig, EvalConfig, RankEvalConfig,
                           RankRecordsConfig, RunConfig, SimulateConfig, default_registry, load_config)
from dpokit.config.flags import add_flags, config_flags, overrides, spellings
from dpokit.config.rank import RANK_UPDATE_NOT_FLAGS, RankCheckConfig, RankUpdateConfig
from dpokit.data.kinds import KIND_NAMES
from dpokit.errors import Stopped, UserError, stops_raise

EVAL_FLAG_SET = config_flags(EvalConfig)
EVAL_FLAGS = spellings(EVAL_FLAG_SET)
"""Each spelling of a ``dpokit eval`` flag (underscores) -> the field it sets."""
DATA_FLAG_SET = config_flags(DataCommandConfig, skip=DATA_COMMAND_NOT_FLAGS)
DATA_FLAGS = spellings(DATA_FLAG_SET)
"""Each spelling of a ``dpokit data`` flag (underscores) -> the field it sets."""
RANK_CONFIGS = {"simulate": SimulateConfig, "records": RankRecordsConfig, "eval": RankEvalConfig,
                "update": RankUpdateConfig, "check": RankCheckConfig, "watch": RankCheckConfig}
RANK_FLAG_SETS = {name: config_flags(cls, skip=RANK_UPDATE_NOT_FLAGS if name == "update" else ())
                  for name, cls in RANK_CONFIGS.items()}
VERSION_ACTIONS = {"list": "list the versions; * marks the current one",
                   "show": "one version's lineage, data, metrics and evaluation (default: the current one)",
                   "promote": "make a version current", "rollback": "make the previous current version current again",
                   "diff": "compare the metrics, configs and lineage of two versions",
                   "check": "re-evaluate the current version on a canary set against the previous one; roll it back "
                            "when it has fallen behind (docs/updates.md)",
                   "watch": "check every --interval seconds"}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="dpokit", description="Preference fine-tuning: SFT, DPO, evaluation.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("sft", "supervised fine-tuning on completions (or chosen answers)"),
                            ("dpo", "preference optimization (default loss: sigmoid = DPO)")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--config", help="YAML file with model/lora/data/loss/train sections; flags override it")
        add_flags(p, TRAIN_FLAG_SET, RunConfig)
    _add_online_parser(sub)
    _add_sweep_parser(sub)
    _add_update_parser(sub)
    _add_federated_parser(sub)
    p = sub.add_parser("eval", help="win rate under a judge and sampled KL of a policy against a reference")
    p.add_argument("--config", help="YAML file with EvalConfig keys; flags override it")
    add_flags(p, EVAL_FLAG_SET, EvalConfig)
    _add_versions_parser(sub)
    p = sub.add_parser("quickstart", help="SFT then DPO on the embedded SmolLM2-135M-Instruct, then evaluation")
    p.add_argument("--tiny", action="store_true", help="run the same pipeline on a tiny random model (< 1 minute)")
    p.add_argument("--output", default="runs/quickstart", help="run folder")
    sub.add_parser("losses", help="list the registered losses")
    _add_data_parser(sub)
    _add_label_parser(sub)
    _add_report_parser(sub)
    _add_rank_parser(sub)
    return parser


def _add_online_parser(sub) -> None:
    from dpokit.online.config import ONLINE_FLAG_SET, OnlineConfig

    p = sub.add_parser("online", help="rounds of sampling, judging, pairing and training (docs/online.md)")
    p.add_argument("--config", help="YAML file with model/lora/data/loss/train/online sections; flags override it")
    add_flags(p, ONLINE_FLAG_SET, OnlineConfig)


def _add_update_parser(sub) -> None:
    from dpokit.update.config import UPDATE_FLAG_SET, UpdateConfig

    p = sub.add_parser("update", help="train a challenger of the registry's current version on new feedback, "
                                      "A/B-test it, promote or refuse it (docs/reliability.md)")
    p.add_argument("--config", help="YAML file with model/lora/data/loss/train/update sections; flags override it")
    add_flags(p, UPDATE_FLAG_SET, UpdateConfig)


def _add_federated_parser(sub) -> None:
    from dpokit.federated.config import FEDERATED_FLAG_SET, FederatedConfig

    p = sub.add_parser("federated", help="federated DPO: clients train LoRA adapters on their own files, a Flower "
                                         "server averages them (docs/federated.md)")
    p.add_argument("--config", help="YAML file with model/lora/loss/train/federated sections; flags override it")
    add_flags(p, FEDERATED_FLAG_SET, FederatedConfig)


def _add_sweep_parser(sub) -> None:
    from dpokit.sweep.objectives import OBJECTIVES

    p = sub.add_parser("sweep", help="hyper-parameter search over training runs on an Optuna study (docs/sweep.md)")
    p.add_argument("--config", required=True, help="the base run config (YAML, with data.eval): what every trial trains")
    p.add_argument("--space", required=True, help="YAML: config fields (train.lr, loss.beta, ...) and their ranges or choices")
    p.add_argument("--trials", type=int, required=True, help="finished trials the study should hold (a rerun continues)")
    p.add_argument("--objective", action="append", required=True, choices=tuple(OBJECTIVES),
                   help="what to optimize; give it twice or more for a multi-objective study and its Pareto front")
    p.add_argument("--output", required=True, help="sweep folder: trial-N/, study.db, trials.csv, best.yaml, reward_kl.png")
    p.add_argument("--sampler", choices=("tpe", "random", "grid"), default="tpe", help="Optuna's sampler")
    p.add_argument("--storage", help="any SQLAlchemy URL of the study (default sqlite:///OUTPUT/study.db)")
    p.add_argument("--study-name", help="the study's name in the storage (default: the output folder's name)")
    p.add_argument("--jobs", type=int, default=1, help="trials run at once, each in its own process, on one storage")
    p.add_argument("--keep", choices=("best", "all"), default="all", help="keep every trial folder, or only the best")
    p.add_argument("--max-kl", type=float, help="only trials whose sampled KL to the starting model is at most this count")
    p.add_argument("--eval-config", help="YAML of dpokit eval settings for measuring trials (max_new_tokens, ...)")
    p.add_argument("--judge", help="package.module:function (or rm:/llm: PATH) for win_rate and judge_score")
    p.add_argument("--prompts", help="held-out prompts for the judge and the KL (default: the base's data.eval)")
    p.add_argument("--prune", action=argparse.BooleanOptionalAction, default=True,
                   help="stop trials whose held-out metric is below the median at an evaluation step (Optuna's MedianPruner)")
    p.add_argument("--prune-startup-trials", type=int, default=4, help="finished trials before any is pruned")
    p.add_argument("--heartbeat", type=int, default=10,
                   help="seconds between a running trial's heartbeats; one silent for 3 of them counts as dead")
    p.add_argument("--seed", type=int, default=int(os.environ.get("SLURM_ARRAY_TASK_ID") or 0),
                   help="the sampler's seed (default 0; in a Slurm job array, the array index)")


def _add_versions_parser(sub) -> None:
    p = sub.add_parser("versions", help="model versions in a registry folder: list, show, promote, rollback, diff")
    actions = p.add_subparsers(dest="action", required=True)
    for name, help_text in VERSION_ACTIONS.items():
        q = actions.add_parser(name, help=help_text)
        q.add_argument("--registry", default=default_registry(), help="registry folder (default: $DPOKIT_REGISTRY)")
        if name in ("show", "promote"):
            q.add_argument("version", nargs="?" if name == "show" else None, help="version id, e.g. v3")
        if name == "show":
            q.add_argument("--json", action="store_true", help="the whole record, config included, as JSON")
        if name == "diff":
            q.add_argument("a", help="version id")
            q.add_argument("b", help="version id")
        if name in ("check", "watch"):
            from dpokit.update.canary import CANARY_FLAG_SET, CanaryConfig

            add_flags(q, CANARY_FLAG_SET, CanaryConfig)


def _add_data_parser(sub) -> None:
    data = sub.add_parser("data", help="check, describe or convert a data file (docs/data.md)")
    commands = data.add_subparsers(dest="data_command", required=True)
    for name, help_text in (("check", "read and clean every record as training does: the first errors, what "
                                      "cleaning keeps and drops (exit 2 if any error, or if no record is left)"),
                            ("stats", "counts, lengths, duplicates, conflicts, label balance, agreement"),
                            ("convert", "write canonical JSONL records plus a report of every change")):
        p = commands.add_parser(name, help=help_text)
        p.add_argument("input", help="a data file or a save_to_disk folder")
        if name == "convert":
            p.add_argument("output", help="the .jsonl (or .jsonl.gz) file to write")
            p.add_argument("--to", choices=tuple(KIND_NAMES), default="pairs",
                           help="the record kind to write (pairs is the kind pair)")
        if name == "check":
            p.add_argument("--to", choices=tuple(KIND_NAMES), default=None,
                           help="the record kind the loss trains on (pairs for DPO), converted to as training "
                                "does (default: each record's own kind)")
        p.add_argument("--tokenizer", help="a model folder, .gguf or builtin:... whose tokenizer measures "
                                           "lengths (stats) and whose special tokens count as leaks")
        p.add_argument("--config", help="a run's YAML file; its data section sets the options")
        add_flags(p, DATA_FLAG_SET, DataCommandConfig)
    p = commands.add_parser("merge-votes", help="several annotators' votes files on the same candidates -> one "
                                                "votes file (all votes per candidate) and their agreement")
    p.add_argument("inputs", nargs="+", help="votes files (dpokit label --out files, or any votes format file)")
    p.add_argument("-o", "--output", required=True, help="the merged .jsonl file to write")


def _add_label_parser(sub) -> None:
    p = sub.add_parser("label", help="a local page where people judge pairs of answers (docs/labelling.md)")
    p.add_argument("--data", required=True, help="candidates: a prompt and two answers per record (votes, pairs, "
                                                 "a list of responses, dpokit eval samples, dpokit online candidates)")
    p.add_argument("--out", required=True, help="the votes file the judgements are appended to (resumed if it exists)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (another than loopback opens the "
                                                      "page to the network)")
    p.add_argument("--port", type=int, default=8765, help="port to listen on; 0 picks a free one (the URL is printed)")
    p.add_argument("--annotator", help="the name recorded with each judgement (default: the user's login name)")
    p.add_argument("--seed", type=int, default=0, help="seed of the order the two answers are shown in")


def _add_report_parser(sub) -> None:
    p = sub.add_parser("report", help="one self-contained HTML page of runs: curves, reward against KL, held-out "
                                      "samples, data reports, configs, lineage, machine (docs/report.md)")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="a training run folder (metrics.jsonl), an online run folder or a quickstart folder")
    p.add_argument("-o", "--output", default="report.html", help="the HTML file to write (default: report.html)")
    p.add_argument("--eval", action="append", default=[], metavar="DIR",
                   help="an evaluation folder (dpokit eval --output DIR) to show as well; repeatable")
    p.add_argument("--registry", help="also plot and list every version of this registry that has an evaluation")
    p.add_argument("--title", default="dpokit report", help="the page's title")


def _add_rank_parser(sub) -> None:
    rank = sub.add_parser("rank", help="a click simulator and off-policy evaluation of item rankers (docs/ranking.md)")
    commands = rank.add_subparsers(dest="rank_command", required=True)
    for name, help_text in (("simulate", "write a logged-bandit log, its item table and the simulator's sidecar"),
                            ("records", "item_ranker training records from a log's clicks: pairs, skip-above "
                                        "pairs or lists, IPS-weighted"),
                            ("eval", "IPS, SNIPS and DR estimates of a ranker's click rate on a log, with intervals "
                                     "(and the true values when the log came from the simulator)"),
                            ("update", "a daily update: train a challenger of the registry's current ranker on a "
                                       "day's log, estimate both on a held-out log, promote or refuse it"),
                            ("check", "re-estimate the current ranker on a canary log against the previous one; "
                                      "roll it back when its click-rate gain is clearly negative or its folder "
                                      "fails verification"),
                            ("watch", "rank check every --interval seconds")):
        p = commands.add_parser(name, help=help_text)
        p.add_argument("--config", help="YAML file of the command's keys; flags override it")
        add_flags(p, RANK_FLAG_SETS[name], RANK_CONFIGS[name])


def run_train(ns: argparse.Namespace) -> int:
    from dpokit.train import train

    given = overrides(ns, TRAIN_FLAG_SET)
    if ns.command == "sft":
        given.setdefault("loss.name", "sft")
    cfg = load_config(ns.config, given)
    result = train(cfg)
    if result.stopped_by:  # SIGTERM / SIGINT: a checkpoint was saved; exit as the signal would (128 + n)
        print(f"dpokit: stopped by {result.stopped_by} at step {result.steps}; saved {result.checkpoint}; "
              "run the same command with --resume to continue", file=sys.stderr)
        return 128 + int(getattr(signal, result.stopped_by))
    print(f"final model: {result.final}")
    for k, v in result.eval_metrics.items():
        print(f"  eval/{k}: {v:.4f}")
    return 0


def run_eval(ns: argparse.Namespace) -> int:
    from dpokit.eval import evaluate_models, format_report

    cfg = load_config(ns.config, overrides(ns, EVAL_FLAG_SET), root=EvalConfig)
    report = evaluate_models(cfg)
    print(format_report(report))
    if cfg.registry:
        from dpokit.store.versions import Registry, attach_eval

        # a registry that only $DPOKIT_REGISTRY names takes the reports of its own versions; one
        # asked for (--registry, --version, the YAML file) must hold the model
        asked = ns.registry is not None or cfg.version is not None or cfg.registry != default_registry()
        vid = attach_eval(Registry(cfg.registry), report, cfg.model, cfg.ref_model, cfg.version, required=asked)
        print(f"report attached to {vid} in {cfg.registry}" if vid else
              f"report not attached: {cfg.model} is no version in {cfg.registry} ($DPOKIT_REGISTRY)")
    return 0


def run_online(ns: argparse.Namespace) -> int:
    from dpokit.online import OnlineConfig, online
    from dpokit.online.config import ONLINE_FLAG_SET

    result = online(load_config(ns.config, overrides(ns, ONLINE_FLAG_SET), root=OnlineConfig))
    for e in result.rounds:
        lo, hi = e["win_rate_ci95"]
        print(f"round {e['round']}: win rate {e['win_rate']:.1%} [95% CI {lo:.1%}, {hi:.1%}], "
              f"KL {e['kl_sampled']:.3f}, {e['pairs']} pairs, {e['discarded']} discarded")
    print(f"final model: {result.final}\nreport: {result.output / 'online_report.json'}")
    return 0


def run_update(ns: argparse.Namespace) -> int:
    from dpokit.update.config import UPDATE_FLAG_SET, UpdateConfig
    from dpokit.update.run import update

    state = update(load_config(ns.config, overrides(ns, UPDATE_FLAG_SET), root=UpdateConfig))
    print(state["decision"]["summary"])
    for reason in state["decision"]["reasons"]:
        print(f"  refused: {reason}")
    return 0


def run_federated(ns: argparse.Namespace) -> int:
    from dpokit.federated.config import FEDERATED_FLAG_SET, FederatedConfig

    cfg = load_config(ns.config, overrides(ns, FEDERATED_FLAG_SET), root=FederatedConfig)
    try:
        from dpokit.federated import run_federated as run
        import flwr  # noqa: F401
    except ImportError as exc:
        raise UserError(f'dpokit federated needs `pip install "dpokit[federated]"` ({exc})') from None
    result = run(cfg)
    print(f"final global adapter: {result.final}\nreport: {result.output / 'federated_report.json'}")
    return 0


def run_sweep(ns: argparse.Namespace) -> int:
    from dpokit.sweep import SweepSettings, sweep

    given = {k: v for k, v in (("judge", ns.judge), ("prompts", ns.prompts)) if v is not None}
    summary = sweep(SweepSettings(
        ns.config, ns.space, ns.output, ns.trials, ns.objective, ns.sampler, ns.storage, ns.study_name, ns.jobs,
        ns.keep, ns.max_kl, ns.eval_config, given, ns.prune, ns.prune_startup_trials, ns.heartbeat, ns.seed))
    print(f"trials: {summary['table']}")
    if summary["best_yaml"]:
        print(f"best config: {summary['best_yaml']} (dpokit dpo --config {summary['best_yaml']})")
    if summary["plot"]:
        print(f"reward-KL plot: {summary['plot']}")
    return 0


def run_versions(ns: argparse.Namespace) -> int:
    from dpokit.store import versions

    if not ns.registry:
        raise UserError("is required (or set DPOKIT_REGISTRY)", where="--registry")
    registry = versions.Registry(ns.registry)
    if ns.action in ("check", "watch"):
        from dpokit.update import canary

        cfg = load_config(None, overrides(ns, canary.CANARY_FLAG_SET), root=canary.CanaryConfig)
        if ns.action == "check":
            print(canary.check(registry, cfg))
        else:
            canary.watch(registry, cfg)
        return 0
    actions = {"list": lambda: versions.list_versions(registry),
               "show": lambda: versions.show_version(registry, ns.version, ns.json),
               "promote": lambda: versions.promote(registry, ns.version),
               "rollback": lambda: versions.rollback(registry),
               "diff": lambda: versions.diff_versions(registry, ns.a, ns.b)}
    print(actions[ns.action]())
    return 0


def run_quickstart(ns: argparse.Namespace) -> int:
    from dpokit.quickstart import quickstart

    quickstart(output=ns.output, tiny=ns.tiny)
    return 0


def run_losses(ns: argparse.Namespace) -> int:
    from dpokit.losses import all_losses

    for spec in all_losses().values():
        needs = "reference" if spec.needs_reference else "no reference"
        print(f"{spec.name:14s} {'/'.join(spec.kinds):14s} {needs:13s} {spec.summary}")
    return 0


def run_label(ns: argparse.Namespace) -> int:
    from dpokit.label import serve

    return serve(ns.data, ns.out, ns.host, ns.port, ns.annotator, ns.seed)


def run_data(ns: argparse.Namespace) -> int:
    from dpokit.data import commands

    if ns.data_command == "merge-votes":
        return commands.merge_votes(ns.inputs, ns.output)
    options = load_config(ns.config, overrides(ns, DATA_FLAG_SET), root=DataCommandConfig).data
    tokenizer = None
    if ns.tokenizer:
        from dpokit.policies.lm.load import load_tokenizer

        tokenizer = load_tokenizer(ns.tokenizer)
    if ns.data_command == "stats":
        return commands.stats(ns.input, options, tokenizer)
    special = tokenizer.all_special_tokens if tokenizer is not None else ()
    if ns.data_command == "check":
        return commands.check(ns.input, options, ns.to, special)
    return commands.convert(ns.input, ns.output, ns.to, options, special)


def run_rank(ns: argparse.Namespace) -> int:
    from dpokit.rank import commands

    name = ns.rank_command
    cfg = load_config(ns.config, overrides(ns, RANK_FLAG_SETS[name]), root=RANK_CONFIGS[name])
    if name == "update":
        from dpokit.update.rank import run_rank_update

        return run_rank_update(cfg)
    if name in ("check", "watch"):
        from dpokit.store.versions import Registry
        from dpokit.update.rank_check import rank_check, rank_watch

        registry = Registry(cfg.registry)
        if name == "check":
            print(rank_check(registry, cfg))
        else:
            rank_watch(registry, cfg)
        return 0
    return {"simulate": commands.run_simulate, "records": commands.run_records, "eval": commands.run_eval}[name](cfg)


def run_report(ns: argparse.Namespace) -> int:
    from dpokit.report import build_report

    print(f"report: {build_report(ns.runs, ns.output, ns.eval, ns.registry, ns.title)}")
    return 0


STOP_HINTS = {
    "online": "finished rounds, sampled and judged answers and training checkpoints are kept; run the same "
              "command to continue",
    "federated": "the rounds finished are in OUTPUT/global and the registry; a rerun starts the rounds afresh",
    "quickstart": "finished stages and training checkpoints are kept; run the same command to continue",
    "eval": "an evaluation keeps nothing until it is complete; run the same command to evaluate again",
    "label": "every judgement made is saved; run the same command to continue",
    "update": "the update's finished steps are kept and the champion is still current; run the same command to "
              "continue",
    "sweep": "finished trials are in the study; run the same command to continue (the stopped trial runs again)",
}
"""What a stop outside a training step leaves, by command (sft and dpo stop after a step, see run_train)."""

COMMANDS = {"sft": run_train, "dpo": run_train, "online": run_online, "federated": run_federated, "sweep": run_sweep,
            "update": run_update, "eval": run_eval, "versions": run_versions, "data": run_data, "label": run_label,
            "quickstart": run_quickstart, "losses": run_losses, "report": run_report, "rank": run_rank}


def _close_progress_bars() -> None:
    """End any bar an error interrupted, so the message starts on a line of its own."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def main(argv: list[str] | None = None) -> int:
    try:
        ns = build_parser().parse_args(argv)  # a bad flag is a UserError too (OneLineParser)
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # our own bar shows progress; theirs repeats per model load
        with stops_raise(STOP_HINTS.get(ns.command, "nothing was left half-written")):
            return COMMANDS[ns.command](ns)
    except UserError as exc:
        _close_progress_bars()
        print(f"dpokit: error: {exc}", file=sys.stderr)
        return 2
    except Stopped as exc:
        _close_progress_bars()
        print(f"dpokit: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # a second Ctrl-C
        print("dpokit: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stdout = open(os.devnull, "w")
        return 0


if __name__ == "__main__":
    sys.exit(main())
