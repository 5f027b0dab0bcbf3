"""`loyalty-consumer check`: exit 0 only when settings, Kafka, topics and store are all fine."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from consumer.store import open_store
from tests.workers import Topics


def _check(
    bootstrap: str, topics: Topics, database_url: str, **extra: str
) -> subprocess.CompletedProcess[str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KAFKA_", "DATABASE_", "VOUCHERIFY_", "WEBHOOK_"))
    }
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        DATABASE_URL=database_url,
        INPUT_TOPIC=topics.input,
        NOTIFICATION_TOPIC=topics.notifications,
        DEAD_LETTER_TOPIC=topics.dead_letters,
    )
    env.update(extra)
    return subprocess.run(
        [sys.executable, "-m", "consumer", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _migrated(url: str) -> str:
    await (await open_store(url, migrate=True)).close()
    return url


async def test_everything_in_place_exits_zero_with_one_ok_line_per_dependency(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    await _migrated(sqlite_url)

    result = await asyncio.to_thread(_check, kafka_bootstrap, topics, sqlite_url)

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines() == [
        "ok    configuration",
        "ok    signatures: not verified (VOUCHERIFY_WEBHOOK_SECRET is not set)",
        f"ok    kafka: {kafka_bootstrap}",
        f"ok    topic {topics.input} (INPUT_TOPIC)",
        f"ok    topic {topics.notifications} (NOTIFICATION_TOPIC)",
        f"ok    topic {topics.dead_letters} (DEAD_LETTER_TOPIC)",
        "ok    store: reachable, schema up to date",
    ]


async def test_an_unreachable_broker_fails_naming_the_address(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    await _migrated(sqlite_url)

    result = await asyncio.to_thread(_check, "127.0.0.1:1", topics, sqlite_url)

    assert result.returncode == 1
    assert "FAIL  kafka: cannot reach Kafka at 127.0.0.1:1" in result.stdout
    assert "ok    store: reachable, schema up to date" in result.stdout  # checked regardless


async def test_a_missing_topic_fails_naming_it_and_its_variable(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    await _migrated(sqlite_url)
    missing = Topics("no-such-input-topic", topics.notifications, topics.dead_letters)

    result = await asyncio.to_thread(_check, kafka_bootstrap, missing, sqlite_url)

    assert result.returncode == 1
    assert (
        "FAIL  topic no-such-input-topic (INPUT_TOPIC) does not exist; "
        "create it or fix INPUT_TOPIC" in result.stdout.splitlines()
    )
    assert f"ok    topic {topics.notifications} (NOTIFICATION_TOPIC)" in result.stdout


async def test_an_unreachable_database_fails_without_its_password(
    kafka_bootstrap: str, topics: Topics
) -> None:
    url = "postgresql://loyalty:Pg-Secret-Q7@127.0.0.1:1/loyalty"

    result = await asyncio.to_thread(_check, kafka_bootstrap, topics, url)

    assert result.returncode == 1
    [store_line] = [line for line in result.stdout.splitlines() if "store" in line]
    assert store_line.startswith("FAIL  store: PostgreSQL at postgresql://loyalty:***@127.0.0.1:1")
    assert "Pg-Secret-Q7" not in result.stdout + result.stderr


async def test_a_database_without_the_schema_fails_saying_to_migrate(
    kafka_bootstrap: str, topics: Topics, postgres_url: str
) -> None:
    result = await asyncio.to_thread(_check, kafka_bootstrap, topics, postgres_url)

    assert result.returncode == 1
    [store_line] = [line for line in result.stdout.splitlines() if "store" in line]
    assert store_line.startswith("FAIL  store: the database schema is at version 0")
    assert "loyalty-consumer migrate" in store_line


async def test_a_bad_setting_fails_before_connecting_naming_the_variable(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    result = await asyncio.to_thread(
        _check, kafka_bootstrap, topics, sqlite_url, BATCH_MAX_RECORDS="lots"
    )

    assert result.returncode != 0
    assert "BATCH_MAX_RECORDS" in result.stderr
    assert result.stdout == ""  # nothing was checked
    assert "Traceback" not in result.stderr


async def test_signature_verification_is_reported_without_the_secrets(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str, tmp_path: Path
) -> None:
    await _migrated(sqlite_url)
    previous = tmp_path / "previous"
    previous.write_text("Old-Webhook-Secret-3c9e\n")

    result = await asyncio.to_thread(
        _check,
        kafka_bootstrap,
        topics,
        sqlite_url,
        VOUCHERIFY_WEBHOOK_SECRET="New-Webhook-Secret-71d4",
        VOUCHERIFY_WEBHOOK_SECRET_PREVIOUS_FILE=str(previous),
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.splitlines()[1] == (
        "ok    signatures: verified (header x-voucherify-signature, current and previous secret)"
    )
    assert "Webhook-Secret" not in result.stdout + result.stderr


async def test_a_half_configured_rotation_fails_naming_the_variable_not_the_secret(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    result = await asyncio.to_thread(
        _check,
        kafka_bootstrap,
        topics,
        sqlite_url,
        VOUCHERIFY_WEBHOOK_SECRET_PREVIOUS="Old-Webhook-Secret-3c9e",
    )

    assert result.returncode == 1
    assert "VOUCHERIFY_WEBHOOK_SECRET_PREVIOUS: only accepted beside the current secret" in (
        result.stderr
    )
    assert result.stdout == ""
    assert "Old-Webhook-Secret" not in result.stdout + result.stderr
