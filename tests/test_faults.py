"""Fault injection on real runs (``python -m arca_sweep`` processes, real files, nothing mocked at the
fault): a second run in the same dir, kill -9, a torn or deleted ``metrics.jsonl``, a full filesystem, a
learning rate that blows up. After each, re-running the same command must end exactly where an
uninterrupted run ends: the same records step for step, the same adapter bit for bit."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import cli, cli_env, fill, records, tmpfs

STEPS = 8
ARGS = ["budget=smoke", f"budget.steps={STEPS}", "budget.eval_size=4", "threads=1", "logger.progress=false"]

pytestmark = pytest.mark.slow


def command(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "arca_sweep", *ARGS, *extra, f"hydra.run.dir={run_dir}"]


def run(run_dir: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    args = [*ARGS, *extra, f"hydra.run.dir={run_dir}"]
    return cli(*args, cwd=run_dir.parent, quiet=False, check=check, env=cli_env())


def launch(run_dir: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        command(run_dir, *extra),
        cwd=run_dir.parent,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def line_count(run_dir: Path) -> int:
    try:
        return (run_dir / "metrics.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_for(condition, proc: subprocess.Popen, timeout: float = 300) -> bool:
    """Poll until ``condition()``; False if the process ended first."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return condition()
        time.sleep(0.02)
    raise AssertionError("timed out waiting")


def kill9(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def deterministic(record: dict) -> dict:
    return {k: v for k, v in record.items() if not k.startswith("perf/")}


def assert_same_arm(reference: Path, run_dir: Path) -> None:
    """Every step once, each record equal to the uninterrupted run's (timings aside); the same adapter."""
    want, got = records(reference), records(run_dir)
    assert [r["step"] for r in got] == list(range(STEPS + 1))
    for a, b in zip(want, got, strict=True):
        assert deterministic(a) == deterministic(b), a["step"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == STEPS
    assert summary["eval/accuracy_initial"] == want[0]["eval/accuracy"]
    a = load_file(reference / "adapter" / "adapter_model.safetensors")
    b = load_file(run_dir / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and a and all(torch.equal(a[k], b[k]) for k in a)
    assert not (run_dir / "run.lock").exists()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("faults") / "straight"
    run(run_dir)
    return run_dir


def test_second_run_in_the_same_dir_refuses_at_once(reference, tmp_path):
    run_dir = tmp_path / "arm"
    first = launch(run_dir)
    assert wait_for(lambda: line_count(run_dir) >= 1, first)  # first is past its lock and its step-0 eval
    holder = json.loads((run_dir / "run.lock").read_text())
    first.send_signal(signal.SIGSTOP)  # hold it mid-run (alive, lock held) while the second one starts
    try:
        second = run(run_dir, check=False)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2
    assert f"in use by another run (pid {first.pid} on host {holder['host']}" in second.stderr
    assert "delete" in second.stderr and "Traceback" not in second.stderr
    assert "Loading weights" not in second.stderr  # refused before loading anything
    assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]
    assert_same_arm(reference, run_dir)  # each step exactly once


def test_torn_then_deleted_metrics_resume_to_the_uninterrupted_record(reference, tmp_path):
    run_dir = tmp_path / "arm"
    proc = launch(run_dir)
    assert wait_for(lambda: line_count(run_dir) >= 3 and (run_dir / "checkpoint.pt").exists(), proc)
    kill9(proc)
    # a writer killed mid-line leaves a torn last line
    writer = subprocess.run(
        [
            sys.executable,
            "-c",
            "import os, signal, sys; fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND)\n"
            'os.write(fd, b\'{"step": 99, "loss": 0.\'); os.kill(os.getpid(), signal.SIGKILL)',
            str(run_dir / "metrics.jsonl"),
        ]
    )
    assert writer.returncode == -signal.SIGKILL
    assert not (run_dir / "metrics.jsonl").read_text().endswith("\n")
    proc = launch(run_dir)
    resumed_at = line_count(run_dir)
    assert wait_for(lambda: line_count(run_dir) >= resumed_at + 2 and line_count(run_dir) > 4, proc)
    kill9(proc)
    assert "dropped a torn last line" in proc.stderr.read()
    (run_dir / "metrics.jsonl").unlink()  # and then the record is deleted outright
    resumed = run(run_dir)
    assert "restored them from the checkpoint" in resumed.stderr
    assert_same_arm(reference, run_dir)


def test_full_filesystem_stops_cleanly_and_resumes(reference, tmp_path):
    with tmpfs(tmp_path / "disk", "size=24m") as disk:
        run_dir = disk / "arm"
        proc = launch(run_dir)
        assert wait_for(lambda: line_count(run_dir) >= 3, proc)
        filler = disk / "filler"
        fill(filler)  # take every free byte, as another job on the disk would
        code = proc.wait(timeout=600)
        stderr = proc.stderr.read()
        assert code == 2, stderr[-3000:]
        error = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert error and "no space left on device" in error[0], stderr[-3000:]
        assert str(run_dir) in error[0] and "re-run the same command" in error[0]
        text = (run_dir / "metrics.jsonl").read_text()
        assert text.endswith("\n") and all(json.loads(line) for line in text.splitlines())  # whole lines
        filler.unlink()
        run(run_dir)
        assert_same_arm(reference, run_dir)


def test_non_finite_learning_rate_stops_with_the_cause(tmp_path):
    run_dir = tmp_path / "arm"
    proc = run(run_dir, "optim.lr=1e30", check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error: step 1:" in proc.stderr and "not finite" in proc.stderr and "optim.lr" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert [r["step"] for r in records(run_dir)] == [0]  # nothing of step 1 was logged
    assert not (run_dir / "checkpoint.pt").exists() and not (run_dir / "adapter").exists()
    assert not (run_dir / "summary.json").exists() and not (run_dir / "run.lock").exists()


def test_blow_up_mid_run_keeps_the_last_good_checkpoint_resumable(reference, tmp_path):
    """A checkpoint whose optimizer carries lr 1e30 (as after a bad schedule): the resumed run stops at the
    next step before saving anything; put the lr back and the same command finishes the arm exactly."""
    run_dir = tmp_path / "arm"
    proc = launch(run_dir)
    assert wait_for(lambda: line_count(run_dir) >= 3 and (run_dir / "checkpoint.pt").exists(), proc)
    kill9(proc)
    good = (run_dir / "checkpoint.pt").read_bytes()
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    for group in state["optimizer"]["param_groups"]:
        group["lr"] = 1e30
    torch.save(state, run_dir / "checkpoint.pt")
    poisoned = (run_dir / "checkpoint.pt").read_bytes()
    failed = run(run_dir, check=False)
    step = state["step"] + 1
    assert failed.returncode == 2 and f"error: step {step}:" in failed.stderr, failed.stderr[-3000:]
    assert "lr 1e+30" in failed.stderr and "resumes from it" in failed.stderr
    assert (run_dir / "checkpoint.pt").read_bytes() == poisoned  # nothing of the bad step was saved
    assert [r["step"] for r in records(run_dir)] == list(range(step))
    (run_dir / "checkpoint.pt").write_bytes(good)
    run(run_dir)
    assert_same_arm(reference, run_dir)


def test_kill9_at_five_random_moments_then_resume(reference, tmp_path):
    """Each kill lands after the resumed run has logged a new step: right then, or a random moment later
    (inside the next step, its sample or checkpoint writes)."""
    rng = random.Random(20261201)
    run_dir = tmp_path / "arm"
    moments = []
    while len(moments) < 5:
        proc = launch(run_dir)
        target = line_count(run_dir) + 1
        if not wait_for(lambda t=target: line_count(run_dir) >= t, proc):
            break  # finished before the moment came
        delay = rng.choice([0.0, rng.uniform(0.0, 0.5)])
        time.sleep(delay)
        if proc.poll() is not None:
            break
        kill9(proc)
        moments.append((target - 1, round(delay, 2)))
    print("killed after step, + seconds:", moments)
    assert len(moments) == 5, f"the run finished after {len(moments)} kills"
    assert not (run_dir / "summary.json").exists()
    run(run_dir)
    assert_same_arm(reference, run_dir)
