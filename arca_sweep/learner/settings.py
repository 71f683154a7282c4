"""What the learner reads of a run's config: one typed, frozen object, translated in one place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LearnerSettings:
    """The learner's settings; :meth:`from_config` names the config key of each."""

    credit: str  # credit.name: the training method (a signal, a method, custom)
    credit_target: str | None  # credit.target: a custom method's "pkg.module:function"
    credit_timeout_s: float  # credit.timeout_s: its wall-time limit per call
    credit_options: dict[str, Any]  # credit.options: the training method's keyword options
    signal_options: dict[str, Any]  # credit.mode, credit.estimator: every signal's options
    normalize: str  # credit.normalize, .temperature, .mix, .clip_max: the weights' normalization
    normalize_temperature: float
    mix: float
    clip_max: float | None
    layer: int  # credit.layer
    agg: str  # loss.*
    clip_low: float
    clip_high: float
    beta: float
    rollout_correction: str
    rollout_is_cap: float
    ratio_level: str
    lr: float  # optim.*
    weight_decay: float
    betas: tuple[float, float]
    grad_clip: float
    micro_batch_size: int  # learner.*
    micro_batch_tokens: int
    chunk_size: int
    chunk_memory_mb: float
    gradient_checkpointing: bool
    autocast_bf16: bool
    ppo_epochs: int
    mini_batches: int
    shadow: bool  # diagnostics.shadow, .shadow_sample, .entropy
    shadow_sample: float
    entropy: bool
    group_size: int  # budget.group_size
    norm_len: int  # budget.max_new_tokens: seq-mean-token-sum-norm's constant length
    engine_dtype: str | None  # rollout.dtype (null: the learner's)
    seed: int  # seed

    @classmethod
    def from_config(cls, cfg) -> LearnerSettings:
        """The settings of a composed run config."""
        c, loss, o, lc, d = cfg.credit, cfg.loss, cfg.optim, cfg.learner, cfg.diagnostics
        return cls(
            credit=c.name,
            credit_target=c.target,
            credit_timeout_s=c.timeout_s,
            credit_options=dict(c.options),
            signal_options=dict(mode=c.mode, estimator=c.estimator),
            normalize=c.normalize,
            normalize_temperature=c.temperature,
            mix=c.mix,
            clip_max=c.clip_max,
            layer=c.layer,
            agg=loss.agg,
            clip_low=loss.clip_low,
            clip_high=loss.clip_high,
            beta=loss.beta,
            rollout_correction=loss.rollout_correction,
            rollout_is_cap=loss.rollout_is_cap,
            ratio_level=loss.ratio_level,
            lr=o.lr,
            weight_decay=o.weight_decay,
            betas=tuple(o.betas),
            grad_clip=o.grad_clip,
            micro_batch_size=lc.micro_batch_size,
            micro_batch_tokens=lc.micro_batch_tokens,
            chunk_size=lc.chunk_size,
            chunk_memory_mb=lc.chunk_memory_mb,
            gradient_checkpointing=lc.gradient_checkpointing,
            autocast_bf16=lc.autocast_bf16,
            ppo_epochs=lc.ppo_epochs,
            mini_batches=lc.mini_batches,
            shadow=d.shadow,
            shadow_sample=d.shadow_sample,
            entropy=d.entropy,
            group_size=cfg.budget.group_size,
            norm_len=cfg.budget.max_new_tokens,
            engine_dtype=cfg.rollout.dtype,
            seed=cfg.seed,
        )
