"""`python -m edgefr ...`: the `edgefr` command where the console script is not installed (e.g. a checkout on
PYTHONPATH on a training machine)."""

from edgefr.cli import main

main()
