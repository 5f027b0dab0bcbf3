"""The HTTP endpoints of a running worker: exact metrics for a known workload, and readiness."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from consumer.config import Settings
from consumer.http import serve
from consumer.metrics import Metrics
from consumer.store import LedgerEntry, open_store
from consumer.store.base import BatchResult, Store
from consumer.store.sqlite import SQLiteStore
from consumer.worker import Worker
from tests import workload
from tests.conditions import eventually
from tests.conftest import TopicFactory
from tests.kafkautil import committed_offsets, end_offsets, produce
from tests.services import ROOT
from tests.workers import Topics, settings_for

GARBAGE = [b"not json", b"\xff\xfe\x00", b"[]", b'{"type": 7, "data": {}}']


@dataclass
class Endpoints:
    """A worker running in this process, and its HTTP endpoints on a free port."""

    http: aiohttp.ClientSession
    worker: Worker

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(path) as response:
            body = await (response.json() if path != "/metrics" else response.text())
            return response.status, body

    async def metrics(self) -> dict[str, float]:
        """Every sample as `name{label="value",…}` (labels sorted) → value."""
        status, text = await self.get("/metrics")
        assert status == 200
        samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
        return samples

    async def ready(self) -> bool:
        status, _ = await self.get("/readyz")
        return status == 200

    async def unready_because(self, words: str) -> bool:
        status, body = await self.get("/readyz")
        return status == 503 and any(words in reason for reason in body["reasons"])


@contextlib.asynccontextmanager
async def serving(settings: Settings, store: Store) -> AsyncIterator[Endpoints]:
    worker = Worker(settings, store, metrics=Metrics())
    runner = await serve(worker, store, "127.0.0.1", 0)
    port = runner.addresses[0][1]
    task = asyncio.create_task(worker.run())
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            yield Endpoints(http, worker)
    finally:
        worker.stop()
        try:
            async with asyncio.timeout(30):
                await task  # re-raises what the worker died of, if it did
        finally:
            await runner.cleanup()


async def _caught_up(bootstrap: str, settings: Settings) -> bool:
    ends = await end_offsets(bootstrap, settings.input_topic)
    done = await committed_offsets(bootstrap, settings.consumer_group, settings.input_topic)
    return all(done.get(partition, 0) == end for partition, end in ends.items())


async def test_metrics_count_a_known_workload_exactly(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    valid = [workload.encode(workload.activation(f"vtx_http_{i}")) for i in range(6)]
    duplicates = [valid[0], valid[3], valid[5]]  # the same activations, at other offsets
    siblings = [path.read_bytes() for path in workload.sibling_files()]
    everything: Sequence[bytes] = [*valid, *duplicates, *siblings, *GARBAGE]
    for partition in range(3):
        await produce(kafka_bootstrap, topics.input, everything[partition::3], partition=partition)
    settings = settings_for(kafka_bootstrap, topics, sqlite_url)
    store = await open_store(sqlite_url, migrate=True)
    try:
        async with serving(settings, store) as endpoints:
            await eventually(
                lambda: _caught_up(kafka_bootstrap, settings), what="offsets committed to the end"
            )

            async def lag_is_zero() -> bool:
                metrics = await endpoints.metrics()
                lags = [
                    v for k, v in metrics.items() if k.startswith("loyalty_consumer_consumer_lag")
                ]
                return lags == [0, 0, 0]

            await eventually(lag_is_zero, what="consumer_lag 0 on the three partitions")
            metrics = await endpoints.metrics()
            health = await endpoints.get("/healthz")
            ready = await endpoints.get("/readyz")
    finally:
        await store.close()

    def total(name: str, labels: str = "") -> float:
        return metrics[f"loyalty_consumer_{name}_total{labels}"]

    assert total("records_consumed") == len(everything)
    assert total("applied") == len(valid)
    assert total("duplicates") == len(duplicates)
    assert total("replays") == 0
    assert total("skipped") == len(siblings)
    assert total("dead_lettered", '{reason_class="invalid"}') == len(GARBAGE)
    assert total("dead_lettered", '{reason_class="persistent"}') == 0
    assert total("retries", '{cause="store"}') == 0
    assert total("retries", '{cause="broker"}') == 0
    assert metrics["loyalty_consumer_batch_size_count"] > 0
    assert metrics["loyalty_consumer_batch_size_sum"] == len(everything)
    assert metrics["loyalty_consumer_batch_duration_seconds_count"] > 0
    # One latency sample for every input record, once its effects are committed.
    latency = "loyalty_consumer_end_to_end_latency_seconds"
    assert metrics[f"{latency}_count"] == len(everything)
    assert metrics[f'{latency}_bucket{{le="+Inf"}}'] == len(everything)
    assert metrics[f"{latency}_sum"] > 0
    assert metrics["loyalty_consumer_assigned_partitions"] == 3
    assert metrics["loyalty_consumer_ready"] == 1
    assert health == (200, {"alive": True})
    assert ready == (200, {"ready": True, "reasons": [], "assigned_partitions": 3})


async def test_counters_with_labels_are_exported_at_zero_before_any_event(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    store = await open_store(sqlite_url, migrate=True)
    try:
        async with serving(settings_for(kafka_bootstrap, topics, sqlite_url), store) as endpoints:
            metrics = await endpoints.metrics()
    finally:
        await store.close()

    for series in (
        'loyalty_consumer_dead_lettered_total{reason_class="invalid"}',
        'loyalty_consumer_dead_lettered_total{reason_class="persistent"}',
        'loyalty_consumer_retries_total{cause="store"}',
        'loyalty_consumer_retries_total{cause="broker"}',
        'loyalty_consumer_balance_drift_total{direction="ahead"}',
        'loyalty_consumer_balance_drift_total{direction="behind"}',
        'loyalty_consumer_balance_drift_points_total{direction="ahead"}',
        'loyalty_consumer_balance_drift_points_total{direction="behind"}',
        "loyalty_consumer_card_updates_total",
    ):
        assert metrics[series] == 0, series


# -- readiness -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PrivatePostgres:
    """A PostgreSQL cluster of this module's own, which a test may stop and start again."""

    url: str
    run_dir: Path

    def _script(self, command: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        env["PG_RUN_DIR"] = str(self.run_dir)
        subprocess.run(
            ["bash", str(ROOT / "scripts" / "pg.sh"), command],
            env=env,
            check=True,
            capture_output=True,
            timeout=120,
        )

    def stop(self) -> None:
        self._script("stop")

    def start(self) -> None:
        self._script("start")


@pytest.fixture(scope="module")
def private_postgres() -> Iterator[PrivatePostgres]:
    # Under .run (not /tmp/pytest-of-…, which the postgres user cannot enter); unique, so
    # concurrent test runs never share it.
    run_dir = ROOT / ".run" / f"pg-http-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["PG_RUN_DIR"] = str(run_dir)
    script = ["bash", str(ROOT / "scripts" / "pg.sh")]
    started = subprocess.run(
        [*script, "up"], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    try:
        if started.returncode != 0:
            pytest.fail(f"private PostgreSQL did not start:\n{started.stderr[-2000:]}")
        yield PrivatePostgres(started.stdout.strip().splitlines()[-1], run_dir)
    finally:
        subprocess.run([*script, "down"], env=env, capture_output=True, timeout=120, check=False)


async def test_readyz_is_false_while_the_database_is_down_and_true_once_it_is_back(
    kafka_bootstrap: str, topics: Topics, private_postgres: PrivatePostgres
) -> None:
    store = await open_store(private_postgres.url, migrate=True)
    try:
        async with serving(
            settings_for(kafka_bootstrap, topics, private_postgres.url), store
        ) as endpoints:
            await eventually(endpoints.ready, what="/readyz 200 with the database up")

            await asyncio.to_thread(private_postgres.stop)
            try:
                await eventually(
                    lambda: endpoints.unready_because("store unreachable"),
                    what="/readyz 503 naming the store",
                )
                assert (await endpoints.metrics())["loyalty_consumer_ready"] == 0
                assert (await endpoints.get("/healthz"))[0] == 200  # alive: only not ready
            finally:
                await asyncio.to_thread(private_postgres.start)

            await eventually(endpoints.ready, what="/readyz 200 once the database is back")
    finally:
        await store.close()


class HeldStore(SQLiteStore):
    """The real SQLite store, whose batches wait for `release`: a hung database call, on cue."""

    entered: asyncio.Event
    release: asyncio.Event

    async def apply_batch(self, entries: Sequence[LedgerEntry]) -> BatchResult:
        self.entered.set()
        await self.release.wait()
        return await super().apply_batch(entries)


async def test_a_partition_that_makes_no_progress_turns_readyz_false_until_it_moves(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    store = await HeldStore.connect(str(tmp_path / "held.db"))
    assert isinstance(store, HeldStore)
    store.entered, store.release = asyncio.Event(), asyncio.Event()
    await store.migrate()
    settings = settings_for(kafka_bootstrap, topics, "sqlite:///unused", stall_timeout_s=1.0)
    try:
        async with serving(settings, store) as endpoints:
            await eventually(endpoints.ready, what="/readyz 200 before any work")
            await produce(kafka_bootstrap, topics.input, [workload.seed_bytes()], partition=0)
            async with asyncio.timeout(30):
                await store.entered.wait()

            await eventually(
                lambda: endpoints.unready_because(f"no progress for over 1s on {topics.input}[0]"),
                what="/readyz 503 naming the stalled partition",
            )
            assert (await endpoints.get("/healthz"))[0] == 200

            store.release.set()
            await eventually(endpoints.ready, what="/readyz 200 once the batch committed")
            await eventually(
                lambda: _caught_up(kafka_bootstrap, settings), what="the held record committed"
            )
    finally:
        await store.close()


async def test_a_replica_left_without_partitions_turns_unready(
    kafka_bootstrap: str, new_topic: TopicFactory, sqlite_url: str
) -> None:
    topics = Topics(
        input=await new_topic("in", partitions=1),
        notifications=await new_topic("notify"),
        dead_letters=await new_topic("dlq"),
    )
    settings = settings_for(kafka_bootstrap, topics, sqlite_url, stall_timeout_s=1.0)
    first = await open_store(sqlite_url, migrate=True)
    second = await open_store(sqlite_url)
    try:
        async with serving(settings, first) as one, serving(settings, second) as other:

            async def one_owner_and_one_idle() -> bool:
                answers = [await one.get("/readyz"), await other.get("/readyz")]
                (ok, owner), (unready, idle) = sorted(answers, key=lambda answer: answer[0])
                return (
                    (ok, unready) == (200, 503)
                    and owner["assigned_partitions"] == 1
                    and idle["assigned_partitions"] == 0
                    and idle["reasons"][0].startswith("no partitions assigned for")
                )

            await eventually(one_owner_and_one_idle, what="one replica ready, the other idle")
    finally:
        await first.close()
        await second.close()
