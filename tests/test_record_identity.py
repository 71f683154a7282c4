"""An arm's record says what ran (issue 20): real ``python -m arca_sweep`` processes and real files.

A launch that is refused (another config, another run holding the lock, files that are not the arm's) or
that skips a finished arm leaves the arm's ``.hydra/``, records and summary byte for byte as they were; two
different override sets never share a dir, and a long override still gives a valid dir name."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import cli, cli_env

ARGS = ["budget=smoke", "budget.steps=2", "budget.eval_size=4", "threads=1", "logger.progress=false"]

pytestmark = pytest.mark.slow


def run(run_dir: Path, *extra: str, check: bool = True) -> subprocess.CompletedProcess:
    return cli(
        *ARGS, *extra, f"hydra.run.dir={run_dir}", cwd=run_dir.parent, quiet=False, check=check, env=cli_env()
    )


def snapshot(arm: Path) -> dict[str, bytes]:
    """Every file of the arm dir but Hydra's own log, by relative path."""
    return {
        str(p.relative_to(arm)): p.read_bytes()
        for p in sorted(arm.rglob("*"))
        if p.is_file() and p.suffix != ".log"
    }


def error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [x for x in proc.stderr.splitlines() if x.startswith("error: ")]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    arm = tmp_path_factory.mktemp("identity") / "arm"
    run(arm)
    assert json.loads((arm / "summary.json").read_text())["config"]["credit"]["name"] == "arca"
    return arm, snapshot(arm)


def test_a_finished_arm_is_not_relabelled_by_another_config(finished):
    arm, before = finished
    proc = run(arm, "optim.lr=0.5", "credit=uniform", check=False)
    line = error_line(proc)
    assert "finished arm of a different config" in line and str(arm) in line
    assert "credit.name: 'arca' there, 'uniform' now" in line and "optim.lr" in line
    assert snapshot(arm) == before  # .hydra/config.yaml and overrides.yaml still say arca
    assert "credit=uniform" not in (arm / ".hydra" / "overrides.yaml").read_text()
    assert not (arm / ".hydra.launch").exists()


def test_the_same_config_skips_and_rewrites_nothing(finished):
    arm, before = finished
    proc = run(arm, "logger.samples_every=3")  # a logger key cannot change results: the same arm
    assert "already finished" in proc.stdout + proc.stderr
    assert snapshot(arm) == before
    assert not (arm / ".hydra.launch").exists()


def test_a_changed_config_resume_refuses_and_keeps_the_labels(tmp_path):
    arm = tmp_path / "arm"
    run(arm, "budget.steps=1")
    (arm / "summary.json").unlink()  # an arm with a checkpoint and no summary: resumable
    before = snapshot(arm)
    line = error_line(run(arm, "budget.steps=1", "rank=16", check=False))
    assert "checkpoint of a different config" in line and "rank.r: 8 there, 16 now" in line
    assert snapshot(arm) == before


def test_a_launch_refused_by_the_lock_leaves_the_running_arm_labelled(tmp_path):
    arm = tmp_path / "arm"
    first = subprocess.Popen(
        [sys.executable, "-m", "arca_sweep", *ARGS, "budget.steps=6", f"hydra.run.dir={arm}"],
        cwd=tmp_path,
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        import time

        deadline = time.time() + 300
        while not (arm / "metrics.jsonl").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        assert first.poll() is None, first.stderr.read()[-3000:]
        labels = (arm / ".hydra" / "overrides.yaml").read_text()
        first.send_signal(signal.SIGSTOP)
        try:
            second = run(arm, "budget.steps=6", "credit=entropy", "optim.lr=0.9", check=False)
        finally:
            first.send_signal(signal.SIGCONT)
        assert "in use by another run" in error_line(second)
        assert (arm / ".hydra" / "overrides.yaml").read_text() == labels
        assert first.wait(timeout=600) == 0, first.stderr.read()[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    assert "credit=entropy" not in (arm / ".hydra" / "overrides.yaml").read_text()
    assert json.loads((arm / "summary.json").read_text())["config"]["credit"]["name"] == "arca"
    assert not (arm / ".hydra.launch").exists()


def test_files_that_are_not_an_arm_are_not_overwritten(tmp_path):
    stray = tmp_path / "results"
    (stray / "eval").mkdir(parents=True)
    (stray / "metrics.jsonl").write_text('{"mine": 1}\n')
    (stray / "eval" / "step_0.jsonl").write_text('{"id": 1}\n')
    before = snapshot(stray)
    line = error_line(run(stray, check=False))
    assert "not an arca-sweep arm dir" in line and str(stray / "metrics.jsonl") in line
    assert snapshot(stray) == before


def test_an_arm_stopped_before_its_first_checkpoint_starts_again(tmp_path):
    arm = tmp_path / "arm"
    run(arm, "budget.steps=1", "rank=16")  # Hydra lists it as rank='16': the same override
    for name in ("checkpoint.pt", "summary.json"):
        (arm / name).unlink()  # as if killed after the step-0 eval, before step 1's checkpoint
    proc = run(arm, "budget.steps=1", "rank=16")
    assert "starting it again from step 0" in proc.stderr
    assert [json.loads(x)["step"] for x in (arm / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    other = run(arm.parent / "other", "budget.steps=1")
    assert other.returncode == 0


def rows(path: Path, n: int = 4) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(json.dumps({"prompt": f"Compute {i} + 1.", "answer": str(i + 1)}) + "\n" for i in range(n))
    )
    return path


def test_two_arms_whose_names_used_to_collide_get_their_own_dirs(tmp_path):
    a = rows(tmp_path / "data" / "x.jsonl")
    b = rows(tmp_path / "data_x.jsonl", 5)
    sweep = tmp_path / "sweep"
    cli(
        *ARGS,
        "budget.steps=1",
        "data=jsonl",
        "data.eval_path=data/x.jsonl,data_x.jsonl",
        f"data.path={a}",
        "-m",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        quiet=False,
        env=cli_env(),
    )
    arms = sorted(p for p in sweep.iterdir() if (p / "summary.json").is_file())
    assert len(arms) == 2, [p.name for p in sweep.iterdir()]
    paths = {json.loads((p / "summary.json").read_text())["config"]["data"]["eval_path"] for p in arms}
    assert paths == {"data/x.jsonl", "data_x.jsonl"}
    assert b.is_file()


def test_a_long_override_gives_a_bounded_dir_name_and_keeps_the_full_overrides(tmp_path):
    deep = tmp_path
    for i in range(12):
        deep = deep / f"a_long_cluster_directory_name_{i:02d}"
    data = rows(deep / "rows.jsonl")
    sweep = tmp_path / "sweep"
    cli(
        *ARGS,
        "budget.steps=1",
        "data=jsonl",
        f"data.path={data}",
        "seed=0,1",
        "-m",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        quiet=False,
        env=cli_env(),
    )
    arms = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(arms) == 2 and all(len(p.name.encode()) <= 200 for p in arms), [p.name for p in arms]
    for arm in arms:
        assert f"data.path={data}" in (arm / ".hydra" / "overrides.yaml").read_text()
        assert (arm / "summary.json").is_file()


def test_an_arm_that_fails_its_checks_in_a_sweep_is_still_labelled(tmp_path):
    """A sweep arm whose config fails validation (model.path without a checkpoint) keeps its launch's
    .hydra/ in its fresh dir, so the sweep table and a relaunch see it; nothing is left staged."""
    sweep = tmp_path / "sweep"
    proc = cli(
        *ARGS,
        f"model.path={tmp_path / 'nothere'}",
        "-m",
        f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
        quiet=False,
        check=False,
        env=cli_env(),
    )
    assert proc.returncode != 0 and "has no config.json" in proc.stderr
    (arm,) = [p for p in sweep.iterdir() if p.is_dir()]
    assert f"model.path={tmp_path / 'nothere'}" in (arm / ".hydra" / "overrides.yaml").read_text()
    assert not (arm / ".hydra.launch").exists() and not (arm / "metrics.jsonl").exists()


def test_a_users_own_output_subdir_keeps_hydras_files(tmp_path):
    """hydra.output_subdir=.hydra (Hydra's default) is not staged: the arm's .hydra/ stays."""
    arm = tmp_path / "arm"
    run(arm, "budget.steps=1", "hydra.output_subdir=.hydra")
    assert (arm / ".hydra" / "overrides.yaml").is_file() and not (arm / ".hydra.launch").exists()
    error_line(run(arm, "budget.steps=1", "seed=9", "hydra.output_subdir=.hydra", check=False))
    assert (arm / ".hydra" / "overrides.yaml").is_file()


def test_a_summary_of_the_wrong_shape_or_without_a_config_is_handled(tmp_path):
    arm = tmp_path / "arm"
    run(arm, "budget.steps=1")
    summary = json.loads((arm / "summary.json").read_text())
    from arca_sweep.arm_dir import ArmDir, ArmStateError

    for bad in ("[]", '"x"', '{"config": "abc"}'):  # in process: the run reads the summary the same way
        (arm / "summary.json").write_text(bad)
        with pytest.raises(ArmStateError, match="is not an arm's summary"):
            ArmDir(arm).read_summary()
    assert "is not an arm's summary" in error_line(run(arm, "budget.steps=1", check=False))
    # an older arm: no config in its summary, its checkpoint deleted; its .hydra/overrides.yaml decides
    del summary["config"]
    (arm / "summary.json").write_text(json.dumps(summary))
    (arm / "checkpoint.pt").unlink()
    before = snapshot(arm)
    assert "finished arm of other overrides" in error_line(run(arm, "budget.steps=1", "seed=7", check=False))
    assert "already finished" in run(arm, "budget.steps=1").stdout
    (arm / ".hydra" / "overrides.yaml").unlink()
    assert "no record of its config" in error_line(run(arm, "budget.steps=1", check=False))
    before.pop(".hydra/overrides.yaml")
    assert snapshot(arm) == before
