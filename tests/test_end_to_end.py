"""The real pipeline end to end on the tiny model, through the CLI as users run it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import check_arm_files, cli, cli_env, records


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
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
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
