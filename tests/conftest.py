"""Shared fixtures: real Kafka, PostgreSQL and Toxiproxy; fresh topics and databases per test."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import hypothesis.internal.observability  # noqa: F401  see below
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from tests import services
from tests.netfaults import Network, proxied_network
from tests.toxiproxy import Toxiproxy
from tests.workers import Topics

# hypothesis's pytest plugin imports the package lazily at session end; pytest then rewrites
# it from deep inside the session, where CPython 3.11 can fail with "AST constructor recursion
# depth mismatch". Importing it here, at a shallow stack, avoids that.

TopicFactory = Callable[..., Awaitable[str]]


def _unavailable(what: str, exc: BaseException) -> None:
    """In CI a missing service fails the run; on a laptop it is a loud skip."""
    message = f"{what} is not available: {exc}"
    if services.in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    try:
        with services.kafka_bootstrap() as bootstrap:
            yield bootstrap
    except RuntimeError as exc:
        _unavailable("Kafka", exc)


@pytest.fixture(scope="session")
async def kafka_admin(kafka_bootstrap: str) -> AsyncIterator[AIOKafkaAdminClient]:
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


@pytest.fixture
async def new_topic(kafka_admin: AIOKafkaAdminClient) -> TopicFactory:
    """Create a fresh topic; the name is unique per call so tests never share data."""

    async def create(stem: str = "t", partitions: int = 1) -> str:
        name = f"{stem}-{uuid.uuid4().hex[:12]}"
        await kafka_admin.create_topics(
            [NewTopic(name=name, num_partitions=partitions, replication_factor=1)]
        )
        return name

    return create


@pytest.fixture
async def topic(new_topic: TopicFactory) -> str:
    return await new_topic("topic")


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    try:
        with services.postgres_url() as url:
            yield url
    except RuntimeError as exc:
        _unavailable("PostgreSQL", exc)


@pytest.fixture
async def postgres_url(postgres_server_url: str) -> AsyncIterator[str]:
    """A fresh, empty database on the test server, dropped after the test."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(postgres_server_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base, _, _ = postgres_server_url.rpartition("/")
    yield f"{base}/{name}"
    admin = await asyncpg.connect(postgres_server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'loyalty.db'}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Runs a test once per store backend, each on a fresh database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'loyalty.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def topics(new_topic: TopicFactory) -> Topics:
    """Input (3 partitions), notification and dead-letter topics, fresh for each test."""
    return Topics(
        input=await new_topic("in", partitions=3),
        notifications=await new_topic("notify"),
        dead_letters=await new_topic("dlq"),
    )


@pytest.fixture(scope="session")
def toxiproxy_url() -> Iterator[str]:
    try:
        with services.toxiproxy_url() as url:
            yield url
    except RuntimeError as exc:
        _unavailable("Toxiproxy", exc)


@pytest.fixture(scope="session")
async def toxiproxy(toxiproxy_url: str) -> AsyncIterator[Toxiproxy]:
    async with Toxiproxy(toxiproxy_url) as api:
        yield api


@pytest.fixture(scope="session")
async def proxied(
    toxiproxy: Toxiproxy, postgres_server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Network]:
    """Two replicas' links, each through its own proxies to a private broker and to the test
    PostgreSQL server; the broker starts once for the session."""
    prefix = f"net-{uuid.uuid4().hex[:8]}"
    try:
        async with proxied_network(
            toxiproxy,
            tmp_path_factory.mktemp("proxied"),
            replicas=2,
            database_url=postgres_server_url,
            prefix=prefix,
        ) as network:
            yield network
    except RuntimeError as exc:
        _unavailable("The proxied broker", exc)


@pytest.fixture
async def network(proxied: Network) -> AsyncIterator[Network]:
    """The session's proxied links, every one healed again after the test."""
    yield proxied
    await proxied.heal()
