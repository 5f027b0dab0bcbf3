"""Exactly once under faults: the reduced chaos run (`make chaos` runs the full one).

Two replicas as processes on PostgreSQL, a 6-partition input streamed in over ~25 s, and meanwhile:
two SIGKILLs, one replica frozen past the session timeout and woken after its partitions
moved (a zombie), one broker restart and one PostgreSQL restart. Then the audit must find
nothing lost, nothing applied or notified twice, every record accounted for.

It restarts the broker and the database, so it runs on its own (free ports, its own
directories under .run/), never on the shared services.
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator

import pytest

from tests import services as shared_services
from tests.chaos import ChaosConfig, Services, run_chaos

pytestmark = [pytest.mark.slow, pytest.mark.kafka, pytest.mark.postgres]


@pytest.fixture(scope="session")
async def chaos_services() -> AsyncIterator[Services]:
    """A broker and a PostgreSQL of its own, removed at the end of the session."""
    services = Services()
    try:
        await services.up()
    except RuntimeError as exc:
        await services.down()
        message = f"the chaos test could not start its own broker and database: {exc}"
        if shared_services.in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    try:
        yield services
    finally:
        await services.down()


@pytest.mark.timeout(420)
async def test_kills_a_zombie_and_restarts_of_broker_and_database_lose_and_double_nothing(
    chaos_services: Services,
) -> None:
    seed = int(os.environ.get("CHAOS_SEED", random.SystemRandom().randrange(10**6)))
    config = ChaosConfig(
        seed=seed,
        events=1_500,
        replicas=2,
        kills=2,
        zombies=1,
        broker_restarts=1,
        pg_restarts=1,
        waves=25,
        stream_s=25,
        catch_up_timeout_s=180,
    )

    result = await run_chaos(config, chaos_services)

    print(result.summary())  # noqa: T201  the counts are the point of this test
    assert result.ok, result.summary()
    injected = [result.injected[kind] for kind in ("kill", "zombie", "broker", "postgres")]
    assert injected == [2, 1, 1, 1]
    report = result.report
    assert report is not None and result.expected is not None
    assert report.applied == report.notified == result.expected.distinct
    assert report.duplicates == result.expected.kinds["duplicate"]
