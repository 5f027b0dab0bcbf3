"""`python -m consumer` runs the command line."""

from consumer.cli import main

main()
