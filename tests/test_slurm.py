"""Sweeps through the submitit launchers, end to end: ``hydra/launcher=slurm`` on a real SLURM cluster and
``hydra/launcher=local``; the presets' composition and the failed-arm message, fast.

The ``slurm`` tests need a cluster with a CPU node: ``sudo bash scripts/local_slurm.sh up`` starts one on
this machine (CI does); without ``sinfo`` or an idle node they are skipped, saying so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from safetensors.torch import load_file

from arca_sweep.launching import ArmFailed, arm_log_path, name_failed_arm
from arca_sweep.main import CONF_DIR
from arca_sweep.testing import make_config
from tests.helpers import REPO, check_arm_files, cli, cli_env

TINY_MODEL = REPO / "arca_sweep" / "assets" / "tiny-arith"
SMOKE_STEPS = make_config("budget=smoke").budget.steps
SIX_ARMS = ["credit=arca,entropy,surprisal", "rank=8,16", "budget=smoke", "threads=1"]
# The local test cluster: no GPU, a couple of cores; an arm needs ~0.5 GB.
ON_TEST_CLUSTER = [
    "hydra/launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
]
USABLE_NODE_STATES = {"idle", "mixed", "allocated", "completing"}


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    if shutil.which("sinfo") is None:
        pytest.skip("sinfo is not on PATH: no SLURM here (sudo bash scripts/local_slurm.sh up starts one)")
    try:
        proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.skip("sinfo got no answer in 60 s: no SLURM controller (sudo bash scripts/local_slurm.sh up)")
    states = {s.rstrip("*~#!%$@^-") for s in proc.stdout.split()}
    if proc.returncode != 0 or not states & USABLE_NODE_STATES:
        said = (proc.stderr.strip() or proc.stdout.strip() or "nothing").splitlines()[0]
        pytest.skip(
            f"no usable SLURM node (sinfo: {said}); start one with: sudo bash scripts/local_slurm.sh up"
        )


def arms_of(sweep: Path) -> list[Path]:
    return sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir())


def submitit_jobs(sweep: Path) -> list[str]:
    """The SLURM job ids of a sweep (``12`` or, for array tasks, ``12_3``), from submitit's folder."""
    return sorted(p.name for p in (sweep / ".submitit").iterdir() if any(p.glob("*_submitted.pkl")))


def sacct_states(job: str) -> list[str]:
    """Every state the job went through, requeues included (``sacct --duplicates``)."""
    out = subprocess.run(
        ["sacct", "-j", job, "--duplicates", "-X", "-n", "-P", "-o", "State"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return out.split()


def adapter_tensors(arm: Path) -> dict[str, torch.Tensor]:
    return load_file(arm / "adapter" / "adapter_model.safetensors")


# ---- presets and the failed-arm message (fast) ----------------------------------------------------------


def compose_launcher(*overrides: str):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True).hydra.launcher


def test_slurm_preset_requeues_and_asks_for_a_gpu():
    launcher = compose_launcher("hydra/launcher=slurm")
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.cpus_per_task and launcher.mem_gb
    assert launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0
    # the warning signal must come after submitit's handler is installed, well inside the time limit
    assert launcher.timeout_min * 60 >= launcher.signal_delay_s + 60


def test_local_preset_uses_submitit_local_executor():
    launcher = compose_launcher("hydra/launcher=local")
    assert launcher._target_.endswith("submitit_launcher.LocalLauncher")
    assert launcher.gpus_per_node == 0


def test_site_preset_from_a_user_dir_extends_slurm(tmp_path):
    """README "Running on SLURM": a site file outside the repo, found through hydra.searchpath."""
    site = tmp_path / "site" / "hydra" / "launcher"
    site.mkdir(parents=True)
    (site / "mycluster.yaml").write_text(
        "defaults:\n  - slurm\n  - _self_\n\npartition: gpu\naccount: my_project\n"
        "setup:\n  - module load cuda/12.4\n"
    )
    launcher = compose_launcher("hydra/launcher=mycluster", f"hydra.searchpath=[file://{tmp_path / 'site'}]")
    assert (launcher.partition, launcher.account, list(launcher.setup)) == (
        "gpu",
        "my_project",
        ["module load cuda/12.4"],
    )
    assert launcher._target_.endswith("SlurmLauncher") and launcher.max_num_timeout > 0


def test_failed_arm_is_named_with_its_log(tmp_path, monkeypatch, caplog):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    arm = tmp_path / "credit=arca,rank=16"
    with pytest.raises(ArmFailed) as failure, name_failed_arm(arm, "main"):
        raise FileNotFoundError("no config.json")
    message = str(failure.value)
    assert message.startswith("arm credit=arca,rank=16 failed: FileNotFoundError: no config.json")
    assert f"arm dir: {arm}" in message and f"log: {arm / 'main.log'}" in message
    assert caplog.records[-1].exc_info  # the traceback goes to the arm's log


def test_requeue_exit_passes_through_untouched(tmp_path):
    with pytest.raises(SystemExit), name_failed_arm(tmp_path, "main"):
        sys.exit(-1)  # what submitit does after requeueing a preempted job


def test_arm_log_under_submitit_is_its_stdout(tmp_path, monkeypatch):
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SUBMITIT_FOLDER", str(tmp_path / ".submitit" / "%j"))
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "2")
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert arm_log_path(tmp_path / "arm", "main") == tmp_path / ".submitit" / "5_2" / "5_2_0_log.out"


# ---- on a real SLURM cluster ----------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_sweep_runs_as_one_job_array(slurm_cluster, tmp_path):
    sweep = tmp_path / "sweep"
    cli(*SIX_ARMS, "-m", *ON_TEST_CLUSTER, f"hydra.sweep.dir={sweep}", cwd=REPO)
    arms = arms_of(sweep)
    assert len(arms) == 6
    for arm in arms:
        check_arm_files(arm, SMOKE_STEPS)
    (script,) = (sweep / ".submitit").glob("*/*_submission.sh")
    assert "#SBATCH --array=0-5" in script.read_text() and "#SBATCH --gpus-per-node=0" in script.read_text()
    array_job = script.parent.name
    assert submitit_jobs(sweep) == [f"{array_job}_{i}" for i in range(6)]
    assert [sacct_states(f"{array_job}_{i}") for i in range(6)] == [["COMPLETED"]] * 6
    assert (sweep / "report.md").is_file()  # the end-of-sweep callback ran in the launching process


@pytest.mark.slow
@pytest.mark.slurm
def test_preempted_arm_requeues_and_resumes_as_if_uninterrupted(slurm_cluster, tmp_path):
    steps = 30
    arm_args = ["budget=smoke", f"budget.steps={steps}", "budget.checkpoint_every=1", "threads=1"]
    sweep, reference_dir = tmp_path / "sweep", tmp_path / "reference"
    # timeout_min=20: a signal in the first 10 minutes is a preemption, not a time-out (submitit's rule)
    launch = [*arm_args, "-m", *ON_TEST_CLUSTER, "hydra.launcher.timeout_min=20", f"hydra.sweep.dir={sweep}"]
    base = [sys.executable, "-m", "arca_sweep", "logger.progress=false"]
    with (tmp_path / "sweep.log").open("w") as sweep_log, (tmp_path / "reference.log").open("w") as ref_log:
        sweeping = subprocess.Popen([*base, *launch], cwd=REPO, stdout=sweep_log, stderr=subprocess.STDOUT)
        # the same arm uninterrupted, on this machine meanwhile
        reference = subprocess.Popen(
            [*base, *arm_args, f"hydra.run.dir={reference_dir}"], cwd=REPO, stdout=ref_log, stderr=ref_log
        )
        try:
            # a hang guard tied to progress, not to a clock: the same arm run here finishing all its
            # steps before the cluster's arm logs step 3 means the job never started
            while (
                not list(sweep.glob("*/metrics.jsonl"))
                or len(next(sweep.glob("*/metrics.jsonl")).read_text().splitlines()) < 4
            ):  # steps 0..3 logged: mid-run, with a checkpoint
                assert sweeping.poll() is None, (tmp_path / "sweep.log").read_text()[-3000:]
                assert reference.poll() is None, (
                    "the arm on the cluster did not reach step 3 while the same arm here ran all its steps"
                )
                time.sleep(0.5)
            (job,) = submitit_jobs(sweep)
            subprocess.run(["scancel", "--signal=USR2", job], check=True, timeout=60)
            assert sweeping.wait(timeout=400) == 0, (tmp_path / "sweep.log").read_text()[-3000:]
            assert reference.wait(timeout=400) == 0, (tmp_path / "reference.log").read_text()[-3000:]
        finally:
            for proc in (sweeping, reference):
                if proc.poll() is None:
                    proc.kill()

    assert sacct_states(job) == ["REQUEUED", "COMPLETED"]
    log = next(sweep.glob(".submitit/*/*_log.out")).read_text()
    assert "this job is preempted" in log and f"Requeued job {job}" in log
    (arm,) = arms_of(sweep)
    resumed = re.search(rf"resuming {re.escape(str(arm))} after step (\d+)", log)
    assert resumed, log[-3000:]
    resumed_after = int(resumed[1])
    assert 3 <= resumed_after < steps
    check_arm_files(arm, steps)  # every step exactly once
    assert json.loads((arm / "summary.json").read_text())["resumed_from_step"] == resumed_after
    ours, theirs = adapter_tensors(arm), adapter_tensors(reference_dir)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours), (
        "the resumed adapter differs from an uninterrupted run"
    )


@pytest.mark.slow
@pytest.mark.slurm
def test_failed_arm_fails_the_sweep_and_a_relaunch_skips_finished_arms(slurm_cluster, tmp_path):
    present, missing = tmp_path / "model_a", tmp_path / "model_b"
    shutil.copytree(TINY_MODEL, present)
    sweep = tmp_path / "sweep"
    args = ["budget=smoke", "threads=1", f"model.path={present},{missing}", "-m", *ON_TEST_CLUSTER]
    args.append(f"hydra.sweep.dir={sweep}")

    first = cli(*args, cwd=REPO, check=False)
    assert first.returncode != 0
    finished, failed = arms_of(sweep)
    assert finished.name.endswith("model_a") and failed.name.endswith("model_b")
    assert (finished / "summary.json").is_file() and not (failed / "summary.json").exists()
    assert f"arm {failed.name} failed: ConfigError" in first.stderr, first.stderr[-3000:]
    assert "has no config.json" in first.stderr  # found by validation, before anything loads
    assert f"arm dir: {failed}" in first.stderr
    log = Path(re.search(r"^  log: (.+)$", first.stderr, re.MULTILINE)[1])
    assert log.is_file() and "ConfigError" in log.read_text()  # its traceback is in its log
    finished_at = (finished / "summary.json").stat().st_mtime_ns

    shutil.copytree(TINY_MODEL, missing)  # the fix: the missing checkpoint arrives
    cli(*args, cwd=REPO)
    assert (finished / "summary.json").stat().st_mtime_ns == finished_at
    skipped = [
        p for p in sweep.glob(".submitit/*/*_log.out") if "arm already finished, skipping" in p.read_text()
    ]
    assert len(skipped) == 1 and str(finished) in skipped[0].read_text()
    check_arm_files(failed, SMOKE_STEPS)


# ---- submitit's local executor ---------------------------------------------------------------------------


@pytest.mark.slow
def test_local_launcher_runs_the_sweep_in_parallel_processes(tmp_path):
    sweep = tmp_path / "sweep"
    cli(*SIX_ARMS, "-m", "hydra/launcher=local", f"hydra.sweep.dir={sweep}", cwd=REPO)
    arms = arms_of(sweep)
    assert len(arms) == 6
    for arm in arms:
        check_arm_files(arm, SMOKE_STEPS)
    # one process per arm (submitit's job id is its pid), its files directly in .submitit/: no stray "%j" dir
    assert len(list((sweep / ".submitit").glob("*_submitted.pkl"))) == 6
    assert [p.name for p in (sweep / ".submitit").iterdir() if p.is_dir()] == []
    # run one after another, no arm would log while another is between its first and last log lines
    spans = sorted(log_span(arm / "main.log") for arm in arms)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False)), spans


def log_span(log: Path) -> tuple[str, str]:
    """The timestamps of an arm's first and last main.log lines ("[2026-12-03 11:42:58,693]..."),
    which sort as times."""
    stamps = re.findall(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]", log.read_text(), re.M)
    assert len(stamps) >= 2, log
    return stamps[0], stamps[-1]


@pytest.mark.slow
@pytest.mark.slurm
def test_arms_of_two_tasks_each_run_as_one_arm_across_processes(slurm_cluster, tmp_path):
    """``tasks_per_node=2``: each arm is one SLURM job of two tasks, which submitit makes the arm's two ranks
    (arca_sweep/distributed/): one dir per arm, written by rank 0, finished, COMPLETED in sacct. Rank
    variables left in the submitting shell (sbatch passes its environment on) do not leak into the tasks."""
    sweep = tmp_path / "sweep"
    two_tasks = [*ON_TEST_CLUSTER, "hydra.launcher.tasks_per_node=2", "hydra.launcher.mem_gb=2"]
    args = ["credit=uniform,arca", "budget=smoke", "rollout=hf", "threads=1"]
    stale = cli_env(hydra_full_error=True, LOCAL_RANK="5", LOCAL_WORLD_SIZE="7", MASTER_PORT="9")
    cli(*args, "-m", *two_tasks, f"hydra.sweep.dir={sweep}", cwd=REPO, env=stale)
    arms = arms_of(sweep)
    assert [a.name for a in arms] == [
        "budget=smoke,credit=arca,rollout=hf",
        "budget=smoke,credit=uniform,rollout=hf",
    ]
    for arm in arms:
        check_arm_files(arm, SMOKE_STEPS)
        summary = json.loads((arm / "summary.json").read_text())
        assert summary["dist"] == {"world_size": 2, "backend": "gloo", "shard": False}
    (script,) = (sweep / ".submitit").glob("*/*_submission.sh")
    assert "#SBATCH --ntasks-per-node=2" in script.read_text()
    jobs = submitit_jobs(sweep)
    # (the sweep returns once each job's result is in; its other task may still be exiting: sacct lags)
    deadline = time.time() + 120
    while any(sacct_states(j) == ["RUNNING"] for j in jobs) and time.time() < deadline:
        time.sleep(1)
    assert len(jobs) == 2 and [sacct_states(j) for j in jobs] == [["COMPLETED"]] * 2
    assert not list(sweep.glob("*/.hydra.launch/*"))  # each task's staged launch record adopted or removed
