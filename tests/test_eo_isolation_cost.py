"""Issue #14, item 5: finding the records a store refuses costs k·log n transactions, not n.

Today one failing record in a batch makes the worker re-run every record of the batch alone,
each in its own database and Kafka transaction. The transactions are counted, not timed: on
a partition whose transactions all ended, the log's end offset minus the records a
read_uncommitted reader sees is the number of transaction markers, one for every Kafka
transaction that wrote to it; PostgreSQL counts the database's transactions itself.
"""

from __future__ import annotations

import asyncio
import math

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from consumer.audit import audit
from consumer.store import open_store
from consumer.workload import Workload, install_refusal, publish
from tests.conditions import eventually
from tests.conftest import TopicFactory
from tests.kafkautil import read_committed
from tests.workers import Topics, drain, settings_for

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

BATCH = 512
REFUSED = 2
# Bisection needs about 2 attempts per level for each bad record; 4 leaves room for retries
# and for committing the good halves separately.
GENEROUS = 4
# Transactions that are not the batch's: the pool's connection set-up, type introspection.
PG_OVERHEAD = 40


async def transaction_markers(bootstrap: str, topic: str) -> int:
    """Control records in a one-partition topic whose transactions have all ended."""
    tp = TopicPartition(topic, 0)
    reader = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_uncommitted")
    await reader.start()
    try:
        reader.assign([tp])
        await reader.seek_to_beginning(tp)
        end = (await reader.end_offsets([tp]))[tp]
        records = 0
        while await reader.position(tp) < end:
            for batch in (await reader.getmany(tp, timeout_ms=500)).values():
                records += len(batch)
        return int(end) - records
    finally:
        await reader.stop()


async def database_transactions(url: str) -> int:
    """Committed plus rolled-back transactions of the database, once no one else is
    connected (a backend's counts are published when it goes away)."""
    conn = await asyncpg.connect(url)
    try:
        await eventually(lambda: _alone(conn), timeout=30, what="the worker's connections to close")
        row = await conn.fetchrow(
            "SELECT xact_commit + xact_rollback AS n FROM pg_stat_database"
            " WHERE datname = current_database()"
        )
        assert row is not None
        return int(row["n"])
    finally:
        await conn.close()


async def _alone(conn: asyncpg.Connection) -> bool:
    others = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    return int(others) == 0


async def test_k_refused_records_in_a_batch_cost_about_k_log_n_transactions(
    kafka_bootstrap: str, new_topic: TopicFactory, postgres_url: str
) -> None:
    """2 records the database refuses, in one 512-record batch: the worker finds them with
    at most 4·k·log2(n) Kafka transactions (and database transactions, beside a fixed
    overhead), where re-running each record alone takes at least n of both."""
    topics = Topics(await new_topic("in"), await new_topic("notify"), await new_topic("dlq"))
    settings = settings_for(kafka_bootstrap, topics, postgres_url, batch_max_records=BATCH)
    workload = Workload(
        seed=5,
        events=BATCH,
        partitions=1,
        duplicate_share=0,
        sibling_share=0,
        malformed_share=0,
        refused_share=REFUSED / BATCH,
    )
    assert workload.expectation().kinds.get("refused") == REFUSED
    store = await open_store(postgres_url, migrate=True)
    await store.close()
    await install_refusal(postgres_url)
    await publish(workload.records(), topics.input, bootstrap_servers=kafka_bootstrap)
    before = await database_transactions(postgres_url)

    await asyncio.wait_for(drain(settings), 150)

    database = await database_transactions(postgres_url) - before
    kafka = await transaction_markers(kafka_bootstrap, topics.notifications)
    kafka += await transaction_markers(kafka_bootstrap, topics.dead_letters)
    bound = GENEROUS * REFUSED * math.ceil(math.log2(BATCH))
    assert kafka <= bound, f"{kafka} Kafka transactions for {REFUSED} bad records in {BATCH}"
    assert database <= bound + PG_OVERHEAD, (
        f"{database} database transactions for {REFUSED} bad records in {BATCH}"
    )
    assert len(await read_committed(kafka_bootstrap, topics.dead_letters)) == REFUSED
    report = await audit(settings)
    assert report.ok, report.summary()
