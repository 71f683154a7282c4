"""The arm dir's lock: one run per arm dir (see :class:`ArmLock`)."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
import warnings
from pathlib import Path

from arca_sweep.errors import UserError


class ArmLocked(UserError):
    """Another run holds the arm dir."""


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
