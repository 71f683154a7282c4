"""The issue's must-show sweep: the literature's methods next to the paper's signals, one report."""

from __future__ import annotations

import pytest

from tests.helpers import check_arm_files, cli, records

METHODS = ("uniform", "arca", "entropy_mask", "clip_cov", "archer")


@pytest.mark.slow
def test_methods_sweep_reports_every_cell_and_shadow_regimes(tmp_path):
    """``python -m arca_sweep credit=uniform,arca,entropy_mask,clip_cov,archer budget=smoke -m`` with
    budget.steps=2: every arm finishes, the report has each method's cell in the final table and every
    shadow signal's regimes (the five signals and entropy_mask, the method that defines weights)."""
    sweep = tmp_path / "sweep"
    cli(
        f"credit={','.join(METHODS)}",
        "budget=smoke",
        "budget.steps=2",
        "-m",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    arms = sorted(p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert len(arms) == len(METHODS)
    hashes = set()
    for arm in arms:
        rows = check_arm_files(arm, 2)
        hashes.add(tuple(r["data/batch_hash"] for r in rows[1:]))
        step = records(arm)[1]
        for key in ("policy/entropy", "loss/clip_frac/low", "loss/clip_frac/high", "loss/approx_kl"):
            assert key in step, (arm.name, key)
        for key in ("response/length_min", "response/length_max", "response/clipped_frac"):
            assert key in step, (arm.name, key)
        assert step["response/length_min"] <= step["response/length_mean"] <= step["response/length_max"]
    assert len(hashes) == 1, "every arm sees the same prompts in the same order"
    report = (sweep / "report.md").read_text()
    final = report.split("## Final table")[1].split("## Regime shares")[0]
    regimes = report.split("## Regime shares")[1].split("## Figures")[0]
    # cells are the sweep's axes: credit alone here, so each table row starts with the method
    for method in METHODS:
        assert any(line.startswith(f"| {method} |") for line in final.splitlines()), method
        for signal in ("uniform", "surprisal", "entropy", "divergence", "arca", "entropy_mask"):
            row = next(line for line in regimes.splitlines() if line.startswith(f"| {method} | {signal} |"))
            shares = [float(x.split("±")[0]) for x in row.split("|")[3:6]]
            assert sum(shares) == pytest.approx(1.0, abs=1e-3), row
