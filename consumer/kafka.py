"""Kafka clients built from the settings: security options, consumers and producers."""

from __future__ import annotations

import ssl
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.helpers import create_ssl_context

from consumer.config import Settings


def connection_options(settings: Settings) -> dict[str, Any]:
    """Bootstrap, client id and security options shared by every client we create."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers.split(","),
        "client_id": settings.client_id,
        "security_protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_security_protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = _ssl_context(settings)
    if settings.kafka_security_protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.sasl_password()
    return options


def _ssl_context(settings: Settings) -> ssl.SSLContext:
    password = (
        settings.kafka_ssl_keyfile_password.get_secret_value()
        if settings.kafka_ssl_keyfile_password
        else None
    )
    context: ssl.SSLContext = create_ssl_context(
        cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
        certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
        keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
        password=password,
    )
    return context


def input_consumer(settings: Settings, **overrides: Any) -> AIOKafkaConsumer:
    """The group consumer of the input topic: manual commits, committed data only."""
    options: dict[str, Any] = {
        **connection_options(settings),
        "group_id": settings.consumer_group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_poll_records": settings.batch_max_records,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "max_poll_interval_ms": settings.max_poll_interval_ms,
        "rebalance_timeout_ms": settings.max_poll_interval_ms,
    }
    options.update(overrides)
    return AIOKafkaConsumer(**options)


def producer(settings: Settings, transactional_id: str | None = None) -> AIOKafkaProducer:
    """An idempotent producer, transactional when given a transactional id."""
    options: dict[str, Any] = {
        **connection_options(settings),
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": settings.producer_linger_ms,
        "compression_type": None
        if settings.producer_compression == "none"
        else settings.producer_compression,
    }
    if transactional_id is not None:
        options["transactional_id"] = transactional_id
    return AIOKafkaProducer(**options)
