"""The real pipeline end to end on the tiny model, through the CLI as users run it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
STEP_KEYS = [
    "step",
    "data/batch_hash",
    "reward/mean",
    "reward/frac_zero_std",
    "loss",
    *[f"credit/{m}/{s}" for m in ("gini", "etr") for s in ("mean", "p10", "p50", "p90")],
    "credit/top5_mass/mean",
    "credit/regime/uniform",
    "credit/regime/middle",
    "credit/regime/concentrated",
    "credit/position/first5",
    "credit/position/last5",
    "credit/position/format",
    *[
        f"shadow/{sig}/{k}"
        for sig in ("uniform", "surprisal", "entropy", "divergence", "arca")
        for k in ("gini/mean", "etr/mean", "spearman")
    ],
    "rollout/logp_diff_mean",
    "rollout/logp_diff_max",
    "perf/rollout_s",
    "perf/learner_s",
    "perf/tokens_per_s",
]


def cli(*args: str, cwd: Path, timeout: int = 600, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "arca_sweep", *args, "logger.progress=false"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"arca_sweep {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


def records(arm: Path) -> list[dict]:
    return [json.loads(line) for line in (arm / "metrics.jsonl").read_text().splitlines()]


def check_arm_files(arm: Path, steps: int) -> list[dict]:
    rows = records(arm)
    assert [r["step"] for r in rows] == list(range(steps + 1)), (
        "each step exactly once, step 0 = initial eval"
    )
    assert rows[0]["eval/accuracy"] is not None and rows[-1]["eval/accuracy"] is not None
    for r in rows[1:]:
        missing = [k for k in STEP_KEYS if k not in r]
        assert not missing, f"{arm.name} step {r['step']} lacks {missing}"
        assert 0 <= r["credit/gini/mean"] <= 1 and 0 < r["credit/etr/mean"] <= 1
        assert abs(sum(r[f"credit/regime/{g}"] for g in ("uniform", "middle", "concentrated")) - 1) < 1e-6
    summary = json.loads((arm / "summary.json").read_text())
    assert summary["steps"] == steps and summary["eval/accuracy_initial"] == rows[0]["eval/accuracy"]
    assert (arm / "adapter" / "adapter_model.safetensors").is_file()
    assert (arm / "checkpoint.pt").is_file()
    return rows


@pytest.mark.slow
def test_used_by_sweep_smoke(tmp_path):
    """The README's used-by sweep: six arms, identical prompt order, every file and key."""
    sweep = tmp_path / "sweep"
    proc = cli(
        "credit=arca,entropy,surprisal",
        "rank=8,16",
        "budget=smoke",
        "-m",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    arms = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert [a.name for a in arms] == sorted(
        f"budget=smoke,credit={c},rank={r}" for c in ("arca", "entropy", "surprisal") for r in (8, 16)
    )
    hashes = {a.name: [r["data/batch_hash"] for r in check_arm_files(a, 3)[1:]] for a in arms}
    assert len({tuple(h) for h in hashes.values()}) == 1, (
        "all arms must see the same prompts in the same order"
    )
    assert len(set(next(iter(hashes.values())))) == 3, "different steps see different prompts"
    for arm in arms:
        cfg = (arm / ".hydra" / "config.yaml").read_text()
        credit_name, rank = arm.name.split("credit=")[1].split(",")[0], arm.name.split("rank=")[1]
        assert f"name: {credit_name}" in cfg and f"r: {rank}" in cfg
        r = records(arm)[1]
        # the training signal is its own shadow
        assert r["credit/gini/mean"] == pytest.approx(r[f"shadow/{credit_name}/gini/mean"])
    for name in ("report.md", "regime_shares.png", "gini_etr.png", "reward_accuracy.png", "heatmaps.html"):
        assert (sweep / name).stat().st_size > 1000, name
    table = (sweep / "sweep_summary.md").read_text()
    assert all(a.name in table for a in arms) and "same prompts in the same order" in table
    assert "sweep_summary" not in proc.stderr and "budget=smoke,credit=arca,rank=16" in proc.stdout


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted_run(tmp_path):
    """SIGKILL an arm mid-run, re-run the same command: it resumes from the checkpoint, writes every
    step exactly once, and ends with the same adapter, bit for bit, as an uninterrupted run."""
    args = ["budget=smoke", "budget.steps=8", "budget.checkpoint_every=2", "credit=entropy"]
    cli(*args, f"hydra.run.dir={tmp_path / 'straight'}", cwd=tmp_path)

    run_dir = tmp_path / "interrupted"
    cmd = [sys.executable, "-m", "arca_sweep", *args, f"hydra.run.dir={run_dir}", "logger.progress=false"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if (run_dir / "checkpoint.pt").exists() and metrics.exists() and metrics.read_text().count("\n") >= 4:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "summary.json").exists(), "the run must have been interrupted before finishing"
    killed_at = torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"]
    assert 2 <= killed_at < 8

    resumed = cli(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert f"resuming {run_dir} after step {killed_at}" in resumed.stdout
    straight, again = check_arm_files(tmp_path / "straight", 8), check_arm_files(run_dir, 8)
    for a, b in zip(straight, again, strict=True):
        for key in ("data/batch_hash", "reward/mean", "loss", "credit/gini/mean", "eval/accuracy"):
            assert a.get(key) == b.get(key), (a["step"], key)
    want = load_file(tmp_path / "straight" / "adapter" / "adapter_model.safetensors")
    got = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert want.keys() == got.keys() and len(want) > 0
    assert all(torch.equal(want[k], got[k]) for k in want), (
        "resumed adapter differs from the uninterrupted one"
    )

    # A finished arm is skipped, its summary printed, nothing rewritten.
    before = (run_dir / "metrics.jsonl").read_text()
    skipped = cli(*args, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert "arm already finished, skipping" in skipped.stdout
    assert (run_dir / "metrics.jsonl").read_text() == before


@pytest.mark.slow
def test_resume_refuses_a_different_config(tmp_path):
    run_dir = tmp_path / "arm"
    cli("budget=smoke", "budget.steps=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    (run_dir / "summary.json").unlink()  # make it look unfinished
    proc = cli(
        "budget=smoke",
        "budget.steps=1",
        "optim.lr=0.1",
        f"hydra.run.dir={run_dir}",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode != 0 and "optim.lr" in proc.stderr and "different config" in proc.stderr


def test_bad_override_fails_before_any_compute(tmp_path):
    proc = cli("credit.normalize=softmaxx", f"hydra.run.dir={tmp_path / 'arm'}", cwd=tmp_path, check=False)
    assert proc.returncode != 0
    assert "credit.normalize='softmaxx'" in proc.stderr and "mean, softmax, rank" in proc.stderr
    assert not (tmp_path / "arm" / "metrics.jsonl").exists()
