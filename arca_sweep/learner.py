"""The GRPO learner (SPEC: "Policy, reference, rollouts", "Loss", "One scoring pass feeds every signal").

Per step and per micro-batch of sequences, at most two forwards: the policy (with grad) and one
no-grad pass with the adapter disabled, run only when a signal, a shadow signal or the KL
penalty needs it. Every per-token quantity of response token y_t comes from the position that
predicts it (the position of y_{t-1}, or the last prompt token for t = 1).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field, fields

import torch

from arca_sweep import credit
from arca_sweep.rollout import RolloutBatch
from arca_sweep.token_stats import target_logprob, vocab_stats

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


def ppo_clip_token_loss(
    logp, logp_old, token_adv, clip_low: float, clip_high: float, ref_logp=None, beta: float = 0.0
):
    """Per-token loss -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) + beta * k3, with
    rho = exp(logp - logp_old) and k3 = exp(ref - logp) - (ref - logp) - 1 (an unbiased,
    non-negative estimate of KL(pi_theta || pi_ref))."""
    ratio = torch.exp(logp - logp_old)
    loss = -torch.minimum(ratio * token_adv, ratio.clamp(1 - clip_low, 1 + clip_high) * token_adv)
    if beta:
        log_r = ref_logp - logp
        loss = loss + beta * (torch.exp(log_r) - log_r - 1)
    return loss


def credit_token_loss(
    logp, logp_old, token_adv, tc, clip_low: float, clip_high: float, ref_logp, beta: float
):
    """The per-token loss with a credit method's modifiers (:class:`arca_sweep.credit.TokenCredit`):

    ``grad_mask_t * [ppo_clip(rho_t, A_t; eps_low_t, eps_high_t) + beta_t * k3_t + c_t * |log rho_t|]``

    where ``eps_*_t`` is the method's per-token clip range (else ``clip_low``/``clip_high``), ``beta_t``
    its per-token KL coefficient (else ``beta``), ``c_t`` its ratio penalty (else 0), and the grad mask
    zeroes the loss of the tokens it drops (else all kept). With no modifier set this is
    :func:`ppo_clip_token_loss` exactly.
    """
    low = clip_low if tc.clip_low is None else tc.clip_low.to(logp.dtype)
    high = clip_high if tc.clip_high is None else tc.clip_high.to(logp.dtype)
    per_token_kl = tc.ref_kl_coef is not None
    loss = ppo_clip_token_loss(logp, logp_old, token_adv, low, high, ref_logp, 0.0 if per_token_kl else beta)
    if per_token_kl:
        log_r = ref_logp - logp
        loss = loss + tc.ref_kl_coef * (torch.exp(log_r) - log_r - 1)
    if tc.ratio_penalty is not None:
        loss = loss + tc.ratio_penalty * (logp - logp_old).abs()
    if tc.grad_mask is not None:
        loss = torch.where(tc.grad_mask, loss, 0.0)
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


def _decoder_and_head(model):
    base = model.get_base_model()
    return getattr(base, base.base_model_prefix), base.get_output_embeddings()


def forward_hidden(model, input_ids, attention_mask, layer: int):
    """(final hidden [B, L, D] fed to the LM head, hidden at ``layer``) of one forward.

    Position ids follow the attention mask, as in generation, so left padding changes nothing.
    """
    decoder, _ = _decoder_and_head(model)
    position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    out = decoder(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        output_hidden_states=layer != -1,
        use_cache=False,
    )
    final = out.last_hidden_state
    return final, final if layer == -1 else out.hidden_states[layer]


@dataclass
class StepResult:
    loss: float
    weights: torch.Tensor  # [B, R] training weights (0 off the response)
    shadow_weights: dict[str, torch.Tensor]  # signal -> [B, R] weights, every signal when shadow is on
    logp: torch.Tensor  # [B, R] learner log-probs (detached)
    grad_norm: float
    fallback_frac: float
    metrics: dict[str, float] = field(default_factory=dict)  # policy/*, loss/* diagnostics


class Learner:
    """Scores a rollout batch, computes its credit, applies the PPO-clip update(s) to the LoRA parameters."""

    def __init__(self, model, cfg, temperature: float):
        self.model, self.cfg, self.temperature = model, cfg, temperature
        self.params = [p for p in model.parameters() if p.requires_grad]
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(
            self.params, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas)
        )
        self.signals = credit.shadow_names() if cfg.diagnostics.shadow else [cfg.credit.name]
        if (
            cfg.credit.name == "custom" or cfg.diagnostics.shadow and cfg.credit.target
        ) and "custom" not in self.signals:
            self.signals.append("custom")  # a user's method joins the shadow diagnostics of every arm
        self.signal_options = dict(mode=cfg.credit.mode, estimator=cfg.credit.estimator)
        names = dict.fromkeys([*self.signals, cfg.credit.name])  # ordered: credit is computed in this order
        self.methods = {name: self._method(name) for name in names}
        self.method = self.methods[cfg.credit.name]
        need = {"logp"}.union(*(self._needs(name) for name in self.methods))
        if cfg.diagnostics.entropy:
            need.add("entropy")  # policy/entropy: from the logits the policy pass computes anyway
        if cfg.loss.beta or need & {"ref_entropy", "kl"}:
            need.add("ref_logp")  # free once the reference LM head runs
        self.need = need
        self.need_vocab = need & {"entropy", "ref_logp", "ref_entropy", "kl"}
        if self.need_vocab:
            self.need_vocab.add("logp")  # the policy's logits are computed there anyway: read log pi(y) once
        self.need_ref = bool(need & {"ref_logp", "ref_entropy", "kl", "ref_hidden"})

    def _method(self, name: str) -> credit.Method:
        if name != "custom":
            return credit.as_method(name)
        from arca_sweep.plugins import load_callable

        return credit.custom_method(load_callable(self.cfg.credit.target, "credit.target"))

    def _needs(self, name: str) -> set[str]:
        if name in credit.SIGNALS:
            return set(credit.needed_stats([name], self.signal_options))
        return set(self.methods[name].needs)

    def credit_of(self, name: str, stats: credit.TokenStats, ctx: credit.GroupContext) -> credit.TokenCredit:
        """Method ``name``'s TokenCredit: signals take credit.mode/estimator, methods credit.options."""
        if name in credit.SIGNALS:
            return self.methods[name].fn(stats, ctx, **self.signal_options)
        options = dict(self.cfg.credit.options) if name == self.cfg.credit.name else {}
        return self.methods[name].fn(stats, ctx, **options)

    def normalized(self, name: str, salience: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token weights of ``name``: credit.normalize for the training method and the signals, a
        method's own normalization (e.g. ``none`` for a 0/1 mask) for its shadow weights."""
        c = self.cfg.credit
        method = c.normalize if name == c.name else (self.methods[name].normalize or c.normalize)
        return credit.normalize(
            salience, mask, method=method, temperature=c.temperature, mix=c.mix, clip_max=c.clip_max
        )

    def micro_batches(self, rows: torch.Tensor) -> list[torch.Tensor]:
        """``rows`` in micro-batches of ``learner.micro_batch_size`` sequences."""
        return list(rows.split(self.cfg.learner.micro_batch_size))

    def step(
        self,
        batch: RolloutBatch,
        advantages: torch.Tensor,
        rewards: torch.Tensor | None = None,
        step: int = 0,
    ) -> StepResult:
        """Score the batch once, compute credit once, then ``learner.ppo_epochs`` x ``learner.mini_batches``
        PPO-clip updates (SPEC "Multi-update PPO"; TRL num_iterations / steps_per_generation, verl
        ppo_epochs / ppo_mini_batch_size).

        logp_old is the scoring pass's detached log-prob, and credit (weights, bonus, per-token clip
        ranges and penalties) is computed from that pass once per batch, so rho = 1 on the first update
        and the clip, Clip-Cov, KL-Cov and ARCHER's ranges act from the second one on. Mini-batches are
        contiguous row ranges in batch order (``torch.chunk``: whole prompt groups when M divides the
        number of prompts), the same each epoch; each update's loss is aggregated over its own mini-batch. With E = M = 1 and a
        row-scope method the scoring forward also carries the gradient: exactly the single GRPO update.
        Otherwise the scoring pass runs without grad, then one policy-only forward per micro-batch and
        update (the reference log-probs are kept from the scoring pass).
        """
        lr = self.cfg.learner
        n = batch.response_mask.shape[0]
        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + step)
        ctx = credit.GroupContext(
            advantages, self.cfg.budget.group_size, rewards, batch.response_ids, generator
        )
        single = lr.ppo_epochs == 1 and lr.mini_batches == 1 and self.method.scope == "row"
        scoring, tracker = _ScoringPass(self, ctx, n), _UpdateTracker()
        everything = torch.arange(n)
        self.optimizer.zero_grad(set_to_none=True)
        for rows in self.micro_batches(everything):
            with torch.set_grad_enabled(single):
                stats, logp = self.score(batch, rows)
            tc = scoring.add(rows, stats)
            if single:
                self._backward(
                    logp, stats.logp, stats.ref_logp, stats.mask, ctx.advantages[rows], tc, batch, tracker
                )
        if single:
            tracker.step(self)
        else:
            train, logp_old, ref_logp = scoring.training_credit(), scoring.logp_old, scoring.ref_logp
            for _ in range(lr.ppo_epochs):
                for mini in everything.chunk(lr.mini_batches):
                    self.optimizer.zero_grad(set_to_none=True)
                    for rows in self.micro_batches(mini):
                        with self._policy_only():
                            stats, logp = self.score(batch, rows)
                        width = logp.shape[1]
                        old = logp_old[rows, :width]
                        ref = None if ref_logp is None else ref_logp[rows, :width]
                        tc = train.rows(rows, width)
                        self._backward(
                            logp, old, ref, stats.mask, ctx.advantages[rows], tc, batch, tracker, mini
                        )
                    tracker.step(self)
        weights, shadow = scoring.weights()
        return StepResult(
            loss=tracker.mean("loss"),
            weights=weights,
            shadow_weights=shadow,
            logp=scoring.logp_old,
            grad_norm=tracker.mean("grad_norm"),
            fallback_frac=scoring.fallbacks / n,
            metrics={**scoring.metrics(), **tracker.metrics()},
        )

    def _backward(self, logp, logp_old, ref_logp, mask, advantages, tc, batch, tracker, mini=None) -> None:
        """Backward of one micro-batch's share of an update's loss (aggregated over ``mini``'s rows, by
        default the whole batch)."""
        lc = self.cfg.loss
        in_update = batch.response_mask if mini is None else batch.response_mask[mini]
        totals = dict(
            total_tokens=int(in_update.sum()),
            total_seqs=in_update.shape[0],
            norm_len=self.cfg.budget.max_new_tokens,
        )
        w = self.normalized(self.cfg.credit.name, tc.salience, mask)
        token_adv = advantages[:, None] * w
        if tc.bonus is not None:
            token_adv = token_adv + tc.bonus
        token_loss = credit_token_loss(
            logp, logp_old, token_adv, tc, lc.clip_low, lc.clip_high, ref_logp, lc.beta
        )
        loss = aggregate_loss(token_loss, mask, lc.agg, **totals)
        loss.backward()
        clip_low = lc.clip_low if tc.clip_low is None else tc.clip_low
        clip_high = lc.clip_high if tc.clip_high is None else tc.clip_high
        tracker.add(loss.item(), logp.detach(), logp_old, token_adv, mask, clip_low, clip_high)

    @contextmanager
    def _policy_only(self):
        """score() computes only the policy's log-probs (with grad): the update passes after scoring."""
        saved = self.need, self.need_vocab, self.need_ref
        self.need, self.need_vocab, self.need_ref = {"logp"}, set(), False
        try:
            yield
        finally:
            self.need, self.need_vocab, self.need_ref = saved

    def score(self, batch: RolloutBatch, rows: torch.Tensor):
        """The (at most) two forwards for ``rows``: TokenStats [b, R] and the policy log-probs with grad."""
        device = self.model.device
        p = batch.prompt_ids.shape[1]
        input_ids = torch.cat([batch.prompt_ids[rows], batch.response_ids[rows]], 1).to(device)
        attn = torch.cat([batch.prompt_mask[rows], batch.response_mask[rows]], 1).to(device)
        mask = batch.response_mask[rows].to(device)
        targets = batch.response_ids[rows].to(device)[mask]
        layer = self.cfg.credit.layer
        _, head = _decoder_and_head(self.model)

        def response_positions(h):  # [b, L, D] -> [N, D] at the positions predicting each response token
            return h[:, p - 1 : -1][mask]

        ref_final = ref_layer = None
        if self.need_ref:
            with torch.no_grad(), self.model.disable_adapter():
                ref_final, ref_layer = (
                    response_positions(h) for h in forward_hidden(self.model, input_ids, attn, layer)
                )
        final, at_layer = (response_positions(h) for h in forward_hidden(self.model, input_ids, attn, layer))
        vocab = vocab_stats(
            final.detach(),
            head.weight,
            targets,
            ref_final,
            temperature=self.temperature,
            chunk_size=self.cfg.learner.chunk_size,
            need=self.need_vocab,
        )
        logp_flat = target_logprob(
            final, head.weight, targets, self.temperature, self.cfg.learner.chunk_size, value=vocab.logp
        )

        def unflatten(x):
            if x is None:
                return None
            out = x.new_zeros(mask.shape + x.shape[1:])
            out[mask] = x.detach() if x.requires_grad else x
            return out

        logp = logp_flat.new_zeros(mask.shape).masked_scatter(mask, logp_flat)
        needs_hidden = "hidden" in self.need or "ref_hidden" in self.need
        stats = credit.TokenStats(
            mask=mask,
            logp=logp.detach(),
            entropy=unflatten(vocab.entropy),
            ref_logp=unflatten(vocab.ref_logp),
            ref_entropy=unflatten(vocab.ref_entropy),
            kl=unflatten(vocab.kl),
            hidden=unflatten(at_layer.detach()) if needs_hidden else None,
            ref_hidden=unflatten(ref_layer) if needs_hidden else None,
        )
        return stats, logp


class _ScoringPass:
    """What the scoring pass keeps of each micro-batch, placed at the batch's rows: logp_old (and
    ref_logp for the loss), the training method's credit, every shadow method's weights (row scope: per
    micro-batch; batch scope: at the end, from the few [B, T] fields they read), the policy's entropy
    and exact KL to the reference for the diagnostics."""

    def __init__(self, learner: Learner, ctx: credit.GroupContext, n: int):
        self.learner, self.ctx, self.n = learner, ctx, n
        self.rows: list[torch.Tensor] = []
        self.parts: dict[str, list[torch.Tensor]] = {"logp": [], "ref_logp": [], "mask": []}
        self.batch_scope = [name for name, m in learner.methods.items() if m.scope == "batch"]
        self.kept = set().union(*(learner._needs(name) for name in self.batch_scope)) - {"logp", "ref_logp"}
        self.parts.update({f: [] for f in self.kept})
        self.credit_parts: list[credit.TokenCredit] = []
        self.shadow_parts: dict[str, list[torch.Tensor]] = {s: [] for s in learner.signals}
        self.sums, self.seen = {"entropy": 0.0, "kl": 0.0, "tokens": 0}, set()
        self.fallbacks = 0
        self.train: credit.TokenCredit | None = None
        self._batch: dict[str, credit.TokenCredit] | None = None

    def add(self, rows: torch.Tensor, stats: credit.TokenStats) -> credit.TokenCredit | None:
        """Keep this micro-batch; return the training method's credit when it has row scope."""
        learner, name = self.learner, self.learner.cfg.credit.name
        self.rows.append(rows)
        for f in self.parts:
            value = getattr(stats, f)
            if value is not None:
                self.parts[f].append(value.detach())
        n_tokens = int(stats.mask.sum())
        self.sums["tokens"] += n_tokens
        for f in ("entropy", "kl"):
            if getattr(stats, f) is not None:
                self.seen.add(f)
                self.sums[f] += torch.where(stats.mask, getattr(stats, f), 0.0).sum().item()
        ctx, tc = self.ctx.rows(rows), None
        for s, method in learner.methods.items():
            if method.scope != "row":
                continue
            out = learner.credit_of(s, stats, ctx)
            if s == name:
                tc = out
                self.credit_parts.append(out)
                self._count_fallbacks(out.salience, stats.mask)
            if s in self.shadow_parts:
                self.shadow_parts[s].append(learner.normalized(s, out.salience, stats.mask))
        return tc

    def _count_fallbacks(self, salience, mask) -> None:
        if self.learner.cfg.credit.normalize != "none":
            self.fallbacks += int(credit.fallback_rows(salience, mask).sum())

    def _placed(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """The micro-batches' rows at their places in the batch, right-padded with 0 to the widest."""
        width = max(p.shape[1] for p in parts)
        out = parts[0].new_zeros((self.n, width, *parts[0].shape[2:]))
        for rows, p in zip(self.rows, parts, strict=True):
            out[rows.to(out.device), : p.shape[1]] = p
        return out

    @property
    def logp_old(self) -> torch.Tensor:
        return self._placed(self.parts["logp"])

    @property
    def ref_logp(self) -> torch.Tensor | None:
        return self._placed(self.parts["ref_logp"]) if self.parts["ref_logp"] else None

    def _batch_stats(self) -> credit.TokenStats:
        kept = {f: self._placed(v) for f, v in self.parts.items() if v and f != "mask"}
        return credit.TokenStats(mask=self._placed(self.parts["mask"]).bool(), **kept)

    def _batch_credit(self) -> dict[str, credit.TokenCredit]:
        if self._batch is None:
            stats = self._batch_stats() if self.batch_scope else None
            self._batch = {s: self.learner.credit_of(s, stats, self.ctx) for s in self.batch_scope}
        return self._batch

    def training_credit(self) -> credit.TokenCredit:
        """The training method's credit over the whole batch (batch order)."""
        if self.train is None:
            name = self.learner.cfg.credit.name
            if name in self.batch_scope:
                self.train = self._batch_credit()[name]
                self._count_fallbacks(self.train.salience, self._placed(self.parts["mask"]).bool())
            else:
                placed = {
                    f.name: self._placed([getattr(p, f.name) for p in self.credit_parts])
                    for f in fields(credit.TokenCredit)
                    if getattr(self.credit_parts[0], f.name) is not None
                }
                self.train = credit.TokenCredit(**placed)
        return self.train

    def weights(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(the training weights [B, R], every shadow name's weights [B, R]), in batch order."""
        learner, name = self.learner, self.learner.cfg.credit.name
        mask = self._placed(self.parts["mask"]).bool()
        train = self.training_credit()
        weights = learner.normalized(name, train.salience, mask)
        shadow = {}
        for s in learner.signals:
            if s == name:
                shadow[s] = weights
            elif s in self.batch_scope:
                shadow[s] = learner.normalized(s, self._batch_credit()[s].salience, mask)
            else:
                shadow[s] = self._placed(self.shadow_parts[s])
        return weights, shadow

    def metrics(self) -> dict[str, float]:
        """``policy/entropy`` (token mean of H(pi_theta)) and ``policy/kl_ref`` (token mean of the exact
        KL(pi_theta || pi_ref)), where the scoring pass computed them."""
        tokens = max(self.sums["tokens"], 1)
        names = {"entropy": "policy/entropy", "kl": "policy/kl_ref"}
        return {names[f]: self.sums[f] / tokens for f in self.seen}


class _UpdateTracker:
    """Per-update loss and gradient norm; clip fractions and approximate KL over every update's tokens.

    ``loss/clip_frac/low``: share of response tokens with A < 0 and rho < 1 - eps_low (the lower clip
    binds); ``high``: A > 0 and rho > 1 + eps_high (TRL's definitions). ``loss/approx_kl``: token mean of
    k3 = (rho - 1) - log rho between the scoring pass and the policy at each update (0 at the first).
    All averaged over every update's tokens."""

    def __init__(self):
        self.losses, self.grad_norms, self.current = [], [], 0.0
        self.counts = {"low": 0, "high": 0, "kl": 0.0, "tokens": 0}

    def add(self, loss, logp, logp_old, token_adv, mask, clip_low, clip_high) -> None:
        self.current += loss
        log_ratio = torch.where(mask, logp - logp_old, 0.0)
        ratio = torch.exp(log_ratio)
        self.counts["low"] += int(((ratio < 1 - clip_low) & (token_adv < 0) & mask).sum())
        self.counts["high"] += int(((ratio > 1 + clip_high) & (token_adv > 0) & mask).sum())
        self.counts["kl"] += torch.where(mask, ratio - 1 - log_ratio, 0.0).sum().item()
        self.counts["tokens"] += int(mask.sum())

    def step(self, learner: Learner) -> None:
        """Clip the gradient norm, step the optimizer, close the update's record."""
        grad_norm = torch.nn.utils.clip_grad_norm_(learner.params, learner.cfg.optim.grad_clip).item()
        learner.optimizer.step()
        self.losses.append(self.current)
        self.grad_norms.append(grad_norm)
        self.current = 0.0

    def mean(self, what: str) -> float:
        values = self.losses if what == "loss" else self.grad_norms
        return sum(values) / len(values)

    def metrics(self) -> dict[str, float]:
        tokens = max(self.counts["tokens"], 1)
        return {
            "loss/clip_frac/low": self.counts["low"] / tokens,
            "loss/clip_frac/high": self.counts["high"] / tokens,
            "loss/approx_kl": self.counts["kl"] / tokens,
            "loss/updates": float(len(self.losses)),
        }
