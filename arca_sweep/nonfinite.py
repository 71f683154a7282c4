"""The non-finite guard: a step whose loss, gradient norm, sampled log-probs or updated adapter is not
finite stops the run at that step, before anything of it is logged, saved or sampled from.

Checked in ``train.py`` after each update, on the step's :class:`~arca_sweep.learner.StepResult`, the
batch and the adapter's parameters, plus one probe forward of a single sequence through the updated
model (weights of 1e30 are finite, but the forward they give is not). The checkpoint on disk is then the
last good one: re-running resumes from it.
"""

from __future__ import annotations

import math

import torch

from arca_sweep.errors import UserError


class NonFiniteError(UserError):
    """A training step produced a non-finite value; the message names the step and the likely cause."""


def non_finite_values(batch, result, model) -> list[str]:
    """What is not finite after an update: [] when all is well."""
    found = []
    if batch.sampling_logprobs is not None:
        sampled = batch.sampling_logprobs[batch.response_mask.to(batch.sampling_logprobs.device)]
        if not torch.isfinite(sampled).all():
            found.append("the sampled log-probs")
    if not math.isfinite(result.loss):
        found.append(f"the loss ({result.loss})")
    if not math.isfinite(result.grad_norm):
        found.append(f"the gradient norm ({result.grad_norm})")
    bad = [n for n, p in model.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
    if bad:
        found.append(f"the adapter weights ({len(bad)} tensors, e.g. {bad[0]})")
    elif not found and not _probe_is_finite(model, batch):
        found.append("the updated model's forward on this batch's first sequence")
    return found


@torch.no_grad()
def _probe_is_finite(model, batch) -> bool:
    """One sequence through the decoder, and the LM head at its last position only (no [L, V] logits)."""
    base = model.get_base_model()
    decoder = getattr(base, base.base_model_prefix)
    device = next(model.parameters()).device
    ids = torch.cat([batch.prompt_ids[:1], batch.response_ids[:1]], 1).to(device)
    mask = torch.cat([batch.prompt_mask[:1], batch.response_mask[:1]], 1).to(device)
    hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    return bool(
        torch.isfinite(hidden).all() and torch.isfinite(base.get_output_embeddings()(hidden[:, -1])).all()
    )


def check_finite(step: int, batch, result, model, optimizer, beta: float, checkpoint_path) -> None:
    """Raise :class:`NonFiniteError` if anything of this step is not finite."""
    found = non_finite_values(batch, result, model)
    if not found:
        return
    lr = optimizer.param_groups[0]["lr"]  # the live value: a checkpoint restores it
    causes = [
        (beta > 1.0, f"a KL weight far too large (loss.beta={beta})"),
        (lr > 1e-2, f"a learning rate far too large (lr {lr}, optim.lr)"),
    ]
    likely = [text for suspicious, text in causes if suspicious] or [
        f"a learning rate too large (lr {lr}, optim.lr) or a KL weight too large (loss.beta={beta})"
    ]
    last = (
        f"{checkpoint_path} holds the last good step; re-running the same command resumes from it (and, "
        "the run being deterministic, meets this step again)"
        if checkpoint_path.exists()
        else "no checkpoint was written yet"
    )
    raise NonFiniteError(
        f"step {step}: {', '.join(found)} not finite; stopping before anything of this step is saved. "
        f"Likely cause: {'; or '.join(likely)}. {last}. To change the settings, run them in a new arm dir "
        "(hydra.run.dir=...)."
    )
