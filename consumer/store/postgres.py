"""The PostgreSQL store: shared by replicas, set-based, a constant number of round trips a batch."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from typing import Any, ClassVar

import asyncpg  # type: ignore[import-untyped, unused-ignore]
import orjson

from consumer.errors import StoreConflict, StoreError, StoreUnavailable
from consumer.store.base import (
    BatchResult,
    CardChange,
    CardState,
    LedgerEntry,
    SourceOffset,
    StoreCounts,
    StoredEntry,
    card_changes,
    decide,
    first_occurrences,
    paid,
)
from consumer.store.schema import Dialect, Migration, MigrationReport, migrations

# Connections open on demand: after an outage the worker's own retries reconnect, rather than
# asyncpg's background floor task logging a traceback on every attempt. A busy worker and its
# readiness probe keep one connection alive anyway.
POOL_MIN_SIZE = 0
POOL_MAX_SIZE = 4  # one batch in flight per replica, plus probes and tools
CONNECT_TIMEOUT_S = 10.0
# The client gives up a little after the server would have: a lost network never hangs us.
STATEMENT_TIMEOUT_MS = 15_000
COMMAND_TIMEOUT_S = 20.0
LOCK_TIMEOUT_MS = 10_000
# A replica paused mid-transaction (GC, a frozen VM) must not hold row locks forever.
IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
PING_TIMEOUT_S = 5.0
CLOSE_TIMEOUT_S = 10.0
MIGRATION_TIMEOUT_S = 3600.0  # client-side bound on one migration, or on waiting for one
MIGRATION_LOCK = 0x4C6F79616C7479  # "Loyalty": the advisory lock serialising migrations

_CONFLICTS = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
)
_UNAVAILABLE = (
    asyncpg.exceptions.PostgresConnectionError,  # class 08: lost or refused connections
    asyncpg.exceptions.OperatorInterventionError,  # class 57: timeouts, shutdown, starting up
    asyncpg.exceptions.InsufficientResourcesError,  # class 53: too many connections, disk full
    asyncpg.exceptions.LockNotAvailableError,  # lock_timeout
    asyncpg.exceptions.ReadOnlySQLTransactionError,  # a failover left us on a standby
    OSError,  # refused, reset, name resolution
    TimeoutError,  # connect and command timeouts
    # asyncpg's protocol in a state only a dying link leaves it in: a server's FATAL error
    # read on an idle connection, its close not yet ("another operation (2) is in progress").
    asyncpg.exceptions.InternalClientError,
)
_NOT_UNAVAILABLE = (asyncpg.exceptions.ProtocolViolationError,)  # a bug: retrying cannot help
# Interface errors about what we asked for (bad arguments, settings, features): refusals
# whatever the connection's state. Every other InterfaceError is asyncpg declining to use the
# connection, which is the link's fault when the link is gone (see _translated).
_CLIENT_REFUSALS = (
    asyncpg.exceptions.DataError,
    asyncpg.exceptions.ClientConfigurationError,
    asyncpg.exceptions.UnsupportedClientFeatureError,
    asyncpg.exceptions.UnsupportedServerFeatureError,
)

_CREATE_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""

_LEDGER_COLUMNS = """
transaction_id, voucher_id, customer_id, campaign_id, points, reported_balance,
reported_pending, occurred_at, source_topic, source_partition, source_offset
"""

# A batch's rows travel as one JSON array of objects ($1), not as a parameter array a
# column: with eleven arrays, whose every element asyncpg checks against collections.abc,
# this statement cost the worker 3.4 us of CPU an entry; with orjson's one string, 1.2.
# Rows arrive sorted by transaction id and are inserted in that order (ordinality), so
# concurrent batches lock them in the same order.
_INSERT_LEDGER = f"""
INSERT INTO ledger ({_LEDGER_COLUMNS})
SELECT {_LEDGER_COLUMNS}
FROM ROWS FROM (json_to_recordset($1::json) AS (
    transaction_id text, voucher_id text, customer_id text, campaign_id text, points bigint,
    reported_balance bigint, reported_pending bigint, occurred_at timestamptz,
    source_topic text, source_partition integer, source_offset bigint
)) WITH ORDINALITY AS row
ORDER BY row.ordinality
ON CONFLICT (transaction_id) DO NOTHING
RETURNING transaction_id
"""

_STORED_SOURCES = """
SELECT transaction_id, source_topic, source_partition, source_offset, notification_owed
FROM ledger WHERE transaction_id = ANY($1::text[])
"""

# An owed notification is emitted: clear the mark; the emitting record becomes the source.
_PAY_OWED = """
UPDATE ledger SET notification_owed = false, source_topic = row.source_topic,
    source_partition = row.source_partition, source_offset = row.source_offset
FROM json_to_recordset($1::json) AS row (
    transaction_id text, source_topic text, source_partition integer, source_offset bigint
)
WHERE ledger.transaction_id = row.transaction_id
"""

_MARK_OWED = """
UPDATE ledger SET notification_owed = true
FROM json_to_recordset($1::json) AS row (
    transaction_id text, source_topic text, source_partition integer, source_offset bigint
)
WHERE ledger.transaction_id = row.transaction_id AND ledger.source_topic = row.source_topic
    AND ledger.source_partition = row.source_partition
    AND ledger.source_offset = row.source_offset
"""

_CARD_COLUMNS = """
voucher_id, activated_points, reported_balance, reported_pending,
last_transaction_id, last_transaction_at
"""

_NEWER = """(excluded.last_transaction_at, excluded.last_transaction_id)
    > (card.last_transaction_at, card.last_transaction_id)"""

# One statement: add the new points to their cards (JSON as above, sorted by voucher id,
# the lock order), and read the cards this batch touched only through replays and
# duplicates ($2).
_UPSERT_CARDS = f"""
WITH changed AS (
    INSERT INTO cards AS card ({_CARD_COLUMNS})
    SELECT {_CARD_COLUMNS}
    FROM ROWS FROM (json_to_recordset($1::json) AS (
        voucher_id text, activated_points bigint, reported_balance bigint,
        reported_pending bigint, last_transaction_id text, last_transaction_at timestamptz
    )) WITH ORDINALITY AS row
    ORDER BY row.ordinality
    ON CONFLICT (voucher_id) DO UPDATE SET
        activated_points = card.activated_points + excluded.activated_points,
        reported_balance = CASE WHEN {_NEWER} THEN excluded.reported_balance
                                ELSE card.reported_balance END,
        reported_pending = CASE WHEN {_NEWER} THEN excluded.reported_pending
                                ELSE card.reported_pending END,
        last_transaction_id = CASE WHEN {_NEWER} THEN excluded.last_transaction_id
                                   ELSE card.last_transaction_id END,
        last_transaction_at = CASE WHEN {_NEWER} THEN excluded.last_transaction_at
                                   ELSE card.last_transaction_at END,
        updated_at = now()
    RETURNING {_CARD_COLUMNS}
)
SELECT {_CARD_COLUMNS} FROM changed
UNION ALL
SELECT {_CARD_COLUMNS} FROM cards WHERE voucher_id = ANY($2::text[])
"""


def redacted(url: str) -> str:
    """The URL without its password, fit for messages and logs."""
    url = re.sub(r"(://[^:/@]*):[^@]*@", r"\1:***@", url)
    return re.sub(r"(?i)(password=)[^&]*", r"\1***", url)


def _card(row: Any) -> CardState:
    return CardState(
        voucher_id=row[0],
        activated_points=row[1],
        reported_balance=row[2],
        reported_pending=row[3],
        last_transaction_id=row[4],
        last_transaction_at=row[5],
    )


class PostgresStore:
    """An asyncpg pool; every batch is one transaction on one pooled connection."""

    dialect: ClassVar[Dialect] = "postgresql"

    def __init__(self, pool: Any, where: str) -> None:
        self._pool = pool
        self._where = where
        self._closed = False

    @classmethod
    async def connect(cls, dsn: str) -> PostgresStore:
        where = redacted(dsn)
        with _translated(where):
            pool = await asyncpg.create_pool(
                dsn,
                min_size=POOL_MIN_SIZE,
                max_size=POOL_MAX_SIZE,
                timeout=CONNECT_TIMEOUT_S,
                command_timeout=COMMAND_TIMEOUT_S,
                server_settings={
                    "application_name": "loyalty-consumer",
                    "statement_timeout": str(STATEMENT_TIMEOUT_MS),
                    "lock_timeout": str(LOCK_TIMEOUT_MS),
                    "idle_in_transaction_session_timeout": str(IDLE_IN_TRANSACTION_TIMEOUT_MS),
                },
            )
        return cls(pool, where)

    async def migrate(self) -> MigrationReport:
        applied: list[Migration] = []
        async with self._connection() as conn:
            async with conn.transaction():
                await self._lock_migrations(conn)
                await conn.execute(_CREATE_SCHEMA_MIGRATIONS)
            for migration in migrations(self.dialect):
                if await self._apply_migration(conn, migration):
                    applied.append(migration)
            version = await self._schema_version(conn)
        return MigrationReport(tuple(applied), version)

    @staticmethod
    async def _lock_migrations(conn: Any) -> None:
        """Serialise migrations across replicas until this transaction ends."""
        # Waiting for another replica's migration, or a long index build, is expected here.
        await conn.execute("SET LOCAL statement_timeout = 0; SET LOCAL lock_timeout = 0")
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK, timeout=MIGRATION_TIMEOUT_S
        )

    async def _apply_migration(self, conn: Any, migration: Migration) -> bool:
        async with conn.transaction():
            await self._lock_migrations(conn)
            # Re-checked under the lock: another replica may have applied it meanwhile.
            if await conn.fetchval(
                "SELECT 1 FROM schema_migrations WHERE version = $1", migration.version
            ):
                return False
            await conn.execute(migration.sql, timeout=MIGRATION_TIMEOUT_S)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                migration.version,
                migration.name,
            )
        return True

    async def schema_version(self) -> int:
        async with self._connection() as conn:
            return await self._schema_version(conn)

    @staticmethod
    async def _schema_version(conn: Any) -> int:
        if await conn.fetchval("SELECT to_regclass('schema_migrations')") is None:
            return 0
        return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_migrations"))

    async def apply_batch(self, entries: Sequence[LedgerEntry]) -> BatchResult:
        if not entries:
            return BatchResult((), ())
        unique = first_occurrences(entries)
        async with self._connection() as conn, conn.transaction():
            inserted = await conn.fetch(_INSERT_LEDGER, _ledger_rows(unique))
            applied_ids = {row[0] for row in inserted}
            present = [e.transaction_id for e in unique if e.transaction_id not in applied_ids]
            stored: dict[str, SourceOffset] = {}
            owed: set[str] = set()
            if present:
                rows = await conn.fetch(_STORED_SOURCES, present)
                stored = {row[0]: SourceOffset(row[1], row[2], row[3]) for row in rows}
                owed = {row[0] for row in rows if row[4]}
            new = [entry for entry in unique if entry.transaction_id in applied_ids]
            changes = card_changes(new)
            changed = {change.voucher_id for change in changes}
            untouched = sorted({entry.voucher_id for entry in entries} - changed)
            card_rows = await conn.fetch(_UPSERT_CARDS, _card_rows(changes), untouched)
            outcomes = decide(entries, applied_ids, stored, owed)
            if owed and (to_pay := paid(outcomes, owed)):
                await conn.execute(
                    _PAY_OWED, _source_rows((e.transaction_id, e.source) for e in to_pay)
                )
        cards = tuple(sorted((_card(row) for row in card_rows), key=lambda c: c.voucher_id))
        return BatchResult(outcomes, cards)

    async def mark_owed(self, sources: Sequence[tuple[str, SourceOffset]]) -> int:
        if not sources:
            return 0
        async with self._connection() as conn:
            status = await conn.execute(_MARK_OWED, _source_rows(sources))
        return int(status.rpartition(" ")[2])

    async def owed(self) -> list[str]:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT transaction_id FROM ledger WHERE notification_owed ORDER BY 1"
            )
        return [row[0] for row in rows]

    async def card(self, voucher_id: str) -> CardState | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_CARD_COLUMNS} FROM cards WHERE voucher_id = $1", voucher_id
            )
        return None if row is None else _card(row)

    async def ledger_entry(self, transaction_id: str) -> StoredEntry | None:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                f"SELECT {_LEDGER_COLUMNS}, applied_at, notification_owed FROM ledger "
                "WHERE transaction_id = $1",
                transaction_id,
            )
        if row is None:
            return None
        return StoredEntry.from_row(row, lambda value: value)  # asyncpg gives datetimes

    async def counts(self) -> StoreCounts:
        async with self._connection() as conn:
            row = await conn.fetchrow(
                "SELECT (SELECT count(*) FROM ledger),"
                " (SELECT coalesce(sum(points), 0)::bigint FROM ledger),"
                " (SELECT count(*) FROM cards),"
                " (SELECT coalesce(sum(activated_points), 0)::bigint FROM cards)"
            )
        return StoreCounts(int(row[0]), int(row[1]), int(row[2]), int(row[3]))

    async def ping(self) -> None:
        async with self._connection(acquire_timeout=PING_TIMEOUT_S) as conn:
            await conn.fetchval("SELECT 1", timeout=PING_TIMEOUT_S)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(self._pool.close(), CLOSE_TIMEOUT_S)
        except TimeoutError:
            self._pool.terminate()

    @contextlib.asynccontextmanager
    async def _connection(self, acquire_timeout: float | None = None) -> AsyncIterator[Any]:
        """A pooled connection; errors of taking it, or of anything done on it, translated."""
        if self._closed:
            raise StoreError("the PostgreSQL store is closed")
        with _translated(self._where):  # taking and giving back the connection
            async with self._pool.acquire(timeout=acquire_timeout) as conn:
                with _translated(self._where, conn):
                    yield conn


def _ledger_rows(entries: Sequence[LedgerEntry]) -> str:
    """The entries as the JSON array `_INSERT_LEDGER` reads, in their order."""
    return orjson.dumps(
        [
            {
                "transaction_id": e.transaction_id,
                "voucher_id": e.voucher_id,
                "customer_id": e.customer_id,
                "campaign_id": e.campaign_id,
                "points": e.points,
                "reported_balance": e.reported_balance,
                "reported_pending": e.reported_pending,
                "occurred_at": e.occurred_at,
                "source_topic": e.source.topic,
                "source_partition": e.source.partition,
                "source_offset": e.source.offset,
            }
            for e in entries
        ]
    ).decode()


def _source_rows(sources: Iterable[tuple[str, SourceOffset]]) -> str:
    """Transaction ids with the coordinates of the records that carry them, as JSON."""
    return orjson.dumps(
        [
            {
                "transaction_id": transaction_id,
                "source_topic": source.topic,
                "source_partition": source.partition,
                "source_offset": source.offset,
            }
            for transaction_id, source in sources
        ]
    ).decode()


def _card_rows(changes: Sequence[CardChange]) -> str:
    """The card changes as the JSON array `_UPSERT_CARDS` reads, in their order."""
    return orjson.dumps(
        [
            {
                "voucher_id": change.voucher_id,
                "activated_points": change.points,
                "reported_balance": change.newest.reported_balance,
                "reported_pending": change.newest.reported_pending,
                "last_transaction_id": change.newest.transaction_id,
                "last_transaction_at": change.newest.occurred_at,
            }
            for change in changes
        ]
    ).decode()


@contextlib.contextmanager
def _translated(where: str, connection: Any = None) -> Iterator[None]:
    """asyncpg's errors in the project's terms: retriable or not, decided by class and, for
    asyncpg declining to use `connection`, by whether that connection is still there."""
    try:
        yield
    except (*_UNAVAILABLE, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        kind = _kind(exc, connection)
        if kind is StoreUnavailable:
            raise StoreUnavailable(f"PostgreSQL at {where} is unavailable: {_chain(exc)}") from exc
        if kind is StoreConflict:
            raise StoreConflict(f"PostgreSQL at {where}: {_chain(exc)}") from exc
        raise StoreError(f"PostgreSQL at {where} refused: {_chain(exc)}") from exc


def _kind(exc: BaseException, connection: Any) -> type[StoreError]:
    if isinstance(exc, _CONFLICTS):
        return StoreConflict
    if isinstance(exc, _NOT_UNAVAILABLE):
        return StoreError
    if isinstance(exc, _UNAVAILABLE):
        return StoreUnavailable
    if isinstance(exc, asyncpg.InterfaceError) and not isinstance(exc, _CLIENT_REFUSALS):
        # A connection that closed while we held it (between two statements, or under a
        # transaction's rollback) makes asyncpg refuse the next call with a plain
        # InterfaceError; the link failed, not the statement.
        if connection is not None and _is_closed(connection):
            return StoreUnavailable
        # The rollback of a failed statement fails in turn: the first failure decides.
        if isinstance(exc.__context__, asyncpg.PostgresError | asyncpg.InterfaceError | OSError):
            return _kind(exc.__context__, None)
    return StoreError


def _is_closed(connection: Any) -> bool:
    try:
        return bool(connection.is_closed())
    except asyncpg.InterfaceError:
        # The pool takes back a connection whose link was lost; its proxy then refuses every
        # call, this one too.
        return True


def _chain(exc: BaseException) -> str:
    """The error, and the one it happened while handling, when that one says more."""
    text = f"{type(exc).__name__}: {exc}"
    context = exc.__context__
    if isinstance(exc, asyncpg.InterfaceError) and context is not None:
        text += f" (after {type(context).__name__}: {context})"
    return text
