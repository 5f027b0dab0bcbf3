"""Versioned schema migrations: the SQL files shipped in the package, applied in order."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal

from consumer.errors import SchemaOutOfDate

Dialect = Literal["sqlite", "postgresql"]

_FILE_NAME = re.compile(r"(?P<version>\d{4})_(?P<name>[a-z0-9_]+)\.sql")


@dataclass(frozen=True, slots=True)
class Migration:
    """One file under `migrations/<dialect>/`, named `NNNN_what_it_does.sql`."""

    version: int
    name: str
    sql: str = field(repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What `migrate()` did: the migrations it applied now (oldest first) and the version after."""

    applied: tuple[Migration, ...]
    version: int


@functools.cache
def migrations(dialect: Dialect) -> tuple[Migration, ...]:
    """The dialect's migrations in version order; versions must run 1, 2, 3… without gaps."""
    folder = resources.files("consumer.store").joinpath("migrations", dialect)
    found: list[Migration] = []
    for item in folder.iterdir():
        if not item.name.endswith(".sql"):
            continue
        match = _FILE_NAME.fullmatch(item.name)
        if match is None:
            raise ValueError(f"migration file {dialect}/{item.name} is not named NNNN_name.sql")
        found.append(
            Migration(int(match["version"]), match["name"], item.read_text(encoding="utf-8"))
        )
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if versions != list(range(1, len(found) + 1)):
        raise ValueError(f"{dialect} migration versions must be 1..n without gaps: {versions}")
    return tuple(found)


def expected_version(dialect: Dialect) -> int:
    """The schema version this release of the code needs."""
    return len(migrations(dialect))


def require_current(found: int, dialect: Dialect) -> None:
    """Refuse to run on a schema older than the code; a newer one is a rolling upgrade."""
    expected = expected_version(dialect)
    if found < expected:
        raise SchemaOutOfDate(
            f"the database schema is at version {found}, this release needs version "
            f"{expected}: run `loyalty-consumer migrate` or set MIGRATE_ON_START=true"
        )
