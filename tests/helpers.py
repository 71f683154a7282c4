"""What the tests share: the repository root, the one way to run a command-line entry point in a child
process, and the checks of an arm dir's files (fixtures live in ``tests/conftest.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEP_KEYS = [
    "step",
    "data/batch_hash",
    "reward/mean",
    "reward/frac_zero_std",
    "loss",
    *[f"credit/{m}/{s}" for m in ("gini", "etr") for s in ("mean", "p10", "p50", "p90")],
    "credit/top5_mass/mean",
    "credit/regime/uniform",
    "credit/regime/middle",
    "credit/regime/concentrated",
    "credit/position/first5",
    "credit/position/last5",
    "credit/position/format",
    *[
        f"shadow/{sig}/{k}"
        for sig in ("uniform", "surprisal", "entropy", "divergence", "arca")
        for k in ("gini/mean", "etr/mean", "spearman")
    ],
    "rollout/logp_diff_mean",
    "rollout/logp_diff_max",
    "perf/rollout_s",
    "perf/learner_s",
    "perf/tokens_per_s",
]


def cli_env(*, hydra_full_error: bool = False, traceback: bool = False, pythonpath=(), **extra: str) -> dict:
    """The environment of a child process: this checkout first on PYTHONPATH (after ``pythonpath``),
    ``HYDRA_FULL_ERROR``/``ARCA_TRACEBACK`` set only where asked (a user's shell has neither), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "ARCA_TRACEBACK")}
    if hydra_full_error:
        env["HYDRA_FULL_ERROR"] = "1"
    if traceback:
        env["ARCA_TRACEBACK"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([*map(str, pythonpath), str(REPO)])
    return {**env, **extra}


def cli(
    *args,
    cwd: Path = REPO,
    module: str = "arca_sweep",
    quiet: bool = True,
    check: bool = True,
    timeout: int = 600,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` in ``cwd``, output captured as text, stopped after ``timeout`` s.

    ``quiet`` appends ``logger.progress=false`` (the train CLI's override); ``check`` raises with the
    output's tails unless the exit status is 0; ``env`` defaults to :func:`cli_env` with Hydra's full
    errors (pass ``cli_env(...)`` for another)."""
    cmd = [sys.executable, "-m", module, *map(str, args), *(["logger.progress=false"] if quiet else [])]
    env = cli_env(hydra_full_error=True) if env is None else env
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{module} {' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return proc


@contextmanager
def tmpfs(path: Path, options: str):
    """A tmpfs mounted at ``path`` (created) with mount ``options`` (``size=64k``, ``ro,size=1m``) for the
    body, unmounted after; the test is skipped where mounting is not allowed (CI runs as root)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        import pytest

        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> None:
    """Write zeros to ``path`` until its filesystem is full, as another job on the disk would."""
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"\0" * 65536)
        except OSError:
            pass


def records(arm: Path) -> list[dict]:
    return [json.loads(line) for line in (arm / "metrics.jsonl").read_text().splitlines()]


def check_arm_files(arm: Path, steps: int) -> list[dict]:
    """A finished arm: every step once (step 0 the initial eval), every logged key, its summary,
    adapter and checkpoint; returns its records."""
    rows = records(arm)
    assert [r["step"] for r in rows] == list(range(steps + 1)), (
        "each step exactly once, step 0 = initial eval"
    )
    assert rows[0]["eval/accuracy"] is not None and rows[-1]["eval/accuracy"] is not None
    for r in rows[1:]:
        missing = [k for k in STEP_KEYS if k not in r]
        assert not missing, f"{arm.name} step {r['step']} lacks {missing}"
        assert 0 <= r["credit/gini/mean"] <= 1 and 0 < r["credit/etr/mean"] <= 1
        assert abs(sum(r[f"credit/regime/{g}"] for g in ("uniform", "middle", "concentrated")) - 1) < 1e-6
    summary = json.loads((arm / "summary.json").read_text())
    assert summary["steps"] == steps and summary["eval/accuracy_initial"] == rows[0]["eval/accuracy"]
    assert (arm / "adapter" / "adapter_model.safetensors").is_file()
    assert (arm / "checkpoint.pt").is_file()
    return rows
