"""The update: one scoring pass over a rollout batch, its credit, then E x M PPO-clip updates.

Per step and per micro-batch of sequences, at most two forwards: the policy (with grad) and one
no-grad pass with the adapter disabled, run only when a signal, a shadow signal or the KL
penalty needs it. Every per-token quantity of response token y_t comes from the position that
predicts it (the position of y_{t-1}, or the last prompt token for t = 1).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, fields

import torch

from arca_sweep import credit
from arca_sweep.distributed import SINGLE, World, my_rows
from arca_sweep.learner.decoder import decoder_and_head, response_hidden
from arca_sweep.learner.loss import aggregate_loss, credit_token_loss, policy_log_ratio
from arca_sweep.learner.rollout_correction import resolve_mode, rollout_correction_weights
from arca_sweep.learner.settings import LearnerSettings
from arca_sweep.learner.token_stats import auto_chunk_size, fused_scores, target_logprob, vocab_stats
from arca_sweep.rollout import RolloutBatch


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


@dataclass
class StepResult:
    loss: float
    weights: torch.Tensor  # [B, R] training weights (0 off the response)
    shadow_weights: dict[str, torch.Tensor]  # signal -> [B, R] weights, every signal when shadow is on
    logp: torch.Tensor  # [B, R] learner log-probs (detached)
    grad_norm: float
    fallback_frac: float
    metrics: dict[str, float] = field(default_factory=dict)  # policy/*, loss/* diagnostics


class CreditPlan:
    """The step's credit methods (the training method and every shadow signal): what each reads of
    the scoring pass, its credit and its normalized token weights."""

    def __init__(self, settings: LearnerSettings):
        s = self.settings = settings
        self.name = s.credit
        self.signals = credit.shadow_names() if s.shadow else [s.credit]
        if (s.credit == "custom" or s.shadow and s.credit_target) and "custom" not in self.signals:
            self.signals.append("custom")  # a user's method joins the shadow diagnostics of every arm
        self.signal_options = dict(s.signal_options)
        names = dict.fromkeys([*self.signals, s.credit])  # ordered: credit is computed in this order
        self.methods = {name: self._method(name) for name in names}

    def _method(self, name: str) -> credit.Method:
        """Method ``name`` with its options bound: credit.options for the training method, and
        credit.mode/estimator for a signal (:func:`arca_sweep.credit.method`)."""
        options = dict(self.settings.credit_options or {}) if name == self.name else {}
        if name != "custom":
            return credit.method(name, options, self.signal_options)
        from arca_sweep.plugins import load_callable

        fn = load_callable(self.settings.credit_target, "credit.target")
        return credit.custom_method(fn, timeout_s=self.settings.credit_timeout_s).bind(options)

    def needs(self, name: str) -> set[str]:
        """The TokenStats fields method ``name`` reads."""
        return set(self.methods[name].needs)

    def credit_of(self, name: str, stats: credit.TokenStats, ctx: credit.GroupContext) -> credit.TokenCredit:
        """Method ``name``'s TokenCredit, its options bound by :meth:`_method`."""
        return self.methods[name].fn(stats, ctx)

    def normalized(self, name: str, salience: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token weights of ``name``: credit.normalize for the training method and the signals, a
        method's own normalization (e.g. ``none`` for a 0/1 mask) for its shadow weights."""
        s = self.settings
        method = s.normalize if name == self.name else (self.methods[name].normalize or s.normalize)
        return credit.normalize(
            salience, mask, method=method, temperature=s.normalize_temperature, mix=s.mix, clip_max=s.clip_max
        )


class Learner:
    """Scores a rollout batch, computes its credit, applies the PPO-clip update(s) to the LoRA parameters."""

    def __init__(self, model, settings: LearnerSettings, temperature: float, world: World = SINGLE):
        """``settings``: :meth:`LearnerSettings.from_config`; ``temperature``: the rollout's sampling one;
        ``world``: the arm's processes (:mod:`arca_sweep.distributed`): this one scores and backpropagates
        its own prompts' rows, and the update is the one-process update."""
        s = self.settings = settings
        self.model, self.temperature, self.world = model, temperature, world
        # dist.shard: every forward and backward of a decoder layer is a collective (arca_sweep/distributed/fsdp.py)
        self.sharded = any(hasattr(p, "device_mesh") for p in model.parameters())
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=s.lr, weight_decay=s.weight_decay, betas=s.betas)
        self.credit = CreditPlan(s)
        self.signals, self.methods = self.credit.signals, self.credit.methods
        self.signal_options = self.credit.signal_options
        self.method = self.methods[s.credit]
        need = {"logp"}.union(*(self.credit.needs(name) for name in self.methods))
        if s.entropy:
            need.add("entropy")  # policy/entropy: from the logits the policy pass computes anyway
        if s.beta or need & {"ref_entropy", "kl"}:
            need.add("ref_logp")  # free once the reference LM head runs
        self.need = need
        # What the loss reads on every row; the other signals' inputs only on the shadow sample.
        # (entropy for policy/entropy and the inputs of batch-scope methods: cheap, from the policy's logits)
        train = {"logp"} | self.credit.needs(s.credit)
        train = train.union(*(self.credit.needs(n) for n, m in self.methods.items() if m.scope == "batch"))
        if s.entropy:
            train.add("entropy")
        if s.beta or train & {"ref_entropy", "kl"}:
            train.add("ref_logp")
        self.need_train = train
        self.autocast_bf16 = s.autocast_bf16
        self.rollout_correction = resolve_mode(
            s.rollout_correction, next(model.parameters()).dtype, s.engine_dtype
        )

    def _row_groups(self, batch: RolloutBatch, rows: torch.Tensor) -> list[torch.Tensor]:
        """``rows`` in micro-batches (:func:`micro_batches`: length-sorted, within
        ``learner.micro_batch_tokens``, at most ``learner.micro_batch_size`` rows each)."""
        s = self.settings
        if len(rows) == 0:  # (a rank holds none of a mini-batch's rows)
            return []
        groups = micro_batches(
            batch.prompt_mask[rows].sum(1),
            batch.response_mask[rows].sum(1),
            s.micro_batch_size,
            s.micro_batch_tokens,
        )
        return [rows[g] for g in groups]

    def _all_share(self, shared: bool) -> bool:
        """Sharded: whether every rank's forward shares its prompts' pass (:func:`response_hidden`)."""
        return self.world.max_int(int(not shared)) == 0

    def _lockstep(self, groups: list[torch.Tensor]) -> list[torch.Tensor | None]:
        """Sharded: as many micro-batches on every rank (None: a stand-in, :meth:`_stand_in`)."""
        if not self.sharded:
            return groups
        return groups + [None] * (self.world.max_int(len(groups)) - len(groups))

    def _stand_in(self, batch: RolloutBatch, grad: bool, policy_only: bool = False) -> None:
        """A sharded rank's forward (and backward) on rows whose loss counts 0: the layers' collectives of a
        micro-batch it does not have. Two samples of one prompt, so that it shares its prompt's pass as the
        other ranks' micro-batches do (:func:`response_hidden`'s ``agree``): their rounding stays the
        one-process run's."""
        rows = torch.arange(min(2, self.settings.group_size, batch.response_mask.shape[0]))
        with torch.set_grad_enabled(grad), self._policy_only() if policy_only else contextlib.nullcontext():
            _, logp = self.score(batch, rows)
        if grad:
            (logp.sum() * 0.0).backward()

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

        Across processes (``world``) each scores its own rows (:func:`~arca_sweep.distributed.my_rows`) of
        the whole batch it holds; what the scoring pass keeps is gathered (so batch-scope credit sees the
        whole batch), loss aggregations read the whole batch's counts and gradients are summed.
        """
        lr = self.settings
        n = batch.response_mask.shape[0]
        generator = torch.Generator().manual_seed(self.settings.seed * 1_000_003 + step)
        ctx = credit.GroupContext(
            advantages, self.settings.group_size, rewards, batch.response_ids, generator
        )
        single = lr.ppo_epochs == 1 and lr.mini_batches == 1 and self.method.scope == "row"
        sampled = self.shadow_rows(n)  # the other methods' weights on this sample of rows only
        scoring, tracker = _ScoringPass(self.credit, ctx, n, sampled), _UpdateTracker(self.world)
        everything = torch.arange(n)
        mine = my_rows(n, self.settings.group_size, self.world)
        self.optimizer.zero_grad(set_to_none=True)
        for rows in self._lockstep(self._row_groups(batch, mine)):
            if rows is None:
                self._stand_in(batch, grad=single)
                continue
            with torch.set_grad_enabled(single):
                stats, logp = self.score(batch, rows, None if sampled is None else sampled[rows])
            tc = scoring.add(rows, stats)
            if single:
                self._backward(
                    rows,
                    logp,
                    stats.logp,
                    stats.ref_logp,
                    stats.mask,
                    ctx.advantages[rows],
                    tc,
                    batch,
                    tracker,
                )
        scoring.gather(self.world)
        if single:
            tracker.step(self.params, self.optimizer, self.settings.grad_clip)
        else:
            train, logp_old, ref_logp = scoring.training_credit(), scoring.logp_old, scoring.ref_logp
            for _ in range(lr.ppo_epochs):
                for mini in everything.chunk(lr.mini_batches):
                    self.optimizer.zero_grad(set_to_none=True)
                    for rows in self._lockstep(self._row_groups(batch, mini[torch.isin(mini, mine)])):
                        if rows is None:
                            self._stand_in(batch, grad=True, policy_only=True)
                            continue
                        with self._policy_only():
                            stats, logp = self.score(batch, rows)
                        width = logp.shape[1]
                        old = logp_old[rows, :width]
                        ref = None if ref_logp is None else ref_logp[rows, :width]
                        tc = train.rows(rows, width)
                        self._backward(
                            rows, logp, old, ref, stats.mask, ctx.advantages[rows], tc, batch, tracker, mini
                        )
                    tracker.step(self.params, self.optimizer, self.settings.grad_clip)
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

    def _backward(
        self, rows, logp, logp_old, ref_logp, mask, advantages, tc, batch, tracker, mini=None
    ) -> None:
        """Backward of one micro-batch's share of an update's loss (aggregated over ``mini``'s rows, by
        default the whole batch)."""
        lc = self.settings
        in_update = batch.response_mask if mini is None else batch.response_mask[mini]
        totals = dict(
            total_tokens=int(in_update.sum()),
            total_seqs=in_update.shape[0],
            norm_len=lc.norm_len,
        )
        w = self.credit.normalized(lc.credit, tc.salience, mask)
        is_weight = self.rollout_is_weight(batch, rows, logp_old, mask)
        token_adv = advantages[:, None] * w
        if tc.bonus is not None:
            token_adv = token_adv + tc.bonus
        log_ratio = policy_log_ratio(logp, logp_old, mask, lc.ratio_level)
        token_loss = credit_token_loss(
            logp, logp_old, token_adv, tc, lc.clip_low, lc.clip_high, ref_logp, lc.beta, is_weight, log_ratio
        )
        loss = aggregate_loss(token_loss, mask, lc.agg, **totals)
        loss.backward()
        clip_low = lc.clip_low if tc.clip_low is None else tc.clip_low
        clip_high = lc.clip_high if tc.clip_high is None else tc.clip_high
        tracker.add(
            loss.item(), logp.detach(), logp_old, token_adv, mask, clip_low, clip_high, log_ratio.detach()
        )

    @contextlib.contextmanager
    def _policy_only(self):
        """score() computes only the policy's log-probs (with grad): the update passes after scoring."""
        saved = self.need, self.need_train
        self.need = self.need_train = {"logp"}
        try:
            yield
        finally:
            self.need, self.need_train = saved

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
            logp.detach(), mu, mask, self.rollout_correction, self.settings.rollout_is_cap
        )

    def shadow_rows(self, n_rows: int) -> torch.Tensor | None:
        """[B] bool: the rows whose shadow signals are computed (None: every row).

        The first ``ceil(diagnostics.shadow_sample * G)`` samples of every group: the G samples of a
        prompt are exchangeable draws, so this is a stratified random sample of the batch and each
        shadow mean over it is unbiased (its standard error: BENCHMARKS.md, "Shadow diagnostics").
        """
        d, g = self.settings, self.settings.group_size
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
        layer = self.settings.layer
        _, head = decoder_and_head(self.model)

        need, need_sample = self.need, set()
        if shadow_rows is not None and not bool(shadow_rows.all()) and not head.weight.requires_grad:
            need, need_sample = self.need_train, self.need - self.need_train
            shadow_rows = shadow_rows.to(device)
        ref_fields = {"ref_logp", "ref_entropy", "kl", "ref_hidden"}
        ref_rows = shadow_rows if not need & ref_fields and need_sample & ref_fields else None
        ref_head = bool((need | need_sample) & {"ref_logp", "ref_entropy", "kl"})  # else stop at credit.layer
        ref_final = ref_layer = None
        wanted = bool(need & ref_fields) or (ref_rows is not None and bool(ref_rows.any()))
        # sharded: the reference pass runs whenever any micro-batch may need it (a collective on every rank)
        if wanted or (self.sharded and bool(self.need & ref_fields)):
            on = slice(None) if ref_rows is None else ref_rows  # None: every row
            if not wanted:  # none of these rows needs it: one row's pass, its output dropped
                on = torch.arange(len(rows), device=device) == 0
            with torch.no_grad(), self.model.disable_adapter():
                ref_final, ref_layer = (
                    None if h is None else h[mask[on]]
                    for h in response_hidden(
                        self.model,
                        input_ids[on],
                        attn[on],
                        p,
                        layer,
                        final=ref_head,
                        autocast_bf16=self.autocast_bf16,
                        agree=self._all_share if self.sharded else None,
                    )
                )
            if not wanted:
                ref_final = ref_layer = None
        final, at_layer = (
            h[mask]
            for h in response_hidden(
                self.model,
                input_ids,
                attn,
                p,
                layer,
                final=True,
                checkpoint=self.settings.gradient_checkpointing,
                autocast_bf16=self.autocast_bf16,
                agree=self._all_share if self.sharded else None,
            )
        )
        chunk = auto_chunk_size(head.weight.shape[0], self.settings.chunk_memory_mb, self.settings.chunk_size)
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


class _ScoringPass:
    """What the scoring pass keeps of each micro-batch, placed at the batch's rows: logp_old (and
    ref_logp for the loss), the training method's credit, every shadow method's weights (row scope: per
    micro-batch; batch scope: at the end, from the few [B, T] fields they read), the policy's entropy
    and exact KL to the reference for the diagnostics."""

    def __init__(self, plan: CreditPlan, ctx: credit.GroupContext, n: int, sampled: torch.Tensor | None):
        self.plan, self.ctx, self.n, self.sampled = plan, ctx, n, sampled
        self.rows: list[torch.Tensor] = []
        self.parts: dict[str, list[torch.Tensor]] = {"logp": [], "ref_logp": [], "mask": []}
        self.batch_scope = [name for name, m in plan.methods.items() if m.scope == "batch"]
        self.kept = set().union(*(plan.needs(name) for name in self.batch_scope)) - {"logp", "ref_logp"}
        self.parts.update({f: [] for f in self.kept})
        self.credit_parts: list[credit.TokenCredit] = []
        self.shadow_parts: dict[str, list[torch.Tensor]] = {s: [] for s in plan.signals}
        self.sums, self.tokens = {"entropy": 0.0, "kl": 0.0}, {"entropy": 0, "kl": 0}
        self.fallbacks = 0
        self.train: credit.TokenCredit | None = None
        self._batch: dict[str, credit.TokenCredit] | None = None

    def add(self, rows: torch.Tensor, stats: credit.TokenStats) -> credit.TokenCredit | None:
        """Keep this micro-batch; return the training method's credit when it has row scope."""
        plan, name = self.plan, self.plan.name
        self.rows.append(rows)
        for f in self.parts:
            value = getattr(stats, f)
            if value is not None:
                self.parts[f].append(value.detach())
        for f in ("entropy", "kl"):
            if (value := getattr(stats, f)) is not None:
                counted = stats.mask & value.isfinite()  # NaN off the shadow sample
                self.sums[f] += value[counted].sum().item()
                self.tokens[f] += int(counted.sum())
        ctx, tc = self.ctx.rows(rows), None
        for s, method in plan.methods.items():
            if method.scope != "row":
                continue
            out = plan.credit_of(s, stats, ctx)
            if s == name:
                tc = out
                self.credit_parts.append(out)
                self._count_fallbacks(out.salience, stats.mask)
            if s in self.shadow_parts:
                self.shadow_parts[s].append(plan.normalized(s, out.salience, stats.mask))
        return tc

    def gather(self, world: World) -> None:
        """Every process's rows of what this pass kept, on every process (the rows in rank order; the
        entropy and KL sums and the fallback count summed), so the rest reads the whole batch."""
        if world.size == 1:
            return
        device = self.parts["logp"][0].device if self.parts["logp"] else torch.device("cpu")
        names = [f.name for f in fields(credit.TokenCredit)]
        mine = {
            "rows": torch.cat(self.rows) if self.rows else torch.zeros(0, dtype=torch.long),
            "parts": {f: _block(v) for f, v in self.parts.items()},
            "credit": {f: _block([getattr(c, f) for c in self.credit_parts]) for f in names},
            "shadow": {s: _block(v) for s, v in self.shadow_parts.items()},
            "counts": (self.sums, self.tokens, self.fallbacks),
        }
        everyone = world.all_gather_object(mine)
        held = [m for m in everyone if len(m["rows"])]

        def on(blocks):
            return [b.to(device) for b in blocks] if all(b is not None for b in blocks) else []

        self.rows = [m["rows"] for m in held]
        self.parts = {f: on([m["parts"][f] for m in held]) for f in self.parts}
        self.shadow_parts = {s: on([m["shadow"][s] for m in held]) for s in self.shadow_parts}
        if any(m["credit"]["salience"] is not None for m in held):
            blocks = {f: on([m["credit"][f] for m in held]) for f in names}
            self.credit_parts = [
                credit.TokenCredit(**{f: blocks[f][i] if blocks[f] else None for f in names})
                for i in range(len(held))
            ]
        for f in self.sums:
            self.sums[f] = sum(m["counts"][0][f] for m in everyone)
            self.tokens[f] = sum(m["counts"][1][f] for m in everyone)
        self.fallbacks = sum(m["counts"][2] for m in everyone)

    def _count_fallbacks(self, salience, mask) -> None:
        if self.plan.settings.normalize != "none":
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
            self._batch = {s: self.plan.credit_of(s, stats, self.ctx) for s in self.batch_scope}
        return self._batch

    def training_credit(self) -> credit.TokenCredit:
        """The training method's credit over the whole batch (batch order)."""
        if self.train is None:
            name = self.plan.name
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
        plan, name = self.plan, self.plan.name
        mask = self._placed(self.parts["mask"]).bool()
        train = self.training_credit()
        weights = plan.normalized(name, train.salience, mask)
        shadow = {}
        for s in plan.signals:
            if s == name:
                shadow[s] = weights
            elif s in self.batch_scope:
                shadow[s] = plan.normalized(s, self._batch_credit()[s].salience, mask)
            else:
                shadow[s] = self._placed(self.shadow_parts[s])
            if s != name and self.sampled is not None:  # off the shadow sample: NaN, not a weight
                shadow[s] = torch.where(self.sampled[:, None].to(mask.device), shadow[s], torch.nan)
        return weights, shadow

    def metrics(self) -> dict[str, float]:
        """``policy/entropy`` (token mean of H(pi_theta)) and ``policy/kl_ref`` (token mean of the exact
        KL(pi_theta || pi_ref)), where the scoring pass computed them."""
        names = {"entropy": "policy/entropy", "kl": "policy/kl_ref"}
        return {names[f]: self.sums[f] / self.tokens[f] for f in names if self.tokens[f]}


def _block(parts: list) -> torch.Tensor | None:
    """Micro-batch parts stacked in order (right-padded with 0 to the widest), on the CPU; None if absent."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    width = max(p.shape[1] for p in parts)
    padded = [torch.nn.functional.pad(p, (0, 0) * (p.dim() - 2) + (0, width - p.shape[1])) for p in parts]
    return torch.cat(padded).cpu()


class _UpdateTracker:
    """Per-update loss and gradient norm; clip fractions and approximate KL over every update's tokens.

    ``loss/clip_frac/low``: share of response tokens with A < 0 and rho < 1 - eps_low (the lower clip
    binds); ``high``: A > 0 and rho > 1 + eps_high (TRL's definitions). ``loss/approx_kl``: token mean of
    k3 = (rho - 1) - log rho between the scoring pass and the policy at each update (0 at the first).
    All averaged over every update's tokens."""

    def __init__(self, world: World = SINGLE):
        self.world = world
        self.losses, self.grad_norms, self.current = [], [], 0.0
        self.counts = {"low": 0, "high": 0, "kl": 0.0, "tokens": 0}

    def add(self, loss, logp, logp_old, token_adv, mask, clip_low, clip_high, clip_log_ratio) -> None:
        """``clip_log_ratio``: the ratio the clip saw (``loss.ratio_level``)."""
        self.current += loss
        log_ratio = torch.where(mask, logp - logp_old, 0.0)
        ratio = torch.exp(log_ratio)
        clipped = torch.exp(clip_log_ratio)
        self.counts["low"] += int(((clipped < 1 - clip_low) & (token_adv < 0) & mask).sum())
        self.counts["high"] += int(((clipped > 1 + clip_high) & (token_adv > 0) & mask).sum())
        self.counts["kl"] += torch.where(mask, ratio - 1 - log_ratio, 0.0).sum().item()
        self.counts["tokens"] += int(mask.sum())

    def step(self, params, optimizer, grad_clip: float) -> None:
        """Sum the gradients (and the update's loss) over the processes, clip the gradient norm of ``params``
        to ``grad_clip``, step the optimizer, close the record."""
        if self.world.size > 1:
            sum_gradients(params, self.world)
            (self.current,) = self.world.sum_floats(self.current)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip).item()
        optimizer.step()
        self.losses.append(self.current)
        self.grad_norms.append(grad_norm)
        self.current = 0.0

    def mean(self, what: str) -> float:
        values = self.losses if what == "loss" else self.grad_norms
        return sum(values) / len(values)

    def metrics(self) -> dict[str, float]:
        if self.world.size > 1:
            keys = list(self.counts)
            self.counts = dict(zip(keys, self.world.sum_floats(*(self.counts[k] for k in keys)), strict=True))
        tokens = max(self.counts["tokens"], 1)
        return {
            "loss/clip_frac/low": self.counts["low"] / tokens,
            "loss/clip_frac/high": self.counts["high"] / tokens,
            "loss/approx_kl": self.counts["kl"] / tokens,
            "loss/updates": float(len(self.losses)),
        }


def sum_gradients(params: list[torch.Tensor], world: World) -> None:
    """Each parameter's gradient summed over the processes, in one collective (a process with no rows in
    the update contributes zeros). Sharded parameters (FSDP2 DTensors): FSDP reduce-scatters their mean
    (gloo has no pre-scaled sum), scaled back to the sum here (exact for a power-of-two world size)."""
    for p in params:
        if hasattr(p, "device_mesh") and p.grad is not None:
            p.grad.mul_(world.size)
    dense = [p for p in params if not hasattr(p, "device_mesh")]
    if not dense:
        return
    for p in dense:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in dense])
    world.all_reduce_sum(flat)
    offset = 0
    for p in dense:
        p.grad.copy_(flat[offset : offset + p.numel()].view_as(p.grad))
        offset += p.numel()
