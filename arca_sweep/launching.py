"""Arms under a sweep launcher (``hydra/launcher=slurm`` or ``local``, or Hydra's default): a failed arm
is named, with its log.

Hydra 1.3 runs an arm inside ``run_job``, which catches the arm's exception and hands it back to the
sweep as the arm's result. So the arm's own log (submitit's ``<job>_<task>_log.out``) shows no error at
all, and the sweep, once every arm of the batch is done, re-raises the first failure, naming its
overrides but no log. :func:`name_failed_arm` logs the traceback in the arm first and raises
:class:`ArmFailed`, whose message names the arm, its dir and its log; that message is what the multirun
prints before it exits non-zero.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


class ArmFailed(RuntimeError):
    """An arm of a sweep raised; the message names the arm, its dir, its log and the original error."""


def arm_log_path(out_dir: Path, job_name: str) -> Path:
    """Where this arm's log is: submitit's ``<job>_<task>_log.out`` when it runs as a submitit job
    (its stdout; Hydra's log records and the traceback logged on failure go there), else Hydra's
    ``<arm dir>/<job name>.log``."""
    if os.environ.get("SUBMITIT_EXECUTOR"):
        import submitit

        return Path(submitit.JobEnvironment().paths.stdout)
    return out_dir / f"{job_name}.log"


@contextmanager
def name_failed_arm(out_dir: Path, job_name: str) -> Iterator[None]:
    """Run an arm; if it raises, log the traceback to the arm's log and raise :class:`ArmFailed`.

    Only ``Exception`` is caught: submitit's requeue on preemption exits with ``SystemExit``, which
    must pass through untouched."""
    try:
        yield
    except Exception as e:
        log_path = arm_log_path(out_dir, job_name)
        log.exception("arm %s failed", out_dir.name)
        raise ArmFailed(
            f"arm {out_dir.name} failed: {type(e).__name__}: {e}\n  arm dir: {out_dir}\n  log: {log_path}"
        ) from e
