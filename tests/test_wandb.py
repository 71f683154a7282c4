"""logger=wandb: a real offline W&B run per arm, read back from its run file (no server)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from arca_sweep.loggers import default_group
from tests.helpers import cli, records
from tests.wandb_offline import run_view


def run_files(arm: Path) -> list[Path]:
    return sorted(arm.glob("wandb/offline-run-*/run-*.wandb"))


def start_and_kill(args: list[str], cwd: Path, arm_glob: str, sweep: Path) -> Path:
    """Start a multirun, SIGKILL it once its arm has a checkpoint and three steps logged."""
    cmd = [sys.executable, "-m", "arca_sweep", *args, "logger.progress=false"]
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        arms = list(sweep.glob(arm_glob))
        metrics = arms[0] / "metrics.jsonl" if arms else None
        if metrics and (arms[0] / "checkpoint.pt").exists() and metrics.read_text().count("\n") >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (arm,) = sweep.glob(arm_glob)
    assert not (arm / "summary.json").exists(), "the arm must have been interrupted before finishing"
    return arm


@pytest.mark.slow
def test_wandb_turned_on_later_resumes_the_arm_and_keeps_run_means_apart(tmp_path):
    """An arm interrupted without W&B, re-run with logger=wandb: the same arm dir resumes from its
    checkpoint (logger.* are not in arm dir names, nor in the resume check), and the offline run read
    back from its file shows the run means under run_mean/... and the last step's per-step values."""
    sweep = tmp_path / "sweep"
    base = [
        "credit=entropy",
        "rank=16",
        "budget=smoke",
        "budget.steps=4",
        "budget.checkpoint_every=1",
        "seed=3",
    ]
    multirun = ["-m", f"hydra.sweep.dir={sweep}"]
    arm = start_and_kill([*base, *multirun], tmp_path, "*seed=3*", sweep)
    assert "logger" not in arm.name and not run_files(arm)
    killed_at = torch.load(arm / "checkpoint.pt", weights_only=False)["step"]
    assert 1 <= killed_at < 4

    command = (*base, "logger=wandb", "logger.mode=offline", *multirun)
    resumed = cli(*command, cwd=tmp_path)
    assert f"resuming {arm} after step {killed_at}" in resumed.stdout
    assert [p.name for p in sweep.iterdir() if p.is_dir()] == [arm.name], "the same arm dir, no new one"
    steps = records(arm)
    assert [r["step"] for r in steps] == list(range(5))
    (file,) = run_files(arm)
    view = run_view(file)
    assert view["id"] == (arm / "wandb_run_id.txt").read_text().strip()
    assert view["group"] == "sweep", "group = the sweep dir's name (no experiment preset)"
    assert view["name"] == "budget.checkpoint_every=1,budget.steps=4,budget=smoke,credit=entropy,rank=16", (
        "the arm's overrides without seed or logger"
    )
    assert {"model=tiny", "rank=16", "credit=entropy", "budget=smoke"} <= set(view["tags"])
    assert view["config"]["credit"]["name"] == "entropy" and view["config"]["rank"]["r"] == 16
    assert view["history_steps"] == list(range(killed_at + 1, 5)), "W&B got the steps run after resuming"
    summary = json.loads((arm / "summary.json").read_text())
    assert view["summary"]["eval/accuracy_final"] == summary["eval/accuracy_final"]
    assert view["summary"]["steps"] == 4
    for key in ("reward/mean", "credit/gini/mean"):
        # run mean and last step: separate values, each from its own source
        assert view["summary"][f"run_mean/{key}"] == pytest.approx(summary["run_means"][key])
        assert view["summary"][key] == pytest.approx(steps[-1][key])
    assert summary["run_means"]["reward/mean"] == pytest.approx(
        np.mean([r["reward/mean"] for r in steps[1:]])
    )

    # Resume again with W&B on: the same command continues the same W&B run.
    (arm / "summary.json").unlink()
    cli(*command, cwd=tmp_path)
    files = run_files(arm)
    assert len(files) == 2 and {run_view(f)["id"] for f in files} == {view["id"]}


def test_default_group_names_experiment_and_sweep():
    assert default_group({"experiment": "demo"}, "/x/outputs/multirun/2026-12-01_10-00-00") == (
        "demo/2026-12-01_10-00-00"
    )
    assert default_group({"experiment": None}, "/x/sweep") == "sweep"
    assert default_group({"experiment": "demo"}, None) == "demo"
    assert default_group({}, None) is None


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
