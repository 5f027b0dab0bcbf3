"""The `loyalty-consumer` command line."""

from __future__ import annotations

import asyncio

import click

from consumer import __version__
from consumer.errors import ConsumerError
from consumer.store import run_migrations


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="loyalty-consumer")
def main() -> None:
    """Voucherify pending-points activations, from Kafka to balances and notifications."""


@main.command()
@click.option(
    "--database-url",
    envvar="DATABASE_URL",
    default="sqlite:///loyalty.db",
    show_default=True,
    show_envvar=True,
    help="The store to migrate.",
)
def migrate(database_url: str) -> None:
    """Apply the pending schema migrations to the store, then exit."""
    try:
        report = asyncio.run(run_migrations(database_url))
    except ConsumerError as exc:
        raise click.ClickException(" ".join(str(exc).split())) from None
    for migration in report.applied:
        click.echo(f"applied migration {migration.version:04d}_{migration.name}")
    click.echo(f"schema version {report.version}")
