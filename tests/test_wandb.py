"""logger=wandb: a real offline W&B run per arm, read back from its run file (no server)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.test_end_to_end import cli, records
from tests.wandb_offline import run_view


def run_files(arm: Path) -> list[Path]:
    return sorted(arm.glob("wandb/offline-run-*/run-*.wandb"))


@pytest.mark.slow
def test_offline_run_carries_config_summary_and_keeps_its_id_on_resume(tmp_path):
    sweep = tmp_path / "sweep"
    command = (
        "credit=entropy",
        "rank=16",
        "budget=smoke",
        "logger=wandb",
        "seed=3",
        "-m",
        f"hydra.sweep.dir={sweep}",
    )
    cli(*command, cwd=tmp_path)
    arm = next(p for p in sweep.iterdir() if p.is_dir())
    (file,) = run_files(arm)
    view = run_view(file)
    assert view["id"] == (arm / "wandb_run_id.txt").read_text().strip()
    assert view["group"] == "sweep", "group = the sweep dir's name"
    assert view["name"] == "budget=smoke,credit=entropy,rank=16", "the arm's overrides without seed or logger"
    assert {"model=tiny", "rank=16", "credit=entropy", "budget=smoke"} <= set(view["tags"])
    assert view["config"]["credit"]["name"] == "entropy" and view["config"]["rank"]["r"] == 16
    summary = json.loads((arm / "summary.json").read_text())
    assert view["summary"]["eval/accuracy_final"] == summary["eval/accuracy_final"]
    assert view["summary"]["steps"] == 3
    assert view["summary"]["credit/gini/mean"] == pytest.approx(summary["run_means"]["credit/gini/mean"])

    # Resume: the arm is unfinished again (its summary gone), the same command continues the same W&B run.
    (arm / "summary.json").unlink()
    cli(*command, cwd=tmp_path)
    files = run_files(arm)
    assert len(files) == 2 and {run_view(f)["id"] for f in files} == {view["id"]}


@pytest.mark.slow
def test_unreachable_wandb_server_loses_nothing(tmp_path, monkeypatch):
    """Online mode pointed at a closed local port: the run warns, goes offline and completes."""
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    arm = tmp_path / "arm"
    proc = cli(
        "budget=smoke",
        "logger=wandb",
        "logger.mode=online",
        "logger.init_timeout_s=10",
        f"hydra.run.dir={arm}",
        cwd=tmp_path,
        timeout=600,
    )
    assert "continuing offline" in proc.stderr
    assert [r["step"] for r in records(arm)] == [0, 1, 2, 3]
    assert (arm / "summary.json").exists() and len(run_files(arm)) == 1
    assert os.environ["WANDB_BASE_URL"].endswith(":9")
