"""The report's eval-set sections (SPEC "Eval metrics (sampled eval)", "Power of a comparison"): every
eval set's metrics per cell at the final eval, with intervals and paired differences against the
baseline cell, and the power of those comparisons: how small a difference this sweep can see, and how
many seeds or problems a given difference would need.

An eval set is the run's own eval rows (None) or an ``eval.sets`` entry of the arms' configs; a set's
table holds the cells whose arms have it. Per-problem values from :mod:`arca_sweep.report.data`
(:func:`~arca_sweep.report.data.problem_values`), statistics from :mod:`arca_sweep.report.stats` and
:mod:`arca_sweep.report.power`, tables in the style of :mod:`arca_sweep.report.markdown`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from arca_sweep.report.data import (
    Arm,
    cell_label,
    eval_config,
    eval_data_name,
    eval_metrics,
    eval_set_names,
    eval_value,
    groups,
    metric_order,
    problem_values,
    unit_matrix,
)
from arca_sweep.report.markdown import (
    DEFAULT_DELTA,
    NO_DIFFERENCE,
    baseline_of,
    cell_columns,
    cell_values,
    fmt,
    fmt_interval,
    fmt_mean_std,
    fmt_p,
    paired_matrices,
    table,
    verdict,
)
from arca_sweep.report.power import Power, power_analysis
from arca_sweep.report.stats import (
    BOOTSTRAP_SEED,
    N_RESAMPLES,
    PairedDifference,
    bootstrap_interval,
    paired_difference,
)

POWER = 0.8
ALPHA = 0.05
UNDERPOWERED = "underpowered"
ONE_SEED = "between-seed variance unknown (one seed): optimistic"
SHARES = ("accuracy", "mean", "pass", "maj")  # metrics that are shares of problems: the power section's

# what each metric family is, for the legends (mean@n's sampling settings are added from the configs)
METRIC_LEGEND = {
    "accuracy": "accuracy: greedy pass@1, the share of problems whose greedy answer is correct",
    "mean": "mean@n: the share of the n sampled answers that are correct",
    "pass": "pass@k: the chance that k of the n samples, drawn without replacement, hold a correct one "
    "(unbiased, Chen et al. 2021)",
    "maj": "maj@k: the chance that the majority answer of k of the n samples is correct, the exact "
    "expectation over all k-subsets (samples without an answer do not vote, ties split evenly)",
    "length": "length: the greedy response's tokens",
    "sampled_length": "sampled_length: the mean tokens of the n sampled responses",
}


def family(metric: str) -> str:
    """``pass@4`` -> ``pass``; ``accuracy`` -> ``accuracy``."""
    return metric.partition("@")[0]


# ------------------------------------------------------------------------------------------------
# Eval sets and their cells
# ------------------------------------------------------------------------------------------------


def sets_of(arms: list[Arm]) -> list[str | None]:
    """Every eval set of the arms: None (their own eval rows), then the ``eval.sets`` names in first-seen order."""
    return list(dict.fromkeys(s for arm in arms for s in eval_set_names(arm)))


def set_arms(arms: list[Arm], eval_set: str | None) -> list[Arm]:
    return [arm for arm in arms if eval_set in eval_set_names(arm)]


def set_label(arms: list[Arm], eval_set: str | None) -> str:
    """``arith (the run's eval rows)``; ``small (data: arith_small)`` (data names of all arms, joined)."""
    names = ", ".join(dict.fromkeys(eval_data_name(arm, eval_set) for arm in arms))
    return f"{names} (the run's eval rows)" if eval_set is None else f"{eval_set} (data: {names})"


def cell_metrics(group: list[Arm], eval_set: str | None) -> list[str]:
    """The metrics every arm of the cell has on ``eval_set``, in :func:`metric_order`."""
    common = set.intersection(*(set(eval_metrics(arm, eval_set)) for arm in group))
    return sorted(common, key=metric_order)


@dataclass(frozen=True)
class Comparison:
    """One cell against its baseline cell on one eval set and metric; ``diff`` None when nothing pairs."""

    eval_set: str | None
    cell: tuple
    ref: tuple
    metric: str
    d: np.ndarray | None  # [seeds, problems] cell minus baseline, paired by seed and problem
    diff: PairedDifference | None


def compare(
    eval_set: str | None, cell: tuple, ref: tuple, group: list[Arm], base: list[Arm], metric: str
) -> Comparison:
    m = paired_matrices(group, base, lambda arm: problem_values(arm, eval_set, metric))
    if m is None:
        return Comparison(eval_set, cell, ref, metric, None, None)
    diff = paired_difference(*m, binary=metric == "accuracy")
    return Comparison(eval_set, cell, ref, metric, m[0] - m[1], diff)


# ------------------------------------------------------------------------------------------------
# One table per eval set
# ------------------------------------------------------------------------------------------------


def set_table(
    arms: list[Arm], eval_set: str | None, baseline: dict[str, str]
) -> tuple[str, list[Comparison]]:
    """The set's table, one row per (cell, metric), and the comparisons in it."""
    cells = groups(arms)
    refs = {cell: baseline_of(cell, baseline) for cell in cells}
    refs = {cell: ref for cell, ref in refs.items() if ref != cell and ref in cells}
    head = [*cell_columns(arms), "metric", "value", "95% CI", "seeds", "problems"]
    if refs:
        head += ["baseline", "difference", "diff 95% CI", "p", "verdict"]
    rows, comparisons = [], []
    for cell, group in cells.items():
        ref = refs.get(cell)
        for metric in cell_metrics(group, eval_set) or ["-"]:
            m = unit_matrix([problem_values(arm, eval_set, metric) for arm in group])
            row = [
                *cell_values(cell),
                metric,
                fmt_mean_std(eval_value(arm, eval_set, metric) for arm in group),
                "-" if m is None else fmt_interval(*_interval(m[1])),
                str(len(group)),
                "-" if m is None else str(len(m[0])),
            ]
            c = None
            if ref is not None and metric != "-":
                c = compare(eval_set, cell, ref, group, cells[ref], metric)
                comparisons.append(c)
            if refs:
                row += difference_cells(c)
            rows.append(row)
    return table(head, rows), comparisons


def difference_cells(c: Comparison | None) -> list[str]:
    """baseline, difference, diff 95% CI, p, verdict of a row ("-" for a cell without a baseline cell)."""
    if c is None:
        return ["-"] * 5
    if c.diff is None:
        return [cell_label(c.ref), "-", "-", "-", "no paired results"]
    d = c.diff
    return [cell_label(c.ref), f"{d.diff:+.3f}", fmt_interval(d.low, d.high), fmt_p(d.p_value), verdict(d)]


def _interval(values: np.ndarray) -> tuple[float, float]:
    e = bootstrap_interval(values)
    return e.low, e.high


def sampling_settings(arms: list[Arm]) -> str:
    """``n = 4, temperature = 0.6, top_p = 0.95`` of the ``eval`` sections of the arms that sample (values that
    differ between arms joined with "or")."""
    parts = []
    arms = [arm for arm in arms if (eval_config(arm).get("n") or 0) > 0] or arms  # greedy-only arms draw none
    for key in ("n", "temperature", "top_p"):
        values = dict.fromkeys(str(eval_config(arm).get(key, "-")) for arm in arms)
        parts.append(f"{key} = {' or '.join(values)}")
    return ", ".join(parts)


def set_legend(arms: list[Arm], eval_set: str | None) -> str:
    """What each metric of the set's table is, with the arms' sampling settings."""
    families = dict.fromkeys(
        family(m) for group in groups(arms).values() for m in cell_metrics(group, eval_set)
    )
    text = "; ".join(METRIC_LEGEND[f] for f in families if f in METRIC_LEGEND)
    if any(f in families for f in ("mean", "pass", "maj", "sampled_length")):
        sampled = [arm for arm in arms if eval_config(arm)]
        text += f"; the n samples drawn at eval.temperature and eval.top_p ({sampling_settings(sampled)})"
    return text + "."


def section_legend(name: str) -> str:
    return (
        "One table per eval set (the run's own eval rows, then each `eval.sets` entry of the arms' configs), "
        "with the cells whose arms have it, at each arm's final eval. value: each arm's mean over the set's "
        "problems, mean ± sample std over seeds (the value alone for one seed; an arm without its per-problem "
        "file: the mean its metrics.jsonl logged). 95% CI: bootstrap over problems x seeds of the per-problem "
        f"values ({N_RESAMPLES:,} resamples, numpy seed {BOOTSTRAP_SEED}); seeds: the cell's arms with the "
        'set; problems: those every seed has ("-": an arm lacks its per-problem file). difference, diff 95% '
        f"CI, p, verdict: cell minus its baseline cell ({name} at the same other axes), paired by seed and "
        "problem as in the paired comparison above (accuracy with one seed: McNemar's exact test, else the "
        "paired bootstrap's p); an interval that holds 0 is " + f'"{NO_DIFFERENCE}".'
    )


def eval_sections(arms: list[Arm], baseline: dict[str, str], delta: float = DEFAULT_DELTA) -> list[str]:
    """The "Eval sets" section (one table per eval set) and the "Power" section of its comparisons."""
    name = ", ".join(f"{k}={v}" for k, v in baseline.items())
    out = ["## Eval sets (finished arms)", "", section_legend(name), ""]
    comparisons: list[Comparison] = []
    for eval_set in sets_of(arms):
        having = set_arms(arms, eval_set)
        text, found = set_table(having, eval_set, baseline)
        comparisons += found
        out += [f"### {set_label(having, eval_set)}", "", text, "", set_legend(having, eval_set), ""]
    return out + power_section(arms, comparisons, delta)


# ------------------------------------------------------------------------------------------------
# Power of the comparisons
# ------------------------------------------------------------------------------------------------


def power_verdict(d: PairedDifference, p: Power) -> str:
    """``difference shown`` (the interval excludes 0); ``underpowered`` (it holds 0 and |difference| < MDE);
    else ``no difference shown, though powered for one this size``; with one seed, :data:`ONE_SEED` added."""
    if p.mde == 0:  # the arms agree on every problem and seed: no variance to size anything with
        return NOT_ESTIMABLE
    if d.shown:
        text = "difference shown"
    elif abs(d.diff) < p.mde:
        text = UNDERPOWERED
    else:
        text = f"{NO_DIFFERENCE}, though powered for one this size"
    return text if p.seed_variance_known else f"{text}; {ONE_SEED}"


NOT_ESTIMABLE = "not estimable: no variance observed"


def _needed(value: int | None, known: bool, mde: float = 1.0) -> str:
    if mde == 0:
        return "-"
    if not known:
        return "unknown (one seed)"
    return "unreachable" if value is None else str(value)


def power_rows(arms: list[Arm], comparisons: list[Comparison], delta: float) -> list[tuple[list[str], Power]]:
    labels = {s: set_label(set_arms(arms, s), s) for s in sets_of(arms)}
    out = []
    for c in comparisons:
        if c.diff is None or family(c.metric) not in SHARES:
            continue
        p = power_analysis(c.d, delta=delta, power=POWER, alpha=ALPHA)
        row = [
            labels[c.eval_set],
            *cell_values(c.cell),
            cell_label(c.ref),
            c.metric,
            f"{c.diff.diff:+.3f}",
            fmt_interval(c.diff.low, c.diff.high),
            f"{p.n_seeds} × {p.n_units}",
            "-" if p.mde == 0 else fmt(p.mde),
            _needed(p.seeds_needed, p.seed_variance_known, p.mde),
            "unknown (one problem)" if p.n_units < 2 else _needed(p.units_needed, True, p.mde),
            power_verdict(c.diff, p),
        ]
        out.append((row, p))
    return out


def power_section(arms: list[Arm], comparisons: list[Comparison], delta: float = DEFAULT_DELTA) -> list[str]:
    """The "Power" section: per comparison of a share metric, its MDE at 80% power and what ``delta``
    would need, with a paragraph on whether the sweep can see the differences it reports."""
    out = ["## Power (can this sweep see the difference?)", ""]
    rows = power_rows(arms, comparisons, delta)
    if not rows:
        return out + [
            "No paired comparison on per-problem results to size (no cell has a baseline cell).",
            "",
        ]
    head = [
        "eval set",
        *cell_columns(arms),
        "baseline",
        "metric",
        "difference",
        "95% CI",
        "seeds × problems",
        "MDE (80%)",
        f"seeds for ±{delta:g}",
        "problems at these seeds",
        "verdict",
    ]
    out += [table(head, [r for r, _ in rows]), "", power_legend(delta), "", power_summary(rows, delta), ""]
    return out


def power_legend(delta: float) -> str:
    return (
        "MDE (80%): the smallest true difference the report's rule (a paired bootstrap 95% interval that "
        f"excludes 0) detects with {POWER:.0%} chance at these seeds and problems, from the variance "
        "components of the paired differences (between seeds, between problems, residual; "
        f"`arca_sweep.report.power`, two-sided alpha {ALPHA}). seeds for ±{delta:g}: the fewest seeds per cell "
        f"(at these problems) whose MDE is at most {delta:g}, unreachable when the problems' variance alone "
        f"keeps the MDE above it; problems at these seeds: likewise the fewest problems. {UNDERPOWERED}: the "
        "interval holds 0 and |difference| < MDE: a difference this small would be detected with less than "
        f"{POWER:.0%} chance, so not showing it says little. Lengths are not sized (not shares). With one seed "
        "the between-seed variance is unknown and taken as 0: the MDE is optimistic."
    )


def power_summary(rows: list[tuple[list[str], Power]], delta: float) -> str:
    """One paragraph: whether the sweep is underpowered for the differences it reports."""
    blind = sum(r[-1] == NOT_ESTIMABLE for r, _ in rows)
    rows = [(r, p) for r, p in rows if r[-1] != NOT_ESTIMABLE]
    if not rows:
        return (
            f"None of the {blind} comparisons can be sized: the compared arms gave the same results on every "
            "problem and seed (identical arms, or every answer right or wrong in both), so this sweep says nothing "
            "about the differences it could detect."
        )
    verdicts = [r[-1] for r, _ in rows]
    under = [p.mde for (r, p) in rows if r[-1].startswith(UNDERPOWERED)]
    shown = sum(v.startswith("difference shown") for v in verdicts)
    if under:
        span = fmt(min(under)) if min(under) == max(under) else f"{fmt(min(under))} to {fmt(max(under))}"
        text = (
            f"This sweep is underpowered for {len(under)} of the {len(rows)} differences it reports: each is "
            f"smaller than the smallest difference the sweep detects with {POWER:.0%} chance there (MDE {span}), "
            f'so their "{NO_DIFFERENCE}" is no evidence that the cells perform alike.'
        )
    else:
        text = (
            f"This sweep is not underpowered for the differences it reports: each of the {len(rows)} either "
            f"shows its difference or would detect one of its size with {POWER:.0%} chance."
        )
    text += f" {shown} of {len(rows)} show a difference."
    if blind:
        text += f" {blind} more cannot be sized: their arms agreed on every problem and seed (no variance)."
    seeds = [p.seeds_needed for _, p in rows if p.seed_variance_known]
    if any(not p.seed_variance_known for _, p in rows):
        text += (
            " With one seed per cell the between-seed variance is unknown: these MDEs are optimistic, and "
            f"how many seeds a difference of {delta:g} needs cannot be estimated; run at least two seeds."
        )
    elif seeds and all(s is not None for s in seeds):
        text += f" A difference of {delta:g} would need up to {max(seeds)} seeds per cell at these problems."
    elif seeds:
        text += f" For some comparisons no number of seeds reaches {delta:g} at these problems: more problems are needed."
    return text
