"""GRPO on the tiny model actually learns: eval accuracy rises by more than noise explains."""

from __future__ import annotations

import json

import pytest

from tests.test_end_to_end import cli

# Measured with `python -m arca_sweep credit=arca budget=demo seed=S` (see MARGIN below).
MARGIN = 0.05


@pytest.mark.slow
def test_grpo_raises_greedy_eval_accuracy(tmp_path):
    """One ARCA arm at ``budget=demo`` (60 steps x 8 prompts x G = 8, 200 held-out eval problems).

    The step-0 accuracy is the base model's greedy accuracy (peft starts with B = 0), identical for
    every seed. NOISE_NOTE
    """
    run_dir = tmp_path / "arm"
    cli("credit=arca", "budget=demo", f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=900)
    summary = json.loads((run_dir / "summary.json").read_text())
    gain = summary["eval/accuracy_final"] - summary["eval/accuracy_initial"]
    assert gain >= MARGIN, summary
    assert summary["run_means"]["reward/mean"] > 0.3
