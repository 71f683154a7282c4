"""An arm's checkpoint: adapter, optimizer and RNG states, the step, the config and the metrics lines up to
that step, written aside and moved into place (a run killed mid-write keeps the previous one); and the
resume rule (:func:`check_same_config`)."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from arca_sweep.arm_dir.files import ArmStateError, writing
from arca_sweep.arm_dir.names import CHECKPOINT

# Keys that may differ between an interrupted run and its resumption (none changes results): these,
# and every logger.* key, so W&B can be turned on or off for a resumed arm.
RESUME_FREE_KEYS = {
    "logger.progress",
    "threads",
    "device",
    "accept_changed_inputs",
    "credit.timeout_s",
    "data.reward_timeout_s",
}
RESUME_FREE_PREFIXES = ("logger.", "dist.")  # dist: the update is the one-process update on any world


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


def save(
    arm_path: Path,
    *,
    step: int,
    model,
    optimizer,
    config: dict,
    metrics_lines: list[str],
    fingerprint: dict | None = None,
    inputs_changed: list | None = None,
    draws: str = "row",
    adapter: dict | None = None,
    optimizer_state: dict | None = None,
) -> None:
    """Adapter, optimizer, RNG states, step, config, the inputs' fingerprints
    (:mod:`arca_sweep.arm_dir.fingerprint`), and the metrics lines of steps 0..``step``. ``adapter`` and
    ``optimizer_state``: full tensors gathered from a sharded model (default: read from ``model``)."""
    state = {
        "step": step,
        "fingerprint": fingerprint,
        "inputs_changed": list(inputs_changed or []),  # every resume on changed inputs, kept to the end
        "adapter": trainable_state(model) if adapter is None else adapter,
        "optimizer": optimizer.state_dict() if optimizer_state is None else optimizer_state,
        "draws": draws,  # the rollout engine's sampling draws (HFEngine.draws); absent before issue 22
        "rng": rng_states(),
        "config": config,
        "metrics_lines": list(metrics_lines),
    }
    tmp = arm_path / (CHECKPOINT + ".tmp")
    hint = "re-run the same command: the arm resumes from its previous checkpoint"
    try:
        with writing(tmp, hint):
            torch.save(state, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, arm_path / CHECKPOINT)
    except ArmStateError:
        tmp.unlink(missing_ok=True)  # a partial file, and the space it holds
        raise
    except RuntimeError as exc:  # torch's zip writer reports a full disk as a bad file position
        full = shutil.disk_usage(arm_path).free < 2**20  # measured before the partial file is removed
        tmp.unlink(missing_ok=True)
        cause = "no space left on device" if full else "usually a full disk"
        raise ArmStateError(
            f"could not write {tmp}: {cause} (torch: {str(exc).splitlines()[0][:200]}). Free space on "
            f"that filesystem, then {hint}."
        ) from exc


def load(path: Path) -> dict | None:
    """The checkpoint's state at ``path``, or None when there is none; :class:`ArmStateError` when unreadable."""
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


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def schema_defaults() -> dict:
    """Every key's default in the config schema (:mod:`arca_sweep.config`), flattened (``data.min_operand``)."""
    import dataclasses
    import typing

    from omegaconf import OmegaConf

    from arca_sweep.config import Config

    out = {}
    for key, hint in typing.get_type_hints(Config).items():
        if dataclasses.is_dataclass(hint):
            out.update(_flatten(OmegaConf.to_container(OmegaConf.structured(hint)), f"{key}."))
        else:
            out[key] = getattr(Config(), key)
    return out


def check_same_config(saved: dict, current: dict, out_dir: Path, *, finished: bool = False) -> None:
    """The resume rule: a checkpoint is resumed only by the config it was taken under (``saved``), but for
    :data:`RESUME_FREE_KEYS` and every ``logger.*`` key; else an :class:`ArmStateError` naming the keys.
    A key the checkpoint lacks (added to the schema since) matches when the current config holds its schema
    default: a new option's default is the behaviour of the code before it. ``finished``: the arm is done
    and ``saved`` is the config it ran; the same rule decides whether this launch may skip it as its own."""
    from arca_sweep.config import upgrade_renamed

    a, b = upgrade_renamed(_flatten(saved)), _flatten(current)
    defaults = schema_defaults()
    a.update({k: v for k, v in b.items() if k not in a and k in defaults and defaults[k] == v})
    free = [k for k in a.keys() | b.keys() if k in RESUME_FREE_KEYS or k.startswith(RESUME_FREE_PREFIXES)]
    diff = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in free)
    if not diff:
        return
    shown = ", ".join(f"{k}: {a.get(k, '(unset)')!r} there, {b.get(k, '(unset)')!r} now" for k in diff[:6])
    shown += f" and {len(diff) - 6} more" if len(diff) > 6 else ""
    if finished:
        raise ArmStateError(
            f"{out_dir} holds a finished arm of a different config ({shown}); refusing to count it as this "
            "one, and its records and .hydra/ are left as they are. Use another output dir "
            "(hydra.run.dir=... or hydra.sweep.dir=...) for this config."
        )
    raise ArmStateError(
        f"{out_dir} holds a checkpoint of a different config ({shown}); "
        "refusing to resume over it. Use another output dir (hydra.run.dir=...) or delete that one."
    )
