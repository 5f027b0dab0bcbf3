"""Stores: the ledger and card state behind one interface, a backend chosen by URL."""

from __future__ import annotations

import structlog

from consumer.config import DATABASE_URL_FORMS
from consumer.errors import ConfigurationError
from consumer.store.base import (
    BatchResult,
    CardState,
    LedgerEntry,
    Outcome,
    SourceOffset,
    Store,
    StoreCounts,
    StoredEntry,
)
from consumer.store.postgres import PostgresStore, redacted
from consumer.store.schema import MigrationReport, require_current
from consumer.store.sqlite import SQLiteStore

__all__ = [
    "BatchResult",
    "CardState",
    "LedgerEntry",
    "MigrationReport",
    "Outcome",
    "SourceOffset",
    "Store",
    "StoreCounts",
    "StoredEntry",
    "is_new_sqlite",
    "open_store",
    "run_migrations",
]

log = structlog.get_logger("consumer.store")

_ACCEPTED = f"DATABASE_URL {DATABASE_URL_FORMS}"


async def open_store(url: str, *, migrate: bool = False, initialise_new: bool = False) -> Store:
    """Open the store at `url`; migrate its schema first, or refuse one older than the code.

    `initialise_new`: an SQLite database without any table (a file just created, or
    `:memory:`) gets the schema without being asked. It is the embedded default of one
    process, so nobody else owns its DDL; PostgreSQL keeps the explicit `migrate`.
    """
    store = await _connect(url)
    try:
        if migrate:
            report = await store.migrate()
            if report.applied:
                log.info(
                    "store.migrated",
                    applied=[migration.version for migration in report.applied],
                    version=report.version,
                )
        elif initialise_new and isinstance(store, SQLiteStore) and await store.is_empty():
            report = await store.migrate()
            log.info("store.initialised", dialect=store.dialect, version=report.version)
        else:
            require_current(await store.schema_version(), store.dialect)
    except BaseException:
        await store.close()
        raise
    return store


async def is_new_sqlite(url: str) -> bool:
    """True when `url` is an SQLite database without any table, which `run` initialises."""
    store = await _connect(url)
    try:
        return isinstance(store, SQLiteStore) and await store.is_empty()
    finally:
        await store.close()


async def run_migrations(url: str) -> MigrationReport:
    """Apply the pending migrations to the database at `url` (`loyalty-consumer migrate`)."""
    store = await _connect(url)
    try:
        return await store.migrate()
    finally:
        await store.close()


async def _connect(url: str) -> SQLiteStore | PostgresStore:
    scheme, separator, rest = url.partition("://")
    if scheme in {"postgresql", "postgres"} and separator:
        return await PostgresStore.connect(url)
    if scheme == "sqlite" and rest.startswith("/") and len(rest) > 1:
        return await SQLiteStore.connect(rest[1:])
    shown = redacted(url) if separator else "a value without a scheme"
    raise ConfigurationError(f"{_ACCEPTED}; got {shown}")
