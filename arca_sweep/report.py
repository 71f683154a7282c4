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
import sys
from pathlib import Path

from arca_sweep import heatmap
from arca_sweep.report_data import (
    REGIMES,
    Arm,
    NotASweepError,
    accuracy,
    groups,
    load_arms,
    ranks_of,
    run_mean,
    shadow_means,
    signals_of,
)
from arca_sweep.report_figures import gini_etr_figure, regime_figure, reward_accuracy_figure
from arca_sweep.report_stats import mean, mean_std

# final table: (column, metrics key of the training signal whose run mean it shows)
RUN_MEAN_COLUMNS = [
    ("gini", "credit/gini/mean"),
    ("etr", "credit/etr/mean"),
    *((r, f"credit/regime/{r}") for r in REGIMES),
    ("tokens/s", "perf/tokens_per_s"),
]
MAX_HEATMAP_SECTIONS = 12


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def fmt_mean_std(values) -> str:
    m, s, _ = mean_std(values)
    return fmt(m) if s is None else f"{fmt(m)} ± {fmt(s)}"


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
