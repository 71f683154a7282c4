"""GRPO on the tiny model actually learns: accuracy rises by more than noise explains."""

from __future__ import annotations

import json
import statistics

import pytest

from tests.helpers import cli, records

EVAL_MARGIN = 0.04
REWARD_MARGIN = 0.15


@pytest.mark.slow
def test_grpo_raises_accuracy(tmp_path):
    """One ARCA arm at ``budget=demo`` (60 steps x 8 prompts x G = 8; 200 held-out eval problems).

    Measured on this 2-core machine (`python -m arca_sweep credit=arca budget=demo seed=S`):
    greedy eval accuracy 0.635 at step 0 for every seed (peft starts with B = 0, greedy decoding),
    0.740 / 0.700 / 0.715 at step 60 for seeds 0 / 1 / 2: gains of +0.105 / +0.065 / +0.080, a seed
    spread (sd of the final accuracy) of about 0.020. A gain of EVAL_MARGIN = 0.04 is about two
    seed-spreads above zero, and below every measured gain. The training reward is a much larger
    sample (640 rollouts per 10 steps, sd of a 10-step mean about 0.03): it went from 0.32-0.38 over
    the first 10 steps to 0.62-0.69 over the last 10 for every seed and every credit signal of the
    demo sweep, so REWARD_MARGIN = 0.15 is five standard errors and well under every measured rise.
    On CPU the run is deterministic for a seed, so this test sees seed 0's numbers (since row-keyed
    sampling, issue 22: 0.635 -> 0.745, measured in the clean-clone CI of d186ffa).
    """
    run_dir = tmp_path / "arm"
    cli("credit=arca", "budget=demo", f"hydra.run.dir={run_dir}", cwd=tmp_path, timeout=1800)
    summary = json.loads((run_dir / "summary.json").read_text())
    gain = summary["eval/accuracy_final"] - summary["eval/accuracy_initial"]
    assert gain >= EVAL_MARGIN, summary
    rewards = [r["reward/mean"] for r in records(run_dir)[1:]]
    assert statistics.mean(rewards[-10:]) - statistics.mean(rewards[:10]) >= REWARD_MARGIN, rewards
