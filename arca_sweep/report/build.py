"""Writing a sweep's report into its dir: ``report.md`` (:mod:`arca_sweep.report.markdown`), the three
figures (:mod:`arca_sweep.report.figures`) and ``heatmaps.html`` (sample rollouts rendered by
:mod:`arca_sweep.heatmap`)."""

from __future__ import annotations

from pathlib import Path

from arca_sweep import heatmap
from arca_sweep.report.data import Arm, groups, load_arms
from arca_sweep.report.figures import gini_etr_figure, regime_figure, reward_accuracy_figure
from arca_sweep.report.markdown import DEFAULT_DELTA, report_markdown

MAX_HEATMAP_SECTIONS = 30
SMOOTH_STEPS = 5
DPI = 110


DEFAULT_BASELINE = {"credit": "uniform"}


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


def build_report(
    sweep_dir: Path,
    baseline: dict[str, str] | None = None,
    smooth: int = SMOOTH_STEPS,
    delta: float = DEFAULT_DELTA,
) -> Path:
    """Write ``report.md``, the figures and ``heatmaps.html`` into ``sweep_dir``; return report.md's
    path. ``baseline`` (default ``credit=uniform``) names the reference cell of the paired comparisons;
    ``smooth`` the trailing window of the curves; ``delta`` the difference the power section sizes seeds and
    problems for. Raises :class:`NotASweepError` if ``sweep_dir`` holds
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
    report.write_text(report_markdown(sweep_dir, arms, figures, baseline, smooth, delta), encoding="utf-8")
    return report
