"""An arm's output directory, and everything that reads or writes its run state.

    metrics.jsonl   one JSON object per step, each step exactly once (step 0: the initial eval)
    samples.jsonl   sample rollouts with every signal's token weights
    checkpoint.pt   adapter, optimizer, RNG states, step (the data position is the step)
    summary.json    written last: its presence means the arm is finished
    run.lock        held for the whole run: pid, host, SLURM job id of the run using the dir

Faults it survives, each tested in ``tests/test_faults.py`` with real processes and files:

- Two runs in one dir: the second refuses at once (:class:`ArmLock`). The lock is a file created with
  ``link()`` (atomic on NFS too) and also ``flock``-ed where the filesystem supports it. A lock left by a
  dead process on this host, or by an earlier incarnation of this SLURM job (a requeue keeps the job id),
  is taken over; any other is refused, naming its owner and how to clear it.
- Kill -9 at any moment: each record line is one ``write()`` of the whole line, and a failed write
  (disk full) is truncated back, so a line is whole or absent. Checkpoints are written to a temporary
  file and moved into place, so a run killed mid-write keeps the previous one.
- A torn, truncated or deleted ``metrics.jsonl``: the checkpoint carries the metrics lines up to its
  step, and resuming rewrites the file from them (with a warning when they differed), so the record
  never has a hole. ``samples.jsonl`` is illustrative and not carried: a torn line is dropped with a
  warning.
- Corrupt or unwritable state (a truncated ``checkpoint.pt``, an invalid ``summary.json``, a full disk):
  one :class:`ArmStateError` naming the file, what is wrong and what to do.

Resuming restores every RNG stream, so a resumed run continues exactly as an uninterrupted one (bit for
bit on CPU).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import random
import shutil
import socket
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from arca_sweep.errors import UserError
from arca_sweep.loggers import _clean

CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
LOCK = "run.lock"


class ArmStateError(UserError):
    """The arm dir's state is damaged or cannot be written; the message names the file and the fix."""


class ArmLocked(UserError):
    """Another run holds the arm dir."""


@contextmanager
def writing(path: Path, resume_hint: str = "re-run the same command: the arm resumes from its checkpoint"):
    """Turn an OSError while writing ``path`` into an :class:`ArmStateError` that says what to do."""
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ArmStateError(
                f"no space left on device while writing {path} ({exc.strerror}). Free space on that "
                f"filesystem (or raise the quota), then {resume_hint}."
            ) from exc
        raise ArmStateError(
            f"could not write {path}: {exc.strerror or exc}. Fix that, then {resume_hint}."
        ) from exc


# ---------------------------------------------------------------------------- the lock


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        return True
    return True


def _started_after(pid: int, when: float | None) -> bool:
    """Whether process ``pid`` started after ``when`` (a Unix time), as far as /proc tells."""
    try:
        return when is not None and os.stat(f"/proc/{pid}").st_ctime > when + 1.0
    except OSError:
        return False


_HELD: set[str] = set()  # lock paths this process holds (a dead run of this same pid is not us)


class ArmLock:
    """An exclusive lock on an arm dir for the whole run (see the module docstring)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.fd: int | None = None
        self.owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "time": time.time(),
        }
        self.text = json.dumps(self.owner) + "\n"

    def __enter__(self) -> ArmLock:
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def acquire(self) -> None:
        for _ in range(5):
            if self._create():
                _HELD.add(str(self.path))
                return
            holder_text = self._read()
            stale = self._stale_reason(holder_text)
            if stale is None:
                raise ArmLocked(self._refusal(holder_text))
            if self._take_over(holder_text):
                warnings.warn(f"taking over the stale lock {self.path}: {stale}", stacklevel=2)
        raise ArmLocked(f"could not take the lock {self.path}: other runs keep racing for it")

    def release(self) -> None:
        if self.fd is None:
            return
        if self._read() == self.text:
            self.path.unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None
        _HELD.discard(str(self.path))

    def _create(self) -> bool:
        """Create the lock file holding our owner record, atomically; False if it exists."""
        tmp = self.path.with_name(f".{self.path.name}.{self.owner['host']}.{os.getpid()}")
        tmp.write_text(self.text)
        try:
            os.link(tmp, self.path)  # atomic, and the file is whole from its first moment
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: exclusive create, then write
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            os.write(fd, self.text.encode())
            os.close(fd)
        finally:
            tmp.unlink(missing_ok=True)
        self.fd = os.open(self.path, os.O_RDWR)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # no flock on this filesystem: the pid/host record alone decides
            pass
        return True

    def _read(self) -> str | None:
        try:
            return self.path.read_text()
        except (FileNotFoundError, UnicodeDecodeError):
            return None

    def _stale_reason(self, holder_text: str | None) -> str | None:
        """Why the lock's holder cannot be running any more, or None if it may be."""
        if holder_text is None:
            return "it vanished"
        if self._flock_held():
            return None  # a live holder on a filesystem with flock, whatever its pid looks like from here
        try:
            holder = json.loads(holder_text)
            pid, host, job = int(holder["pid"]), holder["host"], holder.get("slurm_job_id")
        except (ValueError, KeyError, TypeError):
            return "its owner record is unreadable"
        me = self.owner
        if job is not None and job == me["slurm_job_id"] and (host != me["host"] or not _pid_alive(pid)):
            return f"SLURM job {job} was requeued: its earlier run (pid {pid} on {host}) is gone"
        if host != me["host"]:
            return None
        if not _pid_alive(pid):
            return f"pid {pid} on {host} is not running"
        if pid == os.getpid() and str(self.path) not in _HELD:
            return f"pid {pid} is this process, which no longer holds it"
        if _started_after(pid, holder.get("time")):
            return f"pid {pid} is a newer process than the lock's (the pid was reused)"
        return None

    def _flock_held(self) -> bool:
        """True when another open file holds a flock on the lock file (False where flock is unsupported)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            return False
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return False
        finally:
            os.close(fd)

    def _take_over(self, holder_text: str | None) -> bool:
        """Remove the stale lock, unless another run replaced it meanwhile."""
        aside = self.path.with_name(f".{self.path.name}.stale.{self.owner['host']}.{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False
        if aside.read_text() != holder_text:  # a racer's fresh lock: put it back
            try:
                os.link(aside, self.path)
            except OSError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def _refusal(self, holder_text: str | None) -> str:
        try:
            h = json.loads(holder_text or "")
            who = f"pid {h['pid']} on host {h['host']}"
            who += f", SLURM job {h['slurm_job_id']}" if h.get("slurm_job_id") else ""
            who += f", started {h.get('started', '?')}"
        except (ValueError, KeyError, TypeError):
            who = "an unknown run"
        return (
            f"the arm dir {self.path.parent} is in use by another run ({who}); refusing to run a second one "
            "in it. Wait for that run to finish or stop it. If it is not running any more (e.g. it was "
            f"killed on another host), delete {self.path} and re-run."
        )


# ---------------------------------------------------------------------------- records


def read_lines(path: Path) -> list[str]:
    """The whole JSON lines of a JSONL file. A torn last line (no newline, or not JSON: a writer died or
    the disk filled mid-line) is dropped with a warning; a bad line before the end is an error."""
    if not path.exists():
        return []
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ArmStateError(f"{path} is not UTF-8 text ({exc.reason}): delete it and re-run") from None
    lines = text.split("\n")
    whole, last = lines[:-1], lines[-1]  # ``last`` is "" when the file ends with a newline
    good = []
    for number, line in enumerate(whole, 1):
        if not line.strip():
            continue
        try:
            json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if number == len(whole) and not last:
                last = line  # a garbled final line: torn as well
                break
            raise ArmStateError(
                f"{path}:{number} is not a JSON record (the file was edited or written by two runs): "
                "delete the file and re-run; the checkpoint restores the metrics up to its step"
            ) from None
        good.append(line)
    if last.strip():
        warnings.warn(f"{path}: dropped a torn last line ({len(last)} characters)", stacklevel=2)
    return good


class JsonlLogger:
    """A JSONL file of records, each line written whole or not at all (one ``write()`` per line; a
    failed write is truncated back). ``fsync`` makes each line durable, for the metrics."""

    def __init__(self, path: Path, fsync: bool = False):
        self.path, self.fsync = path, fsync
        self.lines: list[str] = []  # the lines this run's record holds (written or restored)

    def records(self) -> list[dict]:
        return [json.loads(line) for line in self.lines]

    def truncate_after(self, step: int) -> None:
        """Keep only the records of steps <= ``step`` (resuming from the checkpoint of ``step``)."""
        self.restore([line for line in read_lines(self.path) if json.loads(line)["step"] <= step])

    def restore(self, lines: list[str]) -> None:
        """Make the file hold exactly ``lines`` (atomically: written aside, then moved into place)."""
        tmp = self.path.with_suffix(".tmp")
        with writing(tmp):
            tmp.write_text("".join(line + "\n" for line in lines))
            tmp.replace(self.path)
        self.lines = list(lines)

    def log(self, metrics: dict) -> None:
        line = json.dumps({k: _clean(v) for k, v in metrics.items()})
        data = (line + "\n").encode()
        with writing(self.path):
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                size = os.fstat(fd).st_size
                try:
                    if os.write(fd, data) != len(data):  # a short write: the disk filled mid-line
                        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                except OSError:
                    os.ftruncate(fd, size)  # the line is whole or absent
                    raise
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        self.lines.append(line)


class RunLog:
    """An arm's logs: ``metrics.jsonl`` and ``samples.jsonl`` always, first; then the tracker, if any."""

    def __init__(self, out_dir: Path, tracker=None):
        self.metrics = JsonlLogger(out_dir / METRICS, fsync=True)
        self.samples = JsonlLogger(out_dir / SAMPLES)
        self.tracker = tracker

    def start(self) -> None:
        """A fresh arm: empty records."""
        self.metrics.restore([])
        self.samples.restore([])

    def resume(self, step: int, metrics_lines: list[str] | None) -> None:
        """Records up to ``step``: the metrics from the checkpoint's copy (``metrics_lines``), or, for a
        checkpoint without one, from the file, which must then hold every step 0..``step``."""
        on_disk = [line for line in read_lines(self.metrics.path) if json.loads(line)["step"] <= step]
        if metrics_lines is None:
            steps = [json.loads(line)["step"] for line in on_disk]
            if steps != list(range(step + 1)):
                raise ArmStateError(
                    f"{self.metrics.path} holds steps {_ranges(steps)} but the checkpoint is at step {step}, and "
                    "this checkpoint (from an older version) carries no copy of the records to restore them "
                    "from. Delete the arm dir to run the arm again from step 0."
                )
            metrics_lines = on_disk
        elif on_disk != metrics_lines:
            warnings.warn(
                f"{self.metrics.path} held {len(on_disk)} records of steps 0..{step} that differ from the "
                f"checkpoint's {len(metrics_lines)}: restored them from the checkpoint",
                stacklevel=2,
            )
        self.metrics.restore(metrics_lines)
        self.samples.truncate_after(step)

    def log(self, metrics: dict) -> None:
        self.metrics.log(metrics)
        if self.tracker:
            self.tracker.log(metrics)

    def log_samples(self, step: int, samples: list[dict]) -> None:
        for sample in samples:
            self.samples.log(sample)
        if self.tracker:
            self.tracker.log_samples(step, samples)

    def finish(self, summary: dict) -> None:
        if self.tracker:
            self.tracker.finish(summary)


def _ranges(steps: list[int]) -> str:
    return f"{steps[0]}..{steps[-1]} ({len(steps)} of them)" if steps else "none"


# ---------------------------------------------------------------------------- checkpoint


def rng_states() -> dict:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def restore(state: dict, model, optimizer) -> int:
    """Load adapter, optimizer and RNG states; return the step the checkpoint was taken after."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["adapter"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    set_rng_states(state["rng"])
    return state["step"]


# ---------------------------------------------------------------------------- the directory


class ArmDir:
    """One arm's directory: its lock, checkpoint, records and summary."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.checkpoint_path = self.path / CHECKPOINT
        self.summary_path = self.path / SUMMARY

    def create(self) -> None:
        with writing(self.path, "re-run"):
            self.path.mkdir(parents=True, exist_ok=True)

    def lock(self) -> ArmLock:
        return ArmLock(self.path / LOCK)

    def read_summary(self) -> dict | None:
        """The finished arm's summary, or None while the arm is unfinished."""
        if not self.summary_path.exists():
            return None
        try:
            return json.loads(self.summary_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArmStateError(
                f"{self.summary_path} is not valid JSON ({exc}): the arm's last write was cut short. Delete "
                "it and re-run the same command: the arm resumes from its checkpoint and writes it again."
            ) from None

    def write_summary(self, summary: dict) -> None:
        tmp = self.summary_path.with_suffix(".tmp")
        with writing(self.summary_path):
            tmp.write_text(json.dumps(summary, indent=1) + "\n")
            tmp.replace(self.summary_path)

    def save_checkpoint(self, *, step: int, model, optimizer, config: dict, metrics_lines: list[str]) -> None:
        """Adapter, optimizer, RNG states, step, config, and the metrics lines of steps 0..``step``."""
        state = {
            "step": step,
            "adapter": trainable_state(model),
            "optimizer": optimizer.state_dict(),
            "rng": rng_states(),
            "config": config,
            "metrics_lines": list(metrics_lines),
        }
        tmp = self.path / (CHECKPOINT + ".tmp")
        hint = "re-run the same command: the arm resumes from its previous checkpoint"
        try:
            with writing(tmp, hint):
                torch.save(state, tmp)
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, self.checkpoint_path)
        except ArmStateError:
            tmp.unlink(missing_ok=True)  # a partial file, and the space it holds
            raise
        except RuntimeError as exc:  # torch's zip writer reports a full disk as a bad file position
            full = shutil.disk_usage(self.path).free < 2**20  # measured before the partial file is removed
            tmp.unlink(missing_ok=True)
            cause = "no space left on device" if full else "usually a full disk"
            raise ArmStateError(
                f"could not write {tmp}: {cause} (torch: {str(exc).splitlines()[0][:200]}). Free space on "
                f"that filesystem, then {hint}."
            ) from exc

    def load_checkpoint(self) -> dict | None:
        """The checkpoint's state, or None when there is none; :class:`ArmStateError` when unreadable."""
        path = self.checkpoint_path
        if not path.exists():
            return None
        try:
            state = torch.load(path, weights_only=False)
            missing = {"step", "adapter", "optimizer", "rng", "config"} - set(state)
        except Exception as exc:  # zip, pickle and EOF errors of a truncated or overwritten file
            cause = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            raise ArmStateError(
                f"{path} is unreadable ({cause}): it was truncated or overwritten. Delete it to run the arm "
                "again from step 0 (metrics.jsonl is rewritten then), or restore a copy of it."
            ) from None
        if missing:
            raise ArmStateError(f"{path} lacks {sorted(missing)}: not an arca-sweep checkpoint. Delete it.")
        return state

    def save_adapter(self, model) -> None:
        with writing(self.path / "adapter"):
            model.save_pretrained(self.path / "adapter")
