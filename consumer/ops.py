"""Operator tools: publish payloads by hand and check that the dependencies answer."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from consumer import kafka, signature
from consumer.config import Settings, unknown_variables
from consumer.errors import BrokerUnavailable, ConfigurationError, ConsumerError, SchemaOutOfDate
from consumer.store import is_new_sqlite, open_store


async def publish_records(
    settings: Settings,
    topic: str,
    payloads: Sequence[tuple[str, bytes]],
    key: str | None = None,
    partition: int | None = None,
) -> list[tuple[int, int]]:
    """Send each payload unchanged; return (partition, offset) for each, in order."""
    producer = kafka.producer(settings)
    try:
        await producer.start()
    except KafkaError as exc:
        await producer.stop()
        raise await kafka.connection_problem(settings, exc) from None
    placed = []
    try:
        # aiokafka waits for a missing topic until its metadata timeout (a minute), logging
        # every refresh; a look at the cluster's metadata settles it at once.
        if not await _topic_exists(producer, topic):
            raise ConfigurationError(
                f"topic {topic} does not exist on {settings.kafka_bootstrap_servers}; create "
                "it, or name an existing one with --topic (default: INPUT_TOPIC)"
            )
        for _name, value in payloads:
            meta = await producer.send_and_wait(
                topic, value=value, key=key.encode() if key else None, partition=partition
            )
            placed.append((int(meta.partition), int(meta.offset)))
    except KafkaError as exc:
        raise BrokerUnavailable(f"publishing to {topic} failed: {exc}") from None
    finally:
        await producer.stop()
    return placed


# A topic created a moment ago may reach a broker's metadata a moment later.
_TOPIC_LOOKS = 3
_TOPIC_LOOK_INTERVAL_S = 0.3


async def _topic_exists(producer: AIOKafkaProducer, topic: str) -> bool:
    for look in range(_TOPIC_LOOKS):
        if look:
            await asyncio.sleep(_TOPIC_LOOK_INTERVAL_S)
        if topic in (await producer.client.fetch_all_metadata()).topics():
            return True
    return False


@dataclass
class CheckReport:
    report: list[str] = field(default_factory=list)
    failed: bool = False

    def ok(self, line: str) -> None:
        self.report.append(f"ok    {line}")

    def warn(self, line: str) -> None:
        """A line worth a look that does not fail the check."""
        self.report.append(f"warn  {line}")

    def fail(self, line: str) -> None:
        self.report.append(f"FAIL  {line}")
        self.failed = True


async def check_dependencies(settings: Settings) -> CheckReport:
    """Configuration (already valid if we got here), the broker and its topics, the store."""
    report = CheckReport()
    report.ok("configuration")
    report.ok(f"signatures: {_signature_state(settings)}")
    for variable, meant in unknown_variables():
        report.warn(f"{variable} is not a setting and is ignored: did you mean {meant}?")
    await _check_kafka(settings, report)
    await _check_store(settings, report)
    return report


def _signature_state(settings: Settings) -> str:
    """Whether records must be signed; never the secrets, only how many."""
    verifier = signature.from_settings(settings)
    if verifier is None:
        return "not verified (VOUCHERIFY_WEBHOOK_SECRET is not set)"
    accepted = "current and previous secret" if verifier.secrets > 1 else "one secret"
    return f"verified (header {verifier.header}, {accepted})"


async def _check_kafka(settings: Settings, report: CheckReport) -> None:
    try:
        options = kafka.connection_options(settings)
    except ConsumerError as exc:  # TLS files that do not load
        report.fail(f"kafka: {exc}")
        return
    admin = AIOKafkaAdminClient(**options, request_timeout_ms=10_000)
    try:
        try:
            await admin.start()
        except (KafkaError, OSError) as exc:
            # Names rejected credentials or TLS trouble, not just "unable to bootstrap".
            report.fail(f"kafka: {await kafka.connection_problem(settings, exc)}")
            return
        try:
            topics = set(await admin.list_topics())
        except (KafkaError, OSError) as exc:
            report.fail(f"kafka: listing the topics failed ({type(exc).__name__}: {exc})")
            return
    finally:
        await admin.close()
    report.ok(f"kafka: {settings.kafka_bootstrap_servers}")
    for variable, name in (
        ("INPUT_TOPIC", settings.input_topic),
        ("NOTIFICATION_TOPIC", settings.notification_topic),
        ("DEAD_LETTER_TOPIC", settings.dead_letter_topic),
    ):
        if name in topics:
            report.ok(f"topic {name} ({variable})")
        else:
            report.fail(f"topic {name} ({variable}) does not exist; create it or fix {variable}")


async def _check_store(settings: Settings, report: CheckReport) -> None:
    try:
        store = await open_store(settings.database_url, migrate=False)
    except SchemaOutOfDate as exc:
        if await is_new_sqlite(settings.database_url):
            report.ok("store: a new SQLite database; `loyalty-consumer run` creates its schema")
        else:
            report.fail(f"store: {exc}")
        return
    except ConsumerError as exc:
        report.fail(f"store: {exc}")
        return
    try:
        await store.ping()
        report.ok("store: reachable, schema up to date")
    except ConsumerError as exc:
        report.fail(f"store: {exc}")
    finally:
        await store.close()
