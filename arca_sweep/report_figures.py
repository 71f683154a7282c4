"""The report's figures (matplotlib's Figure directly: no pyplot state, Agg canvas, safe inside a
Hydra process)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from arca_sweep import heatmap
from arca_sweep.report_data import REGIMES, Arm, groups, ranks_of, shadow_means, signals_of
from arca_sweep.report_stats import as_number, mean

REGIME_COLOURS = {"uniform": "#c6dbef", "middle": "#6baed6", "concentrated": "#08306b"}
DPI = 110


def _styles(arms: list[Arm]) -> dict[tuple, dict]:
    """One line style per (credit, rank): colour by credit signal, dash pattern by rank."""
    # colours follow SIGNAL_ORDER, so a signal keeps its colour from one sweep to the next
    credits = heatmap.ordered_signals({a.credit for a in arms} | set(heatmap.SIGNAL_ORDER))
    colours = {c: f"C{i % 10}" for i, c in enumerate(credits)}
    dashes = ["-", "--", ":", "-."]
    rank_dash = {r: dashes[i % len(dashes)] for i, r in enumerate(ranks_of(arms))}
    return {(a.credit, a.rank): dict(color=colours[a.credit], linestyle=rank_dash[a.rank]) for a in arms}


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666")


def regime_figure(arms: list[Arm], path: Path) -> None:
    """Stacked bars of the shadow regime shares per signal, one panel per rank (finished arms)."""
    ranks = ranks_of(arms) or ["-"]
    fig = Figure(figsize=(max(7.5, 3.6 * len(ranks) + 1.5), 4.4), layout="constrained")
    axes = fig.subplots(1, len(ranks), sharey=True, squeeze=False)[0]
    for ax, rank in zip(axes, ranks, strict=True):
        of_rank = [a for a in arms if a.rank == rank]
        signals = signals_of(of_rank)
        shares = [shadow_means(of_rank, s) for s in signals]
        bottom = [0.0] * len(signals)
        for regime in REGIMES:
            heights = [m[regime] or 0.0 for m in shares]
            ax.bar(signals, heights, bottom=bottom, color=REGIME_COLOURS[regime], label=regime, edgecolor="k")
            bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
        n_steps = sum(len(a.steps) for a in of_rank)
        ax.set_title(f"rank {rank} ({len(of_rank)} arms, {n_steps} steps)")
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", labelrotation=30)
        if not signals:
            _empty(ax, "no shadow metrics" if of_rank else "no finished arm yet")
    axes[0].set_ylabel("share of trajectories")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles[::-1], labels[::-1], loc="outside right center", title="regime")
    fig.suptitle("Regime shares per signal (shadow diagnostics, mean over all steps)")
    fig.savefig(path, dpi=DPI)


def _curve(arms: list[Arm], key: str) -> tuple[list[int], list[float]]:
    """Mean over ``arms`` of ``key`` at each step where at least one arm has a value."""
    by_step: dict[int, list] = {}
    for arm in arms:
        for r in arm.records:
            if as_number(r.get(key)) is not None:
                by_step.setdefault(r["step"], []).append(r[key])
    steps = sorted(by_step)
    return steps, [mean(by_step[s]) for s in steps]


def gini_etr_figure(arms: list[Arm], path: Path) -> None:
    """The training signal's Gini and ETR (batch means) over steps, per credit x rank (seed mean)."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    styles = _styles(arms)
    for ax, (key, name) in zip(axes, [("credit/gini/mean", "Gini"), ("credit/etr/mean", "ETR")], strict=True):
        for (credit, rank), group in groups(arms).items():
            steps, values = _curve(group, key)
            if steps:
                ax.plot(steps, values, marker=".", label=f"{credit} r={rank}", **styles[(credit, rank)])
        ax.set_title(f"{name} of the training signal's weights")
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{name} (batch mean, seed mean)")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if not ax.lines:
            _empty(ax, "no steps logged yet")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside right center", title="credit, rank")
    fig.savefig(path, dpi=DPI)


def reward_accuracy_figure(arms: list[Arm], path: Path) -> None:
    """reward/mean and eval/accuracy over steps, one line per arm (colour: credit, dashes: rank)."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    axes = fig.subplots(1, 2)
    styles = _styles(arms)
    panels = [("reward/mean", "mean reward of the rollouts"), ("eval/accuracy", "eval accuracy (greedy)")]
    for ax, (key, title) in zip(axes, panels, strict=True):
        seen = set()
        for arm in arms:
            steps, values = _curve([arm], key)
            if not steps:
                continue
            label = arm.label if arm.label not in seen else None
            seen.add(arm.label)
            marker = "o" if key.startswith("eval") else "."
            ax.plot(steps, values, marker=marker, label=label, alpha=0.8, **styles[(arm.credit, arm.rank)])
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(key)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if not ax.lines:
            _empty(ax, "nothing logged yet")
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if handles:
        fig.legend(handles, labels, loc="outside right center", title="credit, rank (all seeds)")
    fig.savefig(path, dpi=DPI)
