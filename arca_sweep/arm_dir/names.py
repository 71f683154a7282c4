"""The names of an arm dir's files (the module docstring of :mod:`arca_sweep.arm_dir` says what each holds)."""

from __future__ import annotations

from pathlib import Path

CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
LOCK = "run.lock"
ADAPTER = "adapter"
WANDB_RUN_ID = "wandb_run_id.txt"
EVAL_DIR = "eval"


def results_path(arm_dir: Path, step: int) -> Path:
    """Where an arm's per-problem results of the eval at ``step`` live: ``eval/step_<step>.jsonl``."""
    return Path(arm_dir) / EVAL_DIR / f"step_{step}.jsonl"
