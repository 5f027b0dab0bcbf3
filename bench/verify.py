"""The correctness check of every measured run: what it committed against what it left behind.

After a contender has stopped, the group's committed offsets say which prefix of the input
it consumed; `bench.expect` says what that prefix must give. The outputs are counted from
outside: the notification and dead-letter topics read as a downstream `read_committed`
consumer reads them, and the ledger rows in the contender's database. Any difference fails
the run (`BenchFailure`): a figure from a contender that lost or doubled work is no figure.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any, Final

import asyncpg  # type: ignore[import-untyped, unused-ignore]
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from bench.contender import Kind
from bench.expect import Expected, InputIndex, Observed, compare
from consumer.store import open_store

__all__ = ["BenchFailure", "committed_offsets", "end_offsets", "read_outputs", "verify"]

READ_TIMEOUT_S: Final = 300.0
LEDGER_ROWS: Final[dict[str, str]] = {
    "naive": "SELECT count(*) FROM naive_ledger",
    "faststream": "SELECT count(*) FROM ledger",
}


class BenchFailure(RuntimeError):
    """A run whose figures cannot be reported: wrong results, or a measurement that failed."""


async def committed_offsets(admin: AIOKafkaAdminClient, group: str, topic: str) -> dict[int, int]:
    offsets = await admin.list_consumer_group_offsets(group)
    return {
        tp.partition: int(meta.offset)
        for tp, meta in offsets.items()
        if tp.topic == topic and meta.offset >= 0
    }


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await reader.start()
    try:
        await reader._client.force_metadata_update()  # aiokafka's private client, as below
        partitions = [TopicPartition(topic, p) for p in reader.partitions_for_topic(topic) or ()]
        return {
            tp.partition: offset for tp, offset in (await reader.end_offsets(partitions)).items()
        }
    finally:
        await reader.stop()


async def read_outputs(bootstrap: str, topic: str, id_header: str | None) -> tuple[int, int]:
    """(records, distinct values of `id_header`) committed to `topic`, read_committed."""
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=8 * 1024 * 1024,
        fetch_max_bytes=64 * 1024 * 1024,
    )
    await reader.start()
    try:
        # aiokafka's private client: the consumer knows no partitions of a topic it was
        # never subscribed to until its metadata is refreshed (as consumer.audit does).
        await reader._client.force_metadata_update()
        partitions = [
            TopicPartition(topic, p) for p in sorted(reader.partitions_for_topic(topic) or ())
        ]
        reader.assign(partitions)
        await reader.seek_to_beginning(*partitions)
        ends = await reader.end_offsets(partitions)
        count, ids = 0, set()
        deadline = time.monotonic() + READ_TIMEOUT_S
        remaining = [tp for tp in partitions if await reader.position(tp) < ends[tp]]
        while remaining:
            if time.monotonic() > deadline:
                raise BenchFailure(
                    f"reading {topic} did not reach its end within {READ_TIMEOUT_S}s"
                )
            polled = await reader.getmany(*remaining, timeout_ms=1000, max_records=50_000)
            for tp, records in polled.items():
                for record in records:
                    if record.offset >= ends[tp]:
                        continue
                    count += 1
                    if id_header is not None:
                        ids.add(dict(record.headers).get(id_header))
            remaining = [tp for tp in remaining if await reader.position(tp) < ends[tp]]
    finally:
        await reader.stop()
    return count, len(ids)


async def ledger_rows(kind: Kind, database_url: str) -> int | None:
    if kind == "limit":
        return None
    if kind == "ours":
        store = await open_store(database_url)
        try:
            return (await store.counts()).ledger_entries
        finally:
            await store.close()
    connection = await asyncpg.connect(database_url)
    try:
        return int(await connection.fetchval(LEDGER_ROWS[kind]))
    finally:
        await connection.close()


async def verify(
    *,
    name: str,
    kind: Kind,
    admin: AIOKafkaAdminClient,
    bootstrap: str,
    group: str,
    input_topic: str,
    output_topic: str,
    dead_letter_topic: str,
    database_url: str,
    index: InputIndex,
    done: int,
    counts: dict[str, int],
    logs: str,
) -> dict[str, Any]:
    """Count what the run left behind; raise `BenchFailure` unless it is what it committed."""
    started = time.monotonic()
    positions = await committed_offsets(admin, group, input_topic)
    expected: Expected = index.expectation(positions)
    outputs, distinct = await read_outputs(
        bootstrap, output_topic, None if kind == "limit" else "ce_id"
    )
    dead_letters, _ = await read_outputs(bootstrap, dead_letter_topic, None)
    observed = Observed(
        records=done,
        counts=counts,
        outputs=outputs,
        distinct_output_ids=None if kind == "limit" else distinct,
        dead_letters=dead_letters,
        ledger_rows=await ledger_rows(kind, database_url),
    )
    wrong = compare(kind, expected, observed)
    if wrong:
        shown = ", ".join(f"{key} {got:,} (wanted {want:,})" for key, (got, want) in wrong.items())
        raise BenchFailure(
            f"{name}: its results differ from what its committed input must give: {shown}. "
            f"A figure from a run that lost or doubled work is not reported; see {logs}"
        )
    return {
        "ok": True,
        "expected": asdict(expected),
        "outputs": outputs,
        "dead_letters": dead_letters,
        "ledger_rows": observed.ledger_rows,
        "seconds": round(time.monotonic() - started, 2),
    }


async def no_output_twice(bootstrap: str, output_topic: str, name: str, logs: str) -> int:
    """After a replica was killed: every committed notification once (distinct `ce_id`s)."""
    outputs, distinct = await read_outputs(bootstrap, output_topic, "ce_id")
    if outputs != distinct:
        raise BenchFailure(
            f"{name}: {outputs - distinct:,} of {outputs:,} committed notifications repeat an "
            f"earlier one's ce_id after a replica was killed: exactly-once broke; see {logs}"
        )
    return outputs
