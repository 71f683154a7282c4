"""Offline report of a sweep: ``python -m arca_sweep.report SWEEP_DIR [--baseline credit=uniform]``
(prints the report's path).

Reads every arm under ``SWEEP_DIR`` (a subdirectory with ``.hydra/config.yaml``: its overrides,
``metrics.jsonl``, ``samples.jsonl``, ``eval/step_<n>.jsonl`` and, once finished, ``summary.json``;
:mod:`arca_sweep.report_data`) and writes into ``SWEEP_DIR``:

- ``report.md``: finished and unfinished arms; the final table, one row per cell (a cell: the arms
  that share every swept override but the seed), with final accuracy mean ± std over seeds and its
  bootstrap 95% interval over problems x seeds, the last quarter's training reward with its
  interval, and the training signal's diagnostics (mean ± std over seeds); per-seed accuracy with
  Wilson intervals; each cell's paired difference against its baseline cell (default
  ``credit=uniform`` at the same other axes) in accuracy and in training reward, with a 95%
  interval, a p-value and "no difference shown" when the interval holds 0
  (:mod:`arca_sweep.report_stats`); the regime shares of every signal per cell from the shadow
  diagnostics (the headline); links to the figures.
- ``regime_shares.png``, ``gini_etr.png``, ``reward_accuracy.png``: the figures
  (:mod:`arca_sweep.report_figures`), legends naming cells by the sweep's axes.
- ``heatmaps.html``: per cell, sample rollouts from the first, middle and last sampled steps, tokens
  coloured by each signal's weights.

Every number is recomputed from ``metrics.jsonl`` and the per-problem files (not from
``summary.json``'s run means). Tables and the regime figure count finished arms only; the curves
over steps show every arm with metrics.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from arca_sweep import heatmap
from arca_sweep.report_data import (
    REGIMES,
    Arm,
    NotASweepError,
    accuracy,
    cell_label,
    eval_correct,
    groups,
    last_quarter_rewards,
    load_arms,
    parse_override,
    run_mean,
    shadow_means,
    signals_of,
    unit_matrix,
)
from arca_sweep.report_figures import gini_etr_figure, regime_figure, reward_accuracy_figure
from arca_sweep.report_stats import (
    BOOTSTRAP_SEED,
    N_RESAMPLES,
    PairedDifference,
    bootstrap_interval,
    mean,
    mean_std,
    paired_difference,
    wilson_interval,
)

# final table: (column, metrics key of the training signal whose run mean it shows)
RUN_MEAN_COLUMNS = [
    ("gini", "credit/gini/mean"),
    ("etr", "credit/etr/mean"),
    *((r, f"credit/regime/{r}") for r in REGIMES),
    ("tokens/s", "perf/tokens_per_s"),
]
MAX_HEATMAP_SECTIONS = 30
SMOOTH_STEPS = 5
DPI = 110


DEFAULT_BASELINE = {"credit": "uniform"}
NO_DIFFERENCE = "no difference shown"


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def fmt_mean_std(values) -> str:
    m, s, _ = mean_std(values)
    return fmt(m) if s is None else f"{fmt(m)} ± {fmt(s)}"


def fmt_interval(low: float, high: float) -> str:
    return f"[{fmt(low)}, {fmt(high)}]"


def fmt_p(p: float) -> str:
    return f"{p:.4f}"


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def axes_of(arms: list[Arm]) -> list[str]:
    """The sweep's axes (every arm's cell has the same keys)."""
    return [k for k, _ in arms[0].cell] if arms else []


def cell_columns(arms: list[Arm]) -> list[str]:
    return axes_of(arms) or ["cell"]


def cell_values(cell: tuple) -> list[str]:
    return [v for _, v in cell] or ["all arms"]


# ------------------------------------------------------------------------------------------------
# Per-cell numbers (finished arms)
# ------------------------------------------------------------------------------------------------


def accuracy_matrix(group: list[Arm]) -> np.ndarray | None:
    """``[seeds, problems]`` final-eval correctness of a cell's arms, or None without per-problem files."""
    m = unit_matrix([eval_correct(a) for a in group])
    return None if m is None else m[1]


def reward_matrix(group: list[Arm]) -> np.ndarray | None:
    """``[seeds, steps]`` mean training reward over the last quarter of each arm's steps."""
    m = unit_matrix([last_quarter_rewards(a) for a in group])
    return None if m is None else m[1]


def final_table(arms: list[Arm]) -> str:
    """One row per cell of finished arms: final accuracy mean ± std over seeds and its bootstrap 95%
    interval over problems x seeds; the last quarter's training reward with its interval over
    steps x seeds; the training signal's run-mean diagnostics, mean ± std over seeds."""
    head = [
        *cell_columns(arms),
        "final acc",
        "acc 95% CI",
        "initial acc",
        "reward (last 1/4)",
        "reward 95% CI",
        *(c for c, _ in RUN_MEAN_COLUMNS),
        "n seeds",
    ]
    rows = []
    for cell, group in groups(arms).items():
        acc, rew = accuracy_matrix(group), reward_matrix(group)
        acc_ci = "-" if acc is None else fmt_interval(*_interval(acc))
        rew_ci = "-" if rew is None else fmt_interval(*_interval(rew))
        rows.append(
            [
                *cell_values(cell),
                fmt_mean_std(accuracy(a, "final") for a in group),
                acc_ci,
                fmt(mean(accuracy(a, "initial") for a in group)),
                fmt_mean_std(mean((last_quarter_rewards(a) or {}).values()) for a in group),
                rew_ci,
                *(fmt_mean_std(run_mean(a, key) for a in group) for _, key in RUN_MEAN_COLUMNS),
                str(len(group)),
            ]
        )
    return table(head, rows)


def _interval(values: np.ndarray) -> tuple[float, float]:
    e = bootstrap_interval(values)
    return e.low, e.high


def seed_table(arms: list[Arm]) -> str:
    """One row per finished arm: its final accuracy with a Wilson 95% interval."""
    head = [*cell_columns(arms), "seed", "final acc", "Wilson 95%", "correct / n"]
    rows = []
    for arm in arms:
        correct = eval_correct(arm)
        if correct:
            k, n = int(sum(correct.values())), len(correct)
            interval, counts = fmt_interval(*wilson_interval(k, n)), f"{k} / {n}"
        else:
            interval, counts = "-", "-"
        rows.append([*cell_values(arm.cell), str(arm.seed), fmt(accuracy(arm, "final")), interval, counts])
    return table(head, rows)


# ------------------------------------------------------------------------------------------------
# Paired comparisons against a baseline cell
# ------------------------------------------------------------------------------------------------


def baseline_of(cell: tuple, baseline: dict[str, str]) -> tuple:
    """The cell at the same other axes with the baseline's values substituted."""
    return tuple((k, baseline.get(k, v)) for k, v in cell)


def paired(group: list[Arm], base: list[Arm], per_unit, binary: bool) -> PairedDifference | None:
    """The paired difference of two cells over their common seeds and units (None if nothing pairs)."""
    by_seed = {str(a.seed): a for a in base}
    pairs = [(a, by_seed[str(a.seed)]) for a in group if str(a.seed) in by_seed]
    if not pairs:
        return None
    rows = [per_unit(a) for a, _ in pairs] + [per_unit(b) for _, b in pairs]
    m = unit_matrix(rows)
    if m is None:
        return None
    values = m[1]
    return paired_difference(values[: len(pairs)], values[len(pairs) :], binary=binary)


def verdict(d: PairedDifference) -> str:
    if not d.shown:
        return NO_DIFFERENCE
    return "higher than baseline" if d.diff > 0 else "lower than baseline"


def comparison_rows(arms: list[Arm], baseline: dict[str, str], per_unit, binary: bool) -> list[list[str]]:
    cells = groups(arms)
    rows = []
    for cell, group in cells.items():
        ref = baseline_of(cell, baseline)
        if ref == cell or ref not in cells:
            continue
        d = paired(group, cells[ref], per_unit, binary)
        if d is None:
            rows.append([*cell_values(cell), cell_label(ref), *["-"] * 6, "no paired results"])
            continue
        rows.append(
            [
                *cell_values(cell),
                cell_label(ref),
                f"{d.diff:+.3f}",
                fmt_interval(d.low, d.high),
                fmt_p(d.p_value),
                d.test,
                str(d.n_seeds),
                str(d.n_units),
                verdict(d),
            ]
        )
    return rows


def comparison_section(arms: list[Arm], baseline: dict[str, str]) -> list[str]:
    name = ", ".join(f"{k}={v}" for k, v in baseline.items())
    axes = axes_of(arms)
    missing = [k for k in baseline if k not in axes]
    out = [f"## Paired comparison against the baseline ({name} at the same other axes)", ""]
    if missing:
        return out + [
            f"No baseline: this sweep does not vary {', '.join(missing)} (its axes: "
            f"{', '.join(axes) or 'none'}). Pick one with `python -m arca_sweep.report DIR --baseline KEY=VALUE`.",
            "",
        ]
    head = [*cell_columns(arms), "baseline", "difference", "95% CI", "p", "test", "seeds", "units", "verdict"]
    acc = comparison_rows(arms, baseline, eval_correct, binary=True)
    rew = comparison_rows(arms, baseline, last_quarter_rewards, binary=False)
    if not acc and not rew:
        return out + [f"No cell has a baseline cell ({name}) among the finished arms.", ""]
    shown = [r for r in acc + rew if r[-1] == NO_DIFFERENCE]
    return out + [
        "### Final eval accuracy (units: eval problems)",
        "",
        table(head, acc),
        "",
        "### Mean training reward over the last quarter of steps (units: steps)",
        "",
        table(head, rew),
        "",
        "difference: mean over seeds and units of (cell - baseline), paired by seed and by problem "
        "(or step: every arm sees the same prompts in the same order). 95% CI: paired bootstrap over "
        f"units x seeds ({N_RESAMPLES:,} resamples, numpy seed {BOOTSTRAP_SEED}). p: two-sided; "
        "McNemar's exact test on the discordant problems with one seed, else the paired bootstrap's. "
        f'An interval that holds 0 is reported as "{NO_DIFFERENCE}"'
        + (f" ({len(shown)} of {len(acc) + len(rew)} rows here)." if shown else "."),
        "",
    ]


def regime_table(arms: list[Arm]) -> str:
    """Per cell and signal: the shadow regime shares, Gini and ETR, each arm's mean over its steps,
    then mean ± std over the cell's seeds."""
    head = [*cell_columns(arms), "signal", *REGIMES, "gini", "etr", "steps"]
    rows = []
    for cell, group in groups(arms).items():
        n_steps = sum(len(a.steps) for a in group)
        for signal in signals_of(group):
            per_seed = [shadow_means([a], signal) for a in group]
            values = [fmt_mean_std(m[k] for m in per_seed) for k in (*REGIMES, "gini", "etr")]
            rows.append([*cell_values(cell), signal, *values, str(n_steps)])
    return table(head, rows)


def report_markdown(
    sweep_dir: Path, arms: list[Arm], figures: list[str], baseline: dict[str, str], smooth: int
) -> str:
    finished = [a for a in arms if a.finished]
    unfinished = [a for a in arms if not a.finished]
    axes = axes_of(arms)
    out = [
        f"# Sweep report: {sweep_dir}",
        "",
        f"{len(arms)} arms: {len(finished)} finished, {len(unfinished)} not finished. "
        f"{len(groups(arms))} cell{'s' if len(groups(arms)) != 1 else ''} over the sweep's axes "
        f"({', '.join(axes) or 'none'}); arms of a cell differ only in the seed.",
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
            "alone for one seed); acc 95% CI: bootstrap over eval problems x seeds of the per-problem "
            f"results (`eval/step_<n>.jsonl`; {N_RESAMPLES:,} resamples, numpy seed {BOOTSTRAP_SEED}); "
            "initial acc: at step 0. reward (last 1/4): each arm's mean `reward/mean` over the last "
            "quarter of its steps, mean ± std over seeds, with its bootstrap interval over steps x "
            "seeds. gini, etr, regime shares (uniform, middle, concentrated), tokens/s: each arm's mean "
            "over its training steps of the training signal's per-step value (`credit/...`, "
            "`perf/tokens_per_s`), mean ± std over seeds.",
            "",
            "### Final accuracy per seed",
            "",
            seed_table(finished),
            "",
            "Wilson 95%: the Wilson score interval of the arm's correct answers on the eval set.",
            "",
            *comparison_section(finished, baseline),
            "## Regime shares per signal (shadow diagnostics, finished arms)",
            "",
            regime_table(finished),
            "",
            "Every signal's weights computed from the same passes whichever signal trains "
            "(`shadow/<signal>/...`): the share of trajectories per regime, Gini and ETR, each arm's "
            "mean over its steps, then mean ± std over the cell's seeds.",
            "",
        ]
    else:
        out += ["No arm finished yet.", ""]
    out += ["## Figures", ""] + [f"![{Path(f).stem.replace('_', ' ')}]({f})" for f in figures]
    out += [
        "",
        f"Curves: the mean over a cell's seeds of each seed's trailing {smooth}-step mean, the band the "
        "range (min to max) over seeds; eval accuracy unsmoothed.",
        "",
        "Sample rollouts, tokens coloured by each signal's weights: [heatmaps.html](heatmaps.html)",
        "",
    ]
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# heatmaps.html
# ------------------------------------------------------------------------------------------------


def sample_steps(samples: list[dict]) -> list[int]:
    """The first, middle and last of the steps with samples (fewer when there are fewer)."""
    steps = sorted({s.get("step", 0) for s in samples})
    return sorted({steps[0], steps[len(steps) // 2], steps[-1]}) if steps else []


def heatmap_page(sweep_dir: Path, arms: list[Arm]) -> str:
    """Per cell, its first seed's sample rollouts from the first, middle and last steps with samples
    (one rollout each), at most :data:`MAX_HEATMAP_SECTIONS` sections."""
    sections = []
    for group in groups([a for a in arms if a.samples]).values():
        arm = group[0]
        for step in sample_steps(arm.samples):
            sample = next(s for s in arm.samples if s.get("step", 0) == step)
            status = "" if arm.finished else " (not finished)"
            heading = f"{arm.label}, seed {arm.seed}{status}: trained with {arm.credit}, step {step}"
            sections.append((heading, heatmap.sample_html(sample, training_signal=arm.credit)))
    return heatmap.page_html(f"Token credit heatmaps: {sweep_dir}", sections[:MAX_HEATMAP_SECTIONS])


# ------------------------------------------------------------------------------------------------
# Entry points
# ------------------------------------------------------------------------------------------------


def build_report(sweep_dir: Path, baseline: dict[str, str] | None = None, smooth: int = SMOOTH_STEPS) -> Path:
    """Write ``report.md``, the figures and ``heatmaps.html`` into ``sweep_dir``; return report.md's
    path. ``baseline`` (default ``credit=uniform``) names the reference cell of the paired comparisons;
    ``smooth`` the trailing window of the curves. Raises :class:`NotASweepError` if ``sweep_dir`` holds
    no arm."""
    sweep_dir = Path(sweep_dir)
    baseline = dict(DEFAULT_BASELINE if baseline is None else baseline)
    arms = load_arms(sweep_dir)
    finished = [a for a in arms if a.finished]
    with_metrics = [a for a in arms if a.records]
    regime_figure(finished).savefig(sweep_dir / "regime_shares.png", dpi=DPI)
    gini_etr_figure(with_metrics, smooth).savefig(sweep_dir / "gini_etr.png", dpi=DPI)
    reward_accuracy_figure(with_metrics, smooth).savefig(sweep_dir / "reward_accuracy.png", dpi=DPI)
    (sweep_dir / "heatmaps.html").write_text(heatmap_page(sweep_dir, arms), encoding="utf-8")
    figures = ["regime_shares.png", "gini_etr.png", "reward_accuracy.png"]
    report = sweep_dir / "report.md"
    report.write_text(report_markdown(sweep_dir, arms, figures, baseline, smooth), encoding="utf-8")
    return report


def parse_baseline(items: list[str]) -> dict[str, str]:
    """``["credit=uniform", "rank=8"]`` -> ``{"credit": "uniform", "rank": "8"}``."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--baseline {item!r}: expected KEY=VALUE, e.g. --baseline credit=uniform")
        key, value = parse_override(item)
        out[key] = value
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m arca_sweep.report",
        description="Write report.md, figures and token heatmaps of a finished or running sweep into its dir.",
    )
    parser.add_argument("sweep_dir", type=Path, help="a multirun's hydra.sweep.dir (holds one dir per arm)")
    parser.add_argument(
        "--baseline",
        action="append",
        metavar="KEY=VALUE",
        help="the reference cell of the paired comparisons, at the same other axes (default: credit=uniform; "
        "repeat for several keys)",
    )
    parser.add_argument(
        "--smooth", type=int, default=SMOOTH_STEPS, help="trailing window of the curves, in steps (default 5)"
    )
    args = parser.parse_args(argv)
    if args.smooth < 1:
        parser.error(f"--smooth {args.smooth}: need a window of at least 1 step")
    try:
        baseline = parse_baseline(args.baseline) if args.baseline else None
    except ValueError as e:
        parser.error(str(e))
    try:
        report = build_report(args.sweep_dir, baseline, args.smooth)
    except NotASweepError as e:
        parser.error(str(e))  # exit status 2
    print(report)


if __name__ == "__main__":
    main(sys.argv[1:])
