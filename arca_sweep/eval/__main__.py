"""``python -m arca_sweep.eval``: the ``arca-sweep-eval`` command (:mod:`arca_sweep.eval.cli`)."""

from arca_sweep.eval.cli import cli

cli()
