"""The report's figures (matplotlib's Figure directly: no pyplot state, Agg canvas, safe inside a
Hydra process). Each returns its :class:`Figure`; every legend names a cell by the sweep's axes.

Curves over steps: per cell, each seed's trailing mean over ``smooth`` steps, then the mean over
the cell's seeds as a line and their range (min to max) as a band.
"""

from __future__ import annotations

import math

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from arca_sweep.diagnostics import REGIMES
from arca_sweep.report.data import Arm, cell_label, groups, shadow_means, signals_of
from arca_sweep.report.stats import as_number, mean

REGIME_COLOURS = {"uniform": "#c6dbef", "middle": "#6baed6", "concentrated": "#08306b"}
LINESTYLES = ("-", "--", ":", "-.")
MARKERS = "os^Dv<>p*h"
MAX_COLUMNS = 4


def cell_styles(arms: list[Arm]) -> dict[tuple, dict]:
    """One style per cell, the same in every figure: colour and marker cycle over ten cells, then
    the dash pattern changes."""
    return {
        cell: dict(
            color=f"C{i % 10}",
            marker=MARKERS[i % len(MARKERS)],
            linestyle=LINESTYLES[(i // 10) % len(LINESTYLES)],
        )
        for i, cell in enumerate(groups(arms))
    }


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666")


def trailing_mean(values: list[float], window: int) -> list[float]:
    """y_t = mean(x_{t-window+1} .. x_t), shorter at the start."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def seed_band(
    group: list[Arm], key: str, window: int = 1
) -> tuple[list[int], list[float], list[float], list[float]]:
    """Steps, and the mean, min and max over ``group``'s seeds of each seed's trailing mean of ``key``
    (at each step where at least one seed has a value)."""
    by_step: dict[int, list[float]] = {}
    for arm in group:
        points = [(r["step"], as_number(r.get(key))) for r in arm.records]
        points = [(s, v) for s, v in points if v is not None]
        smoothed = trailing_mean([v for _, v in points], window)
        for (step, _), value in zip(points, smoothed, strict=True):
            by_step.setdefault(step, []).append(value)
    steps = sorted(by_step)
    return (
        steps,
        [mean(by_step[s]) for s in steps],
        [min(by_step[s]) for s in steps],
        [max(by_step[s]) for s in steps],
    )


def _plot_band(ax, group: list[Arm], key: str, window: int, style: dict, label: str | None) -> bool:
    steps, centre, low, high = seed_band(group, key, window)
    if not steps:
        return False
    markevery = max(1, len(steps) // 8)
    ax.plot(steps, centre, label=label, markevery=markevery, markersize=4, **style)
    if len(group) > 1:
        ax.fill_between(steps, low, high, color=style["color"], alpha=0.18, linewidth=0)
    return True


def _legend(fig, axes, title: str) -> None:
    handles, labels = [], []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside right center", title=title)


def _seeds_label(group: list[Arm]) -> str:
    return f"{cell_label(group[0].cell)} ({len(group)} seed{'s' if len(group) != 1 else ''})"


def regime_figure(arms: list[Arm]) -> Figure:
    """Stacked bars of the shadow regime shares per signal (mean over seeds of each arm's mean over
    its steps), one panel per cell (finished arms)."""
    cells = list(groups(arms).items()) or [((), [])]
    n_cols = min(MAX_COLUMNS, len(cells))
    n_rows = math.ceil(len(cells) / n_cols)
    fig = Figure(figsize=(max(7.5, 3.4 * n_cols + 1.5), 3.6 * n_rows + 0.8), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, sharey=True, squeeze=False)
    for ax in axes.ravel()[len(cells) :]:
        ax.set_visible(False)
    for ax, (_, group) in zip(axes.ravel(), cells, strict=False):
        signals = signals_of(group)
        per_seed = {s: [shadow_means([a], s) for a in group] for s in signals}
        bottom = [0.0] * len(signals)
        for regime in REGIMES:
            heights = [mean(m[regime] for m in per_seed[s]) or 0.0 for s in signals]
            ax.bar(signals, heights, bottom=bottom, color=REGIME_COLOURS[regime], label=regime, edgecolor="k")
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        ax.set_title(_seeds_label(group) if group else "-", fontsize=9)
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", labelrotation=30)
        if not signals:
            _empty(ax, "no shadow metrics" if group else "no finished arm yet")
    for row in axes:
        row[0].set_ylabel("share of trajectories")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles[::-1], labels[::-1], loc="outside right center", title="regime")
    fig.suptitle("Regime shares per signal (shadow diagnostics; mean over steps, then over seeds)")
    return fig


def gini_etr_figure(arms: list[Arm], smooth: int = 1) -> Figure:
    """The training signal's Gini (top row) and ETR (bottom row) over steps, one column per training
    signal, one line per cell with its band over seeds."""
    signals = sorted({a.credit for a in arms}) or ["-"]
    fig = Figure(figsize=(max(8.0, 3.6 * len(signals) + 3.5), 6.4), layout="constrained")
    axes = fig.subplots(2, len(signals), squeeze=False, sharex=True)
    styles = cell_styles(arms)
    for col, signal in enumerate(signals):
        of_signal = {c: g for c, g in groups(arms).items() if g[0].credit == signal}
        for row, (key, name) in enumerate([("credit/gini/mean", "Gini"), ("credit/etr/mean", "ETR")]):
            ax = axes[row][col]
            for cell, group in of_signal.items():
                _plot_band(ax, group, key, smooth, styles[cell], _seeds_label(group))
            ax.set_title(f"{name}: trained with {signal}", fontsize=10)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(f"{name} of the training signal's weights")
            if row == 1:
                ax.set_xlabel("step")
            if not ax.lines:
                _empty(ax, "no steps logged yet")
    _legend(fig, axes, "cell")
    fig.suptitle(
        f"Training signal's Gini and ETR (batch mean; trailing {smooth}-step mean, band: range over seeds)"
    )
    return fig


def reward_accuracy_figure(arms: list[Arm], smooth: int = 1) -> Figure:
    """reward/mean (trailing ``smooth``-step mean) and eval/accuracy over steps, one line per cell
    with its band over seeds."""
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    axes = fig.subplots(1, 2)
    styles = cell_styles(arms)
    panels = [
        ("reward/mean", smooth, f"rollouts' mean reward (trailing {smooth}-step mean)"),
        ("eval/accuracy", 1, "eval accuracy (greedy pass@1)"),
    ]
    for ax, (key, window, title) in zip(axes, panels, strict=True):
        for cell, group in groups(arms).items():
            _plot_band(ax, group, key, window, styles[cell], _seeds_label(group))
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(key)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if not ax.lines:
            _empty(ax, "nothing logged yet")
    _legend(fig, axes, "cell")
    fig.suptitle("Line: mean over a cell's seeds; band: their range (min to max)", fontsize=10)
    return fig
