"""Every credit signal, and the learner's gradient, against slow, obviously-correct reference code
on the real tiny model with a random non-zero LoRA adapter: one unpadded sequence at a time,
two plain full forwards (adapter on, adapter off), naive softmax over the whole vocabulary."""

from __future__ import annotations

import copy

import pytest
import torch

from arca_sweep import credit
from arca_sweep.learner import Learner, LearnerSettings
from arca_sweep.testing import make_config

# float32: 1e-5 absolute plus float32 round-off relative to the value (log-probs near -8 carry
# ~1e-6 relative error from padding-dependent summation order); float64: the algorithm is exact.
TOLERANCE = {torch.float32: dict(atol=1e-5, rtol=2e-6), torch.float64: dict(atol=1e-9, rtol=1e-9)}


def reference(model, prompt: list[int], response: list[int], layer: int, temperature: float) -> dict:
    """Per response token, from two full forwards of the unpadded sequence."""
    ids = torch.tensor([prompt + response])
    head_inputs = {}
    hook = model.get_base_model().lm_head.register_forward_hook(
        lambda mod, args, out: head_inputs.__setitem__("h", args[0])
    )
    with torch.no_grad():
        pol = model(input_ids=ids, output_hidden_states=True)
        h_pol = head_inputs["h"] if layer == -1 else pol.hidden_states[layer]
        with model.disable_adapter():
            ref = model(input_ids=ids, output_hidden_states=True)
            h_ref = head_inputs["h"] if layer == -1 else ref.hidden_states[layer]
    hook.remove()
    out = {k: [] for k in ("logp", "entropy", "ref_entropy", "ref_logp", "kl", "arca")}
    for t, y in enumerate(response):
        pos = len(prompt) - 1 + t
        lp = torch.log_softmax(pol.logits[0, pos].double() / temperature, -1)
        lq = torch.log_softmax(ref.logits[0, pos].double() / temperature, -1)
        out["logp"].append(lp[y].item())
        out["ref_logp"].append(lq[y].item())
        out["entropy"].append(-(lp.exp() * lp).sum().item())
        out["ref_entropy"].append(-(lq.exp() * lq).sum().item())
        out["kl"].append((lp.exp() * (lp - lq)).sum().item())
        out["arca"].append((h_pol[0, pos] - h_ref[0, pos]).double().norm().item())
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}


@pytest.fixture(scope="module", params=[torch.float32, torch.float64], ids=["float32", "float64"])
def setup(learner_setup, request):
    questions = ("12 + 7", "88 - 24 + 29", "5 - 9")
    responses = ["12 + 7 = 19\n\\boxed{19}", "88 - 24 = 64\n64 + 29 = 93\n\\boxed{93}", "The answer is -4."]
    overrides = ("rank=8", "learner.micro_batch_size=2", "learner.chunk_size=5")
    return learner_setup(questions, responses, *overrides, scale=0.2, dtype=request.param, questions=True)


def _rows(batch, i):
    prompt = batch.prompt_ids[i][batch.prompt_mask[i]].tolist()
    return prompt, batch.response_ids[i][batch.response_mask[i]].tolist()


@pytest.mark.parametrize("layer,temperature", [(-1, 1.0), (2, 1.0), (-1, 0.7)])
def test_every_signal_matches_two_full_forwards(setup, layer, temperature):
    cfg, model, batch = setup
    cfg.credit.layer = layer
    learner = Learner(model, LearnerSettings.from_config(cfg), temperature=temperature)
    stats, logp = learner.score(batch, torch.arange(len(batch.texts)))
    for i in range(len(batch.texts)):
        want = reference(model, *_rows(batch, i), layer, temperature)
        m = stats.mask[i]
        assert int(m.sum()) == len(want["logp"])
        got = {
            "surprisal": credit.salience("surprisal", stats)[i][m],
            "entropy": credit.salience("entropy", stats)[i][m],
            "entropy_abs": credit.salience("entropy", stats, mode="abs")[i][m],
            "divergence": credit.salience("divergence", stats)[i][m],
            "divergence_k3": credit.salience("divergence", stats, estimator="k3")[i][m],
            "arca": credit.salience("arca", stats)[i][m],
            "uniform": credit.salience("uniform", stats)[i][m],
        }
        d = want["ref_logp"] - want["logp"]
        expected = {
            "surprisal": -want["logp"],
            "entropy": (want["ref_entropy"] - want["entropy"]).clamp(min=0),
            "entropy_abs": (want["ref_entropy"] - want["entropy"]).abs(),
            "divergence": want["kl"],
            "divergence_k3": d.exp() - d - 1,
            "arca": want["arca"],
            "uniform": torch.ones_like(want["logp"]),
        }
        tol = TOLERANCE[model.dtype]
        torch.testing.assert_close(logp[i][m].detach().double(), want["logp"], **tol)
        torch.testing.assert_close(stats.ref_logp[i][m].double(), want["ref_logp"], **tol)
        for name in expected:
            # k3 = e^d - d - 1 amplifies float32 round-off in d = ref_logp - logp by e^d.
            t = dict(tol, rtol=5e-5) if name == "divergence_k3" and model.dtype == torch.float32 else tol
            # the exact KL sums pi (log pi - log ref) over the vocabulary: float32 round-off of the
            # log-probs adds up (measured at most 2.1e-5 with oneDNN matmuls, under 1e-5 with MKL's)
            t = dict(t, atol=5e-5) if name == "divergence" and model.dtype == torch.float32 else t
            torch.testing.assert_close(got[name].double(), expected[name], **t, msg=name)
        assert want["arca"].min() > 1e-3, "the adapter must actually move the hidden state"
        assert want["kl"].max() > 1e-4, "the adapter must actually change the distribution"


@pytest.mark.parametrize(
    "signal,agg",
    [("arca", "token-mean"), ("entropy", "seq-mean-token-mean"), ("surprisal", "seq-mean-token-sum-norm")],
)
def test_learner_gradient_matches_naive_loss(setup, signal, agg):
    """The update direction: grad of sum_i,t A_i w_it (-log pi(y_t)) under the aggregation, with w
    from the reference signal values normalized by a plain per-row loop."""
    cfg, model, batch = setup
    cfg.credit.name, cfg.credit.layer, cfg.loss.agg = signal, -1, agg
    advantages = torch.tensor([1.0, -0.5, 0.25])
    learner = Learner(model, LearnerSettings.from_config(cfg), temperature=1.0)
    params = [p for p in model.parameters() if p.requires_grad]
    snapshot = [p.detach().clone() for p in params]
    learner.optimizer.zero_grad()
    learner.step(batch, advantages)  # computes grads, then steps: restore params, keep grads
    got = [p.grad.clone() for p in params]
    with torch.no_grad():
        for p, s in zip(params, snapshot, strict=True):
            p.copy_(s)

    model.zero_grad()
    total_tokens = int(batch.response_mask.sum())
    loss = 0.0
    for i in range(3):
        prompt, response = _rows(batch, i)
        want = reference(model, prompt, response, -1, 1.0)
        s = {
            "arca": want["arca"],
            "surprisal": -want["logp"],
            "entropy": (want["ref_entropy"] - want["entropy"]).clamp(min=0),
        }[signal]
        w = (s / s.mean()).float() if s.sum() > 0 else torch.ones_like(s).float()
        ids = torch.tensor([prompt + response])
        logits = model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
        logp = torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(response)[:, None])[:, 0]
        tok_loss = -advantages[i] * w * logp
        if agg == "token-mean":
            loss = loss + tok_loss.sum() / total_tokens
        elif agg == "seq-mean-token-mean":
            loss = loss + tok_loss.mean() / 3
        else:
            loss = loss + tok_loss.sum() / cfg.budget.max_new_tokens / 3
    loss.backward()
    want_grads = [p.grad for p in params]
    # The learner clips the gradient norm before stepping; compare directions and norms before clipping.
    flat_got = torch.cat([g.flatten() for g in got])
    flat_want = torch.cat([g.flatten() for g in want_grads])
    scale = min(1.0, cfg.optim.grad_clip / (flat_want.norm().item() + 1e-6))
    torch.testing.assert_close(flat_got, flat_want * scale, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize(
    "overrides,forwards,adapter_off",
    [
        ((), 2, 1),  # shadow diagnostics on: policy + one adapter-off pass
        (("credit=uniform", "diagnostics.shadow=false"), 1, 0),
        (("credit=surprisal", "diagnostics.shadow=false"), 1, 0),
        (("credit=surprisal", "diagnostics.shadow=false", "loss.beta=0.1"), 2, 1),
        (("credit=arca", "diagnostics.shadow=false"), 2, 1),
    ],
)
def test_at_most_two_forwards_per_micro_batch(setup, overrides, forwards, adapter_off):
    """SPEC: the policy forward with grad, and one no-grad adapter-off pass only when needed."""
    _, model, batch = setup
    cfg = make_config("learner.micro_batch_size=2", *overrides)
    learner = Learner(model, LearnerSettings.from_config(cfg), temperature=1.0)
    decoder = model.get_base_model().model
    calls = []
    hook = decoder.register_forward_hook(lambda *a: calls.append(torch.is_grad_enabled()))
    original = model.disable_adapter
    disabled = []

    def counting_disable_adapter():
        disabled.append(1)
        return original()

    model.disable_adapter = counting_disable_adapter
    try:
        snapshot = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        learner.step(batch, torch.tensor([1.0, -0.5, 0.25]))
    finally:
        hook.remove()
        del model.disable_adapter
        with torch.no_grad():
            for p, s in zip((p for p in model.parameters() if p.requires_grad), snapshot, strict=True):
                p.copy_(s)
    micro_batches = 2  # 3 sequences, micro_batch_size 2
    assert len(calls) == forwards * micro_batches
    assert len(disabled) == adapter_off * micro_batches
    assert sum(calls) == micro_batches, "exactly one forward per micro-batch carries a graph"


def test_fused_scoring_pass_gives_the_plain_paths_loss_and_gradient(setup):
    """Learner.score's fused pass (gradient formed in the forward) against the plain path (the
    backward recomputes each chunk's softmax), taken when the LM head is trainable: same loss, same
    LoRA gradients, to 1e-6 in float64."""
    cfg, model, batch = setup
    if model.dtype != torch.float64:
        pytest.skip("the equality is asserted in float64")
    cfg.credit.name, cfg.credit.layer, cfg.loss.agg = "entropy", -1, "token-mean"
    learner = Learner(model, LearnerSettings.from_config(cfg), temperature=0.9)
    head = model.get_base_model().get_output_embeddings().weight
    advantages = torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)
    out = {}
    for path in ("fused", "plain"):
        head.requires_grad_(path == "plain")
        try:
            learner.optimizer.zero_grad(set_to_none=True)
            stats, logp = learner.score(batch, torch.arange(3))
            w = credit.normalize(credit.salience("entropy", stats), stats.mask)
            token_loss = (advantages[:, None] * w) * -torch.exp(logp - logp.detach())
            loss = (token_loss * stats.mask).sum() / stats.mask.sum()
            loss.backward()
            out[path] = loss.detach(), [p.grad.clone() for p in learner.params], stats
        finally:
            head.requires_grad_(False)
            head.grad = None
    torch.testing.assert_close(out["fused"][0], out["plain"][0], atol=1e-6, rtol=0)
    for got, want in zip(out["fused"][1], out["plain"][1], strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert max(g.abs().max() for g in out["fused"][1]) > 1e-4
    for key in ("entropy", "ref_entropy", "kl", "ref_logp"):
        torch.testing.assert_close(
            getattr(out["fused"][2], key), getattr(out["plain"][2], key), atol=1e-9, rtol=0
        )


def test_micro_batches_by_token_budget_sort_and_bound_the_groups():
    from arca_sweep.learner.update import micro_batches

    prompt, response = torch.tensor([5, 5, 9, 5, 5]), torch.tensor([3, 20, 1, 8, 2])
    assert [g.tolist() for g in micro_batches(prompt, response, 2, 0)] == [[0, 1], [2, 3], [4]]
    groups = micro_batches(prompt, response, 4, 30)
    # longest first; [3, 2] would pad to 2 x (9 + 8) = 34 > 30; [2, 0, 4] to 3 x (9 + 3) = 36
    assert [g.tolist() for g in groups] == [[1], [3], [2, 0], [4]]
    for g in groups:
        assert len(g) == 1 or len(g) * int(prompt[g].max() + response[g].max()) <= 30
    assert sorted(torch.cat(groups).tolist()) == list(range(5))


def test_token_budget_micro_batching_changes_no_result(setup):
    """The same step with every row in one forward, with rows in order two at a time, and in
    length-sorted token-budget groups trimmed to their own width: same loss, weights (training and
    shadow), log-probs, gradients and updated parameters, to float round-off."""
    cfg, model, batch = setup
    cfg = copy.deepcopy(cfg)  # the module's fixture is shared: leave its config as it was
    cfg.credit.name, cfg.credit.layer = "arca", -1
    params = [p for p in model.parameters() if p.requires_grad]
    snapshot = [p.detach().clone() for p in params]
    advantages = torch.tensor([1.0, -0.5, 0.25])
    runs = []
    for size, tokens in ((3, 0), (2, 0), (3, 40)):
        cfg.learner.micro_batch_size, cfg.learner.micro_batch_tokens = size, tokens
        learner = Learner(model, LearnerSettings.from_config(cfg), temperature=1.0)
        result = learner.step(batch, advantages)
        runs.append((result, [p.grad.clone() for p in params], [p.detach().clone() for p in params]))
        with torch.no_grad():
            for p, s in zip(params, snapshot, strict=True):
                p.copy_(s)
    from arca_sweep.learner.update import micro_batches

    lengths = batch.prompt_mask.sum(1), batch.response_mask.sum(1)
    assert [len(g) for g in micro_batches(*lengths, 3, 40)] != [3], "the budget must split the batch"
    tol = TOLERANCE[model.dtype]
    want, want_grads, want_params = runs[0]
    for got, grads, new_params in runs[1:]:
        assert got.loss == pytest.approx(want.loss, rel=1e-5 if model.dtype == torch.float32 else 1e-12)
        torch.testing.assert_close(got.weights, want.weights, **tol)
        torch.testing.assert_close(got.logp, want.logp, **tol)
        for s in want.shadow_weights:
            torch.testing.assert_close(
                got.shadow_weights[s], want.shadow_weights[s], **tol, equal_nan=True, msg=s
            )
        for a, b in zip(grads, want_grads, strict=True):
            torch.testing.assert_close(a, b, **tol)
        # AdamW's first step moves each parameter by ~lr * sign(g): round-off in a near-zero gradient
        # can move it by up to lr in float32, so the updated weights are compared in float64 only.
        if model.dtype == torch.float64:
            for a, b in zip(new_params, want_params, strict=True):
                torch.testing.assert_close(a, b, **tol)


@pytest.mark.parametrize("training", ["arca", "uniform"])
def test_shadow_sample_computes_the_other_signals_on_the_sampled_rows_only(setup, training):
    """diagnostics.shadow_sample < 1: the training signal, loss and gradients are unchanged; every
    other signal's weights on the sampled rows (the first ceil(frac G) of each group) equal the
    all-rows ones, NaN elsewhere; the adapter-off forward covers the sampled rows only when the
    training signal does not need it."""
    from arca_sweep.diagnostics.step import credit_metrics

    cfg, model, batch = setup
    cfg = copy.deepcopy(cfg)  # the module's fixture is shared: leave its config as it was
    cfg.credit.name, cfg.credit.layer, cfg.budget.group_size = training, -1, 3
    cfg.learner.micro_batch_size, cfg.learner.micro_batch_tokens = 3, 0
    params = [p for p in model.parameters() if p.requires_grad]
    snapshot = [p.detach().clone() for p in params]
    decoder = model.get_base_model().model
    rows_seen = []
    hook = decoder.register_forward_hook(
        lambda mod, args, kw, out: rows_seen.append(kw["input_ids"].shape[0]), with_kwargs=True
    )
    runs = {}
    try:
        for frac in (1.0, 0.5):
            cfg.diagnostics.shadow_sample = frac
            rows_seen.clear()
            learner = Learner(model, LearnerSettings.from_config(cfg), temperature=1.0)
            result = learner.step(batch, torch.tensor([1.0, -0.5, 0.25]))
            runs[frac] = result, [p.grad.clone() for p in params], list(rows_seen)
            with torch.no_grad():
                for p, s in zip(params, snapshot, strict=True):
                    p.copy_(s)
    finally:
        hook.remove()
    (full, full_grads, full_rows), (part, part_grads, part_rows) = runs[1.0], runs[0.5]
    assert part.loss == full.loss and torch.equal(part.weights, full.weights)
    for a, b in zip(part_grads, full_grads, strict=True):
        assert torch.equal(a, b)
    sampled = torch.tensor([True, True, False])  # ceil(0.5 * 3) = 2 of the group of 3
    tol = TOLERANCE[model.dtype]
    for s, w in part.shadow_weights.items():
        if s == training:
            assert torch.equal(w, full.weights)
            continue
        torch.testing.assert_close(w[sampled], full.shadow_weights[s][sampled], **tol, msg=s)
        assert w[~sampled].isnan().all(), s
    assert full_rows == [3, 3] and part_rows == ([3, 3] if training == "arca" else [2, 3])
    mask, fmt = batch.response_mask, torch.zeros_like(batch.response_mask)
    got = credit_metrics(part.weights, part.shadow_weights, mask, fmt, training, 0.95, 0.25)
    want = credit_metrics(
        full.weights[sampled],
        {s: w[sampled] for s, w in full.shadow_weights.items()},
        mask[sampled],
        fmt[sampled],
        training,
        0.95,
        0.25,
    )
    for key, value in want.items():
        if key.startswith("shadow/") and not key.startswith(f"shadow/{training}/"):
            assert got[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), key


def test_shadow_sample_with_a_micro_batch_off_the_sample(setup):
    """A micro-batch holding no sampled row skips the adapter-off pass; its shadow weights are NaN."""
    cfg, model, batch = setup
    cfg = copy.deepcopy(cfg)
    cfg.credit.name, cfg.budget.group_size, cfg.diagnostics.shadow_sample = "surprisal", 3, 0.25
    cfg.learner.micro_batch_size, cfg.learner.micro_batch_tokens = 1, 0
    params = [p for p in model.parameters() if p.requires_grad]
    snapshot = [p.detach().clone() for p in params]
    result = Learner(model, LearnerSettings.from_config(cfg), temperature=1.0).step(
        batch, torch.tensor([1.0, -0.5, 0.25])
    )
    with torch.no_grad():
        for p, s in zip(params, snapshot, strict=True):
            p.copy_(s)
    for s, w in result.shadow_weights.items():
        if s != "surprisal":
            assert w[1:].isnan().all() and not w[0].isnan().any(), s
