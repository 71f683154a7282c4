"""The GRPO learner (SPEC: "Policy, reference, rollouts", "Loss", "One scoring pass feeds every signal").

Per step and per micro-batch of sequences, at most two forwards: the policy (with grad) and one
no-grad pass with the adapter disabled, run only when a signal, a shadow signal or the KL
penalty needs it. Every per-token quantity of response token y_t comes from the position that
predicts it (the position of y_{t-1}, or the last prompt token for t = 1).
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass

import torch
import torch.utils.checkpoint

from arca_sweep import credit
from arca_sweep.fidelity import compute_context
from arca_sweep.rollout import RolloutBatch
from arca_sweep.rollout_correction import resolve_mode, rollout_correction_weights
from arca_sweep.token_stats import auto_chunk_size, fused_scores, target_logprob, vocab_stats

LOSS_AGGS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "std"):
    """A_i = (r_i - mean(r)) / (std(r) + 1e-6) within each group of G (``scale="none"``: r_i - mean(r)).

    ``std`` is the unbiased sample standard deviation, as in GRPO (DeepSeekMath) and TRL.
    Returns the advantages [N] and the fraction of groups whose rewards are all equal (zero advantage).
    """
    r = rewards.view(-1, group_size).double()
    centered = r - r.mean(1, keepdim=True)
    std = r.std(1, keepdim=True)
    adv = centered / (std + 1e-6) if scale == "std" else centered
    frac_zero_std = (std[:, 0] == 0).double().mean().item()
    return adv.flatten().float(), frac_zero_std


K3_LOG_RATIO_BOUND = 20.0  # verl core_algos.kl_penalty("low_var_kl"): clamp ref - logp to +-20 before exp
K3_BOUND = 10.0  # ... and the estimate to [-10, 10] after it


def ppo_clip_token_loss(
    logp,
    logp_old,
    token_adv,
    clip_low: float,
    clip_high: float,
    ref_logp=None,
    beta: float = 0.0,
    is_weight=None,
):
    """Per-token loss c * -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) + beta * k3, with
    rho = exp(logp - logp_old), c the detached rollout-correction weight (``is_weight``, 1 if None;
    :mod:`arca_sweep.rollout_correction`, applied to the policy-gradient term only, as verl and TRL)
    and k3 = exp(d) - d - 1, d = clamp(ref - logp, -20, 20), clamped to at most 10 (an unbiased,
    non-negative estimate of KL(pi_theta || pi_ref)).

    The two k3 clamps are verl's (``kl_penalty(..., "low_var_kl")``): without the first, a token
    the reference finds 90 nats likelier overflows exp to inf in float32; the second bounds one
    token's penalty (and zeroes its gradient) where the estimator is far off its small-KL regime.
    """
    ratio = torch.exp(logp - logp_old)
    loss = -torch.minimum(ratio * token_adv, ratio.clamp(1 - clip_low, 1 + clip_high) * token_adv)
    if is_weight is not None:
        loss = loss * is_weight.detach()
    if beta:
        log_r = (ref_logp - logp).clamp(-K3_LOG_RATIO_BOUND, K3_LOG_RATIO_BOUND)
        loss = loss + beta * (torch.exp(log_r) - log_r - 1).clamp(-K3_BOUND, K3_BOUND)
    return loss


def aggregate_loss(token_loss, mask, agg: str, *, total_tokens: int, total_seqs: int, norm_len: int):
    """Sum of this micro-batch's share of the batch loss, so micro-batch losses add up exactly:

    - ``token-mean``: sum over all tokens / tokens in the batch
    - ``seq-mean-token-mean``: mean over sequences of each sequence's token mean
    - ``seq-mean-token-sum-norm`` (Dr.GRPO): mean over sequences of token sum / ``norm_len``
    """
    token_loss = token_loss * mask
    if agg == "token-mean":
        return token_loss.sum() / total_tokens
    if agg == "seq-mean-token-mean":
        return (token_loss.sum(1) / mask.sum(1).clamp(min=1)).sum() / total_seqs
    if agg == "seq-mean-token-sum-norm":
        return (token_loss.sum(1) / norm_len).sum() / total_seqs
    raise ValueError(f"loss.agg={agg!r}; valid: {', '.join(LOSS_AGGS)}")


def micro_batches(prompt_lengths, response_lengths, max_rows: int, max_tokens: int) -> list[torch.Tensor]:
    """Row groups for the learner's forwards, each at most ``max_rows`` rows.

    ``max_tokens > 0``: rows sorted by length (longest first, stable) and grouped greedily while
    ``rows * (longest prompt + longest response)`` -- the group's padded size once trimmed -- stays
    within ``max_tokens`` (a longer row gets a group of its own). ``0``: consecutive groups of
    ``max_rows``. Grouping changes which rows share a forward, never the result (losses add up).
    """
    n = len(prompt_lengths)
    if max_tokens <= 0:
        return list(torch.arange(n).split(max_rows))
    p, r = prompt_lengths.tolist(), response_lengths.tolist()
    order = sorted(range(n), key=lambda i: -(p[i] + r[i]))
    groups, current, top_p, top_r = [], [], 0, 0
    for i in order:
        grown_p, grown_r = max(top_p, p[i]), max(top_r, r[i])
        if current and (len(current) >= max_rows or (len(current) + 1) * (grown_p + grown_r) > max_tokens):
            groups.append(current)
            current, grown_p, grown_r = [], p[i], r[i]
        current.append(i)
        top_p, top_r = grown_p, grown_r
    groups.append(current)
    return [torch.tensor(g) for g in groups]


def _decoder_and_head(model):
    base = model.get_base_model()
    return getattr(base, base.base_model_prefix), base.get_output_embeddings()


class _StopForward(Exception):
    """Carries the hidden state out of the decoder once the last layer it depends on has run."""

    def __init__(self, hidden: torch.Tensor):
        self.hidden = hidden


def hidden_index(layer: int, num_layers: int) -> int:
    """``hidden_states`` index of ``credit.layer`` in ``0..num_layers`` (0: the embeddings; k: the
    output of decoder layer k, 1-based; num_layers: the final, normed state fed to the LM head)."""
    k = layer if layer >= 0 else num_layers + 1 + layer
    if not 0 <= k <= num_layers:
        raise ValueError(f"credit.layer={layer} is out of range for a model of {num_layers} decoder layers")
    return k


@contextlib.contextmanager
def _checkpointed(decoder):
    """Non-reentrant activation checkpointing of every decoder layer, for this forward only.

    transformers checkpoints a layer only when ``layer.training`` is set; the model stays in eval mode
    (no dropout: only the layer's own flag is set, not its submodules'), and the flags are restored
    after the call so ``generate`` (which needs its KV cache) never sees them.
    """
    layers = list(decoder.layers)
    saved = [
        (m.gradient_checkpointing, m.training, m.__dict__.get("_gradient_checkpointing_func")) for m in layers
    ]
    for m in layers:
        m.gradient_checkpointing, m.training = True, True
        m._gradient_checkpointing_func = functools.partial(
            torch.utils.checkpoint.checkpoint, use_reentrant=False
        )
    try:
        yield
    finally:
        for m, (flag, training, fn) in zip(layers, saved, strict=True):
            m.gradient_checkpointing, m.training = flag, training
            if fn is None:
                m.__dict__.pop("_gradient_checkpointing_func", None)
            else:
                m._gradient_checkpointing_func = fn


def forward_hidden(
    model,
    input_ids,
    attention_mask,
    layer: int,
    *,
    final: bool = True,
    checkpoint: bool = False,
    autocast_bf16: bool = False,
):
    """(final hidden [B, L, D] fed to the LM head, hidden at ``layer``) of one forward.

    Position ids follow the attention mask, as in generation, so left padding changes nothing.
    ``final=False``: only the hidden state at ``layer`` is wanted (ARCA's reference pass without the
    LM head); the forward stops after the last decoder layer it depends on and returns
    ``(None, hidden)``. ``checkpoint``: recompute each layer's activations in backward.
    ``autocast_bf16``: matmuls in bf16 over the (float32) weights, residual stream in float32
    (:func:`arca_sweep.fidelity.compute_context`).
    """
    decoder, _ = _decoder_and_head(model)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    k = hidden_index(layer, len(decoder.layers))
    stop = not final and k < len(decoder.layers)
    if stop:  # the output of decoder layer k (1-based), or of the embedding for k = 0
        last = decoder.layers[k - 1] if k else decoder.get_input_embeddings()

        def hook(module, args, output):
            raise _StopForward(output[0] if isinstance(output, tuple) else output)

        handle = last.register_forward_hook(hook)
    try:
        with (
            _checkpointed(decoder) if checkpoint else contextlib.nullcontext(),
            compute_context(input_ids.device, autocast_bf16),
        ):
            out = decoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                output_hidden_states=layer != -1,
                use_cache=False,
            )
    except _StopForward as early:
        return None, early.hidden
    finally:
        if stop:
            handle.remove()
    final_state, at_layer = out.last_hidden_state, out.hidden_states[layer] if layer != -1 else None
    if autocast_bf16:  # the LM head and every signal downstream in float32
        final_state = final_state.float()
        at_layer = at_layer.float() if at_layer is not None else None
    return final_state, final_state if layer == -1 else at_layer


@dataclass
class StepResult:
    loss: float
    weights: torch.Tensor  # [B, R] training weights (0 off the response)
    shadow_weights: dict[str, torch.Tensor]  # signal -> [B, R] weights, every signal when shadow is on
    logp: torch.Tensor  # [B, R] learner log-probs (detached)
    grad_norm: float
    fallback_frac: float


class Learner:
    """Scores a rollout batch, applies one GRPO/PPO-clip update to the LoRA parameters."""

    def __init__(self, model, cfg, temperature: float):
        self.model, self.cfg, self.temperature = model, cfg, temperature
        self.params = [p for p in model.parameters() if p.requires_grad]
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            self.params, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas)
        )
        self.signals = sorted(credit.SIGNALS) if cfg.diagnostics.shadow else [cfg.credit.name]
        self.signal_options = dict(mode=cfg.credit.mode, estimator=cfg.credit.estimator)
        need = set(credit.needed_stats(self.signals, self.signal_options)) | {"logp"}
        if cfg.loss.beta or need & {"ref_entropy", "kl"}:
            need.add("ref_logp")  # free once the reference LM head runs
        self.need = need
        # What the loss reads on every row; the other signals' inputs only on the shadow sample.
        train = set(credit.needed_stats([cfg.credit.name], self.signal_options)) | {"logp"}
        if cfg.loss.beta or train & {"ref_entropy", "kl"}:
            train.add("ref_logp")
        self.need_train = train
        self.autocast_bf16 = cfg.learner.autocast_bf16
        self.rollout_correction = resolve_mode(
            cfg.loss.rollout_correction, next(model.parameters()).dtype, cfg.rollout.dtype
        )

    def step(self, batch: RolloutBatch, advantages: torch.Tensor) -> StepResult:
        """One update: per micro-batch, score, weight the advantages, backward; then clip and step."""
        c, lc = self.cfg.credit, self.cfg.loss
        mask_all = batch.response_mask
        totals = dict(
            total_tokens=int(mask_all.sum()),
            total_seqs=mask_all.shape[0],
            norm_len=self.cfg.budget.max_new_tokens,
        )
        self.optimizer.zero_grad(set_to_none=True)
        weights, shadow, logps, loss_sum, fallbacks = [], {s: [] for s in self.signals}, [], 0.0, 0
        groups = micro_batches(
            batch.prompt_mask.sum(1),
            mask_all.sum(1),
            self.cfg.learner.micro_batch_size,
            self.cfg.learner.micro_batch_tokens,
        )
        sampled = self.shadow_rows(mask_all.shape[0])
        for rows in groups:
            stats, logp = self.score(batch, rows, None if sampled is None else sampled[rows])
            saliences = {s: credit.salience(s, stats, **self.signal_options) for s in self.signals}
            if c.name not in saliences:
                saliences[c.name] = credit.salience(c.name, stats, **self.signal_options)
            norm = dict(method=c.normalize, temperature=c.temperature, mix=c.mix, clip_max=c.clip_max)
            w = credit.normalize(saliences[c.name], stats.mask, **norm)
            fallbacks += int(credit.fallback_rows(saliences[c.name], stats.mask).sum())
            token_loss = ppo_clip_token_loss(
                logp,
                logp.detach(),
                advantages[rows, None] * w,
                lc.clip_low,
                lc.clip_high,
                stats.ref_logp,
                lc.beta,
                is_weight=self.rollout_is_weight(batch, rows, logp, stats.mask),
            )
            loss = aggregate_loss(token_loss, stats.mask, lc.agg, **totals)
            loss.backward()
            loss_sum += loss.item()
            weights.append(w)
            logps.append(logp.detach())
            for s in self.signals:
                shadow_w = w if s == c.name else credit.normalize(saliences[s], stats.mask, **norm)
                if s != c.name and sampled is not None:  # off the shadow sample: NaN, not a weight
                    shadow_w = torch.where(sampled[rows, None].to(w.device), shadow_w, torch.nan)
                shadow[s].append(shadow_w)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.optim.grad_clip).item()
        self.optimizer.step()
        back = torch.argsort(torch.cat(groups)).to(mask_all.device)  # micro-batch order -> row order
        return StepResult(
            loss=loss_sum,
            weights=torch.cat(weights)[back],
            logp=torch.cat(logps)[back],
            shadow_weights={s: torch.cat(v)[back] for s, v in shadow.items()},
            grad_norm=grad_norm,
            fallback_frac=fallbacks / mask_all.shape[0],
        )

    def rollout_is_weight(self, batch: RolloutBatch, rows, logp, mask):
        """The rollout-correction weights c [b, R] of these rows (None under ``none``)."""
        if self.rollout_correction == "none":
            return None
        if batch.sampling_logprobs is None:
            raise ValueError(
                f"loss.rollout_correction={self.rollout_correction} needs the engine's sampling log-probs"
            )
        mu = batch.sampling_logprobs[rows].to(logp.device)
        return rollout_correction_weights(
            logp.detach(), mu, mask, self.rollout_correction, self.cfg.loss.rollout_is_cap
        )

    def shadow_rows(self, n_rows: int) -> torch.Tensor | None:
        """[B] bool: the rows whose shadow signals are computed (None: every row).

        The first ``ceil(diagnostics.shadow_sample * G)`` samples of every group: the G samples of a
        prompt are exchangeable draws, so this is a stratified random sample of the batch and each
        shadow mean over it is unbiased (its standard error: BENCHMARKS.md, "Shadow diagnostics").
        """
        d, g = self.cfg.diagnostics, self.cfg.budget.group_size
        if not d.shadow or d.shadow_sample >= 1.0:
            return None
        k = max(1, math.ceil(d.shadow_sample * g - 1e-9))
        return torch.arange(n_rows) % g < k

    def score(self, batch: RolloutBatch, rows: torch.Tensor, shadow_rows: torch.Tensor | None = None):
        """The (at most) two forwards for ``rows``: TokenStats [b, R] and the policy log-probs with grad.

        ``shadow_rows`` [b] bool: what only the shadow signals read (beyond the training signal's
        inputs) is computed on those rows alone, the adapter-off forward and the reference LM head
        included, and is NaN (hidden states: 0) on the others. None: everything on every row.
        """
        device = self.model.device
        # The forward sees only these rows' own width: left prompt padding and right response padding
        # that every row shares are cut (positions follow the attention mask, so nothing changes).
        prompt_mask, response_mask = batch.prompt_mask[rows], batch.response_mask[rows]
        first = int(prompt_mask.any(0).long().argmax()) if prompt_mask.any() else prompt_mask.shape[1] - 1
        last = int(response_mask.any(0).nonzero().max()) + 1 if response_mask.any() else 1
        p = prompt_mask.shape[1] - first
        input_ids = torch.cat([batch.prompt_ids[rows, first:], batch.response_ids[rows, :last]], 1).to(device)
        attn = torch.cat([prompt_mask[:, first:], response_mask[:, :last]], 1).to(device)
        mask = response_mask[:, :last].to(device)
        targets = batch.response_ids[rows, :last].to(device)[mask]
        full_mask = response_mask.to(device)  # outputs keep the batch's width
        layer = self.cfg.credit.layer
        _, head = _decoder_and_head(self.model)

        need, need_sample = self.need, set()
        if shadow_rows is not None and not bool(shadow_rows.all()) and not head.weight.requires_grad:
            need, need_sample = self.need_train, self.need - self.need_train
            shadow_rows = shadow_rows.to(device)
        ref_fields = {"ref_logp", "ref_entropy", "kl", "ref_hidden"}
        ref_rows = shadow_rows if not need & ref_fields and need_sample & ref_fields else None
        ref_head = bool((need | need_sample) & {"ref_logp", "ref_entropy", "kl"})  # else stop at credit.layer
        ref_final = ref_layer = None
        if need & ref_fields or (ref_rows is not None and bool(ref_rows.any())):
            on = slice(None) if ref_rows is None else ref_rows  # None: every row
            with torch.no_grad(), self.model.disable_adapter():
                ref_final, ref_layer = (
                    None if h is None else h[:, p - 1 : -1][mask[on]]
                    for h in forward_hidden(
                        self.model,
                        input_ids[on],
                        attn[on],
                        layer,
                        final=ref_head,
                        autocast_bf16=self.autocast_bf16,
                    )
                )
        final, at_layer = (
            h[:, p - 1 : -1][mask]
            for h in forward_hidden(
                self.model,
                input_ids,
                attn,
                layer,
                checkpoint=self.cfg.learner.gradient_checkpointing,
                autocast_bf16=self.autocast_bf16,
            )
        )
        chunk = auto_chunk_size(
            head.weight.shape[0], self.cfg.learner.chunk_memory_mb, self.cfg.learner.chunk_size
        )
        vocab_fields = {"logp", "entropy", "ref_logp", "ref_entropy", "kl"}
        if head.weight.requires_grad:  # a trainable head: the plain path, whose backward forms its gradient
            vocab = vocab_stats(
                final.detach(),
                head.weight,
                targets,
                ref_final,
                temperature=self.temperature,
                chunk_size=chunk,
                need=need & vocab_fields,
            )
            logp_flat = target_logprob(final, head.weight, targets, self.temperature, chunk, value=vocab.logp)
        else:
            logp_flat, vocab = fused_scores(
                final,
                head.weight,
                targets,
                ref_final,
                temperature=self.temperature,
                chunk_size=chunk,
                need=need & vocab_fields,
                sample=shadow_rows[:, None].expand_as(mask)[mask] if need_sample else None,
                need_sample=need_sample & vocab_fields,
            )

        def unflatten(x, where=full_mask):
            if x is None:
                return None
            out = x.new_zeros(where.shape + x.shape[1:])
            out[where] = x.detach() if x.requires_grad else x
            return out

        logp = logp_flat.new_zeros(full_mask.shape).masked_scatter(full_mask, logp_flat)
        needs_hidden = "hidden" in self.need or "ref_hidden" in self.need
        ref_where = full_mask if ref_rows is None else full_mask & ref_rows[:, None]  # none sampled: all 0
        stats = credit.TokenStats(
            mask=full_mask,
            logp=logp.detach(),
            entropy=unflatten(vocab.entropy),
            ref_logp=unflatten(vocab.ref_logp),
            ref_entropy=unflatten(vocab.ref_entropy),
            kl=unflatten(vocab.kl),
            hidden=unflatten(at_layer.detach()) if needs_hidden else None,
            ref_hidden=(
                unflatten(ref_layer if ref_layer is not None else at_layer[:0].detach(), ref_where)
                if needs_hidden
                else None
            ),
        )
        return stats, logp
