"""The `loyalty-consumer` command line."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from datetime import datetime
from typing import NoReturn

import click

from consumer import __version__, dlq, logs
from consumer.asyncapi import asyncapi_json
from consumer.config import Settings, load_settings
from consumer.errors import ConfigurationError, ConsumerError
from consumer.events import (
    TARGET_EVENT_TYPE,
    Apply,
    Invalid,
    Skip,
    Verdict,
    classify,
    input_json_schema,
)
from consumer.notifications import output_json_schema
from consumer.ops import check_dependencies, publish_records
from consumer.service import run_worker
from consumer.signature import SignatureVerifier
from consumer.store import run_migrations


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="loyalty-consumer")
def main() -> None:
    """Voucherify pending-points activations, from Kafka to balances and notifications."""


def _settings(*, quiet_libraries: bool = True) -> Settings:
    """The settings from the environment, or exit 1 with what to fix; logging set up from them.

    Commands that end with one line naming their problem keep the libraries' warnings about
    it (aiokafka's, one per connection attempt) to themselves: `quiet_libraries`.
    """
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    logs.configure(settings.log_format, settings.log_level, quiet_libraries=quiet_libraries)
    return settings


def _fail(exc: BaseException) -> NoReturn:
    """One readable line for an expected failure, never a traceback."""
    raise click.ClickException(str(exc)) from None


@main.command()
@click.option("--once", is_flag=True, help="Stop by itself once the input is drained.")
def run(once: bool) -> None:
    """Consume the input topic until SIGTERM/SIGINT (or until drained with --once)."""
    settings = _settings(quiet_libraries=False)
    try:
        asyncio.run(run_worker(settings, once=once))
    except ConsumerError as exc:
        _fail(exc)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--topic", help="Target topic (default: INPUT_TOPIC).")
@click.option("--key", help="Record key (default: none).")
@click.option("--partition", type=int, help="Target partition (default: by key).")
def publish(
    files: tuple[str, ...], topic: str | None, key: str | None, partition: int | None
) -> None:
    """Publish each FILE's bytes, unchanged, as one record (what the bridge does)."""
    settings = _settings()
    payloads = [(name, _read_bytes(name)) for name in files]
    try:
        placed = asyncio.run(
            publish_records(settings, topic or settings.input_topic, payloads, key, partition)
        )
    except ConsumerError as exc:
        _fail(exc)
    for name, (part, offset) in zip(files, placed, strict=True):
        click.echo(f"published {name} -> {topic or settings.input_topic}[{part}]@{offset}")


def _read_bytes(name: str) -> bytes:
    try:
        if name == "-":
            return sys.stdin.buffer.read()
        with open(name, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise click.UsageError(f"cannot read {name}: {exc.strerror}") from None


@main.command()
def check() -> None:
    """Exit 0 when the configuration is valid and Kafka and the store are reachable."""
    settings = _settings()
    problems = asyncio.run(check_dependencies(settings))
    for line in problems.report:
        click.echo(line)
    if problems.failed:
        raise SystemExit(1)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="One JSON object instead of the table.")
@click.option("--details", default=20, show_default=True, help="Examples of discrepancies shown.")
def audit(as_json: bool, details: int) -> None:
    """Reconcile the input with the ledger, notifications, dead letters and offsets.

    Reads INPUT_TOPIC, NOTIFICATION_TOPIC and DEAD_LETTER_TOPIC (read_committed), the offsets
    committed by CONSUMER_GROUP and the store at DATABASE_URL. Exit status 0 when every record
    is accounted for and every effect happened exactly once, 1 on any discrepancy.
    """
    from consumer.audit import audit as reconcile

    settings = _settings()
    try:
        report = asyncio.run(reconcile(settings, details=details))
    except ConsumerError as exc:
        _fail(exc)
    click.echo(report.as_json() if as_json else report.summary())
    if not report.ok:
        raise SystemExit(1)


@main.command()
@click.argument("which", type=click.Choice(["input", "output", "asyncapi"]))
def schema(which: str) -> None:
    """Print the JSON Schema of the input or the output, or the AsyncAPI document."""
    if which == "asyncapi":
        click.echo(asyncapi_json(), nl=False)
        return
    document = input_json_schema() if which == "input" else output_json_schema()
    click.echo(json.dumps(document, indent=2, ensure_ascii=False))


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--json", "as_json", is_flag=True, help="One JSON object per file, one per line.")
@click.option(
    "--secret",
    metavar="SECRET",
    help="Check signatures as the worker does with VOUCHERIFY_WEBHOOK_SECRET set. Other local "
    "users can see a command's arguments while it runs: prefer a test project's secret.",
)
@click.option(
    "--signature",
    "signatures",
    metavar="HEX",
    multiple=True,
    help="The x-voucherify-signature header of each FILE, in order (one per FILE). "
    "Without it, with --secret, a file is judged as a record without the header.",
)
def validate(
    files: tuple[str, ...], as_json: bool, secret: str | None, signatures: tuple[str, ...]
) -> None:
    """Say what the worker would do with each FILE (`-` is stdin): apply, skip or invalid.

    Exit status: 0 when no file is invalid, 1 when one is, 2 when a file cannot be read.
    """
    verifier = _verifier(secret, signatures, len(files))
    # Read everything first so that an unreadable file stops the run before any verdict.
    payloads = [(name, _read_payload(name)) for name in files]
    any_invalid = False
    for index, (name, value) in enumerate(payloads):
        refused = None
        if verifier is not None:
            headers = [(verifier.header, signatures[index].encode())] if signatures else []
            refused = verifier.check(value, headers)
        # As in the worker, the signature is checked before parsing: a file it refuses is
        # invalid for that reason alone.
        verdict = classify(value) if refused is None else Invalid([refused])
        any_invalid = any_invalid or isinstance(verdict, Invalid)
        signed = None if verifier is None else refused is None
        if as_json:
            click.echo(_verdict_json(name, verdict, signed))
        else:
            click.echo(_verdict_text(name, verdict, ", signature valid" if signed else ""))
    if any_invalid:
        raise SystemExit(1)


def _verifier(
    secret: str | None, signatures: tuple[str, ...], files: int
) -> SignatureVerifier | None:
    if secret is None:
        if signatures:
            raise click.UsageError("--signature needs --secret: the webhook secret to check it")
        return None
    if signatures and len(signatures) != files:
        raise click.UsageError(
            f"--signature given {len(signatures)} times for {files} files; give one per FILE"
        )
    if not secret.strip():
        raise click.UsageError("--secret is empty; give the project's webhook secret")
    return SignatureVerifier([secret.strip().encode()])


def _read_payload(name: str) -> bytes:
    try:
        with click.open_file(name, "rb") as handle:
            payload: bytes = handle.read()
    except OSError as exc:
        raise click.UsageError(f"cannot read {name}: {exc.strerror}") from None
    return payload


def _verdict_json(name: str, verdict: Verdict, signed: bool | None = None) -> str:
    summary: dict[str, object] = {
        "file": name,
        "verdict": verdict.name,
        "event_type": None,
        "transaction_id": None,
        "errors": [],
    }
    if signed is not None:  # only with --secret, so that the shape without it stays as it was
        summary["signature"] = "valid" if signed else "invalid"
    if isinstance(verdict, Apply):
        summary.update(event_type=TARGET_EVENT_TYPE, transaction_id=verdict.transaction_id)
    elif isinstance(verdict, Skip):
        summary["event_type"] = verdict.event_type
    else:
        summary["errors"] = verdict.reasons
    return json.dumps(summary, ensure_ascii=False)


def _verdict_text(name: str, verdict: Verdict, signed: str = "") -> str:
    if isinstance(verdict, Apply):
        return f"{name}: apply (transaction {verdict.transaction_id}){signed}"
    if isinstance(verdict, Invalid):
        reasons = (f"    {reason}" for reason in verdict.reasons)
        return "\n".join([f"{name}: invalid{signed}", *reasons])
    return f"{name}: skip ({verdict.event_type}){signed}"


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
    logs.configure(quiet_libraries=True)
    try:
        report = asyncio.run(run_migrations(database_url))
    except ConsumerError as exc:
        raise click.ClickException(" ".join(str(exc).split())) from None
    for migration in report.applied:
        click.echo(f"applied migration {migration.version:04d}_{migration.name}")
    click.echo(f"schema version {report.version}")


@main.group("dlq")
def dlq_commands() -> None:
    """The dead-letter topic: list it, replay its records into the input topic exactly once."""
    # These commands end with one line naming any problem; aiokafka's own log lines (one per
    # failed connection attempt) would only repeat it.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


@dlq_commands.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for machines.")
def dlq_list(as_json: bool) -> None:
    """Count the dead letters per reason, newest first, and how many were replayed."""
    settings = _settings()
    try:
        inventory = asyncio.run(dlq.list_dead_letters(settings))
    except ConsumerError as exc:
        _fail(exc)
    if as_json:
        click.echo(dlq.inventory_json(inventory))
    else:
        click.echo("\n".join(dlq.inventory_lines(inventory)))


def _since(_ctx: click.Context, _param: click.Parameter, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return dlq.parse_since(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@dlq_commands.command("replay")
@click.option("--reason", metavar="TEXT", help="Only reasons containing TEXT (any case).")
@click.option(
    "--reason-class", type=click.Choice(["invalid", "persistent"]), help="Only this class."
)
@click.option(
    "--since",
    metavar="ISO8601|DURATION",
    callback=_since,
    help="Only dead-lettered at or after: 2026-01-01T02:00:00Z, or back from now: 90m, 2h, 7d.",
)
@click.option("--dry-run", is_flag=True, help="Print what would be replayed; publish nothing.")
@click.option(
    "--chunk-size",
    type=click.IntRange(1, 10_000),
    default=500,
    show_default=True,
    help="Records per Kafka transaction.",
)
def dlq_replay(
    reason: str | None,
    reason_class: str | None,
    since: datetime | None,
    dry_run: bool,
    chunk_size: int,
) -> None:
    """Re-publish dead letters not replayed yet to INPUT_TOPIC, each exactly once.

    The original key, value and headers are re-published, plus `dlq.replayed_from`. Safe to
    interrupt and run again; dead letters left out by the filters stay for a later run.
    """
    settings = _settings()
    selection = dlq.Selection(reason=reason, reason_class=reason_class, since=since)

    def progress(chunk: dlq.ChunkCommitted) -> None:
        click.echo(
            f"committed chunk {chunk.number}: {chunk.records} records from "
            f"{settings.dead_letter_topic}/{chunk.partition} "
            f"offsets {chunk.first_offset}..{chunk.last_offset}"
        )

    try:
        report = asyncio.run(
            dlq.replay(
                settings,
                selection,
                chunk_size=chunk_size,
                dry_run=dry_run,
                hooks=dlq.hooks_from_environment(),
                on_chunk=progress,
            )
        )
    except ConsumerError as exc:
        _fail(exc)
    click.echo("\n".join(dlq.report_lines(report)))
