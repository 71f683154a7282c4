"""Where metrics go. ``metrics.jsonl`` in the arm's output dir is always written first: one JSON
object per step, each step exactly once (a resumed run first drops lines past its checkpoint).

Metric namespace (stable; see README "Metrics"):
``reward/*``, ``loss``, ``grad_norm``, ``data/batch_hash``, ``credit/*`` (the training signal's
weights), ``shadow/<signal>/*`` (every signal's weights from the same passes), ``rollout/*``,
``perf/*``, ``eval/*``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def _clean(value):
    """JSON-safe: NaN and inf become null (an undefined statistic, e.g. Spearman of a constant row)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class JsonlLogger:
    def __init__(self, path: Path):
        self.path = path

    def records(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        """Keep only the records of steps <= ``step`` (resuming from the checkpoint of ``step``)."""
        kept = [r for r in self.records() if r["step"] <= step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(self.path)

    def log(self, metrics: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({k: _clean(v) for k, v in metrics.items()}) + "\n")
            f.flush()
