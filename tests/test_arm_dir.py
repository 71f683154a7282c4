"""The arm dir's lock, records and damaged-state messages, on real files and real processes (no model)."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from arca_sweep.arm_dir import (
    ArmDir,
    ArmLock,
    ArmLocked,
    ArmStateError,
    JsonlLogger,
    RunLog,
    atomic_write,
    read_jsonl,
    read_lines,
    writing,
)
from tests.helpers import REPO


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(path: Path, pid: int, host: str | None = None, job: str | None = None) -> None:
    record = {"pid": pid, "host": host or socket.gethostname(), "slurm_job_id": job, "started": "then"}
    path.write_text(json.dumps(record) + "\n")


# ---------------------------------------------------------------- the lock


def test_lock_is_exclusive_and_released(tmp_path):
    path = tmp_path / "run.lock"
    with ArmLock(path):
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with pytest.raises(ArmLocked, match=f"pid {os.getpid()} on host {socket.gethostname()}"):
            ArmLock(path).acquire()
    assert not path.exists()
    with ArmLock(path):  # free again
        pass


def test_lock_held_by_another_live_process_is_refused_with_owner_and_fix(tmp_path):
    path = tmp_path / "run.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from arca_sweep.arm_dir import ArmLock\n"
            f"lock = ArmLock({str(path)!r}); lock.acquire(); print('held', flush=True); time.sleep(60)",
        ],
        env={**os.environ, "PYTHONPATH": str(REPO), "SLURM_JOB_ID": "4242"},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ArmLocked) as info:
            ArmLock(path).acquire()
        message = str(info.value)
        for text in (f"pid {holder.pid}", socket.gethostname(), "SLURM job 4242", f"delete {path}"):
            assert text in message, (text, message)
    finally:
        holder.kill()
        holder.wait()
    # killed -9: its lock stays behind, and is taken over as stale
    assert path.exists()
    with pytest.warns(UserWarning, match=f"pid {holder.pid} .* is not running"), ArmLock(path):
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_lock_of_another_host_is_refused_unless_it_is_this_slurm_job(tmp_path, monkeypatch):
    path = tmp_path / "run.lock"
    write_lock(path, pid=1, host="node-17", job="777")
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    with pytest.raises(ArmLocked, match="pid 1 on host node-17, SLURM job 777"):
        ArmLock(path).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "778")  # another job
    with pytest.raises(ArmLocked):
        ArmLock(path).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "777")  # the same job, requeued onto another node
    with pytest.warns(UserWarning, match="SLURM job 777 was requeued"), ArmLock(path):
        assert json.loads(path.read_text())["slurm_job_id"] == "777"


def test_stale_lock_of_same_slurm_job_on_same_host(tmp_path, monkeypatch):
    path = tmp_path / "run.lock"
    monkeypatch.setenv("SLURM_JOB_ID", "55")
    write_lock(path, pid=dead_pid(), job="55")
    with pytest.warns(UserWarning, match="requeued"), ArmLock(path):
        pass
    write_lock(path, pid=os.getppid(), job="55")  # alive, same job, same host: another run of this job
    with pytest.raises(ArmLocked):
        ArmLock(path).acquire()


# ---------------------------------------------------------------- records


def test_atomic_write_replaces_whole_or_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "summary.json"
    atomic_write(path, "old\n")  # the parent is created
    atomic_write(path, "new\n")
    assert path.read_text() == "new\n" and sorted(path.parent.iterdir()) == [path]

    def full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)  # the disk fills before the text is durable
    with pytest.raises(
        ArmStateError, match=r"no space left on device while writing .*summary.json.*Free space"
    ):
        with writing(path):
            atomic_write(path, "newer\n")
    assert path.read_text() == "new\n" and sorted(path.parent.iterdir()) == [path], "no temporary file left"
    with pytest.raises(OSError, match="No space left"):  # outside writing(): the error as it came
        atomic_write(path, "newer\n")


def test_record_lines_torn_last_line_dropped_with_a_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = JsonlLogger(path)
    for step in range(3):
        log.log({"step": step, "loss": float("nan") if step == 1 else 0.5})
    assert [json.loads(line) for line in path.read_text().splitlines()][1] == {"step": 1, "loss": None}
    good = path.read_text()
    with path.open("a") as f:
        f.write('{"step": 3, "lo')  # a writer died mid-line
    with pytest.warns(UserWarning, match="dropped a torn last line"):
        assert read_lines(path) == good.splitlines()
    path.write_text(good + '{"step": 3, garbage\n')  # garbled and newline-terminated: torn as well
    with pytest.warns(UserWarning, match="torn"):
        assert read_lines(path) == good.splitlines()
    path.write_text('{"step": 0}\n{oops\n{"step": 1}\n')  # in the middle: not a torn write
    with pytest.raises(ArmStateError, match=r"metrics.jsonl:2 is not a JSON record.*delete"):
        read_lines(path)


def test_read_jsonl_accepts_what_each_reader_accepts(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert read_jsonl(path, bad_lines="skip") == []
    with pytest.raises(FileNotFoundError):
        read_jsonl(path)
    path.write_text('{"step": 0}\n\n[1]\n{"step": 1}\n{"step": 2, "lo')
    assert read_jsonl(path, bad_lines="skip") == [{"step": 0}, {"step": 1}]  # a running arm, for the report
    with pytest.raises(json.JSONDecodeError):
        read_jsonl(path)
    path.write_text('{"step": 0}\n\n{"step": 1}\n')
    assert read_jsonl(path) == [{"step": 0}, {"step": 1}]
    path.write_text('{"step": 0}\n{"step": 1')
    with pytest.warns(UserWarning, match="dropped a torn last line"):
        assert read_jsonl(path, bad_lines="torn") == [{"step": 0}]


def test_resume_restores_deleted_or_truncated_metrics_from_the_checkpoint(tmp_path):
    log = RunLog(tmp_path)
    log.start()
    for step in range(5):
        log.log({"step": step, "reward/mean": step / 10})
    lines = list(log.metrics.lines)
    path = tmp_path / "metrics.jsonl"
    full = path.read_text()
    expected = {
        "delete": "restored them from the checkpoint",
        "truncate": "restored them",
        "torn": "torn last",
    }
    for damage, warning in expected.items():
        if damage == "delete":
            path.unlink()
        elif damage == "truncate":
            path.write_text("".join(line + "\n" for line in lines[:2]))
        else:
            path.write_text(full[:-7])
        resumed = RunLog(tmp_path)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            resumed.resume(3, lines[:4])
        assert any(warning in str(w.message) for w in caught), damage
        assert path.read_text() == "".join(line + "\n" for line in lines[:4]), damage
        assert [r["step"] for r in resumed.metrics.records()] == [0, 1, 2, 3]
    # a checkpoint without a copy (an older version) and a hole in the file: refuse, never continue
    path.write_text("".join(line + "\n" for line in lines[:2]))
    with pytest.raises(ArmStateError, match="holds steps 0..1"):
        RunLog(tmp_path).resume(3, None)


# ---------------------------------------------------------------- damaged state


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.arange(4.0))


def test_truncated_checkpoint_and_invalid_summary_name_the_file_and_the_fix(tmp_path):
    arm = ArmDir(tmp_path)
    model = Tiny()
    optimizer = torch.optim.AdamW(model.parameters())
    arm.save_checkpoint(step=2, model=model, optimizer=optimizer, config={"a": 1}, metrics_lines=["{}"])
    state = arm.load_checkpoint()
    assert (
        state["step"] == 2
        and state["metrics_lines"] == ["{}"]
        and torch.equal(state["adapter"]["w"], model.w)
    )
    data = arm.checkpoint_path.read_bytes()
    arm.checkpoint_path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArmStateError, match=r"checkpoint.pt is unreadable .*truncated.*Delete it"):
        arm.load_checkpoint()
    arm.summary_path.write_text('{"steps": 3, "eval/acc')
    with pytest.raises(ArmStateError, match=r"summary.json is not an arm's summary.*Delete it and re-run"):
        arm.read_summary()


def mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
        )
    except FileNotFoundError:
        return False
    return done.returncode == 0


def test_full_disk_writes_say_no_space_and_leave_whole_lines(tmp_path):
    disk = tmp_path / "disk"
    if not mount_tmpfs(disk, "256k"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        arm = ArmDir(disk / "arm")
        arm.create()
        log = RunLog(arm.path)
        log.start()
        (disk / "filler").write_bytes(b"\0" * (256 * 1024 - 3 * 4096))
        record = {"step": 0, "blob": "x" * 3000}
        with pytest.raises(
            ArmStateError, match=r"no space left on device while writing .*metrics.jsonl.*Free space"
        ):
            for step in range(100):
                log.log({**record, "step": step})
        lines = (arm.path / "metrics.jsonl").read_text().splitlines(keepends=True)
        assert lines and all(line.endswith("\n") and json.loads(line) for line in lines)  # whole lines only
        model = Tiny()
        model.big = torch.nn.Parameter(torch.zeros(100_000))
        optimizer = torch.optim.AdamW(model.parameters())
        with pytest.raises(ArmStateError, match=r"checkpoint.pt.tmp.*no space left on device"):
            arm.save_checkpoint(step=1, model=model, optimizer=optimizer, config={}, metrics_lines=[])
        assert not (arm.path / "checkpoint.pt.tmp").exists()
    finally:
        subprocess.run(["umount", str(disk)], check=False)
