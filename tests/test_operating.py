"""The process as an operator meets it: prompt start-up failures, quiet output, an embedded
default that runs without extra steps, configuration mistakes caught at start.

Every test runs `python -m consumer …` as a subprocess. Its timeout is the bound on a failure:
a hang fails the test (subprocess.TimeoutExpired) rather than the suite.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from consumer.store import open_store
from consumer.store.schema import expected_version
from tests import workload
from tests.kafkautil import produce, read_committed
from tests.workers import Topics, settings_for

# Long enough for a loaded two-core machine, short enough that a hang is obvious.
START_FAILURE_TIMEOUT_S = 30


def _environment(bootstrap: str, topics: Topics, store_url: str, **extra: str) -> dict[str, str]:
    settings = settings_for(bootstrap, topics, store_url)
    ours = ("KAFKA_", "DATABASE_", "LOG_", "HTTP_", "MIGRATE_", "BATCH_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        DATABASE_URL=store_url,
        INPUT_TOPIC=topics.input,
        NOTIFICATION_TOPIC=topics.notifications,
        DEAD_LETTER_TOPIC=topics.dead_letters,
        CONSUMER_GROUP=settings.consumer_group,
        TRANSACTIONAL_ID_PREFIX=settings.transactional_id_prefix,
        HTTP_PORT="0",
        SESSION_TIMEOUT_MS="6000",
        HEARTBEAT_INTERVAL_MS="1000",
        LOG_FORMAT="json",
    )
    env.update(extra)
    return env


def _run(
    env: dict[str, str], *args: str, timeout: float = START_FAILURE_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def _run_async(
    env: dict[str, str], *args: str, bound_s: float = START_FAILURE_TIMEOUT_S
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_run, env, *args, timeout=bound_s)


def _events(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line as a JSON object; a line that is not one fails the test."""
    events = []
    for line in stderr.splitlines():
        if line.strip():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"a stderr line is not one of our JSON events: {line!r}")
    return events


def _no_error_lines(output: str) -> None:
    for line in output.splitlines():
        lowered = line.lower()
        assert '"level": "error"' not in lowered and "[error" not in lowered, line
        assert "Traceback" not in line and "never retrieved" not in line, line


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port some other process already listens on."""
    with socket.socket() as listener:
        listener.bind(("0.0.0.0", 0))  # the worker binds HTTP_HOST=0.0.0.0
        listener.listen()
        yield int(listener.getsockname()[1])


# ---------------------------------------------------------------- 1. start-up failures


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_taken_http_port_exits_at_once_naming_the_variable(
    kafka_bootstrap: str,
    topics: Topics,
    tmp_path: Path,
    postgres_url: str,
    taken_port: int,
    backend: str,
) -> None:
    store_url = f"sqlite:///{tmp_path / 'loyalty.db'}" if backend == "sqlite" else postgres_url
    env = _environment(
        kafka_bootstrap, topics, store_url, HTTP_PORT=str(taken_port), MIGRATE_ON_START="true"
    )

    result = await _run_async(env, "run")

    assert result.returncode == 1, result.stderr
    assert f"cannot serve HTTP on 0.0.0.0:{taken_port}" in result.stderr
    assert "set HTTP_PORT to a free port" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("kind", "extra", "expected"),
    [
        ("broker", {"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}, "cannot reach Kafka at 127.0.0.1:1"),
        (
            "store",
            {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"},
            "PostgreSQL at postgresql://nobody@127.0.0.1:1/none is unavailable",
        ),
        ("topics", {"INPUT_TOPIC": "no-such-input"}, "no-such-input (INPUT_TOPIC)"),
        (
            "store schema",
            {"MIGRATE_ON_START": "false", "DATABASE_URL": "<postgres>"},
            "run `loyalty-consumer migrate`",
        ),
    ],
)
async def test_a_failed_start_exits_non_zero_within_seconds_with_one_reason(
    kafka_bootstrap: str,
    topics: Topics,
    tmp_path: Path,
    postgres_url: str,
    kind: str,
    extra: dict[str, str],
    expected: str,
) -> None:
    values = {k: postgres_url if v == "<postgres>" else v for k, v in extra.items()}
    env = _environment(
        kafka_bootstrap, topics, f"sqlite:///{tmp_path / 'x.db'}", MIGRATE_ON_START="true"
    )
    env.update(values)

    result = await _run_async(env, "run")

    assert result.returncode == 1, f"{kind}: {result.stderr}"
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------- 2. migrate


async def test_migrate_on_an_unwritable_sqlite_path_prints_one_clean_line_every_time(
    tmp_path: Path,
) -> None:
    unwritable = tmp_path / "not-a-directory"
    unwritable.write_text("a file where a directory should be")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DATABASE_")}
    env["DATABASE_URL"] = f"sqlite:///{unwritable}/loyalty.db"

    # The aiosqlite thread's traceback came in some runs only: ten of them, side by side.
    results = await asyncio.gather(*(_run_async(env, "migrate") for _ in range(10)))

    for result in results:
        assert result.returncode == 1
        assert result.stderr.splitlines() == [
            f"Error: SQLite database {unwritable}/loyalty.db is unavailable: "
            "unable to open database file"
        ], result.stderr


# ---------------------------------------------------------------- 3. publish


async def test_publish_to_a_missing_topic_says_so_in_one_line_within_seconds(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    env = _environment(kafka_bootstrap, topics, sqlite_url)

    result = await _run_async(
        env, "publish", str(workload.SEED_FILE), "--topic", "no-such-topic-here"
    )

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"Error: topic no-such-topic-here does not exist on {kafka_bootstrap}; create it, "
        "or name an existing one with --topic (default: INPUT_TOPIC)"
    ], result.stderr


# ---------------------------------------------------------------- 4. library noise


async def test_check_against_an_unreachable_broker_prints_only_our_lines(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    await (await open_store(sqlite_url, migrate=True)).close()
    env = _environment("127.0.0.1:1", topics, sqlite_url)

    result = await _run_async(env, "check")

    assert result.returncode == 1
    assert [line for line in result.stdout.splitlines() if line.startswith("FAIL")] == [
        "FAIL  kafka: cannot reach Kafka at 127.0.0.1:1: KafkaConnectionError: Unable to "
        "bootstrap from [('127.0.0.1', 1, <AddressFamily.AF_INET: 2>)]. Check "
        "KAFKA_BOOTSTRAP_SERVERS, KAFKA_SECURITY_PROTOCOL and the broker, then start again."
    ]
    assert _events(result.stderr) == []  # aiokafka's own attempts only repeat the FAIL line


async def test_run_against_an_unreachable_broker_shows_aiokafka_in_our_format_as_a_warning(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    env = _environment("127.0.0.1:1", topics, sqlite_url, MIGRATE_ON_START="true")

    result = await _run_async(env, "run")

    assert result.returncode == 1
    *events, last = result.stderr.splitlines()
    assert last.startswith("Error: cannot reach Kafka at 127.0.0.1:1")
    from_aiokafka = [e for e in _events("\n".join(events)) if e.get("logger", "").startswith("aio")]
    assert from_aiokafka, result.stderr
    assert {e["level"] for e in from_aiokafka} == {"warning"}, from_aiokafka


async def test_a_fenced_producer_is_replaced_quietly_and_commits_once(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    transactional_id = f"fence-{os.getpid()}-{topics.input}"
    env = _environment(
        kafka_bootstrap,
        topics,
        sqlite_url,
        MIGRATE_ON_START="true",
        LOG_LEVEL="INFO",
        TRANSACTIONAL_ID=transactional_id,
    )
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

    async def until(event: str) -> None:
        while not any(event in line for line in seen):
            line = await process.stderr.readline()  # type: ignore[union-attr]
            assert line, f"the worker exited before {event}:\n" + "".join(seen)
            seen.append(line.decode())

    other = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=transactional_id)
    try:
        async with asyncio.timeout(60):
            await until("partitions.assigned")
            # Another producer initialises the worker's transactional id: the worker's
            # producer is fenced, and finds out in its next transaction.
            await other.start()
            await produce(kafka_bootstrap, topics.input, [workload.seed_bytes()], partition=0)
            await until("batch.committed")
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            seen.append((await process.stderr.read()).decode())
            code = await process.wait()
    finally:
        await other.stop()
        if process.returncode is None:
            process.kill()
            await process.wait()

    assert code == 0
    output = "".join(seen)
    _no_error_lines(output)
    assert "ProducerFenced" in output  # the worker said what happened, once, as a warning
    assert len(await read_committed(kafka_bootstrap, topics.notifications)) == 1


# ---------------------------------------------------------------- 5. protocol mismatch


async def test_ssl_against_a_plaintext_listener_names_the_protocol_setting(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    await (await open_store(sqlite_url, migrate=True)).close()
    env = _environment(kafka_bootstrap, topics, sqlite_url, KAFKA_SECURITY_PROTOCOL="SSL")

    result = await _run_async(env, "check")

    assert result.returncode == 1
    [kafka_line] = [line for line in result.stdout.splitlines() if "kafka:" in line]
    assert kafka_line == (
        f"FAIL  kafka: Kafka at {kafka_bootstrap} accepted the connection, then closed it: "
        "check that the listener speaks KAFKA_SECURITY_PROTOCOL=SSL, and whether it requires "
        "a client certificate (KAFKA_SSL_CERTFILE, KAFKA_SSL_KEYFILE)"
    )
    assert _events(result.stderr) == []


# ---------------------------------------------------------------- 6. configuration


@pytest.mark.parametrize("command", ["run", "check"])
async def test_an_unsupported_database_scheme_is_refused_before_connecting(
    kafka_bootstrap: str, topics: Topics, command: str
) -> None:
    env = _environment(kafka_bootstrap, topics, "sqlite:///unused.db")
    env["DATABASE_URL"] = "mysql://loyalty:Db-Secret-Q7@db/loyalty"

    result = await _run_async(env, command)

    assert result.returncode == 1
    assert result.stdout == ""  # nothing was checked or consumed
    assert "DATABASE_URL: " in result.stderr
    assert "postgresql://" in result.stderr and "sqlite:///" in result.stderr
    assert "Db-Secret-Q7" not in result.stderr


async def test_run_warns_about_variables_that_look_like_settings_but_are_not(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    env = _environment(
        kafka_bootstrap,
        topics,
        sqlite_url,
        MIGRATE_ON_START="true",
        BATCH_MAX_RECORD="10",
        KAFKA_BOOTSTRAP_SERVER="kafka:9092",
    )

    result = await _run_async(env, "run", "--once", bound_s=120)

    assert result.returncode == 0, result.stderr
    warnings = [e for e in _events(result.stderr) if e["event"] == "config.unknown_variable"]
    assert sorted((w["variable"], w["did_you_mean"], w["level"]) for w in warnings) == [
        ("BATCH_MAX_RECORD", "BATCH_MAX_RECORDS", "warning"),
        ("KAFKA_BOOTSTRAP_SERVER", "KAFKA_BOOTSTRAP_SERVERS", "warning"),
    ]
    assert all("kafka:9092" not in json.dumps(w) for w in warnings)  # never the value


async def test_check_lists_variables_that_look_like_settings_but_are_not(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    await (await open_store(sqlite_url, migrate=True)).close()
    env = _environment(kafka_bootstrap, topics, sqlite_url, BATCH_MAX_RECORD="10")

    result = await _run_async(env, "check")

    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "warn  BATCH_MAX_RECORD is not a setting and is ignored: did you mean BATCH_MAX_RECORDS?"
        in result.stdout.splitlines()
    ), result.stdout


@pytest.mark.parametrize("level", ["info", "Warning", "DEBUG"])
async def test_log_level_is_accepted_in_any_case(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str, level: str
) -> None:
    await (await open_store(sqlite_url, migrate=True)).close()
    env = _environment(kafka_bootstrap, topics, sqlite_url, LOG_LEVEL=level)

    result = await _run_async(env, "check")

    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- 7. the embedded default


@pytest.mark.parametrize("state", ["missing", "empty file"])
async def test_run_initialises_a_new_sqlite_store_by_itself(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, state: str
) -> None:
    path = tmp_path / "new" / "loyalty.db" if state == "missing" else tmp_path / "loyalty.db"
    if state == "empty file":
        path.touch()
    else:
        path.parent.mkdir()
    await produce(kafka_bootstrap, topics.input, [workload.seed_bytes()], partition=0)
    env = _environment(kafka_bootstrap, topics, f"sqlite:///{path}", MIGRATE_ON_START="false")

    result = await _run_async(env, "run", "--once", bound_s=120)

    assert result.returncode == 0, result.stderr
    initialised = [e for e in _events(result.stderr) if e["event"] == "store.initialised"]
    assert [e["version"] for e in initialised] == [expected_version("sqlite")]
    store = await open_store(f"sqlite:///{path}")
    try:
        assert (await store.counts()).ledger_entries == 1
    finally:
        await store.close()


async def test_check_calls_a_new_sqlite_store_fine_since_run_initialises_it(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    env = _environment(kafka_bootstrap, topics, f"sqlite:///{tmp_path / 'loyalty.db'}")

    result = await _run_async(env, "check")

    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "ok    store: a new SQLite database; `loyalty-consumer run` creates its schema"
        in result.stdout.splitlines()
    )


async def test_an_empty_postgresql_still_needs_an_explicit_migrate(
    kafka_bootstrap: str, topics: Topics, postgres_url: str
) -> None:
    env = _environment(kafka_bootstrap, topics, postgres_url, MIGRATE_ON_START="false")

    result = await _run_async(env, "run", "--once")

    assert result.returncode == 1
    assert "run `loyalty-consumer migrate` or set MIGRATE_ON_START=true" in result.stderr
