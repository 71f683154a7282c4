"""The names of an arm dir's files (the module docstring of :mod:`arca_sweep.arm_dir` says what each holds)."""

from __future__ import annotations

CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"
LOCK = "run.lock"
