"""The benchmark's own Kafka broker and PostgreSQL, started and stopped by the run itself.

Shared services carry other engineers' tests; numbers taken on them would measure those
tests too, and the chaos tests restart them. So the run starts a private broker on its own
ports and a private PostgreSQL cluster, and removes both at the end.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg  # type: ignore[import-untyped, unused-ignore]

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / ".run" / "bench"
KAFKA_PORT = int(os.environ.get("BENCH_KAFKA_PORT", "39092"))
KAFKA_CONTROLLER_PORT = KAFKA_PORT + 1
PG_RUN_DIR = ROOT / ".run" / "pg-bench"

# The test cluster runs with fsync off; a benchmark of an exactly-once ledger must pay for
# durable commits, so this cluster runs with PostgreSQL's defaults for them.
DURABLE = ("-c fsync=on -c synchronous_commit=on -c full_page_writes=on",)
NOT_DURABLE = ("-c fsync=off -c synchronous_commit=off -c full_page_writes=off",)


@dataclass(frozen=True)
class Services:
    """Where the benchmark's broker and database server answer."""

    bootstrap: str
    postgres_url: str  # the server's maintenance database; each run creates its own
    durable: bool
    kafka_pid: int | None
    postgres_pid: int | None


def _script(name: str, action: str, env: dict[str, str]) -> str:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / name), action],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    if result.returncode != 0:
        raise RuntimeError(f"scripts/{name} {action} failed:\n{result.stderr[-3000:]}")
    return result.stdout.strip()


def _kafka_env() -> dict[str, str]:
    return {
        "KAFKA_PORT": str(KAFKA_PORT),
        "KAFKA_CONTROLLER_PORT": str(KAFKA_CONTROLLER_PORT),
        "KAFKA_HEAP": "-Xms512m -Xmx1g",
    }


def _pg_bin() -> Path:
    for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (candidate / "pg_ctl").exists():
            return candidate
    raise RuntimeError("PostgreSQL server binaries not found; run `make pg-up` once to install")


def _as_owner(*command: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


def _restart_postgres(durable: bool) -> None:
    """scripts/pg.sh starts clusters with fsync off; restart ours with the chosen settings."""
    data = PG_RUN_DIR / "data"
    port = (PG_RUN_DIR / "port").read_text().strip()
    pg_ctl = str(_pg_bin() / "pg_ctl")
    subprocess.run(_as_owner(pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"), check=True)
    options = (
        f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={PG_RUN_DIR} "
        f"-c max_connections=200 -c shared_buffers=256MB {(DURABLE if durable else NOT_DURABLE)[0]}"
    )
    log = PG_RUN_DIR / "postgres.log"
    start = ("-l", str(log), "-w", "-t", "60", "-o", options, "start")
    subprocess.run(
        _as_owner(pg_ctl, "-D", str(data), *start),
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _pid(path: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(path.read_text().split()[0])
    return None


@contextlib.contextmanager
def running(durable: bool = True) -> Iterator[Services]:
    """Start a private broker and PostgreSQL; stop and remove both afterwards."""
    RUN.mkdir(parents=True, exist_ok=True)
    try:
        _script("kafka.sh", "up", _kafka_env())
        url = _script("pg.sh", "up", {"PG_RUN_DIR": str(PG_RUN_DIR), "DATABASE_URL": ""})
        _restart_postgres(durable)
        yield Services(
            bootstrap=f"127.0.0.1:{KAFKA_PORT}",
            postgres_url=url.splitlines()[-1],
            durable=durable,
            kafka_pid=_pid(ROOT / ".run" / f"kafka-{KAFKA_PORT}" / "kafka.pid"),
            postgres_pid=_pid(PG_RUN_DIR / "data" / "postmaster.pid"),
        )
    finally:
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            _script("kafka.sh", "down", _kafka_env())
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            _script("pg.sh", "down", {"PG_RUN_DIR": str(PG_RUN_DIR)})


async def fresh_database(server_url: str, name: str) -> str:
    """An empty database on the benchmark server, for one contender's run."""
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, _ = server_url.rpartition("/")
    return f"{base}/{name}"
