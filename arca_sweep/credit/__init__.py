"""Per-token credit: raw salience signals, within-trajectory normalization, the literature's methods.

Token advantage (SPEC "Credit signals"): ``A_(i,t) = A_i * w_(i,t)`` with ``w = normalize(s)`` and
``s = salience(name, stats)``. A credit method widens this: it returns a :class:`TokenCredit` (a
salience, an advantage bonus, per-token clip ranges, KL and ratio penalties, a gradient mask) and sees
a :class:`GroupContext` (advantages, rewards, the group's other rollouts).

- :mod:`~arca_sweep.credit.registry`: the contract (TokenStats, TokenCredit, GroupContext), the
  registries and their lookups;
- :mod:`~arca_sweep.credit.signals`: the five signals (a sixth is one function there);
- :mod:`~arca_sweep.credit.normalization`: salience into weights;
- :mod:`~arca_sweep.credit.methods`, :mod:`~arca_sweep.credit.ktae`: the six literature methods
  (a seventh is one function).

Every name users import from ``arca_sweep.credit`` is re-exported here, including the statistics of
how concentrated weights are (``gini``, ``effective_token_ratio``, ``REGIMES``, ...), which live in
:mod:`arca_sweep.diagnostics.concentration`.
"""

from arca_sweep.credit.ktae import key_token_scores, ktae_method
from arca_sweep.credit.methods import (
    archer_method,
    clip_cov_method,
    clip_cov_selection,
    entropy_advantage_method,
    entropy_mask_method,
    high_entropy_mask,
    kl_cov_method,
    kl_cov_selection,
    response_entropy_split,
    token_covariance,
)
from arca_sweep.credit.normalization import NORMALIZE_METHODS, fallback_rows, normalize
from arca_sweep.credit.registry import (
    METHODS,
    SIGNALS,
    STAT_FIELDS,
    GroupContext,
    Method,
    Signal,
    TokenCredit,
    TokenStats,
    custom_method,
    method,
    method_names,
    method_options,
    needed_stats,
    pad_cat,
    register_method,
    register_signal,
    salience,
    shadow_names,
)
from arca_sweep.credit.signals import (  # importing it registers the five signals
    arca_salience,
    divergence_salience,
    entropy_salience,
    surprisal_salience,
    uniform_salience,
)
from arca_sweep.diagnostics.concentration import (
    REGIMES,
    edge_mass,
    effective_token_ratio,
    gini,
    masked_share,
    regimes,
    spearman,
    summarize_weights,
    top_mass,
)

__all__ = [
    "archer_method",
    "clip_cov_method",
    "entropy_advantage_method",
    "entropy_mask_method",
    "kl_cov_method",
    "ktae_method",
    "arca_salience",
    "divergence_salience",
    "entropy_salience",
    "surprisal_salience",
    "uniform_salience",
    "METHODS",
    "NORMALIZE_METHODS",
    "REGIMES",
    "SIGNALS",
    "STAT_FIELDS",
    "GroupContext",
    "Method",
    "Signal",
    "TokenCredit",
    "TokenStats",
    "clip_cov_selection",
    "custom_method",
    "edge_mass",
    "effective_token_ratio",
    "fallback_rows",
    "gini",
    "high_entropy_mask",
    "key_token_scores",
    "kl_cov_selection",
    "masked_share",
    "method",
    "method_names",
    "method_options",
    "needed_stats",
    "normalize",
    "pad_cat",
    "regimes",
    "register_method",
    "register_signal",
    "response_entropy_split",
    "salience",
    "shadow_names",
    "spearman",
    "summarize_weights",
    "token_covariance",
    "top_mass",
]
