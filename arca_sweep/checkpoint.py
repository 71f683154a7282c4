"""Atomic checkpoints: adapter, optimizer, RNG states, step (the data position is the step).

Written to a temporary file and moved into place, so a run killed mid-write keeps the previous
checkpoint. Resuming restores every RNG stream, so a resumed run continues exactly as an
uninterrupted one (bit for bit on CPU).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

NAME = "checkpoint.pt"


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


def save(out_dir: Path, *, step: int, model, optimizer, config: dict) -> None:
    state = {
        "step": step,
        "adapter": trainable_state(model),
        "optimizer": optimizer.state_dict(),
        "rng": rng_states(),
        "config": config,
    }
    tmp = out_dir / (NAME + ".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out_dir / NAME)


def load(out_dir: Path) -> dict | None:
    path = out_dir / NAME
    return torch.load(path, weights_only=False) if path.exists() else None


def restore(state: dict, model, optimizer) -> int:
    """Load adapter, optimizer and RNG states; return the step the checkpoint was taken after."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state["adapter"].items():
            params[name].copy_(value)
    optimizer.load_state_dict(state["optimizer"])
    set_rng_states(state["rng"])
    return state["step"]
