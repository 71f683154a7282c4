"""The paper's credit diagnostics (SPEC "Diagnostics").

- :mod:`~arca_sweep.diagnostics.step`: a step's credit metrics, the training signal's under ``credit/``
  and every shadow signal's under ``shadow/<signal>/``; which tokens are format tokens.
- :mod:`~arca_sweep.diagnostics.concentration`: how concentrated token weights are (Gini, effective
  token ratio, regimes, Spearman); pure torch functions.
- :mod:`~arca_sweep.diagnostics.fidelity`: the precision probe (``fidelity/<signal>/rel_err``).

:data:`REGIMES` is defined here, without torch, so that the report reads the regime names without
loading it.
"""

REGIMES = ("uniform", "middle", "concentrated")
