"""`loyalty-consumer dlq list` and `dlq replay` on the real broker: counts, bytes, exactly once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from click.testing import CliRunner, Result

from consumer.cli import main
from consumer.config import Settings
from consumer.deadletter import ReasonClass, dead_letter, header
from consumer.dlq import (
    CRASH_AT,
    REPLAYED_FROM,
    Coordinates,
    ReplayHooks,
    ReplayReport,
    Selection,
    list_dead_letters,
    parse_since,
    replay,
)
from consumer.errors import Fenced
from consumer.store import open_store
from tests import workload
from tests.conftest import TopicFactory
from tests.kafkautil import end_offsets, produce, read_committed
from tests.workers import Topics, drain, settings_for

NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass(frozen=True)
class Original:
    """A record as the bridge published it to the input topic."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


@dataclass(frozen=True)
class Letter:
    """What to dead-letter: the original, why, when, and into which dead-letter partition."""

    original: Original
    reason: str = "data.pending_points.points: must be an integer ≥ 1, got -5"
    reason_class: ReasonClass = "invalid"
    at: datetime = NOW
    partition: int = 0


async def dead_letters(settings: Settings, letters: Sequence[Letter]) -> list[Coordinates]:
    """Write dead letters as the worker does (consumer.deadletter), return where they landed."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers, enable_idempotence=True
    )
    await producer.start()
    try:
        sent = []
        for source_offset, letter in enumerate(letters):
            record = dead_letter(
                key=letter.original.key,
                value=letter.original.value,
                headers=letter.original.headers,
                topic=settings.input_topic,
                partition=1,
                offset=source_offset,
                reasons=[letter.reason],
                reason_class=letter.reason_class,
                attempts=1 if letter.reason_class == "invalid" else 3,
                now=letter.at,
            )
            sent.append(
                await producer.send(
                    settings.dead_letter_topic,
                    key=record.key,
                    value=record.value,
                    headers=record.headers,
                    partition=letter.partition,
                )
            )
        placed = await asyncio.gather(*sent)
    finally:
        await producer.stop()
    return [Coordinates(m.topic, m.partition, m.offset) for m in placed]


async def read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every record in the log, aborted ones included (what a read_uncommitted reader sees)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_uncommitted")
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for p in await end_offsets(bootstrap, topic)]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[Any] = []
        while [tp for tp in ends if await consumer.position(tp) < ends[tp]]:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


def replayed_from(records: Sequence[Any]) -> Counter[str]:
    return Counter(header(r.headers, REPLAYED_FROM) or "" for r in records)


def activation(n: int) -> bytes:
    return workload.encode(workload.activation(f"vtx_replay{n:04d}", voucher_id=f"v_replay{n}"))


def environment(settings: Settings, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_"))}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        DATABASE_URL=settings.database_url,
        INPUT_TOPIC=settings.input_topic,
        NOTIFICATION_TOPIC=settings.notification_topic,
        DEAD_LETTER_TOPIC=settings.dead_letter_topic,
        CONSUMER_GROUP=settings.consumer_group,
        TRANSACTIONAL_ID_PREFIX=settings.transactional_id_prefix,
    )
    env.update(extra)
    return env


async def cli(settings: Settings, *args: str) -> Result:
    """The command in a thread: it runs its own event loop, as it does from a shell."""
    runner = CliRunner(env=environment(settings))
    return await asyncio.to_thread(runner.invoke, main, ["dlq", *args])


async def cli_process(
    settings: Settings, *args: str, **env: str
) -> subprocess.CompletedProcess[str]:
    """The command as its own process, so that a test hook can kill it outright."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "consumer", "dlq", *args],
        env=environment(settings, **env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def settings(kafka_bootstrap: str, topics: Topics, sqlite_url: str) -> Settings:
    return settings_for(kafka_bootstrap, topics, sqlite_url)


# -- dlq list --------------------------------------------------------------------------------


async def test_list_counts_dead_letters_per_reason_newest_first(settings: Settings) -> None:
    points = "data.pending_points.points: must be an integer ≥ 1, got -5"
    locked = "StoreError: card v_1 is locked"
    garbage = "value: not valid JSON"
    await dead_letters(
        settings,
        [
            Letter(Original(b"k1", b"{}"), points, "invalid", NOW - timedelta(hours=3)),
            Letter(Original(b"k2", b"{}"), locked, "persistent", NOW - timedelta(minutes=40)),
            Letter(Original(None, b"x"), garbage, "invalid", NOW - timedelta(hours=5)),
            Letter(Original(b"k3", b"{}"), points, "invalid", NOW - timedelta(hours=1)),
            Letter(Original(b"k4", b"{}"), locked, "persistent", NOW - timedelta(minutes=30)),
            Letter(Original(b"k5", b"{}"), points, "invalid", NOW - timedelta(hours=2)),
        ],
    )
    await produce(settings.kafka_bootstrap_servers, settings.dead_letter_topic, [b"by hand"])

    as_json = await cli(settings, "list", "--json")
    as_text = await cli(settings, "list")

    assert as_json.exit_code == 0, as_json.output
    assert json.loads(as_json.stdout) == {
        "topic": settings.dead_letter_topic,
        "dead_letters": 6,
        "replayed": 0,
        "not_replayed": 6,
        "other_records": 1,
        "reasons": [
            {
                "reason_class": "persistent",
                "reason": locked,
                "count": 2,
                "replayed": 0,
                "newest": (NOW - timedelta(minutes=30)).isoformat().replace("+00:00", "Z"),
            },
            {
                "reason_class": "invalid",
                "reason": points,
                "count": 3,
                "replayed": 0,
                "newest": (NOW - timedelta(hours=1)).isoformat().replace("+00:00", "Z"),
            },
            {
                "reason_class": "invalid",
                "reason": garbage,
                "count": 1,
                "replayed": 0,
                "newest": (NOW - timedelta(hours=5)).isoformat().replace("+00:00", "Z"),
            },
        ],
    }
    assert as_text.exit_code == 0, as_text.output
    summary, head, *rows = as_text.stdout.splitlines()
    assert summary == (
        f"{settings.dead_letter_topic}: 6 dead letters, 0 replayed, 6 not replayed; "
        "1 other records ignored"
    )
    assert head.split() == ["NEWEST", "CLASS", "COUNT", "REPLAYED", "REASON"]
    assert [row.split(maxsplit=4) for row in rows] == [
        [f"{(NOW - timedelta(minutes=30)).isoformat()[:19]}Z", "persistent", "2", "0", locked],
        [f"{(NOW - timedelta(hours=1)).isoformat()[:19]}Z", "invalid", "3", "0", points],
        [f"{(NOW - timedelta(hours=5)).isoformat()[:19]}Z", "invalid", "1", "0", garbage],
    ]


async def test_list_of_an_empty_topic_says_so(settings: Settings) -> None:
    result = await cli(settings, "list")

    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"{settings.dead_letter_topic}: 0 dead letters, 0 replayed, 0 not replayed"
    ]


# -- dlq replay: what is published -----------------------------------------------------------


async def test_replay_republishes_original_key_value_and_headers_byte_for_byte(
    settings: Settings, new_topic: TopicFactory
) -> None:
    settings = settings.model_copy(update={"dead_letter_topic": await new_topic("dlq", 2)})
    originals = [
        Original(
            b"bridge-key",
            activation(1),
            [("traceparent", b"00-abc-def-01"), ("x-sig", b"\x00\x01\xff"), ("traceparent", b"")],
        ),
        Original(None, activation(2)),
        Original(b"tombstone", None, [("h", b"v")]),
        Original(None, None, [("only", b"headers")]),
    ]
    placed = await dead_letters(
        settings,
        [
            Letter(o, "StoreError: gone", "persistent", partition=n % 2)
            for n, o in enumerate(originals)
        ],
    )

    report = await replay(settings, chunk_size=3)

    assert report.replayed == 4
    republished = await read_committed(settings.kafka_bootstrap_servers, settings.input_topic)
    by_source = {header(r.headers, REPLAYED_FROM): r for r in republished}
    assert len(republished) == len(by_source) == 4
    for where, original in zip(placed, originals, strict=True):
        record = by_source[str(where)]
        assert record.key == original.key
        assert record.value == original.value
        assert list(record.headers) == [*original.headers, (REPLAYED_FROM, str(where).encode())]


async def test_replayed_records_are_processed_by_the_worker(settings: Settings) -> None:
    await dead_letters(
        settings,
        [
            Letter(Original(b"a", activation(1)), "StoreError: gone", "persistent"),
            Letter(Original(b"b", activation(2)), "StoreError: gone", "persistent"),
            Letter(Original(None, b"not json"), "value: not valid JSON", "invalid"),
        ],
    )

    await replay(settings)
    metrics = await drain(settings)

    assert metrics.value("loyalty_consumer_applied_total") == 2
    notes = await read_committed(settings.kafka_bootstrap_servers, settings.notification_topic)
    assert sorted(json.loads(n.value)["voucherify"]["transaction_id"] for n in notes) == [
        "vtx_replay0001",
        "vtx_replay0002",
    ]
    store = await open_store(settings.database_url)
    try:
        assert (await store.counts()).ledger_entries == 2
    finally:
        await store.close()
    # Still garbage: dead-lettered again, under its new input coordinates.
    again = await list_dead_letters(settings)
    [refused] = [letter for letter in again.letters if letter.where.offset >= 3]
    assert refused.reason_class == "invalid"
    assert again.replayed == 3


# -- dlq replay: filters ---------------------------------------------------------------------


async def test_filters_replay_matching_records_and_a_later_run_replays_the_rest_once(
    settings: Settings,
) -> None:
    old, new = NOW - timedelta(hours=6), NOW - timedelta(minutes=10)
    placed = await dead_letters(
        settings,
        [
            Letter(Original(b"0", b"{}"), "StoreError: gone", "persistent", new),
            Letter(Original(b"1", b"{}"), "data.points: bad", "invalid", old),
            Letter(Original(b"2", b"x"), "value: not valid JSON", "invalid", new),
            Letter(Original(b"3", b"{}"), "StoreError: gone", "persistent", old),
            Letter(Original(b"4", b"y"), "value: not valid JSON", "invalid", old),
            Letter(Original(b"5", b"{}"), "data.points: bad", "invalid", new),
        ],
    )

    persistent = await replay(settings, Selection(reason_class="persistent"))
    recent_json = await replay(
        settings, Selection(reason="NOT VALID json", since=NOW - timedelta(hours=1))
    )
    rest = await replay(settings)
    nothing_left = await cli(settings, "replay")

    assert [str(x.where) for x in persistent.plan.selected] == [str(placed[0]), str(placed[3])]
    assert [str(x.where) for x in recent_json.plan.selected] == [str(placed[2])]
    assert (recent_json.plan.already_replayed, recent_json.plan.not_matching) == (0, 3)
    assert [str(x.where) for x in rest.plan.selected] == [
        str(placed[1]),
        str(placed[4]),
        str(placed[5]),
    ]
    assert nothing_left.exit_code == 0, nothing_left.output
    assert nothing_left.stdout.splitlines() == [
        f"nothing to replay from {settings.dead_letter_topic} "
        "(skipped: 6 already replayed, 0 not matching the filters)"
    ]
    republished = await read_committed(settings.kafka_bootstrap_servers, settings.input_topic)
    assert replayed_from(republished) == Counter(str(where) for where in placed)
    listed = await cli(settings, "list", "--json")
    assert json.loads(listed.stdout)["replayed"] == 6


async def test_dry_run_prints_the_plan_and_publishes_nothing(settings: Settings) -> None:
    placed = await dead_letters(
        settings,
        [
            Letter(Original(b"0", b"{}"), "value: not valid JSON", "invalid"),
            Letter(Original(b"1", b"{}"), "StoreError: gone", "persistent"),
            Letter(Original(b"2", b"{}"), "value: not valid JSON", "invalid"),
        ],
    )
    dlq_ends = await end_offsets(settings.kafka_bootstrap_servers, settings.dead_letter_topic)

    result = await cli(settings, "replay", "--dry-run", "--reason-class", "invalid")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == (
        f"dry run: would replay 2 dead letters from {settings.dead_letter_topic} to "
        f"{settings.input_topic} (skipped: 0 already replayed, 1 not matching the filters); "
        "nothing was published"
    )
    assert lines[2].split()[1:] == ["invalid", "2", "value:", "not", "valid", "JSON"]
    assert [line.split()[0] for line in lines[4:]] == [str(placed[0]), str(placed[2])]
    assert await read_committed(settings.kafka_bootstrap_servers, settings.input_topic) == []
    assert (
        await end_offsets(settings.kafka_bootstrap_servers, settings.dead_letter_topic) == dlq_ends
    )


# -- dlq replay: interrupted -----------------------------------------------------------------


async def test_killed_after_the_first_chunk_commit_a_rerun_replays_each_record_once(
    settings: Settings,
) -> None:
    placed = await dead_letters(settings, [Letter(Original(bytes([n]), b"{}")) for n in range(5)])

    crashed = await cli_process(
        settings, "replay", "--chunk-size", "2", **{CRASH_AT: "after-commit:1"}
    )

    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    bootstrap = settings.kafka_bootstrap_servers
    after_crash = await read_committed(bootstrap, settings.input_topic)
    assert replayed_from(after_crash) == Counter(str(w) for w in placed[:2])

    rerun = await cli_process(settings, "replay", "--chunk-size", "2")

    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert rerun.stdout.splitlines()[-3].startswith("replayed 3 dead letters")
    republished = await read_committed(bootstrap, settings.input_topic)
    assert replayed_from(republished) == Counter(str(w) for w in placed)


async def test_killed_before_the_second_chunk_commit_a_rerun_replays_that_chunk_once(
    settings: Settings,
) -> None:
    placed = await dead_letters(settings, [Letter(Original(bytes([n]), b"{}")) for n in range(5)])

    crashed = await cli_process(
        settings, "replay", "--chunk-size", "2", **{CRASH_AT: "before-commit:2"}
    )

    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    bootstrap = settings.kafka_bootstrap_servers
    # Chunk 2 reached the log but was never committed.
    assert replayed_from(await read_all(bootstrap, settings.input_topic)) == Counter(
        str(w) for w in placed[:4]
    )

    rerun = await cli_process(settings, "replay", "--chunk-size", "2")

    assert rerun.returncode == 0, rerun.stderr[-2000:]
    republished = await read_committed(bootstrap, settings.input_topic)
    assert replayed_from(republished) == Counter(str(w) for w in placed)
    # The aborted copies of chunk 2 are still in the log; committed readers never see them.
    in_log = replayed_from(await read_all(bootstrap, settings.input_topic))
    assert in_log == Counter(str(w) for w in placed) + Counter(str(w) for w in placed[2:4])


async def test_a_replay_started_meanwhile_fences_the_first_and_nothing_is_published_twice(
    settings: Settings,
) -> None:
    placed = await dead_letters(settings, [Letter(Original(bytes([n]), b"{}")) for n in range(4)])
    second_scanned, first_stopped = asyncio.Event(), asyncio.Event()
    second: list[asyncio.Task[ReplayReport]] = []

    async def hold_after_scan() -> None:
        second_scanned.set()
        async with asyncio.timeout(30):
            await first_stopped.wait()

    async def start_second_replay(chunk: int) -> None:
        if chunk == 2:
            hooks = ReplayHooks(after_scan=hold_after_scan)
            second.append(asyncio.create_task(replay(settings, chunk_size=2, hooks=hooks)))
            async with asyncio.timeout(30):
                await second_scanned.wait()
        # The first run now tries to commit chunk 2, which the second one has already read
        # as "not replayed": it must be refused.

    with pytest.raises(Fenced):
        await replay(settings, chunk_size=2, hooks=ReplayHooks(before_commit=start_second_replay))
    first_stopped.set()

    assert (await second[0]).replayed == 2
    republished = await read_committed(settings.kafka_bootstrap_servers, settings.input_topic)
    assert replayed_from(republished) == Counter(str(w) for w in placed)


# -- the command line ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", NOW - timedelta(hours=2)),
        ("90m", NOW - timedelta(minutes=90)),
        ("1d12h", NOW - timedelta(hours=36)),
        ("2026-01-01T02:00:00Z", datetime(2026, 1, 1, 2, tzinfo=UTC)),
        ("2026-01-01T03:00:00+01:00", datetime(2026, 1, 1, 2, tzinfo=UTC)),
    ],
)
def test_since_is_a_time_with_a_timezone_or_a_duration_back_from_now(
    text: str, expected: datetime
) -> None:
    assert parse_since(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["yesterday", "2h ago", "2026-01-01T02:00:00", "2026-01-01"])
def test_a_bad_since_is_a_usage_error(text: str) -> None:
    result = CliRunner().invoke(main, ["dlq", "replay", "--since", text])

    assert result.exit_code == 2
    assert "Invalid value for '--since'" in result.stderr


@pytest.mark.parametrize("command", [["list"], ["replay"], ["replay", "--dry-run"]])
def test_an_unreachable_broker_fails_with_one_line(command: list[str]) -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}

    result = CliRunner(env=env).invoke(main, ["dlq", *command])

    assert result.exit_code == 1
    assert result.stderr.startswith("Error: Kafka at 127.0.0.1:1: ")
    assert len(result.stderr.splitlines()) == 1
    assert result.exception is None or isinstance(result.exception, SystemExit)


async def test_a_missing_dead_letter_topic_is_named(settings: Settings) -> None:
    settings = settings.model_copy(update={"dead_letter_topic": "no-such-dlq-topic"})

    result = await cli(settings, "list")

    assert result.exit_code == 1
    assert result.stderr.splitlines() == [
        "Error: the dead-letter topic no-such-dlq-topic does not exist; check DEAD_LETTER_TOPIC"
    ]
