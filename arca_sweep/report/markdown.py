"""The report's markdown: ``report.md`` of a sweep's arms (finished and unfinished arms, the final table,
per-seed accuracy, the paired comparisons against a baseline cell, every eval set's metrics and the power
of the comparisons (:mod:`arca_sweep.report.eval_sets`), the regime shares per signal, links to the
figures), and the table formatting it uses. Numbers from :mod:`arca_sweep.report.data` (the arms)
and :mod:`arca_sweep.report.stats` (intervals, paired tests); strings out, no files written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from arca_sweep.diagnostics import REGIMES
from arca_sweep.report.data import (
    Arm,
    accuracy,
    cell_label,
    eval_correct,
    groups,
    last_quarter_rewards,
    run_mean,
    shadow_means,
    signals_of,
    unit_matrix,
)
from arca_sweep.report.stats import (
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
NO_DIFFERENCE = "no difference shown"
DEFAULT_DELTA = 0.02  # the power section's target difference: 2 points of accuracy


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


def paired_matrices(group: list[Arm], base: list[Arm], per_unit) -> tuple[np.ndarray, np.ndarray] | None:
    """``per_unit`` of two cells as ``[seeds, units]`` matrices ``(x, b)`` over their common seeds and units,
    row i of both the same seed (None if nothing pairs)."""
    by_seed = {str(a.seed): a for a in base}
    pairs = [(a, by_seed[str(a.seed)]) for a in group if str(a.seed) in by_seed]
    if not pairs:
        return None
    m = unit_matrix([per_unit(a) for a, _ in pairs] + [per_unit(b) for _, b in pairs])
    return None if m is None else (m[1][: len(pairs)], m[1][len(pairs) :])


def paired(group: list[Arm], base: list[Arm], per_unit, binary: bool) -> PairedDifference | None:
    """The paired difference of two cells over their common seeds and units (None if nothing pairs)."""
    m = paired_matrices(group, base, per_unit)
    return None if m is None else paired_difference(*m, binary=binary)


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
    sweep_dir: Path,
    arms: list[Arm],
    figures: list[str],
    baseline: dict[str, str],
    smooth: int,
    delta: float = DEFAULT_DELTA,
) -> str:
    """The report; ``delta``: the difference the power section sizes the sweep for (seeds, problems needed)."""
    from arca_sweep.report.budget import budget_section  # (both use this module's tables)
    from arca_sweep.report.eval_sets import eval_sections

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
        out += ["Not finished (no whole summary.json: still running, failed, or its summary damaged):", ""]
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
            *budget_section(finished),
            *comparison_section(finished, baseline),
            *eval_sections(finished, baseline, delta),
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
