"""The GRPO learner (SPEC: "Policy, reference, rollouts", "Loss", "One scoring pass feeds every signal").

- :mod:`~arca_sweep.learner.update`: the :class:`Learner`, one scoring pass over a rollout batch,
  its credit, then E x M PPO-clip updates.
- :mod:`~arca_sweep.learner.settings`: :class:`LearnerSettings`, what the learner reads of a run's
  config, translated from it in one place.
- :mod:`~arca_sweep.learner.loss`: the pure loss math (group advantages, PPO-clip with k3, a credit
  method's per-token modifiers, the aggregations).
- :mod:`~arca_sweep.learner.decoder`: forward and decoder plumbing (hidden states at the predicting
  positions, the reference pass, early stop, activation checkpointing).
- :mod:`~arca_sweep.learner.token_stats`: chunked full-vocabulary log-prob, entropy and exact KL.
- :mod:`~arca_sweep.learner.rollout_correction`: importance weights for the sampler/learner mismatch.
"""

from arca_sweep.learner.loss import LOSS_AGGS, group_advantages
from arca_sweep.learner.rollout_correction import MODES as ROLLOUT_CORRECTION_MODES
from arca_sweep.learner.settings import LearnerSettings
from arca_sweep.learner.update import Learner, StepResult

__all__ = [
    "LOSS_AGGS",
    "ROLLOUT_CORRECTION_MODES",
    "Learner",
    "LearnerSettings",
    "StepResult",
    "group_advantages",
]
