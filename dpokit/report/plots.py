"""The report's figures: matplotlib drawn straight to SVG text, to be placed inline in the page.

matplotlib is already a dependency (the online reward-KL PNG), needs no script in the page and no
network, and its SVG scales to any screen and prints sharply. Figures are built on ``Figure``
objects, never pyplot, so no global state is left behind; the SVG's element ids are salted per
figure so that several figures in one page never share an id.
"""

from __future__ import annotations

import io
import math
import re

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f",
           "#bcbd22")
"""One colour per run, the same in every figure (matplotlib's tab10)."""

SIZE = (4.8, 3.1)
"""Inches: about a laptop column, still legible when the page shrinks it to a phone's width."""


def colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def _figure():
    from matplotlib.figure import Figure

    fig = Figure(figsize=SIZE, dpi=100)
    ax = fig.add_subplot()
    ax.grid(True, color="#e4e4e4", linewidth=0.6)
    ax.tick_params(labelsize=8)
    return fig, ax


def to_svg(fig, salt: str) -> str:
    """The figure as an ``<svg>`` element (no XML prologue), text kept as text, ids unique to ``salt``."""
    import matplotlib

    fig.tight_layout()
    out = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": salt}):
        fig.savefig(out, format="svg", metadata={"Date": None, "Creator": None})
    text = out.getvalue()
    return text[text.index("<svg"):]


def finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def curve(key: str, series: list[tuple[str, int, list[float], list[float]]], salt: str) -> str:
    """One metric against the step, one line per run: (run name, colour index, steps, values)."""
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure()
    for name, index, steps, values in series:
        ax.plot(steps, values, color=colour(index), linewidth=1.4, label=plain(name),
                marker="o" if len(steps) <= 12 else None, markersize=3)
    ax.set_title(plain(key), fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if len(series) > 1:
        ax.legend(fontsize=7, frameon=False)
    return to_svg(fig, salt)


def reward_vs_kl(paths: list[tuple[str, int, list[tuple[str, float, float]]]], xlabel: str, ylabel: str,
                 title: str, salt: str, connect: bool = True) -> str:
    """Reward against KL. Each path is (name, colour index, points (label, kl, reward)), each point
    labelled; with ``connect`` a path's points are joined in order (online rounds)."""
    fig, ax = _figure()
    for name, index, points in paths:
        xs, ys = [p[1] for p in points], [p[2] for p in points]
        ax.plot(xs, ys, color=colour(index), marker="o", markersize=4, linewidth=1.2 if connect else 0,
                label=plain(name))
        for label, x, y in points:
            ax.annotate(_short(label), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_title(plain(title), fontsize=10)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    if len(paths) > 1:
        ax.legend(fontsize=7, frameon=False)
    return to_svg(fig, salt)


def _short(label: str, width: int = 24) -> str:
    return plain(label if len(label) <= width else "…" + label[-(width - 1):])


def plain(text: str) -> str:
    """Text matplotlib draws as written: a ``$`` would otherwise start mathtext (and a lone one fail)."""
    return text.replace("$", r"\$")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"
