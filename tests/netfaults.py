"""Each replica's links through proxies of its own: to a broker with a listener per replica,
and to PostgreSQL, so that one replica can be cut off while the others keep working.

A client bootstrapped through broker proxy i talks to the broker's listener PROXIED<i>,
whose advertised address is that proxy again (scripts/kafka.sh KAFKA_PROXIED_LISTENERS), so
every connection it opens, to any broker role, crosses proxy i. See docs/proof.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from tests.services import ROOT
from tests.toxiproxy import Proxy, Toxiproxy

BROKER_START_TIMEOUT_S = 180


def free_ports(count: int) -> list[int]:
    """Ports free on 127.0.0.1 right now, all different."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


def through(url: str, proxy: Proxy) -> str:
    """The database URL with its host and port replaced by the proxy's (user, database and
    options kept)."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@{proxy.address}" if user else proxy.address
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class BrokerProxies:
    """One proxy per replica, each to a broker listener not started yet."""

    proxies: tuple[Proxy, ...]
    listeners: str  # KAFKA_PROXIED_LISTENERS for the broker that goes behind them


async def create_broker_proxies(api: Toxiproxy, prefix: str, count: int) -> BrokerProxies:
    """Proxies `<prefix>-kafka-<i>`, each forwarding to a free port that listener PROXIED<i>
    of the broker is to bind. Start the broker with `listeners` afterwards: the proxies must
    exist first, since the broker advertises their ports."""
    ports = free_ports(count)
    proxies = [
        await api.create(f"{prefix}-kafka-{i}", upstream=f"127.0.0.1:{port}")
        for i, port in enumerate(ports)
    ]
    listeners = ",".join(f"{port}:{proxy.port}" for port, proxy in zip(ports, proxies, strict=True))
    return BrokerProxies(tuple(proxies), listeners)


@dataclass(frozen=True)
class ReplicaLinks:
    """What replica `index` connects through: its broker proxy and its PostgreSQL proxy."""

    index: int
    broker: Proxy
    postgres: Proxy
    database_url: str  # the server's URL, through `postgres`

    @property
    def bootstrap_servers(self) -> str:
        return self.broker.address

    def postgres_url(self, url: str) -> str:
        """Any database URL of the same server, through this replica's proxy."""
        return through(url, self.postgres)

    async def heal(self) -> None:
        await self.broker.heal()
        await self.postgres.heal()


async def create_replica_links(
    api: Toxiproxy, prefix: str, brokers: BrokerProxies, database_url: str
) -> tuple[ReplicaLinks, ...]:
    """A PostgreSQL proxy `<prefix>-pg-<i>` beside each broker proxy."""
    server = urlsplit(database_url)
    upstream = f"{server.hostname}:{server.port or 5432}"
    links = []
    for index, broker in enumerate(brokers.proxies):
        postgres = await api.create(f"{prefix}-pg-{index}", upstream=upstream)
        links.append(ReplicaLinks(index, broker, postgres, through(database_url, postgres)))
    return tuple(links)


async def delete_links(links: Sequence[ReplicaLinks]) -> None:
    for link in links:
        await link.broker.delete()
        await link.postgres.delete()


def broker_env(port: int, run_dir: Path, listeners: str) -> dict[str, str]:
    """The environment of scripts/kafka.sh for a private broker behind the proxies."""
    env = {k: v for k, v in os.environ.items() if k != "KAFKA_EXTRA_CONFIG"}
    env.update(
        KAFKA_PORT=str(port),
        KAFKA_CONTROLLER_PORT=str(port + 1),
        KAFKA_RUN_DIR=str(run_dir),
        KAFKA_HEAP=os.environ.get("PROXIED_KAFKA_HEAP", "-Xms128m -Xmx512m"),
        KAFKA_PROXIED_LISTENERS=listeners,
    )
    return env


def _free_port_pair() -> int:
    """A port whose successor is free too (the controller listens on port + 1)."""
    for _ in range(100):
        port = free_ports(1)[0]
        with socket.socket() as other:
            try:
                other.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two adjacent free ports found")


@dataclass(frozen=True)
class Network:
    """A private broker and per-replica links to it and to PostgreSQL."""

    direct_bootstrap: str  # the broker's own listener, past every proxy (for setup and checks)
    replicas: tuple[ReplicaLinks, ...]

    async def heal(self) -> None:
        """Every link back to a plain pipe."""
        for link in self.replicas:
            await link.heal()


@contextlib.asynccontextmanager
async def proxied_network(
    api: Toxiproxy, directory: Path, *, replicas: int, database_url: str, prefix: str
) -> AsyncIterator[Network]:
    """Proxies for `replicas` replicas and a private broker behind them (about ten seconds to
    start, scripts/kafka.sh in `directory`); proxies and broker removed afterwards."""
    brokers = await create_broker_proxies(api, prefix, replicas)
    links = await create_replica_links(api, prefix, brokers, database_url)
    port = _free_port_pair()
    env = broker_env(port, directory / "broker", brokers.listeners)
    try:
        await kafka_script("up", env)
        yield Network(f"127.0.0.1:{port}", links)
    finally:
        with contextlib.suppress(RuntimeError):
            await kafka_script("down", env)
        await delete_links(links)


async def kafka_script(action: str, env: dict[str, str]) -> None:
    """scripts/kafka.sh `action` with `env`; RuntimeError with its last words if it fails."""
    process = await asyncio.create_subprocess_exec(
        "bash",
        str(ROOT / "scripts" / "kafka.sh"),
        action,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(BROKER_START_TIMEOUT_S):
            _, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise RuntimeError(f"scripts/kafka.sh {action} did not finish in time") from None
    if process.returncode != 0:
        raise RuntimeError(f"scripts/kafka.sh {action} failed:\n{err.decode()[-3000:]}")
