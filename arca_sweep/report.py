"""Offline report of a sweep: ``python -m arca_sweep.report SWEEP_DIR`` (prints the report's path).

Reads every arm under ``SWEEP_DIR`` (a subdirectory with ``.hydra/config.yaml``: its
``metrics.jsonl``, ``samples.jsonl`` and, once finished, ``summary.json``) and writes into
``SWEEP_DIR``:

- ``report.md``: finished and unfinished arms; the final table, credit x rank (final eval accuracy
  mean ± std over seeds, and seed means of each arm's run means of the training signal's
  diagnostics); the regime shares of every signal per rank from the shadow diagnostics (the
  headline); links to the figures.
- ``regime_shares.png``, ``gini_etr.png``, ``reward_accuracy.png``: the figures.
- ``heatmaps.html``: the latest sample rollouts of each arm, tokens coloured by each signal's weights.

Every number is recomputed from ``metrics.jsonl`` (not from ``summary.json``'s run means). Tables
and the regime figure count finished arms only; the curves over steps show every arm with metrics.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from arca_sweep import heatmap

REGIMES = ("uniform", "middle", "concentrated")
REGIME_COLOURS = {"uniform": "#c6dbef", "middle": "#6baed6", "concentrated": "#08306b"}
# final table: (column, metrics key of the training signal whose run mean it shows)
RUN_MEAN_COLUMNS = [
    ("gini", "credit/gini/mean"),
    ("etr", "credit/etr/mean"),
    *((r, f"credit/regime/{r}") for r in REGIMES),
    ("tokens/s", "perf/tokens_per_s"),
]
DPI = 110
MAX_HEATMAP_SECTIONS = 12


class NotASweepError(ValueError):
    """The directory holds no arm (no subdirectory with ``.hydra/config.yaml``)."""


# ------------------------------------------------------------------------------------------------
# Reading the arms
# ------------------------------------------------------------------------------------------------


@dataclass
class Arm:
    path: Path
    credit: str
    rank: int | str
    seed: int | str
    records: list[dict] = field(default_factory=list)  # metrics.jsonl
    samples: list[dict] = field(default_factory=list)  # samples.jsonl
    finished: bool = False  # summary.json exists

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def steps(self) -> list[dict]:
        """The training steps' records (step >= 1)."""
        return [r for r in self.records if r.get("step", 0) >= 1]

    @property
    def label(self) -> str:
        return f"{self.credit} r={self.rank}"


def _number(value) -> float | None:
    """A finite float, or None (a null, a missing key, a string)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if value == value and abs(value) != float("inf") else None


def _jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file; a missing file or a torn last line (a running arm) is skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def load_arm(path: Path) -> Arm:
    config = yaml.safe_load((path / ".hydra" / "config.yaml").read_text()) or {}
    return Arm(
        path=path,
        credit=str((config.get("credit") or {}).get("name", "?")),
        rank=(config.get("rank") or {}).get("r", "?"),
        seed=config.get("seed", "?"),
        records=_jsonl(path / "metrics.jsonl"),
        samples=_jsonl(path / "samples.jsonl"),
        finished=(path / "summary.json").exists(),
    )


def load_arms(sweep_dir: Path) -> list[Arm]:
    """Every arm under ``sweep_dir``, sorted by credit, rank, seed, name."""
    if not sweep_dir.is_dir():
        raise NotASweepError(f"{sweep_dir} is not a directory")
    arms = [load_arm(p) for p in sorted(sweep_dir.iterdir()) if (p / ".hydra" / "config.yaml").is_file()]
    if not arms:
        raise NotASweepError(
            f"{sweep_dir} is not a sweep dir: no arm subdirectory with .hydra/config.yaml "
            "(pass the hydra.sweep.dir of a multirun, e.g. outputs/multirun/<date>_<time>)"
        )
    return sorted(arms, key=lambda a: (a.credit, _rank_key(a.rank), str(a.seed), a.name))


def _rank_key(rank) -> tuple:
    return (0, rank, "") if isinstance(rank, int | float) else (1, 0, str(rank))


# ------------------------------------------------------------------------------------------------
# Statistics (all from metrics.jsonl)
# ------------------------------------------------------------------------------------------------


def mean(values) -> float | None:
    """Mean of the non-null values; None if there are none."""
    values = [v for v in (_number(v) for v in values) if v is not None]
    return statistics.fmean(values) if values else None


def run_mean(arm: Arm, key: str) -> float | None:
    """Mean of ``key`` over the arm's training steps (null values skipped)."""
    return mean(r.get(key) for r in arm.steps)


def accuracy(arm: Arm, which: str) -> float | None:
    """``initial``: eval accuracy of the first record holding one (step 0); ``final``: of the last."""
    evals = [v for v in (_number(r.get("eval/accuracy")) for r in arm.records) if v is not None]
    if not evals:
        return None
    return evals[0] if which == "initial" else evals[-1]


def mean_std(values) -> tuple[float | None, float | None, int]:
    """Mean, sample standard deviation (None with fewer than 2 values) and count of the non-null values."""
    values = [v for v in (_number(v) for v in values) if v is not None]
    if not values:
        return None, None, 0
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None, len(values)


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def fmt_mean_std(values) -> str:
    m, s, _ = mean_std(values)
    return fmt(m) if s is None else f"{fmt(m)} ± {fmt(s)}"


def groups(arms: list[Arm]) -> dict[tuple, list[Arm]]:
    """Arms by (credit, rank), in sorted order (arms are already sorted)."""
    out: dict[tuple, list[Arm]] = {}
    for arm in arms:
        out.setdefault((arm.credit, arm.rank), []).append(arm)
    return out


def ranks_of(arms: list[Arm]) -> list:
    return sorted({a.rank for a in arms}, key=_rank_key)


def signals_of(arms: list[Arm]) -> list[str]:
    """Every signal with shadow diagnostics in the arms' metrics, in display order."""
    names = {
        key.split("/")[1]
        for arm in arms
        for r in arm.steps
        for key in r
        if key.startswith("shadow/") and key.endswith("/regime/uniform")
    }
    return heatmap.ordered_signals(names)


def shadow_means(arms: list[Arm], signal: str) -> dict[str, float | None]:
    """Mean over all steps of all ``arms`` of the signal's shadow regime shares, Gini and ETR."""
    keys = {r: f"shadow/{signal}/regime/{r}" for r in REGIMES}
    keys |= {"gini": f"shadow/{signal}/gini/mean", "etr": f"shadow/{signal}/etr/mean"}
    return {name: mean(r.get(key) for arm in arms for r in arm.steps) for name, key in keys.items()}


# ------------------------------------------------------------------------------------------------
# report.md
# ------------------------------------------------------------------------------------------------


def final_table(arms: list[Arm]) -> str:
    """Credit x rank over finished arms: final accuracy mean ± std over seeds, the other columns
    the seed mean of each arm's value."""
    head = ["credit", "rank", "final acc", "initial acc", *(c for c, _ in RUN_MEAN_COLUMNS), "n seeds"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for (credit, rank), group in groups(arms).items():
        cells = [
            credit,
            str(rank),
            fmt_mean_std(accuracy(a, "final") for a in group),
            fmt(mean(accuracy(a, "initial") for a in group)),
            *(fmt(mean(run_mean(a, key) for a in group)) for _, key in RUN_MEAN_COLUMNS),
            str(len(group)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def regime_table(arms: list[Arm]) -> str:
    """Per rank and signal: the shadow regime shares, Gini and ETR over all steps of all arms."""
    head = ["rank", "signal", *REGIMES, "gini", "etr", "steps"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rank in ranks_of(arms):
        of_rank = [a for a in arms if a.rank == rank]
        n_steps = sum(len(a.steps) for a in of_rank)
        for signal in signals_of(of_rank):
            m = shadow_means(of_rank, signal)
            cells = [str(rank), signal, *(fmt(m[k]) for k in (*REGIMES, "gini", "etr")), str(n_steps)]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def report_markdown(sweep_dir: Path, arms: list[Arm], figures: list[str]) -> str:
    finished = [a for a in arms if a.finished]
    unfinished = [a for a in arms if not a.finished]
    out = [
        f"# Sweep report: {sweep_dir}",
        "",
        f"{len(arms)} arms: {len(finished)} finished, {len(unfinished)} not finished.",
        "",
    ]
    if unfinished:
        out += ["Not finished (no summary.json: still running or failed):", ""]
        for arm in unfinished:
            last = max((r.get("step", 0) for r in arm.records), default=None)
            reached = "no metrics yet" if last is None else f"last logged step {last}"
            out.append(f"- `{arm.path}` ({reached})")
        out.append("")
    out += ["Finished:", ""] + [f"- `{arm.path}`" for arm in finished] + [""]
    out += ["## Final table (finished arms)", ""]
    if finished:
        out += [
            final_table(finished),
            "",
            "final acc: greedy eval accuracy at the end, mean ± sample std over seeds (the value "
            "alone for one seed); initial acc: at step 0. gini, etr, regime shares (uniform, middle, "
            "concentrated), tokens/s: each arm's mean over its training steps of the training "
            "signal's per-step value (`credit/...`, `perf/tokens_per_s`), averaged over seeds.",
            "",
            "## Regime shares per signal (shadow diagnostics, finished arms)",
            "",
            regime_table(finished),
            "",
            "Every signal's weights computed from the same passes whichever signal trains "
            "(`shadow/<signal>/...`): the share of trajectories per regime, Gini and ETR, averaged "
            "over all steps of all finished arms of that rank.",
            "",
        ]
    else:
        out += ["No arm finished yet.", ""]
    out += ["## Figures", ""] + [f"![{Path(f).stem.replace('_', ' ')}]({f})" for f in figures]
    out += [
        "",
        "Sample rollouts, tokens coloured by each signal's weights: [heatmaps.html](heatmaps.html)",
        "",
    ]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# Figures (matplotlib's Figure directly: no pyplot state, Agg canvas, safe inside a Hydra process)
# ------------------------------------------------------------------------------------------------


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
            if _number(r.get(key)) is not None:
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


# ------------------------------------------------------------------------------------------------
# heatmaps.html
# ------------------------------------------------------------------------------------------------


def heatmap_page(sweep_dir: Path, arms: list[Arm]) -> str:
    """The latest step's samples of each arm (an equal share of :data:`MAX_HEATMAP_SECTIONS`)."""
    with_samples = [a for a in arms if a.samples]
    per_arm = max(1, MAX_HEATMAP_SECTIONS // max(1, len(with_samples)))
    sections = []
    for arm in with_samples:
        latest = max(s.get("step", 0) for s in arm.samples)
        for sample in [s for s in arm.samples if s.get("step", 0) == latest][:per_arm]:
            status = "" if arm.finished else " (not finished)"
            heading = f"{arm.name}{status}: trained with {arm.credit}, rank {arm.rank}, seed {arm.seed}"
            sections.append((heading, heatmap.sample_html(sample, training_signal=arm.credit)))
    return heatmap.page_html(f"Token credit heatmaps: {sweep_dir}", sections[:MAX_HEATMAP_SECTIONS])


# ------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------


def build_report(sweep_dir: Path) -> Path:
    """Write ``report.md``, the figures and ``heatmaps.html`` into ``sweep_dir``; return report.md's
    path. Raises :class:`NotASweepError` if ``sweep_dir`` holds no arm."""
    sweep_dir = Path(sweep_dir)
    arms = load_arms(sweep_dir)
    finished = [a for a in arms if a.finished]
    with_metrics = [a for a in arms if a.records]
    regime_figure(finished, sweep_dir / "regime_shares.png")
    gini_etr_figure(with_metrics, sweep_dir / "gini_etr.png")
    reward_accuracy_figure(with_metrics, sweep_dir / "reward_accuracy.png")
    (sweep_dir / "heatmaps.html").write_text(heatmap_page(sweep_dir, arms), encoding="utf-8")
    figures = ["regime_shares.png", "gini_etr.png", "reward_accuracy.png"]
    report = sweep_dir / "report.md"
    report.write_text(report_markdown(sweep_dir, arms, figures), encoding="utf-8")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m arca_sweep.report",
        description="Write report.md, figures and token heatmaps of a finished or running sweep into its dir.",
    )
    parser.add_argument("sweep_dir", type=Path, help="a multirun's hydra.sweep.dir (holds one dir per arm)")
    args = parser.parse_args(argv)
    try:
        report = build_report(args.sweep_dir)
    except NotASweepError as e:
        parser.error(str(e))  # exit status 2
    print(report)


if __name__ == "__main__":
    main(sys.argv[1:])
