"""Kafka security against a real broker: SASL_SSL, SASL_PLAINTEXT and mutual TLS.

A private broker (tests/securebroker.py) runs beside the shared one for this module only.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumer import kafka
from consumer.config import Settings
from consumer.ops import check_dependencies
from consumer.store import open_store
from tests import services, workload
from tests.securebroker import SecureBroker, secure_broker
from tests.workers import Topics, drain, settings_for

WRONG_PASSWORD = "Wrong-Secret-Q7"


@pytest.fixture(scope="module")
def secure_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    missing = [tool for tool in ("java", "openssl") if shutil.which(tool) is None]
    if missing:
        message = f"the security tests start their own broker and need {', '.join(missing)}"
        if services.in_ci():  # as for the shared services: in CI a missing tool fails the run
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    with secure_broker(tmp_path_factory.mktemp("secure-kafka")) as broker:
        yield broker


def _security(broker: SecureBroker, protocol: str, mechanism: str | None) -> dict[str, Any]:
    """Settings for one listener of the secure broker, with the right credentials."""
    if protocol == "SSL":  # mutual TLS: the client certificate is the credential
        return {
            "kafka_bootstrap_servers": broker.ssl,
            "kafka_security_protocol": "SSL",
            "kafka_ssl_cafile": broker.pki.ca,
            "kafka_ssl_certfile": broker.pki.client_cert,
            "kafka_ssl_keyfile": broker.pki.client_key,
        }
    secure = protocol == "SASL_SSL"
    return {
        "kafka_bootstrap_servers": broker.sasl_ssl if secure else broker.sasl_plaintext,
        "kafka_security_protocol": protocol,
        "kafka_sasl_mechanism": mechanism,
        "kafka_sasl_username": broker.username,
        "kafka_sasl_password": broker.password,
        **({"kafka_ssl_cafile": broker.pki.ca} if secure else {}),
    }


def _settings(topics: Topics, store_url: str, **security: Any) -> Settings:
    return settings_for(security.pop("kafka_bootstrap_servers"), topics, store_url, **security)


async def _create_topics(settings: Settings) -> None:
    """Through the secure listener, as an operator with the same credentials would."""
    admin = AIOKafkaAdminClient(**kafka.connection_options(settings))
    await admin.start()
    try:
        await admin.create_topics(
            [
                NewTopic(name=name, num_partitions=1, replication_factor=1)
                for name in (
                    settings.input_topic,
                    settings.notification_topic,
                    settings.dead_letter_topic,
                )
            ]
        )
    finally:
        await admin.close()


def _fresh_topics() -> Topics:
    stem = uuid.uuid4().hex[:12]
    return Topics(input=f"in-{stem}", notifications=f"notify-{stem}", dead_letters=f"dlq-{stem}")


@pytest.fixture(scope="module")
async def secure_topics(secure_kafka: SecureBroker) -> Topics:
    topics = _fresh_topics()
    unused = "sqlite:///:memory:"
    await _create_topics(_settings(topics, unused, **_security(secure_kafka, "SASL_SSL", "PLAIN")))
    return topics


async def _read_committed(settings: Settings, topic: str) -> list[Any]:
    """The topic's committed records, read over the same secure connection."""
    consumer = AIOKafkaConsumer(
        **kafka.connection_options(settings),
        isolation_level="read_committed",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        await consumer.seek_to_beginning(partition)
        end = (await consumer.end_offsets([partition]))[partition]
        records: list[Any] = []
        while await consumer.position(partition) < end:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def test_the_reference_event_goes_end_to_end_over_sasl_ssl_with_scram_sha_512(
    secure_kafka: SecureBroker, sqlite_url: str, tmp_path: Path
) -> None:
    password_file = tmp_path / "kafka-sasl-password"
    password_file.write_text(secure_kafka.password + "\n")  # as a mounted Secret would hold it
    security = _security(secure_kafka, "SASL_SSL", "SCRAM-SHA-512")
    del security["kafka_sasl_password"]
    settings = _settings(
        _fresh_topics(), sqlite_url, **security, kafka_sasl_password_file=password_file
    )
    await _create_topics(settings)
    producer = AIOKafkaProducer(**kafka.connection_options(settings))
    await producer.start()
    try:
        await producer.send_and_wait(settings.input_topic, workload.seed_bytes())
    finally:
        await producer.stop()

    metrics = await drain(settings)

    notes = await _read_committed(settings, settings.notification_topic)
    assert [note.key for note in notes] == [workload.SEED_CUSTOMER_ID.encode()]
    assert json.loads(notes[0].value)["points_activated"] == 23
    assert metrics.value("loyalty_consumer_applied_total") == 1
    store = await open_store(sqlite_url)
    try:
        card = await store.card(workload.SEED_VOUCHER_ID)
    finally:
        await store.close()
    assert card is not None and card.activated_points == 23


@pytest.mark.parametrize(
    ("protocol", "mechanism"),
    [
        ("SASL_SSL", "PLAIN"),
        ("SASL_SSL", "SCRAM-SHA-256"),
        ("SASL_SSL", "SCRAM-SHA-512"),
        ("SASL_PLAINTEXT", "PLAIN"),
        ("SASL_PLAINTEXT", "SCRAM-SHA-256"),
        ("SASL_PLAINTEXT", "SCRAM-SHA-512"),
        ("SSL", None),
    ],
)
async def test_check_passes_over_each_protocol_and_mechanism(
    secure_kafka: SecureBroker,
    secure_topics: Topics,
    sqlite_url: str,
    protocol: str,
    mechanism: str | None,
) -> None:
    await (await open_store(sqlite_url, migrate=True)).close()
    settings = _settings(secure_topics, sqlite_url, **_security(secure_kafka, protocol, mechanism))

    report = await check_dependencies(settings)

    assert not report.failed, report.report
    assert f"ok    topic {secure_topics.input} (INPUT_TOPIC)" in report.report


async def test_an_untrusted_broker_certificate_names_the_ca_setting(
    secure_kafka: SecureBroker, secure_topics: Topics, sqlite_url: str
) -> None:
    security = _security(secure_kafka, "SASL_SSL", "SCRAM-SHA-512")
    del security["kafka_ssl_cafile"]  # the system's CAs do not know the test CA
    settings = _settings(secure_topics, sqlite_url, **security)

    report = await check_dependencies(settings)

    assert report.failed
    [kafka_line] = [line for line in report.report if "kafka" in line]
    assert kafka_line.startswith("FAIL  kafka: the TLS certificate of Kafka at")
    assert "KAFKA_SSL_CAFILE" in kafka_line


async def test_mutual_tls_without_a_client_certificate_names_the_certificate_settings(
    secure_kafka: SecureBroker, secure_topics: Topics, sqlite_url: str
) -> None:
    security = _security(secure_kafka, "SSL", None)
    del security["kafka_ssl_certfile"], security["kafka_ssl_keyfile"]
    settings = _settings(secure_topics, sqlite_url, **security)

    report = await check_dependencies(settings)

    assert report.failed
    [kafka_line] = [line for line in report.report if "kafka" in line]
    assert "client certificate (KAFKA_SSL_CERTFILE, KAFKA_SSL_KEYFILE)" in kafka_line


def _process_environment(settings: Settings, password: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_"))}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        KAFKA_SECURITY_PROTOCOL=settings.kafka_security_protocol,
        KAFKA_SASL_MECHANISM=str(settings.kafka_sasl_mechanism),
        KAFKA_SASL_USERNAME=str(settings.kafka_sasl_username),
        KAFKA_SASL_PASSWORD=password,
        KAFKA_SSL_CAFILE=str(settings.kafka_ssl_cafile),
        DATABASE_URL=settings.database_url,
        INPUT_TOPIC=settings.input_topic,
        NOTIFICATION_TOPIC=settings.notification_topic,
        DEAD_LETTER_TOPIC=settings.dead_letter_topic,
        CONSUMER_GROUP=settings.consumer_group,
        HTTP_PORT="0",
        MIGRATE_ON_START="true",
        LOG_FORMAT="json",
    )
    return env


@pytest.mark.parametrize("command", ["run", "check"])
async def test_a_wrong_password_fails_fast_naming_the_credentials_without_the_secret(
    secure_kafka: SecureBroker, secure_topics: Topics, sqlite_url: str, command: str
) -> None:
    settings = _settings(
        secure_topics, sqlite_url, **_security(secure_kafka, "SASL_SSL", "SCRAM-SHA-512")
    )
    env = _process_environment(settings, WRONG_PASSWORD)
    started = time.monotonic()

    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "consumer", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert time.monotonic() - started < 20
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert (
        f"rejected the credentials of user '{secure_kafka.username}' (SCRAM-SHA-512)" in output
    ), output
    assert "KAFKA_SASL_PASSWORD" in output
    assert WRONG_PASSWORD not in output and secure_kafka.password not in output
    assert "Traceback" not in output
