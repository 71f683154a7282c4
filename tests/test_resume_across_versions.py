"""A checkpoint written by an earlier version of the code resumes on this one and ends where an
uninterrupted run ends.

``tests/data/pre_seams_arm/`` is an arm dir written by the code at de630b0 (before issue 18 re-cut the
package into credit/, learner/, report/, eval/ and grade/): ``budget=smoke budget.steps=6 threads=1``,
killed with SIGKILL after its step-3 checkpoint. ``tests/data/pre_seams_uninterrupted/`` holds the same
command's uninterrupted records and final adapter, also from de630b0."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import REPO, cli

DATA = REPO / "tests" / "data"
ARGS = ["budget=smoke", "budget.steps=6", "threads=1"]

pytestmark = pytest.mark.slow


def run(run_dir: Path):
    return cli(*ARGS, f"hydra.run.dir={run_dir}", cwd=run_dir.parent, quiet=False)


def records(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if not k.startswith("perf/")} for x in lines]


def adapter(path: Path) -> dict[str, torch.Tensor]:
    weights = load_file(path)
    assert weights
    return weights


def test_old_checkpoint_resumes_to_the_uninterrupted_run(tmp_path):
    old = tmp_path / "old"
    shutil.copytree(DATA / "pre_seams_arm", old)
    assert torch.load(old / "checkpoint.pt", weights_only=False)["step"] == 3
    resumed = run(old)
    assert f"resuming {old} after step 3" in resumed.stdout + resumed.stderr

    straight = tmp_path / "straight"
    run(straight)

    want = records(straight / "metrics.jsonl")
    assert [r["step"] for r in want] == list(range(7))
    assert records(old / "metrics.jsonl") == want
    a = adapter(straight / "adapter" / "adapter_model.safetensors")
    b = adapter(old / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # and the new code's uninterrupted run is the old code's, record for record and weight for weight
    assert records(DATA / "pre_seams_uninterrupted" / "metrics.jsonl") == want
    c = adapter(DATA / "pre_seams_uninterrupted" / "adapter_model.safetensors")
    assert a.keys() == c.keys() and all(torch.equal(a[k], c[k]) for k in a)
