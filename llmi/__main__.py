"""`python -m llmi VERB ...` is `llmi VERB ...`."""

from llmi.cli import main

main()
