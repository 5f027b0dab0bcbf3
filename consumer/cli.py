"""The `loyalty-consumer` command line."""

from __future__ import annotations

import click

from consumer import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="loyalty-consumer")
def main() -> None:
    """Voucherify pending-points activations, from Kafka to balances and notifications."""
