"""The learner computes what SPEC says, on the real tiny model: eval mode throughout (no dropout),
ARCA's reference pass stopping at credit.layer, gradient checkpointing that changes no gradient."""

from __future__ import annotations

import pytest
import torch

from arca_sweep import credit
from arca_sweep.config import ConfigError, validate
from arca_sweep.learner import Learner, LearnerSettings
from arca_sweep.learner.decoder import hidden_index
from arca_sweep.model import load_policy
from arca_sweep.testing import make_batch, make_config, randomize_adapter
from tests.test_signals_reference import _rows, reference

PROMPTS = ["Compute 12 + 7.", "Compute 88 - 24 + 29.", "Compute 5 - 9."]
RESPONSES = ["12 + 7 = 19\n\\boxed{19}", "88 - 24 = 64\n64 + 29 = 93\n\\boxed{93}", "The answer is -4."]


def setup(learner_setup, *overrides):
    return learner_setup(PROMPTS, RESPONSES, "rank=8", "learner.micro_batch_size=2", *overrides, scale=0.2)


def decoder_layers(model):
    base = model.get_base_model()
    return getattr(base, base.base_model_prefix).layers


# ---------------------------------------------------------------- eval mode


def test_the_policy_is_in_eval_mode_before_and_after_a_step(tiny_tokenizer, learner_setup):
    from arca_sweep.rollout.hf import HFEngine

    cfg, model, batch = setup(learner_setup)
    assert not any(m.training for m in model.modules())  # get_peft_model had set train mode
    learner = Learner(model, LearnerSettings.from_config(cfg), temperature=1.0)
    learner.step(batch, torch.tensor([1.0, -0.5, 0.25]))
    HFEngine(cfg.rollout, model, tiny_tokenizer).generate([batch.prompt_ids[0].tolist()], 2, 4)
    assert not any(m.training for m in model.modules())
    with torch.no_grad():
        a, b = (learner.score(batch, torch.arange(3))[1] for _ in range(2))
    assert torch.equal(a, b)  # deterministic: no dropout anywhere


def test_nonzero_lora_dropout_is_rejected_with_the_key():
    cfg = make_config("rank.dropout=0.1")
    with pytest.raises(ConfigError, match=r"rank\.dropout=0\.1 is not supported.*eval mode.*rank\.dropout=0"):
        validate(cfg)


# ---------------------------------------------------------------- the reference pass stops at credit.layer


def full_hidden(model, ids, attn, k, adapter: bool):
    """hidden_states[k] of a plain full forward (the obviously-correct value)."""
    position_ids = (attn.long().cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        if adapter:
            return model(
                input_ids=ids, attention_mask=attn, position_ids=position_ids, output_hidden_states=True
            ).hidden_states[k]
        with model.disable_adapter():
            return model(
                input_ids=ids, attention_mask=attn, position_ids=position_ids, output_hidden_states=True
            ).hidden_states[k]


@pytest.mark.parametrize("layer", [1, 2, -2, 0])
def test_arca_reference_forward_runs_only_the_layers_up_to_credit_layer(learner_setup, layer):
    cfg, model, batch = setup(
        learner_setup, "credit=arca", f"credit.layer={layer}", "diagnostics.shadow=false"
    )
    layers = decoder_layers(model)
    k = hidden_index(layer, len(layers))
    calls = [0] * len(layers)
    handles = [
        m.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, m in enumerate(layers)
    ]
    head_calls = []
    handles.append(model.get_base_model().lm_head.register_forward_hook(lambda *a: head_calls.append(1)))
    learner = Learner(model, LearnerSettings.from_config(cfg), temperature=1.0)
    rows = torch.arange(3)
    with torch.no_grad():
        stats, _ = learner.score(batch, rows)
    for h in handles:
        h.remove()
    micro_batches = 1  # score() is called on all rows at once here
    # the policy pass runs every layer once; the reference pass only layers 1..k (1-based)
    assert calls == [micro_batches * (2 if i < k else 1) for i in range(len(layers))], calls
    assert head_calls == []  # neither pass calls the LM head module (log-probs come from chunked W)
    # and the reference hidden state is the full forward's hidden_states[k]
    ids = torch.cat([batch.prompt_ids, batch.response_ids], 1)
    attn = torch.cat([batch.prompt_mask, batch.response_mask], 1)
    p = batch.prompt_ids.shape[1]
    want_ref = full_hidden(model, ids, attn, k, adapter=False)[:, p - 1 : -1]
    want_pol = full_hidden(model, ids, attn, k, adapter=True)[:, p - 1 : -1]
    m = stats.mask
    torch.testing.assert_close(stats.ref_hidden[m], want_ref[m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stats.hidden[m], want_pol[m], atol=1e-5, rtol=1e-5)
    if k:
        assert credit.salience("arca", stats)[m].min() > 0


@pytest.mark.parametrize("layer,shadow", [(-1, "true"), (2, "false"), (0, "false")])
def test_the_reference_pass_runs_each_shared_prompt_once_with_the_full_forwards_values(
    tiny_tokenizer, layer, shadow
):
    """G = 3 samples of each of 3 prompts (left-padded to different widths), float64: the reference
    pass computes each prompt once (the first decoder layer sees 3 prompt rows, then 9 response rows)
    and its hidden states and reference log-probs are those of plain full forwards."""
    cfg = make_config(
        "rank=8",
        "model.dtype=float64",
        "credit=arca",
        f"credit.layer={layer}",
        f"diagnostics.shadow={shadow}",
        "diagnostics.shadow_sample=1",
        "budget.group_size=3",
    )
    model = load_policy(cfg.model, cfg.rank, torch.device("cpu"), seed=0)
    randomize_adapter(model, scale=0.2)
    responses = RESPONSES + ["19", "\\boxed{64}", "-4 is it"] + ["x", "88 - 24", "5 - 9 = -4"]
    batch = make_batch(
        tiny_tokenizer,
        [p for p in PROMPTS for _ in range(3)],
        [responses[(i % 3) * 3 + i // 3] for i in range(9)],
    )
    rows_seen = []
    first = decoder_layers(model)[0]
    handle = first.register_forward_pre_hook(
        lambda mod, args, kwargs: rows_seen.append(
            (kwargs.get("hidden_states", args[0] if args else None)).shape[:2]
        ),
        with_kwargs=True,
    )
    with torch.no_grad():
        stats, _ = Learner(model, LearnerSettings.from_config(cfg), temperature=1.0).score(
            batch, torch.arange(9)
        )
    handle.remove()
    p_width, n_layers = batch.prompt_ids.shape[1], len(decoder_layers(model))
    # each pass: 3 prompt rows, then 9 response rows (the reference pass stops before layer 1 at k = 0)
    r_width = batch.response_mask.any(0).nonzero().max().item() + 1
    passes = 2 if hidden_index(layer, n_layers) > 0 else 1
    assert [tuple(s) for s in rows_seen] == [(3, p_width), (9, r_width)] * passes, rows_seen
    ids = torch.cat([batch.prompt_ids, batch.response_ids], 1)
    attn = torch.cat([batch.prompt_mask, batch.response_mask], 1)
    k = hidden_index(layer, n_layers)
    want = full_hidden(model, ids, attn, k, adapter=False)[:, p_width - 1 : -1]
    m = stats.mask
    if layer == -1:  # hidden_states[-1] is the normed state fed to the head, as stats holds
        want = full_hidden(model, ids, attn, n_layers, adapter=False)[:, p_width - 1 : -1]
    torch.testing.assert_close(stats.ref_hidden[m], want[m], atol=1e-10, rtol=1e-10)
    want_pol = full_hidden(model, ids, attn, n_layers if layer == -1 else k, adapter=True)
    torch.testing.assert_close(stats.hidden[m], want_pol[:, p_width - 1 : -1][m], atol=1e-10, rtol=1e-10)
    if shadow == "true":
        for i in range(9):
            ref = reference(model, *_rows(batch, i), -1, 1.0)
            torch.testing.assert_close(stats.ref_logp[i][m[i]], ref["ref_logp"], atol=1e-10, rtol=1e-10)
            torch.testing.assert_close(stats.kl[i][m[i]], ref["kl"], atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("layer", [-1, 2])
def test_the_shared_prompt_pass_gives_the_full_forwards_gradients(tiny_tokenizer, layer):
    """With grad, response_hidden's one prompt pass per distinct prompt (its keys and values copied to
    the G rows) gives the LoRA gradients of G plain full forwards.

    Float64, yet only to float32 rounding: transformers' RMSNorm computes in float32 whatever the model's
    dtype, and here the G rows' gradients are summed before that cast's backward rather than after
    (measured 1e-7 of the largest gradient, at every adapter scale). Dropping a row's share moves them
    by whole units."""
    from arca_sweep.learner.decoder import forward_hidden, response_hidden

    cfg = make_config("rank=8", "model.dtype=float64")
    model = load_policy(cfg.model, cfg.rank, torch.device("cpu"), seed=0)
    randomize_adapter(model, scale=0.2)
    responses = RESPONSES + ["19", "\\boxed{64}", "-4 is it"] + ["x", "88 - 24", "5 - 9 = -4"]
    batch = make_batch(tiny_tokenizer, [p for p in PROMPTS for _ in range(3)], responses)
    ids = torch.cat([batch.prompt_ids, batch.response_ids], 1)
    attn = torch.cat([batch.prompt_mask, batch.response_mask], 1)
    p = batch.prompt_ids.shape[1]
    w = torch.randn(ids.shape[0], ids.shape[1] - p, model.config.hidden_size, dtype=torch.float64)
    params = [q for q in model.parameters() if q.requires_grad]

    def grads(outputs):
        final, at_layer = outputs
        loss = (final * w).sum() + (at_layer * w.flip(0)).sum()
        return torch.autograd.grad(loss, params)

    prompt_rows = []
    handle = decoder_layers(model)[0].register_forward_pre_hook(
        lambda mod, args, kwargs: prompt_rows.append(
            (kwargs.get("hidden_states", args[0] if args else None)).shape[0]
        ),
        with_kwargs=True,
    )
    shared = grads(response_hidden(model, ids, attn, p, layer, final=True))
    handle.remove()
    plain = grads(tuple(h[:, p - 1 : -1] for h in forward_hidden(model, ids, attn, layer)))
    assert prompt_rows == [3, 9]  # the prompts ran once each, then the responses of every row
    assert any(g.abs().max() > 1e-3 for g in plain)
    scale = max(g.abs().max() for g in plain).item()
    for a, b in zip(shared, plain, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6 * scale, rtol=1e-6)


def test_the_reference_runs_every_layer_when_a_signal_needs_its_lm_head(learner_setup):
    cfg, model, batch = setup(learner_setup, "credit=arca", "credit.layer=1")  # shadow on: KL needs it
    layers = decoder_layers(model)
    calls = [0] * len(layers)
    handles = [
        m.register_forward_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
        for i, m in enumerate(layers)
    ]
    with torch.no_grad():
        Learner(model, LearnerSettings.from_config(cfg), temperature=1.0).score(batch, torch.arange(3))
    for h in handles:
        h.remove()
    assert calls == [2] * len(layers)


def test_credit_layer_out_of_range_is_named():
    with pytest.raises(ValueError, match=r"credit\.layer=9 .* 4 decoder layers"):
        hidden_index(9, 4)


# ---------------------------------------------------------------- gradient checkpointing


def lora_grads(learner_setup, checkpointing: bool):
    cfg, model, batch = setup(
        learner_setup, "credit=arca", "credit.layer=2", f"learner.gradient_checkpointing={checkpointing}"
    )
    Learner(model, LearnerSettings.from_config(cfg), temperature=1.0).step(
        batch, torch.tensor([1.0, -0.5, 0.25])
    )
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, model


def test_gradient_checkpointing_gives_the_unchecked_gradients(learner_setup):
    plain, _ = lora_grads(learner_setup, False)
    checked, model = lora_grads(learner_setup, True)
    assert plain.keys() == checked.keys() and len(plain) > 0
    for name in plain:
        torch.testing.assert_close(checked[name], plain[name], atol=1e-7, rtol=1e-6, msg=name)
    assert any(g.abs().max() > 0 for g in plain.values())
    # the flags are back after the step: generate (which needs its KV cache) never sees them
    assert not any(m.gradient_checkpointing for m in decoder_layers(model))
    assert not any(m.training for m in model.modules())


def test_gradient_checkpointing_actually_recomputes(learner_setup):
    """Under checkpointing each decoder layer saves only its input: far fewer saved activations."""
    from torch.autograd.graph import saved_tensors_hooks

    counts = {}
    for flag in (False, True):
        cfg, model, batch = setup(learner_setup, "credit=uniform", f"learner.gradient_checkpointing={flag}")
        learner = Learner(model, LearnerSettings.from_config(cfg), temperature=1.0)
        counts[flag] = 0

        def pack(t, flag=flag):
            counts[flag] += t.numel()
            return t

        with saved_tensors_hooks(pack, lambda t: t):
            learner.step(batch, torch.tensor([1.0, -0.5, 0.25]))
    assert counts[True] < counts[False] / 2, counts


# ---------------------------------------------------------------- a salience sum beyond float32


def test_a_salience_row_whose_float32_sum_overflows_is_normalized_not_dropped():
    s = torch.tensor([[3e38, 1e38, 1e38, 1e38, 0.0], [1.0, 2.0, 3.0, 0.0, 0.0]], dtype=torch.float32)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    assert torch.isinf(s[0].sum())  # float32 overflows
    assert not credit.fallback_rows(s, mask).any()
    w = credit.normalize(s, mask)
    want = s[0].double() / s[0].double().mean()
    torch.testing.assert_close(w[0].double(), want, rtol=1e-6, atol=1e-6)
    assert w[0].mean().item() == pytest.approx(1.0)
    # a genuinely infinite salience still falls back, and is counted
    s[1, 0] = torch.inf
    assert credit.fallback_rows(s, mask).tolist() == [False, True]
