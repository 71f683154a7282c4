from arca_sweep.main import cli

cli()
