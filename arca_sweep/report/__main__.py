"""``python -m arca_sweep.report SWEEP_DIR``: see :mod:`arca_sweep.report.cli`."""

import sys

from arca_sweep.report.cli import main

main(sys.argv[1:])
