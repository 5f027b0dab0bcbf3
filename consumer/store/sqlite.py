"""The SQLite store: the embedded default, one process, one connection in WAL mode."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import aiosqlite

from consumer.errors import StoreError, StoreUnavailable
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

BUSY_TIMEOUT_MS = 5_000  # another process (a CLI command) holding the write lock briefly

# Result codes that mean "the file or the disk is in trouble", not "the statement is wrong".
_UNAVAILABLE_CODES = frozenset(
    {
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_IOERR,
        sqlite3.SQLITE_FULL,
        sqlite3.SQLITE_CANTOPEN,
    }
)

_CREATE_SCHEMA_MIGRATIONS = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER NOT NULL PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TEXT NOT NULL
)
"""

_LEDGER_COLUMNS = """
transaction_id, voucher_id, customer_id, campaign_id, points, reported_balance,
reported_pending, occurred_at, source_topic, source_partition, source_offset, applied_at
"""

# The batch runs under the database write lock (BEGIN IMMEDIATE), so the ids read as absent
# just before are still absent: a plain INSERT, and a primary-key violation would be a bug.
_INSERT_LEDGER = f"INSERT INTO ledger ({_LEDGER_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"

_STORED_SOURCES = """
SELECT transaction_id, source_topic, source_partition, source_offset, notification_owed
FROM ledger WHERE transaction_id IN (SELECT value FROM json_each(?))
"""

# An owed notification is emitted: clear the mark; the emitting record becomes the source.
_PAY_OWED = """
UPDATE ledger SET notification_owed = 0, source_topic = ?, source_partition = ?,
    source_offset = ?
WHERE transaction_id = ?
"""

_MARK_OWED = """
UPDATE ledger SET notification_owed = 1
WHERE transaction_id = ? AND source_topic = ? AND source_partition = ? AND source_offset = ?
"""

_NEWER = """(excluded.last_transaction_at, excluded.last_transaction_id)
    > (last_transaction_at, last_transaction_id)"""

_UPSERT_CARD = f"""
INSERT INTO cards (voucher_id, activated_points, reported_balance, reported_pending,
                   last_transaction_id, last_transaction_at, updated_at)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (voucher_id) DO UPDATE SET
    activated_points = activated_points + excluded.activated_points,
    reported_balance = CASE WHEN {_NEWER} THEN excluded.reported_balance
                            ELSE reported_balance END,
    reported_pending = CASE WHEN {_NEWER} THEN excluded.reported_pending
                            ELSE reported_pending END,
    last_transaction_id = CASE WHEN {_NEWER} THEN excluded.last_transaction_id
                               ELSE last_transaction_id END,
    last_transaction_at = CASE WHEN {_NEWER} THEN excluded.last_transaction_at
                               ELSE last_transaction_at END,
    updated_at = excluded.updated_at
"""

_CARD_COLUMNS = """
voucher_id, activated_points, reported_balance, reported_pending,
last_transaction_id, last_transaction_at
"""


def _utc_text(moment: datetime) -> str:
    """Fixed-width UTC text, so that comparing the text compares the instants."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _card(row: sqlite3.Row | tuple[Any, ...]) -> CardState:
    return CardState(
        voucher_id=row[0],
        activated_points=row[1],
        reported_balance=row[2],
        reported_pending=row[3],
        last_transaction_id=row[4],
        last_transaction_at=datetime.fromisoformat(row[5]),
    )


def _ledger_row(entry: LedgerEntry, applied_at: str) -> tuple[object, ...]:
    return (
        entry.transaction_id,
        entry.voucher_id,
        entry.customer_id,
        entry.campaign_id,
        entry.points,
        entry.reported_balance,
        entry.reported_pending,
        _utc_text(entry.occurred_at),
        entry.source.topic,
        entry.source.partition,
        entry.source.offset,
        applied_at,
    )


def _card_row(change: CardChange, updated_at: str) -> tuple[object, ...]:
    return (
        change.voucher_id,
        change.points,
        change.newest.reported_balance,
        change.newest.reported_pending,
        change.newest.transaction_id,
        _utc_text(change.newest.occurred_at),
        updated_at,
    )


def _split_statements(script: str) -> list[str]:
    """A migration file as single statements, so that we, not sqlite3, own the transaction."""
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    rest = "\n".join(
        line for line in pending.splitlines() if line.strip() and not line.strip().startswith("--")
    )
    if rest:
        raise ValueError(f"migration ends in an unterminated statement: {rest[:80]!r}")
    return statements


class SQLiteStore:
    """One aiosqlite connection; an asyncio lock keeps one transaction at a time on it."""

    dialect: ClassVar[Dialect] = "sqlite"

    def __init__(self, db: aiosqlite.Connection, path: str) -> None:
        self._db = db
        self._path = path
        self._lock = asyncio.Lock()
        self._closed = False
        self._lost = False  # the connection closed under us: open it again before the next use

    @classmethod
    async def connect(cls, path: str) -> SQLiteStore:
        with _translated(path):
            # Opened once by hand first: when aiosqlite's own open fails, it queues the stop
            # of its thread without waiting for it, and a process exiting at once closed the
            # loop under that thread ("Event loop is closed" after our clean error). A file
            # that cannot be opened now fails here, before aiosqlite starts a thread.
            await asyncio.to_thread(_open_and_close, path)
            db = await _open(path)
        return cls(db, path)

    async def migrate(self) -> MigrationReport:
        applied: list[Migration] = []
        async with self._operation():
            await self._db.execute(_CREATE_SCHEMA_MIGRATIONS)
            for migration in migrations(self.dialect):
                if await self._apply_migration(migration):
                    applied.append(migration)
            version = await self._schema_version()
        return MigrationReport(tuple(applied), version)

    async def _apply_migration(self, migration: Migration) -> bool:
        # Re-checked under the write lock: another process may have migrated meanwhile.
        async with self._transaction():
            done = await self._db.execute_fetchall(
                "SELECT 1 FROM schema_migrations WHERE version = ?", (migration.version,)
            )
            if list(done):
                return False
            for statement in _split_statements(migration.sql):
                await self._db.execute(statement)
            await self._db.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                (migration.version, migration.name, _utc_text(datetime.now(UTC))),
            )
        return True

    async def schema_version(self) -> int:
        async with self._operation():
            return await self._schema_version()

    async def _schema_version(self) -> int:
        tables = await self._db.execute_fetchall(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        )
        if not list(tables):
            return 0
        rows = list(
            await self._db.execute_fetchall(
                "SELECT coalesce(max(version), 0) FROM schema_migrations"
            )
        )
        return int(rows[0][0])

    async def apply_batch(self, entries: Sequence[LedgerEntry]) -> BatchResult:
        if not entries:
            return BatchResult((), ())
        unique = first_occurrences(entries)
        now = _utc_text(datetime.now(UTC))
        async with self._operation(), self._transaction():
            stored, owed = await self._stored_sources([entry.transaction_id for entry in unique])
            new = [entry for entry in unique if entry.transaction_id not in stored]
            await self._db.executemany(_INSERT_LEDGER, [_ledger_row(e, now) for e in new])
            await self._db.executemany(_UPSERT_CARD, [_card_row(c, now) for c in card_changes(new)])
            cards = await self._cards({entry.voucher_id for entry in entries})
            outcomes = decide(entries, {entry.transaction_id for entry in new}, stored, owed)
            if owed and (to_pay := paid(outcomes, owed)):
                await self._db.executemany(
                    _PAY_OWED,
                    [
                        (e.source.topic, e.source.partition, e.source.offset, e.transaction_id)
                        for e in to_pay
                    ],
                )
        return BatchResult(outcomes, cards)

    async def _stored_sources(
        self, transaction_ids: list[str]
    ) -> tuple[dict[str, SourceOffset], set[str]]:
        rows = await self._db.execute_fetchall(_STORED_SOURCES, (json.dumps(transaction_ids),))
        stored = {row[0]: SourceOffset(row[1], row[2], row[3]) for row in rows}
        return stored, {row[0] for row in rows if row[4]}

    async def mark_owed(self, sources: Sequence[tuple[str, SourceOffset]]) -> int:
        if not sources:
            return 0
        async with self._operation(), self._transaction():
            before = self._db.total_changes
            await self._db.executemany(
                _MARK_OWED,
                [(tx, src.topic, src.partition, src.offset) for tx, src in sources],
            )
            return self._db.total_changes - before

    async def owed(self) -> list[str]:
        async with self._operation():
            rows = await self._db.execute_fetchall(
                "SELECT transaction_id FROM ledger WHERE notification_owed ORDER BY 1"
            )
        return [row[0] for row in rows]

    async def _cards(self, voucher_ids: set[str]) -> tuple[CardState, ...]:
        rows = await self._db.execute_fetchall(
            f"SELECT {_CARD_COLUMNS} FROM cards WHERE voucher_id IN "
            "(SELECT value FROM json_each(?)) ORDER BY voucher_id",
            (json.dumps(sorted(voucher_ids)),),
        )
        return tuple(_card(row) for row in rows)

    async def card(self, voucher_id: str) -> CardState | None:
        async with self._operation():
            rows = list(
                await self._db.execute_fetchall(
                    f"SELECT {_CARD_COLUMNS} FROM cards WHERE voucher_id = ?", (voucher_id,)
                )
            )
        return _card(rows[0]) if rows else None

    async def ledger_entry(self, transaction_id: str) -> StoredEntry | None:
        async with self._operation():
            rows = list(
                await self._db.execute_fetchall(
                    f"SELECT {_LEDGER_COLUMNS}, notification_owed FROM ledger "
                    "WHERE transaction_id = ?",
                    (transaction_id,),
                )
            )
        if not rows:
            return None
        row = rows[0]
        return StoredEntry.from_row(row, datetime.fromisoformat)

    async def counts(self) -> StoreCounts:
        async with self._operation():
            rows = list(
                await self._db.execute_fetchall(
                    "SELECT (SELECT count(*) FROM ledger),"
                    " (SELECT coalesce(sum(points), 0) FROM ledger),"
                    " (SELECT count(*) FROM cards),"
                    " (SELECT coalesce(sum(activated_points), 0) FROM cards)"
                )
            )
        ledger_entries, ledger_points, cards, activated_points = rows[0]
        return StoreCounts(ledger_entries, ledger_points, cards, activated_points)

    async def is_empty(self) -> bool:
        """True when the database holds no table at all: a file just created, or memory."""
        async with self._operation():
            rows = await self._db.execute_fetchall(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' LIMIT 1"
            )
        return not list(rows)

    async def ping(self) -> None:
        async with self._operation():
            await self._db.execute_fetchall("SELECT 1")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._lock:
            await self._db.close()

    @contextlib.asynccontextmanager
    async def _operation(self) -> AsyncIterator[None]:
        """One operation at a time on the connection, its errors in the project's terms."""
        if self._closed:
            raise StoreError("the SQLite store is closed")
        async with self._lock:
            if self._lost:
                await self._reopen()
            try:
                yield
            except (sqlite3.ProgrammingError, ValueError) as exc:
                # A closed connection raises these (sqlite3's "Cannot operate on a closed
                # database", aiosqlite's "no active connection"), and so do a wrong statement
                # and our own checks: whether the connection still answers tells them apart.
                if not await self._answers():
                    self._lost = True
                    raise StoreUnavailable(
                        f"the connection to SQLite database {self._path} closed ({exc}); "
                        "it is opened again on the next attempt"
                    ) from exc
                if isinstance(exc, sqlite3.Error):
                    raise _store_error(self._path, exc) from exc
                raise
            except sqlite3.Error as exc:
                raise _store_error(self._path, exc) from exc

    async def _answers(self) -> bool:
        try:
            await self._db.execute_fetchall("SELECT 1")
        except (sqlite3.ProgrammingError, ValueError):
            return False
        except sqlite3.Error:
            return True  # busy or locked, but there
        return True

    async def _reopen(self) -> None:
        with contextlib.suppress(sqlite3.Error, ValueError):
            await self._db.close()  # stops aiosqlite's thread if it still runs
        with _translated(self._path):
            self._db = await _open(self._path)
        self._lost = False

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        # IMMEDIATE takes the write lock up front: no other writer can slip in between our
        # read of the ledger and our inserts, and a busy database fails here, not mid-batch.
        await self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            await self._db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                await self._db.execute("ROLLBACK")
            raise


async def _open(path: str) -> aiosqlite.Connection:
    # isolation_level=None: sqlite3 opens no implicit transactions; we issue BEGIN.
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        await db.execute("PRAGMA journal_mode = WAL")
        # FULL: a commit survives power loss. NORMAL could lose the last batch after
        # Kafka committed its offsets, and the guarantee with it.
        await db.execute("PRAGMA synchronous = FULL")
    except BaseException:
        await db.close()
        raise
    return db


def _open_and_close(path: str) -> None:
    sqlite3.connect(path).close()


@contextlib.contextmanager
def _translated(path: str) -> Iterator[None]:
    try:
        yield
    except OverflowError as exc:  # a value beyond SQLite's 64-bit integers, refused for good
        raise StoreError(f"SQLite refused a value on {path}: {exc}") from exc
    except sqlite3.Error as exc:
        raise _store_error(path, exc) from exc


def _store_error(path: str, exc: sqlite3.Error) -> StoreError:
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in _UNAVAILABLE_CODES:
        return StoreUnavailable(f"SQLite database {path} is unavailable: {exc}")
    return StoreError(f"SQLite refused the operation on {path}: {exc}")
