"""Kafka clients built from the settings: security options, consumers and producers."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterable
from typing import Any, Final, Protocol

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.conn import create_conn
from aiokafka.errors import (
    AuthenticationFailedError,
    CommitFailedError,
    IllegalGenerationError,
    InvalidProducerEpoch,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    ProducerFenced,
    SaslAuthenticationFailed,
    UnknownMemberIdError,
    UnsupportedSaslMechanismError,
)
from aiokafka.helpers import create_ssl_context
from aiokafka.partitioner import DefaultPartitioner
from murmurhash2 import murmurhash2 as _murmurhash2

from consumer.config import Settings
from consumer.errors import BrokerUnavailable, ConfigurationError, ConsumerError, Fenced
from consumer.kip447 import GroupFenced, GroupFencedProducer

# How long the diagnosis of a failed start may wait for one broker: it runs only on failure.
DIAGNOSIS_TIMEOUT_MS = 10_000


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
    try:
        context: ssl.SSLContext = create_ssl_context(
            cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
            certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
            keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
            password=password,
        )
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(
            f"cannot load the TLS files ({exc.strerror or exc}); check KAFKA_SSL_CAFILE, "
            "KAFKA_SSL_CERTFILE, KAFKA_SSL_KEYFILE and KAFKA_SSL_KEYFILE_PASSWORD"
        ) from None
    return context


async def connection_problem(settings: Settings, error: BaseException) -> ConsumerError:
    """Why a client could not start, in terms of the settings to fix.

    aiokafka reports every failed bootstrap as "Unable to bootstrap" and only logs the cause,
    so connect once more by hand to find it. Rejected credentials and TLS trouble are
    configuration errors: retrying or restarting cannot fix them, so the caller stops.
    """
    options = connection_options(settings)
    hung_up = False
    for server in options["bootstrap_servers"]:
        try:
            connection = await create_conn(
                *_host_and_port(server),
                client_id=settings.client_id,
                request_timeout_ms=DIAGNOSIS_TIMEOUT_MS,
                ssl_context=options.get("ssl_context"),
                security_protocol=settings.kafka_security_protocol,
                sasl_mechanism=settings.kafka_sasl_mechanism,
                sasl_plain_username=settings.kafka_sasl_username,
                sasl_plain_password=settings.sasl_password(),
            )
        except (SaslAuthenticationFailed, AuthenticationFailedError):
            return ConfigurationError(
                f"Kafka at {server} rejected the credentials of user "
                f"{settings.kafka_sasl_username!r} ({settings.kafka_sasl_mechanism}); check "
                "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD (or KAFKA_SASL_PASSWORD_FILE)"
            )
        except UnsupportedSaslMechanismError:
            return ConfigurationError(
                f"Kafka at {server} does not accept the SASL mechanism "
                f"{settings.kafka_sasl_mechanism}; check KAFKA_SASL_MECHANISM"
            )
        except ssl.SSLCertVerificationError as exc:
            return ConfigurationError(
                f"the TLS certificate of Kafka at {server} is not trusted ({exc.verify_message}); "
                "check KAFKA_SSL_CAFILE (the CA that signed the brokers' certificates)"
            )
        except ssl.SSLError as exc:
            return ConfigurationError(
                f"the TLS handshake with Kafka at {server} failed ({exc.reason}); check "
                "KAFKA_SECURITY_PROTOCOL and, if the broker wants a client certificate, "
                "KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE"
            )
        except (KafkaConnectionError, ConnectionResetError, ConnectionAbortedError):
            # A listener took the connection, then closed it. A TLS handshake with a
            # PLAINTEXT listener ends this way (reset mid-handshake, no TLS error).
            hung_up = True
            continue
        except (KafkaError, OSError, TimeoutError, ValueError):
            continue
        connection.close()
    if hung_up:
        return BrokerUnavailable(
            f"Kafka at {settings.kafka_bootstrap_servers} accepted the connection, then closed "
            f"it: check that the listener speaks KAFKA_SECURITY_PROTOCOL="
            f"{settings.kafka_security_protocol}, and whether it requires a client certificate "
            "(KAFKA_SSL_CERTFILE, KAFKA_SSL_KEYFILE)"
        )
    return BrokerUnavailable(
        f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {error}. "
        "Check KAFKA_BOOTSTRAP_SERVERS, KAFKA_SECURITY_PROTOCOL and the broker, then start again."
    )


# Someone else owns the work now: a newer producer of the same transactional id (or the broker
# expired our transaction), or a group generation that moved on without us (KIP-447: a
# commit of an older generation is refused).
_FENCED = (
    GroupFenced,
    ProducerFenced,
    InvalidProducerEpoch,
    IllegalGenerationError,
    UnknownMemberIdError,
    CommitFailedError,
)


def require_topics(settings: Settings, existing: Iterable[str]) -> None:
    """Refuse to start, naming the variables, unless our three topics exist."""
    present = set(existing)
    missing = [
        f"{name} ({variable})"
        for variable, name in (
            ("INPUT_TOPIC", settings.input_topic),
            ("NOTIFICATION_TOPIC", settings.notification_topic),
            ("DEAD_LETTER_TOPIC", settings.dead_letter_topic),
        )
        if name not in present
    ]
    if missing:
        raise ConfigurationError(
            f"topic(s) missing on {settings.kafka_bootstrap_servers}: "
            + ", ".join(missing)
            + ". Create them, or point the variable(s) at existing topics."
        )


def as_consumer_error(exc: BaseException) -> BaseException:
    """An aiokafka, asyncio or OS error in the project's terms, so callers branch once:
    Fenced (drop the batch), BrokerUnavailable (retry: the link or the broker failed), or
    the error itself (not retriable: a refusal or a bug).
    """
    if isinstance(exc, ConsumerError):
        return exc
    if isinstance(exc, _FENCED):
        return Fenced(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, KafkaError) and exc.retriable:
        return BrokerUnavailable(f"{type(exc).__name__}: {exc}")
    if isinstance(exc, KafkaTimeoutError):
        # Not flagged retriable by aiokafka, yet it only says that no broker answered within
        # request_timeout_ms (offset lookups, a full send buffer): a cut or crawling link.
        return BrokerUnavailable(f"Kafka did not answer in time: {exc or type(exc).__name__}")
    if isinstance(exc, TimeoutError):
        return BrokerUnavailable("timed out talking to Kafka")
    if isinstance(exc, OSError) and not isinstance(exc, ssl.SSLError):
        # aiokafka.conn.create_conn passes on refused, reset and unreachable connections raw.
        # TLS errors are OSErrors too, but a certificate is not fixed by retrying.
        return BrokerUnavailable(f"cannot reach Kafka: {type(exc).__name__}: {exc}")
    return exc


def _host_and_port(server: str) -> tuple[str, int]:
    host, colon, port = server.strip().rpartition(":")
    return (host.strip("[]"), int(port)) if colon else (port, 9092)  # Kafka's default port


_NEVER_RETRIEVED = "Future exception was never retrieved"


def ignore_fenced_producer_futures(loop: asyncio.AbstractEventLoop) -> None:
    """Keep aiokafka's leftover copies of a ProducerFenced out of the operator's errors.

    Relies on aiokafka's internals (0.14, tests/test_operating.py and tests/test_library_noise.py
    check it). When a transactional producer is fenced, its sender task dies with
    ProducerFenced, and `Sender._fail_all` hands that exception to every future it holds:
    `TransactionManager.fatal_error` sets it on the transaction waiter (a fresh future when
    the old one was done) and on pending offset futures, `MessageBatch.failure` on a batch's
    drain waiter. Nothing awaits those once the caller has seen its own send fail, so asyncio
    reports each one, at ERROR, when it is collected. The worker has already handled and
    logged the fencing itself (a new producer and a retry, or the batch dropped with
    `partition.fenced`); these reports say nothing new.
    Exactly that case is dropped: a plain future (not a task) never retrieved, holding a
    ProducerFenced. Every other report goes to the default handler, and to our log.
    """
    default = loop.get_exception_handler()

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        future = context.get("future")
        if (
            context.get("message") == _NEVER_RETRIEVED
            and type(context.get("exception")) is ProducerFenced
            and isinstance(future, asyncio.Future)
            and not isinstance(future, asyncio.Task)
        ):
            return
        if default is not None:
            default(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handle)


FETCH_BYTES_PER_PARTITION = 4 * 1024 * 1024
# What the fetcher may hold for all assigned partitions together: each partition keeps up to
# its per-partition limit buffered, so 96 partitions at 4 MiB held ~450 MB (make bench).
FETCH_BUFFER_BYTES = 32 * 1024 * 1024
MIN_FETCH_BYTES_PER_PARTITION = 256 * 1024


def fetch_bytes_per_partition(partitions: int) -> int:
    """The per-partition fetch limit for `partitions` assigned: 4 MiB while few, shared out of
    FETCH_BUFFER_BYTES when many (never below 256 KiB, some fifty seed-sized records)."""
    if partitions <= 0:
        return FETCH_BYTES_PER_PARTITION
    shared = FETCH_BUFFER_BYTES // partitions
    return max(MIN_FETCH_BYTES_PER_PARTITION, min(FETCH_BYTES_PER_PARTITION, shared))


PRODUCE_BATCH_BYTES = 512 * 1024  # below the 1 MiB max_request_size it must fit in


def input_consumer(settings: Settings, **overrides: Any) -> AIOKafkaConsumer:
    """The group consumer of the input topic: manual commits, committed data only."""
    options: dict[str, Any] = {
        **connection_options(settings),
        "group_id": settings.consumer_group,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "max_poll_records": settings.batch_max_records,
        # aiokafka's 1 MiB default holds ~220 seed-sized records a partition: a full batch then
        # waits for a second fetch. 4 MiB lets what is buffered while a batch commits fill
        # the next one (at most 4 MiB a partition in memory).
        "max_partition_fetch_bytes": FETCH_BYTES_PER_PARTITION,
        "session_timeout_ms": settings.session_timeout_ms,
        "heartbeat_interval_ms": settings.heartbeat_interval_ms,
        "max_poll_interval_ms": settings.max_poll_interval_ms,
        "rebalance_timeout_ms": settings.max_poll_interval_ms,
    }
    options.update(overrides)
    return AIOKafkaConsumer(**options)


def producer(settings: Settings, transactional_id: str | None = None) -> AIOKafkaProducer:
    """An idempotent producer, transactional when given a transactional id."""
    options = _producer_options(settings)
    if transactional_id is not None:
        options["transactional_id"] = transactional_id
    return AIOKafkaProducer(**options)


def _producer_options(settings: Settings) -> dict[str, Any]:
    options: dict[str, Any] = {
        **connection_options(settings),
        "enable_idempotence": True,
        "acks": "all",
        "linger_ms": settings.producer_linger_ms,
        # aiokafka appends to one open batch per partition and, once it is full, waits until
        # the sender has taken it: with its 16 KiB default a partition's share of a
        # transaction (~60 notifications) took four produce round trips in a row.
        "max_batch_size": PRODUCE_BATCH_BYTES,
        "compression_type": None
        if settings.producer_compression == "none"
        else settings.producer_compression,
    }
    return options


def transactional_producer(settings: Settings, transactional_id: str) -> GroupFencedProducer:
    """The exactly-once producer: one per replica, its offsets fenced by group generation."""
    producer = GroupFencedProducer(
        **_producer_options(settings),
        transactional_id=transactional_id,
        transaction_timeout_ms=settings.kafka_transaction_timeout_ms,
    )
    return producer


class Outgoing(Protocol):
    """A record to produce: where to, key, value, headers."""

    @property
    def topic(self) -> str: ...
    @property
    def key(self) -> bytes | None: ...
    @property
    def value(self) -> bytes | None: ...
    @property
    def headers(self) -> list[tuple[str, bytes]]: ...


_MURMUR_SEED: Final = 0x9747B28C  # the Java client's (Utils.murmur2)


def murmur2(data: bytes) -> int:
    """Kafka's key hash, unsigned: MurmurHash2 (32-bit) with the Java client's seed, which
    every Kafka client's default partitioner uses to place a keyed record. Native code:
    0.14 us for a customer id, the notification key (2.2 us in Python, 4.0 in aiokafka's).
    """
    return _murmurhash2(data, _MURMUR_SEED)


# Records above this size go through send(), which checks them against max_request_size and
# fails them alone; record batches hold up to PRODUCE_BATCH_BYTES.
LARGE_OUTPUT_BYTES = 256 * 1024


async def send_in_batches(
    producer: AIOKafkaProducer, outputs: Iterable[Outgoing], sent: list[asyncio.Future[Any]]
) -> None:
    """Queue `outputs` in order as one record batch per output partition; `sent` receives
    the futures that acknowledge them (so a caller abandoning the send can still reap them).

    The same records, partitions (Kafka's default partitioner: murmur2 of the key, any
    available partition without one) and order as a send() a record, for half the CPU: 12
    instead of 21 us a record, measured with 2,000 notification-sized records a
    transaction. Each future acknowledges a batch.
    """
    partitioner = DefaultPartitioner()  # for records without a key: any available partition
    partitions: dict[str, tuple[list[int], list[int]]] = {}
    builders: dict[tuple[str, int], Any] = {}
    for output in outputs:
        topic = output.topic
        if topic not in partitions:
            known = sorted(await producer.partitions_for(topic))
            available = sorted(producer.client.cluster.available_partitions_for_topic(topic) or ())
            partitions[topic] = (known, available)
        known, available = partitions[topic]
        key = output.key
        partition: int = (
            partitioner(key, known, available)
            if key is None
            else known[(murmur2(key) & 0x7FFFFFFF) % len(known)]
        )
        slot = (topic, partition)
        size = len(output.value or b"") + len(output.key or b"")
        if size > LARGE_OUTPUT_BYTES:
            # send() checks a record against max_request_size and fails it alone.
            builder = builders.pop(slot, None)
            if builder is not None:
                sent.append(await producer.send_batch(builder, topic, partition=partition))
            sent.append(
                await producer.send(
                    topic,
                    value=output.value,
                    key=output.key,
                    headers=output.headers,
                    partition=partition,
                )
            )
            continue
        builder = builders.get(slot)
        if builder is None:
            builder = builders[slot] = producer.create_batch()
        if _append(builder, output):
            continue
        # Full: send it, and start the next one with this record.
        sent.append(await producer.send_batch(builder, topic, partition=partition))
        builder = builders[slot] = producer.create_batch()
        if not _append(builder, output):
            raise ValueError(f"a {size}-byte record did not fit an empty record batch")
    for (topic, partition), builder in builders.items():
        sent.append(await producer.send_batch(builder, topic, partition=partition))


def _append(builder: Any, output: Outgoing) -> bool:
    metadata = builder.append(
        timestamp=None, key=output.key, value=output.value, headers=output.headers
    )
    return metadata is not None
