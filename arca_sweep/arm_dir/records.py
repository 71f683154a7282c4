"""An arm's records: ``metrics.jsonl`` and ``samples.jsonl``, each line written whole or not at all, and
their restoration on resume."""

from __future__ import annotations

import errno
import json
import math
import os
import warnings
from pathlib import Path

from arca_sweep.arm_dir.files import ArmStateError, atomic_write, read_lines, temporary, writing
from arca_sweep.arm_dir.names import METRICS, SAMPLES


def json_safe(value):
    """JSON-safe: NaN and inf become null (an undefined statistic, e.g. Spearman of a constant row)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


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
        with writing(temporary(self.path)):
            atomic_write(self.path, "".join(line + "\n" for line in lines))
        self.lines = list(lines)

    def log(self, metrics: dict) -> None:
        line = json.dumps({k: json_safe(v) for k, v in metrics.items()})
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
