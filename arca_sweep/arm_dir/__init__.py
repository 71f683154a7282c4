"""An arm's output directory, and everything that reads or writes its run state.

    metrics.jsonl   one JSON object per step, each step exactly once (step 0: the initial eval)
    samples.jsonl   sample rollouts with every signal's token weights
    checkpoint.pt   adapter, optimizer, RNG states, step (the data position is the step)
    summary.json    written last: its presence means the arm is finished
    run.lock        held for the whole run: pid, host, SLURM job id of the run using the dir
    eval/step_<n>.jsonl   every problem's result of the eval at step n (:func:`results_path`)
    adapter/        the final peft adapter
    wandb_run_id.txt      with ``logger=wandb``: the W&B run's id, so a resumed arm continues that run

Faults it survives, each tested in ``tests/test_faults.py`` with real processes and files:

- Two runs in one dir: the second refuses at once (:class:`ArmLock`). The lock is a file created with
  ``link()`` (atomic on NFS too) and also ``flock``-ed where the filesystem supports it. A lock left by a
  dead process on this host, or by an earlier incarnation of this SLURM job (a requeue keeps the job id),
  is taken over; any other is refused, naming its owner and how to clear it.
- Kill -9 at any moment: each record line is one ``write()`` of the whole line, and a failed write
  (disk full) is truncated back, so a line is whole or absent. Checkpoints are written to a temporary
  file and moved into place, so a run killed mid-write keeps the previous one.
- A torn, truncated or deleted ``metrics.jsonl``: the checkpoint carries the metrics lines up to its
  step, and resuming rewrites the file from them (with a warning when they differed), so the record
  never has a hole. ``samples.jsonl`` is illustrative and not carried: a torn line is dropped with a
  warning.
- Corrupt or unwritable state (a truncated ``checkpoint.pt``, an invalid ``summary.json``, a full disk):
  one :class:`ArmStateError` naming the file, what is wrong and what to do.

Resuming restores every RNG stream, so a resumed run continues exactly as an uninterrupted one (bit for
bit on CPU).

The modules: :mod:`~arca_sweep.arm_dir.names` (the files' names), :mod:`~arca_sweep.arm_dir.files` (writing
and reading them), :mod:`~arca_sweep.arm_dir.lock`, :mod:`~arca_sweep.arm_dir.records` (metrics and
samples), :mod:`~arca_sweep.arm_dir.checkpoint`; :class:`ArmDir` ties them to one directory.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from arca_sweep.arm_dir.files import ArmStateError, atomic_write, read_jsonl, read_lines, writing
from arca_sweep.arm_dir.lock import ArmLock, ArmLocked
from arca_sweep.arm_dir.names import (
    ADAPTER,
    CHECKPOINT,
    EVAL_DIR,
    LOCK,
    METRICS,
    SAMPLES,
    SUMMARY,
    WANDB_RUN_ID,
    results_path,
    unquote,
)
from arca_sweep.arm_dir.records import JsonlLogger, RunLog, json_safe

RECORDS = (METRICS, SAMPLES, EVAL_DIR, ADAPTER)  # what a run writes into its dir before its summary

__all__ = [
    "ADAPTER",
    "CHECKPOINT",
    "EVAL_DIR",
    "LOCK",
    "METRICS",
    "SAMPLES",
    "SUMMARY",
    "WANDB_RUN_ID",
    "atomic_write",
    "check_same_config",
    "ArmDir",
    "ArmLock",
    "ArmLocked",
    "ArmStateError",
    "JsonlLogger",
    "RunLog",
    "json_safe",
    "read_jsonl",
    "read_lines",
    "restore",
    "results_path",
    "rng_states",
    "set_rng_states",
    "trainable_state",
    "writing",
]

_CHECKPOINT_NAMES = {"check_same_config", "restore", "rng_states", "set_rng_states", "trainable_state"}


def __getattr__(name: str):
    """The checkpoint's names, imported on first use: they need torch, which the readers of an arm
    (the report, the sweep table, the progress line) do not."""
    if name in _CHECKPOINT_NAMES:
        return getattr(_checkpoint(), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _checkpoint():
    return importlib.import_module("arca_sweep.arm_dir.checkpoint")


class ArmDir:
    """One arm's directory: its lock, checkpoint, records and summary."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.checkpoint_path = self.path / CHECKPOINT
        self.summary_path = self.path / SUMMARY

    def create(self) -> None:
        with writing(self.path, "re-run"):
            self.path.mkdir(parents=True, exist_ok=True)

    def lock(self) -> ArmLock:
        return ArmLock(self.path / LOCK)

    def read_summary(self) -> dict | None:
        """The finished arm's summary, or None while the arm is unfinished."""
        if not self.summary_path.exists():
            return None
        try:
            summary = json.loads(self.summary_path.read_text())
            if not isinstance(summary, dict) or not isinstance(summary.get("config", {}), dict):
                raise ValueError(f"a JSON {type(summary).__name__} where an arm's summary object belongs")
            return summary
        except (UnicodeDecodeError, ValueError) as exc:  # json.JSONDecodeError is a ValueError
            raise ArmStateError(
                f"{self.summary_path} is not an arm's summary ({exc}): the arm's last write was cut short or "
                "the file was edited. Delete it and re-run the same command: the arm resumes from its "
                "checkpoint and writes it again."
            ) from None

    def write_summary(self, summary: dict) -> None:
        with writing(self.summary_path):
            atomic_write(self.summary_path, json.dumps(summary, indent=1) + "\n")

    def save_checkpoint(self, **state) -> None:
        """:func:`arca_sweep.arm_dir.checkpoint.save` into this dir (its keyword arguments: step, model,
        optimizer, config, metrics lines, the inputs' fingerprints and every accepted change of them)."""
        _checkpoint().save(self.path, **state)

    def load_checkpoint(self) -> dict | None:
        """The checkpoint's state, or None when there is none; :class:`ArmStateError` when unreadable."""
        return _checkpoint().load(self.checkpoint_path)

    def check_same_overrides(self, overrides: list[str]) -> None:
        """A finished arm whose summary and checkpoint hold no config (an older version's arm whose
        checkpoint was deleted): this launch may skip it only if its ``.hydra/overrides.yaml`` lists the
        same result-changing overrides; with no record of either, an :class:`ArmStateError`."""
        before = self.launched_overrides()
        if before is None:
            raise ArmStateError(
                f"{self.path} holds a finished arm but no record of its config (no config in summary.json, no "
                "checkpoint.pt, no readable .hydra/overrides.yaml), so this launch cannot tell whether it is "
                "the same arm. Use another output dir (hydra.run.dir=...), or delete summary.json to run it "
                "again."
            )
        if not same_results(before, overrides):
            raise ArmStateError(
                f"{self.path} holds a finished arm of other overrides ({before!r}, this launch's {overrides!r}); "
                "refusing to count it as this one. Use another output dir (hydra.run.dir=...)."
            )

    def check_fresh(self, overrides: list[str]) -> None:
        """Before a run starts at step 0 in a dir with no checkpoint and no summary: records already there
        (``metrics.jsonl``, ``samples.jsonl``, ``eval/``, ``adapter/``) are replaced only when they are this
        arm's own, i.e. a run of the same overrides killed before its first checkpoint. Otherwise an
        :class:`ArmStateError` naming them: a dir that is not an arm, or another arm's partial records."""
        present = [n for n in RECORDS if (self.path / n).exists()]
        if not present:
            return
        files = ", ".join(str(self.path / n) for n in present)
        if not (self.path / ".hydra" / "overrides.yaml").is_file():
            raise ArmStateError(
                f"{self.path} already holds {files} but is not an arca-sweep arm dir (no .hydra/overrides.yaml); "
                "refusing to overwrite them. Use another output dir (hydra.run.dir=...) or move them away."
            )
        before = self.launched_overrides()
        if before is None or not same_results(before, overrides):
            raise ArmStateError(
                f"{self.path} holds the partial records of another run ({files}; its overrides "
                f"{before!r}, this one's {overrides!r}) and no checkpoint to resume; refusing to overwrite "
                "them. Use another output dir (hydra.run.dir=...) or delete that one."
            )
        import warnings

        warnings.warn(
            f"{self.path}: the same arm was stopped before its first checkpoint; starting it again from "
            f"step 0 (its partial records are replaced: {files})",
            stacklevel=2,
        )

    def is_empty(self) -> bool:
        """No arm here yet: no ``.hydra/`` and none of an arm's records (Hydra's own log aside)."""
        return not any((self.path / n).exists() for n in (".hydra", *RECORDS, SUMMARY, CHECKPOINT))

    def launched_overrides(self) -> list[str] | None:
        """The overrides ``.hydra/overrides.yaml`` lists, or None when it is missing or not a list."""
        try:
            import yaml

            listed = yaml.safe_load((self.path / ".hydra" / "overrides.yaml").read_text())
        except Exception:  # a missing file, yaml's errors, bad bytes
            return None
        return [str(o) for o in listed] if isinstance(listed, list) else None

    def adopt_launch_record(self, staged: Path | None) -> None:
        """Make this launch's ``.hydra`` files (written by Hydra to ``staged``) the arm's ``.hydra/``."""
        if staged is None or not Path(staged).is_dir():
            return
        target = self.path / ".hydra"
        with writing(target, "re-run"):
            target.mkdir(exist_ok=True)
            for f in Path(staged).iterdir():
                atomic_write(target / f.name, f.read_text())

    def discard_launch_record(self, staged: Path | None) -> None:
        """Remove the launch's staged ``.hydra`` files (adopted or refused), and their parent when empty."""
        if staged is None:
            return
        import shutil

        shutil.rmtree(staged, ignore_errors=True)
        try:
            Path(staged).parent.rmdir()  # .hydra.launch/, unless another launch is staging there
        except OSError:
            pass

    def save_adapter(self, model, state_dict: dict | None = None) -> None:
        """The peft adapter; ``state_dict``: its weights gathered whole from a sharded model."""
        with writing(self.path / ADAPTER):
            model.save_pretrained(
                self.path / ADAPTER, **({} if state_dict is None else {"state_dict": state_dict})
            )


def same_results(a: list[str], b: list[str]) -> bool:
    """Whether two launches' overrides are the same arm: equal once unquoted, but for the keys that cannot
    change results (:data:`~arca_sweep.arm_dir.checkpoint.RESUME_FREE_KEYS`, ``logger``/``logger.*``)."""
    from arca_sweep.arm_dir.checkpoint import RESUME_FREE_KEYS, RESUME_FREE_PREFIXES

    def kept(overrides: list[str]) -> list[str]:
        keys = [(o, unquote(o).split("=", 1)[0].lstrip("+~")) for o in overrides]
        return sorted(
            unquote(o)
            for o, k in keys
            if k not in RESUME_FREE_KEYS and not k.startswith(RESUME_FREE_PREFIXES) and k != "logger"
        )

    return kept(a) == kept(b)
