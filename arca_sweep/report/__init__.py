"""Offline report of a sweep: ``python -m arca_sweep.report SWEEP_DIR [--baseline credit=uniform]``
(prints the report's path; :mod:`arca_sweep.report.cli`), or :func:`build_report` from Python.

Reads every arm under ``SWEEP_DIR`` (a subdirectory with ``.hydra/config.yaml``: its overrides,
``metrics.jsonl``, ``samples.jsonl``, ``eval/step_<n>.jsonl``, ``eval/<set>/step_<n>.jsonl`` and, once finished, ``summary.json``;
:mod:`arca_sweep.report.data`) and writes into ``SWEEP_DIR`` (:mod:`arca_sweep.report.build`):

- ``report.md`` (:mod:`arca_sweep.report.markdown`): finished and unfinished arms; the final table, one
  row per cell (a cell: the arms that share every swept override but the seed), with final accuracy
  mean ± std over seeds and its bootstrap 95% interval over problems x seeds, the last quarter's
  training reward with its interval, and the training signal's diagnostics (mean ± std over seeds);
  per-seed accuracy with Wilson intervals; each cell's paired difference against its baseline cell
  (default ``credit=uniform`` at the same other axes) in accuracy and in training reward, with a 95%
  interval, a p-value and "no difference shown" when the interval holds 0
  (:mod:`arca_sweep.report.stats`); the regime shares of every signal per cell from the shadow
  diagnostics (the headline); per eval set (the run's own rows and each ``eval.sets`` entry;
  :mod:`arca_sweep.report.eval_sets`), every eval metric (greedy pass@1, mean@n, pass@k, maj@k, lengths)
  per cell with its interval and its paired difference against the baseline cell; a power section
  (:mod:`arca_sweep.report.power`): per comparison the minimum difference this sweep detects with 80%
  power, the seeds or problems a ``--delta`` difference (default 0.02) would need, and whether the sweep
  is underpowered for the differences it reports; links to the figures.
- ``regime_shares.png``, ``gini_etr.png``, ``reward_accuracy.png``: the figures
  (:mod:`arca_sweep.report.figures`), legends naming cells by the sweep's axes.
- ``heatmaps.html``: per cell, sample rollouts from the first, middle and last sampled steps, tokens
  coloured by each signal's weights.

Every number is recomputed from ``metrics.jsonl`` and the per-problem files (not from
``summary.json``'s run means). Tables and the regime figure count finished arms only; the curves
over steps show every arm with metrics.
"""

from arca_sweep.report.build import DEFAULT_BASELINE, SMOOTH_STEPS, build_report
from arca_sweep.report.cli import main
from arca_sweep.report.data import NotASweepError

__all__ = ["DEFAULT_BASELINE", "SMOOTH_STEPS", "NotASweepError", "build_report", "main"]
