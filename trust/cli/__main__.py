"""`python -m trust.cli ...`, the same as the installed `trust` script."""

from trust.cli import main

main()
