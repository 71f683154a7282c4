"""The GRPO learner (SPEC: "Policy, reference, rollouts", "Loss", "One scoring pass feeds every signal").

- :mod:`~arca_sweep.learner.update`: the :class:`Learner`, one scoring pass over a rollout batch,
  its credit, then E x M PPO-clip updates.
- :mod:`~arca_sweep.learner.settings`: :class:`LearnerSettings`, what the learner reads of a run's
  config, translated from it in one place.
- :mod:`~arca_sweep.learner.loss`: the pure loss math (PPO-clip with k3, a credit
  method's per-token modifiers, the aggregations).
- :mod:`~arca_sweep.learner.decoder`: forward and decoder plumbing (hidden states at the predicting
  positions, the reference pass, early stop, activation checkpointing).
- :mod:`~arca_sweep.learner.token_stats`: chunked full-vocabulary log-prob, entropy and exact KL.
- :mod:`~arca_sweep.learner.rollout_correction`: importance weights for the sampler/learner mismatch.
"""

import importlib

# name -> (submodule, attribute), imported on first use: config validation reads LOSS_AGGS and the
# rollout-correction modes from their modules without loading the update (and the rollout engines)
_EXPORTS = {
    "LOSS_AGGS": ("loss", "LOSS_AGGS"),
    "RATIO_LEVELS": ("loss", "RATIO_LEVELS"),
    "policy_log_ratio": ("loss", "policy_log_ratio"),
    "ppo_clip_token_loss": ("loss", "ppo_clip_token_loss"),
    "k3_penalty": ("loss", "k3_penalty"),
    "credit_token_loss": ("loss", "credit_token_loss"),
    "aggregate_loss": ("loss", "aggregate_loss"),
    "ROLLOUT_CORRECTION_MODES": ("rollout_correction", "MODES"),
    "LearnerSettings": ("settings", "LearnerSettings"),
    "Learner": ("update", "Learner"),
    "StepResult": ("update", "StepResult"),
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = getattr(importlib.import_module(f"{__name__}.{module}"), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
