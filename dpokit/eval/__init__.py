"""Evaluation: sampling, judges, win rate with a confidence interval, sampled KL."""

from dpokit.eval.evaluate import evaluate_models
from dpokit.eval.judges import as_compare, load_judge


def format_report(report: dict) -> str:
    lo, hi = report["win_rate_ci95"]
    lines = [
        f"prompts: {report['prompts']}",
        f"win rate (policy over reference): {report['win_rate']:.1%} [95% CI {lo:.1%}, {hi:.1%}] "
        f"({report['wins']} wins, {report['ties']} ties, {report['losses']} losses)",
        f"sampled KL(π‖π_ref): {report['kl_sampled']:.3f} ± {report['kl_sampled_stderr']:.3f} nats",
        f"mean answer length (tokens): policy {report['mean_length_policy']:.1f}, "
        f"reference {report['mean_length_reference']:.1f}",
    ]
    if report.get("judge_failures"):
        first = f"; the first error: {report['judge_first_error']}" if report.get("judge_first_error") else ""
        lines.append(f"judge failures: {report['judge_failures']} of {report['prompts']} prompts, left out of "
                     f"the win rate{first}")
    if "reward_accuracy" in report:
        lines.append(f"held-out pairs: {report['pairs']}, reward accuracy {report['reward_accuracy']:.1%}, "
                     f"margin {report['reward_margin']:.3f}")
        for label, part in report.get("by_source", {}).items():
            lines.append(f"  {label}: {part['pairs']} pairs, reward accuracy {part['reward_accuracy']:.1%}, "
                         f"margin {part['reward_margin']:.3f}")
    return "\n".join(lines)


__all__ = ["as_compare", "evaluate_models", "format_report", "load_judge"]
