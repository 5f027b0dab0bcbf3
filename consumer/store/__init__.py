"""Stores: the ledger and card state behind one interface, a backend chosen by URL."""

from __future__ import annotations

import structlog

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
    "open_store",
    "run_migrations",
]

log = structlog.get_logger("consumer.store")

_ACCEPTED = (
    "DATABASE_URL must be sqlite:///relative/path.db, sqlite:////absolute/path.db, "
    "sqlite:///:memory: or postgresql://user:password@host:5432/database (postgres:// too)"
)


async def open_store(url: str, *, migrate: bool = False) -> Store:
    """Open the store at `url`; migrate its schema first, or refuse one older than the code."""
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
        else:
            require_current(await store.schema_version(), store.dialect)
    except BaseException:
        await store.close()
        raise
    return store


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
