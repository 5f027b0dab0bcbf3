"""The stores' guarantees, each checked against SQLite and PostgreSQL on real databases."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import aiosqlite
import asyncpg  # type: ignore[import-untyped, unused-ignore]
import pytest

from consumer.errors import (
    ConfigurationError,
    ConsumerError,
    SchemaOutOfDate,
    StoreError,
    StoreUnavailable,
)
from consumer.store import (
    BatchResult,
    CardState,
    LedgerEntry,
    SourceOffset,
    Store,
    StoreCounts,
    open_store,
    run_migrations,
)
from consumer.store.postgres import PostgresStore
from consumer.store.schema import expected_version, migrations
from consumer.workload import REFUSED_PREFIX, install_refusal

ROOT = Path(__file__).resolve().parents[1]
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
TOPIC = "voucherify.events"


def entry(
    transaction_id: str,
    *,
    voucher_id: str = "v_card1",
    points: int = 10,
    balance: int = 100,
    pending: int = 0,
    at: datetime = T0,
    partition: int = 0,
    offset: int = 0,
) -> LedgerEntry:
    return LedgerEntry(
        transaction_id=transaction_id,
        voucher_id=voucher_id,
        customer_id="cust_1",
        campaign_id="camp_1",
        points=points,
        reported_balance=balance,
        reported_pending=pending,
        occurred_at=at,
        source=SourceOffset(TOPIC, partition, offset),
    )


def kinds(result: BatchResult) -> list[str]:
    return [outcome.kind for outcome in result.outcomes]


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """conftest's `store_url`, but synchronous: an async fixture cannot request the async
    `postgres_url` through getfixturevalue while the event loop runs."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'loyalty.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await open_store(store_url, migrate=True)
    yield opened
    await opened.close()


async def schema_rows(url: str) -> list[tuple[int, str]]:
    """schema_migrations as stored, read without the store's code."""
    query = "SELECT version, name FROM schema_migrations ORDER BY version"
    if url.startswith("sqlite:///"):
        async with aiosqlite.connect(url.removeprefix("sqlite:///")) as db:
            return [(row[0], row[1]) for row in await db.execute_fetchall(query)]
    conn = await asyncpg.connect(url)
    try:
        return [(row[0], row[1]) for row in await conn.fetch(query)]
    finally:
        await conn.close()


# -- applying entries ------------------------------------------------------------------------


async def test_a_new_entry_is_applied_once_with_its_source(store: Store) -> None:
    activation = entry("vtx_1", points=23, balance=23, pending=46, offset=7)

    result = await store.apply_batch([activation])

    assert kinds(result) == ["applied"]
    card = CardState("v_card1", 23, 23, 46, "vtx_1", T0)
    assert result.cards == (card,)
    assert await store.card("v_card1") == card
    stored = await store.ledger_entry("vtx_1")
    assert stored is not None
    assert stored.source == SourceOffset(TOPIC, 0, 7)
    assert (stored.points, stored.reported_balance, stored.reported_pending) == (23, 23, 46)
    assert (stored.voucher_id, stored.customer_id, stored.campaign_id) == (
        "v_card1",
        "cust_1",
        "camp_1",
    )
    assert stored.occurred_at == T0
    assert await store.counts() == StoreCounts(
        ledger_entries=1, ledger_points=23, cards=1, activated_points=23
    )


async def test_redelivery_from_the_same_source_is_a_replay_and_changes_nothing(
    store: Store,
) -> None:
    activation = entry("vtx_1", offset=7)
    await store.apply_batch([activation])
    card_before = await store.card("v_card1")
    stored_before = await store.ledger_entry("vtx_1")

    result = await store.apply_batch([activation])

    assert kinds(result) == ["replay"]
    assert result.outcomes[0].notifies
    assert result.cards == (card_before,)
    assert await store.card("v_card1") == card_before
    assert await store.ledger_entry("vtx_1") == stored_before
    assert (await store.counts()).ledger_entries == 1


async def test_the_same_transaction_from_another_source_is_a_duplicate_and_changes_nothing(
    store: Store,
) -> None:
    await store.apply_batch([entry("vtx_1", points=10, offset=7)])
    card_before = await store.card("v_card1")
    # Voucherify's retry, delivered hours later elsewhere; its figures must not count.
    retry = entry("vtx_1", points=999, balance=5000, partition=2, offset=3)

    result = await store.apply_batch([retry])

    assert kinds(result) == ["duplicate"]
    assert not result.outcomes[0].notifies
    assert await store.card("v_card1") == card_before
    stored = await store.ledger_entry("vtx_1")
    assert stored is not None
    assert (stored.source, stored.points) == (SourceOffset(TOPIC, 0, 7), 10)
    assert (await store.counts()).ledger_entries == 1


async def test_repeats_within_one_batch_are_duplicates_of_the_first(store: Store) -> None:
    batch = [
        entry("vtx_1", points=10, offset=0),
        entry("vtx_1", points=10, offset=1),
        entry("vtx_1", points=10, offset=2),
    ]

    first = await store.apply_batch(batch)
    again = await store.apply_batch(batch)  # the worker's batch, redelivered after a crash

    assert kinds(first) == ["applied", "duplicate", "duplicate"]
    assert kinds(again) == ["replay", "duplicate", "duplicate"]
    stored = await store.ledger_entry("vtx_1")
    assert stored is not None
    assert stored.source.offset == 0
    card = await store.card("v_card1")
    assert card is not None
    assert card.activated_points == 10


async def test_a_mixed_batch_reports_each_outcome_in_input_order(store: Store) -> None:
    await store.apply_batch(
        [
            entry("vtx_old1", voucher_id="v_a", points=1, offset=1),
            entry("vtx_old2", voucher_id="v_b", points=2, offset=2),
        ]
    )
    batch = [
        entry("vtx_new1", voucher_id="v_a", points=5, offset=10),
        entry("vtx_old1", voucher_id="v_a", points=1, offset=1),  # our own earlier batch
        entry("vtx_old2", voucher_id="v_b", points=2, partition=1, offset=4),  # a retry
        entry("vtx_new2", voucher_id="v_c", points=7, offset=11),
        entry("vtx_new1", voucher_id="v_a", points=5, offset=12),  # repeated in the batch
    ]

    result = await store.apply_batch(batch)

    assert [outcome.entry for outcome in result.outcomes] == batch
    assert kinds(result) == ["applied", "replay", "duplicate", "applied", "duplicate"]
    # Every card the batch touched, even v_b through a duplicate alone, after the batch.
    assert [(c.voucher_id, c.activated_points) for c in result.cards] == [
        ("v_a", 6),
        ("v_b", 2),
        ("v_c", 7),
    ]
    assert await store.counts() == StoreCounts(
        ledger_entries=4, ledger_points=15, cards=3, activated_points=15
    )


async def test_an_empty_batch_changes_nothing(store: Store) -> None:
    result = await store.apply_batch([])

    assert result == BatchResult((), ())
    assert await store.counts() == StoreCounts(0, 0, 0, 0)


async def test_a_failing_batch_leaves_no_trace(store: Store) -> None:
    good = entry("vtx_good", points=5)
    broken = entry("vtx_broken", points=-1)  # the ledger refuses negative points

    with pytest.raises(StoreError) as caught:
        await store.apply_batch([good, broken])

    assert not caught.value.retriable
    assert await store.counts() == StoreCounts(0, 0, 0, 0)
    assert kinds(await store.apply_batch([good])) == ["applied"]


async def test_64_bit_values_and_microseconds_are_stored_exactly(store: Store) -> None:
    # PostgreSQL receives a batch as JSON: its numbers and times must come back unchanged.
    at = datetime(2025, 1, 8, 14, 8, 34, 127001, tzinfo=UTC)
    big = entry("vtx_big", points=2**63 - 1, balance=2**63 - 1, at=at, offset=2**62 + 1)

    assert kinds(await store.apply_batch([big])) == ["applied"]

    stored = await store.ledger_entry("vtx_big")
    assert stored is not None
    assert (stored.points, stored.reported_balance, stored.source) == (
        big.points,
        big.reported_balance,
        big.source,
    )
    assert stored.occurred_at == at
    card = await store.card("v_card1")
    assert card is not None
    assert (card.activated_points, card.last_transaction_at) == (2**63 - 1, at)


async def test_text_no_database_can_hold_is_refused_for_good(store: Store) -> None:
    # PostgreSQL text cannot hold NUL; the worker dead-letters such a record, never retries.
    if not isinstance(store, PostgresStore):
        pytest.skip("SQLite stores NUL in text")
    with pytest.raises(StoreError) as caught:
        await store.apply_batch([entry("vtx_\x00nul")])

    assert not caught.value.retriable
    assert await store.counts() == StoreCounts(0, 0, 0, 0)


async def test_a_store_prepared_by_install_refusal_refuses_only_marked_ids(
    store_url: str,
) -> None:
    store = await open_store(store_url, migrate=True)
    try:
        await install_refusal(store_url)
        await install_refusal(store_url)  # idempotent

        with pytest.raises(StoreError) as caught:
            await store.apply_batch([entry("vtx_good"), entry(REFUSED_PREFIX + "1", offset=2)])
        assert not caught.value.retriable
        assert await store.counts() == StoreCounts(0, 0, 0, 0)
        # An underscore in the prefix is a literal, not LIKE's "any character".
        assert kinds(await store.apply_batch([entry("vtx_refusedX1", offset=3)])) == ["applied"]
    finally:
        await store.close()


# -- owed notifications ----------------------------------------------------------------------


async def test_an_owed_mark_is_set_only_for_the_record_the_entry_came_from(store: Store) -> None:
    await store.apply_batch([entry("vtx_1", offset=7), entry("vtx_2", offset=8)])

    marked = await store.mark_owed(
        [("vtx_1", SourceOffset(TOPIC, 0, 7)), ("vtx_2", SourceOffset(TOPIC, 1, 8))]
    )

    assert marked == 1  # vtx_2 came from partition 0: that record, not this one, holds it
    assert await store.owed() == ["vtx_1"]
    stored = await store.ledger_entry("vtx_1")
    assert stored is not None and stored.notification_owed
    other = await store.ledger_entry("vtx_2")
    assert other is not None and not other.notification_owed


async def test_the_first_record_from_elsewhere_pays_an_owed_notification_once(
    store: Store,
) -> None:
    await store.apply_batch([entry("vtx_1", points=10, offset=7)])
    await store.mark_owed([("vtx_1", SourceOffset(TOPIC, 0, 7))])
    card_before = await store.card("v_card1")
    replayed = entry("vtx_1", points=10, partition=2, offset=40)  # the replayed dead letter

    first = await store.apply_batch([replayed, entry("vtx_1", partition=1, offset=3)])
    again = await store.apply_batch([entry("vtx_1", partition=1, offset=9)])

    assert kinds(first) == ["owed", "duplicate"]
    assert first.outcomes[0].notifies
    assert kinds(again) == ["duplicate"]
    stored = await store.ledger_entry("vtx_1")
    assert stored is not None
    assert not stored.notification_owed
    assert stored.source == SourceOffset(TOPIC, 2, 40)  # a redelivery of it is a replay
    assert kinds(await store.apply_batch([replayed])) == ["replay"]
    assert await store.card("v_card1") == card_before
    assert await store.owed() == []


async def test_an_owed_entry_redelivered_from_its_own_record_is_a_replay_that_pays_it(
    store: Store,
) -> None:
    original = entry("vtx_1", offset=7)
    await store.apply_batch([original])
    await store.mark_owed([("vtx_1", original.source)])

    result = await store.apply_batch([entry("vtx_1", partition=3, offset=1), original])

    assert kinds(result) == ["duplicate", "replay"]
    assert await store.owed() == []
    stored = await store.ledger_entry("vtx_1")
    assert stored is not None and stored.source == original.source


async def test_a_rolled_back_batch_keeps_the_owed_mark(store: Store) -> None:
    await store.apply_batch([entry("vtx_1", offset=7)])
    await store.mark_owed([("vtx_1", SourceOffset(TOPIC, 0, 7))])

    with pytest.raises(StoreError):
        await store.apply_batch(
            [entry("vtx_1", partition=2, offset=1), entry("vtx_bad", points=-1)]
        )

    assert await store.owed() == ["vtx_1"]


# -- balances --------------------------------------------------------------------------------


async def test_a_late_older_event_never_overwrites_a_newer_snapshot(store: Store) -> None:
    newer = entry("vtx_2", points=50, balance=150, pending=5, at=T0 + timedelta(minutes=5))
    older = entry("vtx_1", points=100, balance=100, pending=55, at=T0, offset=1)

    await store.apply_batch([newer])
    result = await store.apply_batch([older])

    card = CardState("v_card1", 150, 150, 5, "vtx_2", T0 + timedelta(minutes=5))
    assert result.cards == (card,)
    assert await store.card("v_card1") == card


async def test_within_a_batch_the_newest_snapshot_wins_whatever_the_order(store: Store) -> None:
    batch = [
        entry("vtx_3", points=1, balance=103, pending=7, at=T0 + timedelta(seconds=3), offset=0),
        entry("vtx_9", points=1, balance=109, pending=1, at=T0 + timedelta(seconds=9), offset=1),
        entry("vtx_1", points=1, balance=101, pending=9, at=T0 + timedelta(seconds=1), offset=2),
    ]

    await store.apply_batch(batch)

    assert await store.card("v_card1") == CardState(
        "v_card1", 3, 109, 1, "vtx_9", T0 + timedelta(seconds=9)
    )


async def test_snapshots_of_the_same_instant_are_ordered_by_transaction_id(store: Store) -> None:
    await store.apply_batch([entry("vtx_b", balance=200, pending=2, offset=0)])
    await store.apply_batch([entry("vtx_a", balance=100, pending=1, offset=1)])

    card = await store.card("v_card1")

    assert card is not None
    assert (card.last_transaction_id, card.reported_balance, card.reported_pending) == (
        "vtx_b",
        200,
        2,
    )


async def test_snapshot_times_in_other_zones_compare_as_instants(store: Store) -> None:
    plus_two = timezone(timedelta(hours=2))
    earlier = entry("vtx_z", balance=100, at=datetime(2024, 5, 1, 12, 0, tzinfo=plus_two))  # 10:00Z
    later = entry("vtx_a", balance=200, at=datetime(2024, 5, 1, 11, 0, tzinfo=UTC), offset=1)

    await store.apply_batch([later])
    await store.apply_batch([earlier])

    card = await store.card("v_card1")
    assert card is not None
    assert (card.last_transaction_id, card.reported_balance) == ("vtx_a", 200)
    assert card.last_transaction_at == datetime(2024, 5, 1, 11, 0, tzinfo=UTC)


async def test_activated_points_add_up_across_many_entries_per_card(store: Store) -> None:
    activations = [
        entry(
            f"vtx_{i:05d}",
            voucher_id=f"v_card{i % 7}",
            points=i % 50 + 1,
            at=T0 + timedelta(seconds=i),
            offset=i,
        )
        for i in range(1200)
    ]
    expected: dict[str, int] = {}
    for activation in activations:
        expected[activation.voucher_id] = expected.get(activation.voucher_id, 0) + activation.points
    retries = [dataclasses.replace(a, source=SourceOffset(TOPIC, 1, 0)) for a in activations[::9]]

    applied = 0
    for start, end in [(0, 1), (1, 501), (501, 700), (700, 1200)]:
        applied += (await store.apply_batch(activations[start:end])).count("applied")
    duplicates = (await store.apply_batch(retries)).count("duplicate")

    assert (applied, duplicates) == (1200, len(retries))
    for voucher_id, points in expected.items():
        card = await store.card(voucher_id)
        assert card is not None
        assert card.activated_points == points
    total = sum(expected.values())
    assert await store.counts() == StoreCounts(1200, total, 7, total)


async def test_naive_times_are_refused_before_they_reach_a_store() -> None:
    with pytest.raises(ValueError, match="time zone"):
        entry("vtx_1", at=datetime(2024, 5, 1, 12, 0))  # noqa: DTZ001


# -- schema and migrations -------------------------------------------------------------------


async def test_migrations_are_idempotent_and_recorded(store_url: str) -> None:
    first = await run_migrations(store_url)
    second = await run_migrations(store_url)

    assert [m.version for m in first.applied] == list(range(1, expected_version("sqlite") + 1))
    assert first.version == expected_version("sqlite")
    assert (second.applied, second.version) == ((), first.version)
    assert await schema_rows(store_url) == [(m.version, m.name) for m in migrations("sqlite")]
    opened = await open_store(store_url)
    try:
        assert await opened.schema_version() == first.version
    finally:
        await opened.close()


async def test_a_schema_behind_the_code_is_refused_with_the_fix(store_url: str) -> None:
    with pytest.raises(SchemaOutOfDate) as caught:
        await open_store(store_url)

    message = str(caught.value)
    assert "at version 0" in message
    assert f"needs version {expected_version('sqlite')}" in message
    assert "run `loyalty-consumer migrate` or set MIGRATE_ON_START=true" in message
    assert not caught.value.retriable


def test_both_backends_ship_the_same_migrations() -> None:
    assert [(m.version, m.name) for m in migrations("sqlite")] == [
        (m.version, m.name) for m in migrations("postgresql")
    ]


# -- URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "mysql://loyalty:s3cret@db/loyalty",
        "loyalty.db",
        "sqlite://loyalty.db",
        "sqlite:///",
        "",
    ],
)
async def test_an_unknown_url_is_a_configuration_error(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        await open_store(url)

    message = str(caught.value)
    assert "DATABASE_URL" in message
    assert "sqlite:///" in message
    assert "postgresql://" in message
    assert "s3cret" not in message
    assert not caught.value.retriable


async def test_sqlite_urls_take_relative_absolute_and_memory_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for url in [
        "sqlite:///relative.db",
        f"sqlite:///{tmp_path / 'absolute.db'}",
        "sqlite:///:memory:",
    ]:
        opened = await open_store(url, migrate=True)
        try:
            assert kinds(await opened.apply_batch([entry("vtx_1")])) == ["applied"]
        finally:
            await opened.close()
    assert (tmp_path / "relative.db").is_file()
    assert (tmp_path / "absolute.db").is_file()


async def test_sqlite_runs_in_wal_mode(sqlite_url: str) -> None:
    opened = await open_store(sqlite_url, migrate=True)
    await opened.close()

    async with aiosqlite.connect(sqlite_url.removeprefix("sqlite:///")) as db:
        rows = list(await db.execute_fetchall("PRAGMA journal_mode"))

    assert rows[0][0] == "wal"


@pytest.mark.postgres
async def test_postgres_scheme_is_accepted_as_postgresql(postgres_url: str) -> None:
    opened = await open_store(postgres_url.replace("postgresql://", "postgres://", 1), migrate=True)
    try:
        await opened.ping()
    finally:
        await opened.close()


async def test_ping_answers_when_the_database_does(store: Store) -> None:
    await store.ping()


async def test_an_unreachable_postgresql_is_retriable_and_keeps_its_password() -> None:
    with pytest.raises(StoreUnavailable) as caught:
        await open_store("postgresql://loyalty:s3cret@127.0.0.1:1/loyalty")

    assert caught.value.retriable
    assert "s3cret" not in str(caught.value)


# -- command line ----------------------------------------------------------------------------


async def migrate_command(database_url: str) -> tuple[int, str, str]:
    environment = {**os.environ, "DATABASE_URL": database_url}
    process = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("loyalty-consumer")),
        "migrate",
        env=environment,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_migrate_command_applies_then_reports_up_to_date(store_url: str) -> None:
    first = await migrate_command(store_url)
    second = await migrate_command(store_url)

    version = expected_version("sqlite")
    applied = "".join(f"applied migration {m.version:04d}_{m.name}\n" for m in migrations("sqlite"))
    assert first == (0, f"{applied}schema version {version}\n", "")
    assert second == (0, f"schema version {version}\n", "")


async def test_migrate_command_explains_an_unreachable_database_in_one_line() -> None:
    code, out, err = await migrate_command("postgresql://loyalty:s3cret@127.0.0.1:1/loyalty")

    assert (code, out) == (1, "")
    assert err.startswith("Error: PostgreSQL at postgresql://loyalty:***@127.0.0.1:1/loyalty")
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert "s3cret" not in err


# -- PostgreSQL shared by replicas -----------------------------------------------------------


async def apply_like_the_worker(store: Store, entries: list[LedgerEntry]) -> BatchResult:
    """Retry the whole batch while the error says retrying helps, as the worker does."""
    for _ in range(20):
        try:
            return await store.apply_batch(entries)
        except ConsumerError as exc:
            if not exc.retriable:
                raise
    raise AssertionError("the batch kept failing with retriable errors")


@pytest.mark.postgres
async def test_replicas_writing_overlapping_batches_apply_each_transaction_once(
    postgres_url: str,
) -> None:
    await run_migrations(postgres_url)
    replicas = [await open_store(postgres_url), await open_store(postgres_url)]
    shuffle = random.Random(20240501).shuffle
    expected: dict[str, int] = {}
    applied_by: dict[str, SourceOffset] = {}
    try:
        for round_ in range(4):
            activations = [
                entry(
                    f"vtx_r{round_}_{i:04d}",
                    voucher_id=f"v_card{i % 13}",
                    points=i % 17 + 1,
                    at=T0 + timedelta(seconds=round_ * 1000 + i),
                    offset=round_ * 1000 + i,
                )
                for i in range(900)
            ]
            for activation in activations:
                expected[activation.voucher_id] = (
                    expected.get(activation.voucher_id, 0) + activation.points
                )
            # The same transactions 300..599 reach both replicas, from different partitions.
            first = activations[:600]
            second = [
                dataclasses.replace(a, source=dataclasses.replace(a.source, partition=1))
                for a in activations[300:]
            ]
            shuffle(first)
            shuffle(second)

            results = await asyncio.gather(
                apply_like_the_worker(replicas[0], first),
                apply_like_the_worker(replicas[1], second),
            )

            outcomes = [outcome for result in results for outcome in result.outcomes]
            applied = [o for o in outcomes if o.kind == "applied"]
            assert sorted(o.entry.transaction_id for o in applied) == sorted(
                a.transaction_id for a in activations
            )
            assert sum(o.kind == "duplicate" for o in outcomes) == 300
            applied_by.update({o.entry.transaction_id: o.entry.source for o in applied})

        for transaction_id, source in list(applied_by.items())[::37]:
            stored = await replicas[0].ledger_entry(transaction_id)
            assert stored is not None
            assert stored.source == source
        for voucher_id, points in expected.items():
            card = await replicas[1].card(voucher_id)
            assert card is not None
            assert card.activated_points == points
        total = sum(expected.values())
        assert await replicas[0].counts() == StoreCounts(3600, total, 13, total)
    finally:
        for replica in replicas:
            await replica.close()


@pytest.mark.postgres
async def test_replicas_migrating_at_once_apply_each_version_once(postgres_url: str) -> None:
    reports = await asyncio.gather(*(run_migrations(postgres_url) for _ in range(3)))

    every = migrations("postgresql")
    applied = sorted(m.version for report in reports for m in report.applied)
    assert applied == [m.version for m in every]  # each version by exactly one replica
    assert {report.version for report in reports} == {len(every)}
    assert await schema_rows(postgres_url) == [(m.version, m.name) for m in every]


async def pg_script(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        "bash",
        str(ROOT / "scripts" / "pg.sh"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"scripts/pg.sh {' '.join(args)} failed: {err.decode()[-2000:]}")
    return out.decode().strip()


@pytest.mark.postgres
@pytest.mark.slow
async def test_a_postgresql_restart_is_retriable_and_the_pool_recovers(
    postgres_server_url: str, postgres_url: str
) -> None:
    try:
        managed = await pg_script("url")
    except RuntimeError:
        managed = ""
    if managed != postgres_server_url:
        pytest.skip("the test PostgreSQL is not the one scripts/pg.sh manages; not restarting it")
    store = await open_store(postgres_url, migrate=True)
    try:
        assert kinds(await store.apply_batch([entry("vtx_before", offset=0)])) == ["applied"]
        during = [entry("vtx_during", offset=1)]
        try:
            await pg_script("stop")
            with pytest.raises(StoreUnavailable) as caught:
                await store.apply_batch(during)
            assert caught.value.retriable
            with pytest.raises(StoreUnavailable):
                await store.ping()
        finally:
            await pg_script("start")

        # The very next calls work, on the same store and pool.
        await store.ping()
        assert kinds(await store.apply_batch(during)) == ["applied"]

        # A restart between two calls leaves a broken connection in the pool; it is replaced.
        try:
            await pg_script("stop")
        finally:
            await pg_script("start")
        assert kinds(await store.apply_batch([entry("vtx_after", offset=2)])) == ["applied"]
        card = await store.card("v_card1")
        assert card is not None
        assert card.activated_points == 30
    finally:
        await store.close()
