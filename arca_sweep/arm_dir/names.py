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


def unquote(override: str) -> str:
    """``rank='16'`` -> ``rank=16``: an override without its quotes (Hydra lists the group choices that
    :func:`arca_sweep.main.quote_numeric_choices` quoted as ``rank='16'``), for names shown to people and
    for comparing two launches' overrides."""
    return str(override).replace("'", "").replace('"', "")


def results_path(arm_dir: Path, step: int, eval_set: str | None = None) -> Path:
    """Where an arm's per-problem results of the eval at ``step`` live: ``eval/step_<step>.jsonl`` for the run's
    own eval rows, ``eval/<eval_set>/step_<step>.jsonl`` for an ``eval.sets`` entry."""
    folder = Path(arm_dir) / EVAL_DIR
    return (folder if eval_set is None else folder / eval_set) / f"step_{step}.jsonl"
