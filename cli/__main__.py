"""Run the command line as ``python -m fluoscan.cli``."""

from fluoscan.cli.main import app

app()
