"""An arm's output directory, and everything that reads or writes its run state.

    metrics.jsonl   one JSON object per step, each step exactly once (step 0: the initial eval)
    samples.jsonl   sample rollouts with every signal's token weights
    checkpoint.pt   adapter, optimizer, RNG states, step (the data position is the step)
    summary.json    written last: its presence means the arm is finished

Checkpoints are written to a temporary file and moved into place, so a run killed mid-write keeps the
previous checkpoint. Resuming restores every RNG stream, so a resumed run continues exactly as an
uninterrupted one (bit for bit on CPU); the records past the checkpoint's step are dropped first.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from arca_sweep.loggers import _clean

CHECKPOINT = "checkpoint.pt"
SUMMARY = "summary.json"
METRICS = "metrics.jsonl"
SAMPLES = "samples.jsonl"


# ---------------------------------------------------------------------------- records


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


class RunLog:
    """An arm's logs: ``metrics.jsonl`` and ``samples.jsonl`` always, first; then the tracker, if any."""

    def __init__(self, out_dir: Path, tracker=None):
        self.metrics = JsonlLogger(out_dir / METRICS)
        self.samples = JsonlLogger(out_dir / SAMPLES)
        self.tracker = tracker

    def truncate_after(self, step: int) -> None:
        self.metrics.truncate_after(step)
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
    """One arm's directory: its checkpoint, records and summary."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.checkpoint_path = self.path / CHECKPOINT
        self.summary_path = self.path / SUMMARY

    def create(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def read_summary(self) -> dict | None:
        """The finished arm's summary, or None while the arm is unfinished."""
        if not self.summary_path.exists():
            return None
        return json.loads(self.summary_path.read_text())

    def write_summary(self, summary: dict) -> None:
        self.summary_path.write_text(json.dumps(summary, indent=1) + "\n")

    def save_checkpoint(self, *, step: int, model, optimizer, config: dict) -> None:
        state = {
            "step": step,
            "adapter": trainable_state(model),
            "optimizer": optimizer.state_dict(),
            "rng": rng_states(),
            "config": config,
        }
        tmp = self.path / (CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, self.checkpoint_path)

    def load_checkpoint(self) -> dict | None:
        path = self.checkpoint_path
        return torch.load(path, weights_only=False) if path.exists() else None
