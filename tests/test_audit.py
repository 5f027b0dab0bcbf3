"""The accounting check: it passes on a correct run and catches each kind of discrepancy."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from consumer.audit import AuditReport, audit
from consumer.config import Settings
from consumer.workload import Expectation, Workload, publish
from tests.kafkautil import end_offsets, produce, read_committed
from tests.workers import Topics, drain, settings_for


@dataclass
class Drained:
    settings: Settings
    expected: Expectation
    database: str  # the SQLite file


async def _drained(
    bootstrap: str, topics: Topics, sqlite_url: str, events: int, seed: int
) -> Drained:
    settings = settings_for(bootstrap, topics, sqlite_url)
    workload = Workload(
        seed=seed, events=events, partitions=3, malformed_share=0.05, sibling_share=0.05
    )
    await publish(workload.records(), topics.input, bootstrap_servers=bootstrap)
    await drain(settings)
    return Drained(settings, workload.expectation(), sqlite_url.removeprefix("sqlite:///"))


@pytest.fixture
async def drained(kafka_bootstrap: str, topics: Topics, sqlite_url: str) -> Drained:
    return await _drained(kafka_bootstrap, topics, sqlite_url, events=80, seed=17)


async def test_a_correct_run_is_accounted_for_record_by_record(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    run = await _drained(kafka_bootstrap, topics, sqlite_url, events=400, seed=5)

    report = await audit(run.settings)

    assert report.ok, report.summary()
    kinds = run.expected.kinds
    assert report.records == run.expected.records == 400
    assert report.distinct_ids == report.applied == report.notified == run.expected.distinct
    assert report.duplicates == kinds["duplicate"]
    assert report.skipped == kinds["sibling"]
    assert report.dead_lettered == kinds["malformed"]
    assert report.cards == len(run.expected.points_by_card)
    assert (report.lost, report.unaccounted, report.offsets_behind, report.pending) == (0, 0, 0, 0)


async def test_a_second_notification_for_an_id_is_notified_twice(
    kafka_bootstrap: str, drained: Drained
) -> None:
    topic = drained.settings.notification_topic
    first = (await read_committed(kafka_bootstrap, topic))[0]
    await produce(kafka_bootstrap, topic, [first.value], headers=list(first.headers))

    report = await audit(drained.settings)

    assert report.notified_twice == 1
    assert not report.ok
    assert "notified twice" in report.summary().splitlines()[-1]


def _sql(database: str, statement: str) -> None:
    with sqlite3.connect(database) as connection:
        connection.execute(statement)


async def test_points_added_to_a_card_twice_are_applied_twice(drained: Drained) -> None:
    _sql(
        drained.database,
        "UPDATE cards SET activated_points = activated_points + 7 "
        "WHERE voucher_id = (SELECT min(voucher_id) FROM cards)",
    )

    report = await audit(drained.settings)

    assert (report.applied_twice, report.card_mismatches) == (1, 1)
    assert not report.ok


async def test_an_id_missing_from_the_ledger_is_lost(drained: Drained) -> None:
    _sql(
        drained.database,
        "DELETE FROM ledger WHERE transaction_id = (SELECT min(transaction_id) FROM ledger)",
    )

    report = await audit(drained.settings)

    assert report.lost == 1
    assert any("no ledger entry" in line for line in report.details)
    assert not report.ok


async def test_records_past_the_committed_offsets_are_behind_not_lost(
    kafka_bootstrap: str, drained: Drained
) -> None:
    late = Workload(seed=99, events=1, duplicate_share=0, sibling_share=0, malformed_share=0)
    await publish(late.records(), drained.settings.input_topic, bootstrap_servers=kafka_bootstrap)

    report = await audit(drained.settings)

    assert (report.offsets_behind, report.pending, report.lost) == (1, 1, 0)
    assert not report.ok


async def test_a_garbage_record_committed_without_a_dead_letter_is_unaccounted(
    kafka_bootstrap: str, drained: Drained
) -> None:
    topic = drained.settings.input_topic
    await produce(kafka_bootstrap, topic, [b"garbage"], partition=0)
    ends = await end_offsets(kafka_bootstrap, topic)
    group = AIOKafkaConsumer(
        bootstrap_servers=kafka_bootstrap,
        group_id=drained.settings.consumer_group,
        enable_auto_commit=False,
    )
    await group.start()
    try:
        group.assign([TopicPartition(topic, 0)])
        await group.commit({TopicPartition(topic, 0): ends[0]})
    finally:
        await group.stop()

    report = await audit(drained.settings)

    assert (report.unaccounted, report.offsets_behind) == (1, 0)
    assert not report.ok


def _cli(settings: Settings) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_"))}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        DATABASE_URL=settings.database_url,
        INPUT_TOPIC=settings.input_topic,
        NOTIFICATION_TOPIC=settings.notification_topic,
        DEAD_LETTER_TOPIC=settings.dead_letter_topic,
        CONSUMER_GROUP=settings.consumer_group,
    )
    return subprocess.run(
        [sys.executable, "-m", "consumer", "audit"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_the_command_prints_the_summary_and_exits_by_verdict(drained: Drained) -> None:
    passed = _cli(drained.settings)
    _sql(drained.database, "UPDATE cards SET activated_points = activated_points + 1")
    failed = _cli(drained.settings)

    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert passed.stdout.strip().endswith("audit: OK")
    assert f"distinct ids         {drained.expected.distinct}" in passed.stdout
    assert failed.returncode == 1
    assert "audit: FAILED (applied twice, card mismatches)" in failed.stdout


def test_the_verdict_names_every_discrepancy() -> None:
    report = AuditReport(lost=1, offsets_behind=3)

    assert not report.ok
    assert report.summary().splitlines()[-1] == "audit: FAILED (lost, offsets behind)"
    assert AuditReport().ok
