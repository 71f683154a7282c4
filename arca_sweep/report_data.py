"""The arms of a sweep dir as the report reads them: each arm's config, ``metrics.jsonl``,
``samples.jsonl`` and whether it finished (``summary.json``)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from arca_sweep import heatmap
from arca_sweep.report_stats import as_number, mean

REGIMES = ("uniform", "middle", "concentrated")


class NotASweepError(ValueError):
    """The directory holds no arm (no subdirectory with ``.hydra/config.yaml``)."""


# ------------------------------------------------------------------------------------------------
# Reading the arms
# ------------------------------------------------------------------------------------------------


@dataclass
class Arm:
    path: Path
    credit: str
    rank: int | str
    seed: int | str
    records: list[dict] = field(default_factory=list)  # metrics.jsonl
    samples: list[dict] = field(default_factory=list)  # samples.jsonl
    finished: bool = False  # summary.json exists

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def steps(self) -> list[dict]:
        """The training steps' records (step >= 1)."""
        return [r for r in self.records if r.get("step", 0) >= 1]

    @property
    def label(self) -> str:
        return f"{self.credit} r={self.rank}"


def _jsonl(path: Path) -> list[dict]:
    """The records of a JSONL file; a missing file or a torn last line (a running arm) is skipped."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


def load_arm(path: Path) -> Arm:
    config = yaml.safe_load((path / ".hydra" / "config.yaml").read_text()) or {}
    return Arm(
        path=path,
        credit=str((config.get("credit") or {}).get("name", "?")),
        rank=(config.get("rank") or {}).get("r", "?"),
        seed=config.get("seed", "?"),
        records=_jsonl(path / "metrics.jsonl"),
        samples=_jsonl(path / "samples.jsonl"),
        finished=(path / "summary.json").exists(),
    )


def load_arms(sweep_dir: Path) -> list[Arm]:
    """Every arm under ``sweep_dir``, sorted by credit, rank, seed, name."""
    if not sweep_dir.is_dir():
        raise NotASweepError(f"{sweep_dir} is not a directory")
    arms = [load_arm(p) for p in sorted(sweep_dir.iterdir()) if (p / ".hydra" / "config.yaml").is_file()]
    if not arms:
        raise NotASweepError(
            f"{sweep_dir} is not a sweep dir: no arm subdirectory with .hydra/config.yaml "
            "(pass the hydra.sweep.dir of a multirun, e.g. outputs/multirun/<date>/<time>)"
        )
    return sorted(arms, key=lambda a: (a.credit, _rank_key(a.rank), str(a.seed), a.name))


def _rank_key(rank) -> tuple:
    return (0, rank, "") if isinstance(rank, int | float) else (1, 0, str(rank))


def run_mean(arm: Arm, key: str) -> float | None:
    """Mean of ``key`` over the arm's training steps (null values skipped)."""
    return mean(r.get(key) for r in arm.steps)


def accuracy(arm: Arm, which: str) -> float | None:
    """``initial``: eval accuracy of the first record holding one (step 0); ``final``: of the last."""
    evals = [v for v in (as_number(r.get("eval/accuracy")) for r in arm.records) if v is not None]
    if not evals:
        return None
    return evals[0] if which == "initial" else evals[-1]


def groups(arms: list[Arm]) -> dict[tuple, list[Arm]]:
    """Arms by (credit, rank), in sorted order (arms are already sorted)."""
    out: dict[tuple, list[Arm]] = {}
    for arm in arms:
        out.setdefault((arm.credit, arm.rank), []).append(arm)
    return out


def ranks_of(arms: list[Arm]) -> list:
    return sorted({a.rank for a in arms}, key=_rank_key)


def signals_of(arms: list[Arm]) -> list[str]:
    """Every signal with shadow diagnostics in the arms' metrics, in display order."""
    names = {
        key.split("/")[1]
        for arm in arms
        for r in arm.steps
        for key in r
        if key.startswith("shadow/") and key.endswith("/regime/uniform")
    }
    return heatmap.ordered_signals(names)


def shadow_means(arms: list[Arm], signal: str) -> dict[str, float | None]:
    """Mean over all steps of all ``arms`` of the signal's shadow regime shares, Gini and ETR."""
    keys = {r: f"shadow/{signal}/regime/{r}" for r in REGIMES}
    keys |= {"gini": f"shadow/{signal}/gini/mean", "etr": f"shadow/{signal}/etr/mean"}
    return {name: mean(r.get(key) for arm in arms for r in arm.steps) for name, key in keys.items()}
