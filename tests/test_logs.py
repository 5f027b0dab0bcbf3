"""Logs of the worker process: JSON events with coordinates, and never personal data or secrets."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import pytest

from consumer.config import load_settings
from consumer.errors import ConfigurationError
from consumer.events import NATIVE_SHAPE_CHECKS
from tests import workload
from tests.kafkautil import produce
from tests.workers import Topics

NAME = "Zelda Marker-Q7"
EMAIL = "zelda.q7@example.invalid"
SASL_SECRET = "Sasl-Secret-Q7"
DATABASE_SECRET = "Pg-Secret-Q7"
NEVER_SHOWN = (NAME, "Zelda", "Marker-Q7", EMAIL, "zelda.q7", SASL_SECRET, DATABASE_SECRET)


def _with_password(url: str) -> str:
    """The test server trusts local connections, so a password in the URL is accepted."""
    scheme, _, rest = url.partition("://")
    user, _, where = rest.partition("@")
    return f"{scheme}://{user}:{DATABASE_SECRET}@{where}"


def _environment(bootstrap: str, topics: Topics, database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_", "LOG_"))}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        KAFKA_SASL_PASSWORD=SASL_SECRET,  # set, as a deployment would; must never be printed
        DATABASE_URL=database_url,
        INPUT_TOPIC=topics.input,
        NOTIFICATION_TOPIC=topics.notifications,
        DEAD_LETTER_TOPIC=topics.dead_letters,
        CONSUMER_GROUP=f"g-{uuid.uuid4().hex[:8]}",
        TRANSACTIONAL_ID_PREFIX=f"tx-{uuid.uuid4().hex[:8]}",
        HTTP_PORT="0",
        SESSION_TIMEOUT_MS="6000",
        HEARTBEAT_INTERVAL_MS="1000",
        MIGRATE_ON_START="true",
        LOG_LEVEL="DEBUG",  # as much as the worker ever says
    )
    env.update(extra)
    return env


def _run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "consumer", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _marked(transaction_id: str) -> dict[str, Any]:
    """An activation whose customer is the marker person."""
    payload = workload.activation(transaction_id)
    payload["data"]["customer"].update(name=NAME, email=EMAIL)
    return payload


def _invalid_marked_events() -> list[bytes]:
    """Invalid events that carry the markers, several in the very fields a reason names."""
    negative_points = _marked("vtx_log_bad_points")
    negative_points["data"]["pending_points"]["points"] = -5
    customer_as_text = _marked("vtx_log_customer_text")
    customer_as_text["data"]["customer"] = NAME
    email_as_time = _marked("vtx_log_email_time")
    email_as_time["data"]["transaction"]["created_at"] = EMAIL
    name_as_type = copy.deepcopy(_marked("vtx_log_name_type"))
    name_as_type["data"]["transaction"]["type"] = NAME
    return [
        workload.encode(negative_points),
        workload.encode(customer_as_text),
        workload.encode(email_as_time),
        workload.encode(name_as_type),
        json.dumps(EMAIL).encode(),  # a bare JSON string
        json.dumps({EMAIL: NAME}).encode(),  # the address as a key
        f"not json: {NAME} <{EMAIL}>".encode(),
    ]


def _events(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line, each of which must be one JSON object."""
    return [json.loads(line) for line in stderr.splitlines() if line.strip()]


async def test_the_worker_logs_json_events_without_personal_data_or_secrets(
    kafka_bootstrap: str, topics: Topics, postgres_url: str
) -> None:
    valid = [workload.encode(_marked(f"vtx_log_{i}")) for i in range(3)]
    invalid = _invalid_marked_events()
    await produce(kafka_bootstrap, topics.input, [*valid, valid[0], *invalid], partition=0)
    env = _environment(kafka_bootstrap, topics, _with_password(postgres_url))

    result = await asyncio.to_thread(_run, env, "run", "--once")

    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout + result.stderr
    for marker in NEVER_SHOWN:
        assert marker not in output, marker
    events = _events(result.stderr)
    names = [event["event"] for event in events]
    assert "worker.started" in names and "worker.stopped" in names
    started = next(event for event in events if event["event"] == "worker.started")
    assert started["native_shape_checks"] is NATIVE_SHAPE_CHECKS
    dead = [event for event in events if event["event"] == "record.dead_lettered"]
    assert sorted(event["offset"] for event in dead) == list(range(4, 4 + len(invalid)))
    assert {(event["topic"], event["partition"]) for event in dead} == {(topics.input, 0)}
    assert all(event["reason_class"] == "invalid" and event["reason"] for event in dead)
    batches = [event for event in events if event["event"] == "batch.committed"]
    assert sum(event.get("applied", 0) for event in batches) == len(valid)
    assert sum(event.get("duplicate", 0) for event in batches) == 1
    assert all(event["duration_ms"] >= 0 and event["records"] > 0 for event in batches)


@pytest.mark.parametrize(
    ("problem", "extra"),
    [
        (
            "unreachable database",
            {"DATABASE_URL": f"postgresql://u:{DATABASE_SECRET}@127.0.0.1:1/x"},
        ),
        ("bad setting", {"BATCH_MAX_RECORDS": "lots"}),
    ],
)
async def test_a_failed_start_names_the_problem_without_secrets(
    kafka_bootstrap: str, topics: Topics, postgres_url: str, problem: str, extra: dict[str, str]
) -> None:
    env = _environment(kafka_bootstrap, topics, _with_password(postgres_url), **extra)

    result = await asyncio.to_thread(_run, env, "run", "--once")

    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert ("127.0.0.1:1" if problem == "unreachable database" else "BATCH_MAX_RECORDS") in output
    assert "Traceback" not in output
    for marker in NEVER_SHOWN:
        assert marker not in output, marker


def test_a_setting_error_never_shows_the_database_url_or_a_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings(
            database_url=[f"postgresql://u:{DATABASE_SECRET}@db/x"],
            kafka_sasl_password=[SASL_SECRET],
            kafka_ssl_keyfile_password=[SASL_SECRET],
        )

    message = str(caught.value)
    assert "DATABASE_URL" in message and "KAFKA_SASL_PASSWORD" in message
    assert DATABASE_SECRET not in message and SASL_SECRET not in message
