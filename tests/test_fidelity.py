"""The fidelity probe: its reported relative error equals an independent float64 computation (two
plain full forwards of a float64 copy, naive softmax), and it leaves the run's weights exactly as
they were, with no second copy held."""

from __future__ import annotations

import copy

import torch

from arca_sweep.diagnostics.fidelity import PROBED, cast_in_place, fidelity_probe, signal_values
from arca_sweep.learner import Learner, LearnerSettings
from arca_sweep.model import load_policy
from arca_sweep.testing import make_batch, make_config, randomize_adapter
from tests.test_learner_fidelity import PROMPTS, RESPONSES
from tests.test_signals_reference import reference


def bf16_run(tokenizer):
    cfg = make_config("rank=8", "model.dtype=bfloat16", "learner.chunk_size=7")
    model = load_policy(cfg.model, cfg.rank, torch.device("cpu"), seed=0)
    randomize_adapter(model, scale=0.03)
    return cfg, model, make_batch(tokenizer, PROMPTS, RESPONSES)


def test_probe_error_matches_an_independent_float64_computation(tiny_tokenizer):
    cfg, model, batch = bf16_run(tiny_tokenizer)
    learner = Learner(model, LearnerSettings.from_config(cfg), temperature=1.0)
    rows = torch.arange(len(PROMPTS))
    reported = fidelity_probe(learner, batch, rows)

    run = signal_values(learner, batch, rows)  # the bf16 run's own signals
    exact = copy.deepcopy(model).double()  # a separate float64 model: fine in a test
    want = {s: [] for s in PROBED}
    for i in rows.tolist():
        prompt = batch.prompt_ids[i][batch.prompt_mask[i]].tolist()
        response = batch.response_ids[i][batch.response_mask[i]].tolist()
        r = reference(exact, prompt, response, layer=-1, temperature=1.0)
        want["surprisal"].append((-r["logp"]).clamp(min=0))
        want["entropy"].append((r["ref_entropy"] - r["entropy"]).clamp(min=0))
        want["divergence"].append(r["kl"].clamp(min=0))
        want["arca"].append(r["arca"])
    for s in PROBED:
        hi = torch.cat(want[s])
        independent = (torch.linalg.vector_norm(run[s] - hi) / torch.linalg.vector_norm(hi)).item()
        got = reported[f"fidelity/{s}/rel_err"]
        assert abs(got - independent) <= 1e-6 + 1e-4 * independent, (s, got, independent)
        assert independent > 1e-4, s  # bf16 really does round: the probe measures something
    assert reported["fidelity/divergence/rel_err"] > 1e-3


def test_cast_in_place_round_trip_is_exact_and_keeps_the_parameter_objects(tiny_tokenizer):
    cfg, model, _ = bf16_run(tiny_tokenizer)
    before = {n: (p, p.detach().clone()) for n, p in model.named_parameters()}
    buffers = {n: b.dtype for n, b in model.named_buffers()}
    with cast_in_place(model, torch.float64):
        assert all(p.dtype == torch.float64 for p in model.parameters())
    for n, p in model.named_parameters():
        obj, value = before[n]
        assert p is obj and p.dtype == value.dtype and torch.equal(p, value), n
    assert {n: b.dtype for n, b in model.named_buffers()} == buffers  # rotary inv_freq stays float32


def test_paper_preset_learns_in_float32_samples_in_bf16_and_its_own_values_apply():
    """The precision the benchmark chose (BENCHMARKS.md "Precision"), and the preset's values winning
    over config.yaml's (they used to be overridden silently: lr 2e-3 instead of 2e-5)."""
    cfg = make_config("experiment=paper")
    assert cfg.model.dtype == "float32" and cfg.rollout.dtype == "bfloat16"
    assert cfg.optim.lr == 2e-5 and cfg.learner.micro_batch_size == 8
    assert make_config("experiment=paper", "optim.lr=1e-4").optim.lr == 1e-4  # the command line still wins
