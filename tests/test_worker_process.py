"""The worker as a process: crash recovery, start-up errors, graceful shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

from consumer.service import CRASH_AFTER_DB_COMMIT
from consumer.store import open_store
from tests import workload
from tests.kafkautil import produce, read_committed
from tests.workers import Topics, settings_for


def _environment(settings_env: dict[str, str], **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_"))}
    env.update(settings_env)
    env.update(extra)
    return env


def _env_from(bootstrap: str, topics: Topics, store_url: str) -> dict[str, str]:
    settings = settings_for(bootstrap, topics, store_url)
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DATABASE_URL": store_url,
        "INPUT_TOPIC": topics.input,
        "NOTIFICATION_TOPIC": topics.notifications,
        "DEAD_LETTER_TOPIC": topics.dead_letters,
        "CONSUMER_GROUP": settings.consumer_group,
        "TRANSACTIONAL_ID_PREFIX": settings.transactional_id_prefix,
        "HTTP_PORT": "0",
        "SESSION_TIMEOUT_MS": "6000",
        "HEARTBEAT_INTERVAL_MS": "1000",
        "MIGRATE_ON_START": "true",
        "LOG_FORMAT": "json",
    }


def _run(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def test_killed_between_database_and_kafka_commit_recovers_exactly_once(
    kafka_bootstrap: str, topics: Topics, store_url: str
) -> None:
    env = _env_from(kafka_bootstrap, topics, store_url)
    await produce(kafka_bootstrap, topics.input, [workload.seed_bytes()], partition=0)

    crashed = await asyncio.to_thread(
        _run, _environment(env, **{CRASH_AFTER_DB_COMMIT: "1"}), "run", "--once"
    )

    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    store = await open_store(store_url)
    try:
        assert (await store.counts()).ledger_entries == 1  # the database had committed
    finally:
        await store.close()
    assert await read_committed(kafka_bootstrap, topics.notifications) == []

    recovered = await asyncio.to_thread(_run, _environment(env), "run", "--once")

    assert recovered.returncode == 0, recovered.stderr[-2000:]
    notes = await read_committed(kafka_bootstrap, topics.notifications)
    assert len(notes) == 1
    store = await open_store(store_url)
    try:
        card = await store.card(workload.SEED_VOUCHER_ID)
        assert (await store.counts()).ledger_entries == 1
    finally:
        await store.close()
    assert card is not None and card.activated_points == 23
    assert '"replay": 1' in recovered.stderr or '"replay":1' in recovered.stderr


async def test_bad_setting_exits_non_zero_naming_the_variable(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    env = _environment(_env_from(kafka_bootstrap, topics, sqlite_url), BATCH_MAX_RECORDS="lots")

    result = await asyncio.to_thread(_run, env, "run", "--once")

    assert result.returncode != 0
    assert "BATCH_MAX_RECORDS" in result.stderr
    assert "Traceback" not in result.stderr


async def test_unreachable_broker_gives_a_clear_message(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    env = _environment(
        _env_from(kafka_bootstrap, topics, sqlite_url), KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1"
    )

    result = await asyncio.to_thread(_run, env, "run", "--once")

    assert result.returncode != 0
    assert "cannot reach Kafka at 127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr


async def test_unreachable_database_gives_a_clear_message(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    env = _environment(
        _env_from(kafka_bootstrap, topics, sqlite_url),
        DATABASE_URL="postgresql://nobody@127.0.0.1:1/none",
    )

    result = await asyncio.to_thread(_run, env, "run", "--once")

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert "127.0.0.1:1" in result.stderr or "database" in result.stderr.lower()


async def test_sigterm_stops_gracefully_with_exit_status_zero(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    env = _environment(_env_from(kafka_bootstrap, topics, sqlite_url), SHUTDOWN_TIMEOUT_S="20")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "consumer",
        "run",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(60):
            while "partitions.assigned" not in (seen[-1] if seen else ""):
                line = await process.stderr.readline()
                assert line, "worker exited before it was assigned partitions:\n" + "".join(seen)
                seen.append(line.decode())
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            rest = await process.stderr.read()
            code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
    assert code == 0
    assert "worker.stopped" in rest.decode()
    # The service tunes the collector before the first poll (consumer.runtime).
    tuned = [line for line in seen if "gc.tuned" in line]
    assert tuned and '"gen0_threshold": 50000' in tuned[0], "".join(seen)


async def test_missing_topic_names_the_variable_to_fix(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    env = _environment(
        _env_from(kafka_bootstrap, topics, sqlite_url), NOTIFICATION_TOPIC="no-such-topic-here"
    )

    result = await asyncio.to_thread(_run, env, "run", "--once")

    assert result.returncode != 0
    assert "no-such-topic-here (NOTIFICATION_TOPIC)" in result.stderr
    assert "Traceback" not in result.stderr


async def test_publish_sends_each_file_unchanged(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    env = _environment(_env_from(kafka_bootstrap, topics, sqlite_url))
    seed = workload.SEED_FILE

    result = await asyncio.to_thread(
        _run,
        env,
        "publish",
        str(seed),
        str(seed),
        "--topic",
        topics.input,
        "--key",
        "k1",
        "--partition",
        "2",
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.count(f"-> {topics.input}[2]@") == 2
    records = await read_committed(kafka_bootstrap, topics.input)
    assert [(r.partition, r.key, r.value) for r in records] == [
        (2, b"k1", seed.read_bytes()),
        (2, b"k1", seed.read_bytes()),
    ]


async def test_publish_of_an_unreadable_file_is_a_usage_error(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    env = _environment(_env_from(kafka_bootstrap, topics, sqlite_url))

    result = await asyncio.to_thread(_run, env, "publish", "/nonexistent/payload.json")

    assert result.returncode == 2
    assert "/nonexistent/payload.json" in result.stderr
