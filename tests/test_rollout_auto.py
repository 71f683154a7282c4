"""rollout=auto's engine choice on CPU: by the run's estimated rollout time per engine."""

from __future__ import annotations

import pytest
import torch

from arca_sweep.rollout import CPU_MEASURED, cpu_rollout_seconds, resolve_engine_name, run_tokens
from arca_sweep.testing import make_config


class Params:
    """A stand-in model with ``n`` parameters."""

    def __init__(self, n: int):
        self.n = n

    def parameters(self):
        return [torch.empty(self.n, dtype=torch.uint8)]


def test_run_tokens_counts_training_and_eval_generation():
    b = make_config("budget=demo").budget  # 60 steps x 8 x 8 x 48, evals at 0, 20, 40, 60 (+ the last)
    assert run_tokens(b) == 60 * 8 * 8 * 48 + (1 + 3 + 1) * 200 * 48
    # sampled evals of two sets: (200 + 100) problems x (1 + 4) answers x 48 tokens per eval
    assert run_tokens(b, (200 + 100) * 5 * 48) == 60 * 8 * 8 * 48 + (1 + 3 + 1) * 300 * 5 * 48


def test_estimate_matches_the_measured_rates_at_the_measured_model():
    n, hf, vllm, start, sync = CPU_MEASURED["qwen3-1.7b-width-2-layers"]
    b = make_config("budget=smoke").budget
    est = cpu_rollout_seconds(int(n), b)
    assert est["hf"] == pytest.approx(run_tokens(b) / hf)
    assert est["vllm"] == pytest.approx(start + run_tokens(b) / vllm + b.steps * sync)


@pytest.mark.parametrize(
    "params,budget,engine",
    [
        (0.8e6, "smoke", "hf"),  # 3 steps: vLLM's start-up alone outlasts HF's whole run
        (0.8e6, "demo", "hf"),  # the demo: ~24 s HF vs ~26 s vLLM (its start-up), no gain
        (0.41e9, "smoke", "hf"),
        (0.8e6, "paper", "vllm"),
        (0.41e9, "demo", "vllm"),
        (2.0e9, "paper", "vllm"),
    ],
)
def test_auto_on_cpu_chooses_by_the_runs_estimated_rollout_time(monkeypatch, params, budget, engine):
    import arca_sweep.rollout.vllm as v

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(v, "vllm_available", lambda: True)
    model, b = Params(int(params)), make_config(f"budget={budget}").budget
    assert resolve_engine_name("auto", model, b) == engine
    assert resolve_engine_name("auto") == "hf"  # nothing to estimate from
    assert resolve_engine_name("hf", model, b) == "hf"
    monkeypatch.setattr(v, "vllm_available", lambda: False)
    assert resolve_engine_name("auto", model, b) == "hf"
