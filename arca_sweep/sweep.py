"""End of a multirun: a table of every arm (stdout and ``sweep_summary.md`` in the sweep dir) and the
sweep report (``report.md``, plots, ``heatmaps.html``; :mod:`arca_sweep.report`)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from hydra.experimental.callback import Callback

from arca_sweep.arm_dir import METRICS, SUMMARY, ArmStateError, read_jsonl

COLUMNS = [
    ("acc0", "eval/accuracy_initial"),
    ("acc", "eval/accuracy_final"),
    ("gini", "credit/gini/mean"),
    ("etr", "credit/etr/mean"),
    ("uniform", "credit/regime/uniform"),
    ("middle", "credit/regime/middle"),
    ("concentrated", "credit/regime/concentrated"),
    ("reward", "reward/mean"),
]


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def sweep_table(sweep_dir: Path) -> str:
    """Markdown table of the arms under ``sweep_dir``; unfinished arms are listed, not dropped."""
    rows, hashes, refilled = [], {}, False
    for arm in sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir()):
        summary_path, metrics = arm / SUMMARY, arm / METRICS
        if metrics.exists():
            try:
                records = read_jsonl(metrics, bad_lines="torn")
            except ArmStateError as exc:  # named in the table; the report refuses such an arm
                rows.append(f"| {arm.name} | " + " | ".join("-" for _ in COLUMNS) + f" | damaged: {exc} |")
                continue
            hashes[arm.name] = [r["data/batch_hash"] for r in records if "data/batch_hash" in r]
            refilled |= any(r.get("sampling/rounds", 1) > 1 for r in records)
        if not summary_path.exists():
            rows.append(f"| {arm.name} | " + " | ".join("-" for _ in COLUMNS) + " | not finished |")
            continue
        s = json.loads(summary_path.read_text())
        values = [s.get(k) if k.startswith("eval/") else s["run_means"].get(k) for _, k in COLUMNS]
        rows.append(f"| {arm.name} | " + " | ".join(_fmt(v) for v in values) + " | finished |")
    header = "| arm | " + " | ".join(c for c, _ in COLUMNS) + " | status |\n|" + "---|" * (len(COLUMNS) + 2)
    sequences = {tuple(h) for h in hashes.values()}
    paired = (
        "all arms saw the same prompts in the same order (data/batch_hash)"
        if len(sequences) == 1
        else "WARNING: arms saw different prompt sequences (data/batch_hash differs)"
    )
    if refilled:  # budget.dynamic_sampling: each arm's refills are its own prefix of the reserve stream
        paired += (
            "; dynamic sampling refilled dropped groups from the reserve stream, each arm as far as it "
            "needed (sampling/reserve_from, sampling/reserve_to)"
        )
    note = (
        "acc0/acc: greedy eval accuracy at step 0 and at the end; gini, etr, regime shares: run means "
        f"of the training signal's per-step values. {paired}."
    )
    return f"# Sweep {sweep_dir}\n\n{header}\n" + "\n".join(rows) + f"\n\n{note}\n"


class SweepSummaryCallback(Callback):
    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir() or os.environ.get("RANK", "0") != "0":  # torchrun: rank 0 writes it
            return
        table = sweep_table(sweep_dir)
        (sweep_dir / "sweep_summary.md").write_text(table)
        print(table)
        from arca_sweep.report import build_report

        print(f"report: {build_report(sweep_dir)}")
