"""Dead-letter records: the original bytes untouched, plus headers that say why and from where."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

ReasonClass = Literal["invalid", "persistent"]

HEADER_PREFIX = "dlq."
REASON = "dlq.reason"
REASON_CLASS = "dlq.reason_class"
SOURCE_TOPIC = "dlq.source.topic"
SOURCE_PARTITION = "dlq.source.partition"
SOURCE_OFFSET = "dlq.source.offset"
ATTEMPTS = "dlq.attempts"
TIME = "dlq.time"
VALUE_WAS_NULL = "dlq.value_was_null"
# The bounded form, written when Kafka refused the full dead letter (too large for the
# dead-letter topic's max.message.bytes or the producer's max_request_size).
TRUNCATED = "dlq.truncated"
ORIGINAL_SIZE = "dlq.original_size"
ORIGINAL_SHA256 = "dlq.original_sha256"
BOUNDED_PREFIX_BYTES = 1024  # of the value, and of a key longer than that

MAX_REASON_BYTES = 8_192  # a reason is for people; keep the header small whatever the error says


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One record for the dead-letter topic."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def dead_letter(
    *,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
    topic: str,
    partition: int,
    offset: int,
    reasons: Sequence[str],
    reason_class: ReasonClass,
    attempts: int,
    now: datetime | None = None,
) -> DeadLetter:
    """Keep key, value and headers byte for byte; append the `dlq.*` headers."""
    when = (now or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
    reason = "; ".join(reasons).encode("utf-8", "replace")[:MAX_REASON_BYTES]
    extra = [
        (REASON, reason),
        (REASON_CLASS, reason_class.encode()),
        (SOURCE_TOPIC, topic.encode()),
        (SOURCE_PARTITION, str(partition).encode()),
        (SOURCE_OFFSET, str(offset).encode()),
        (ATTEMPTS, str(attempts).encode()),
        (TIME, when.encode()),
    ]
    if key is None and value is None:
        # Kafka refuses a record with neither key nor value; say so instead of inventing one.
        extra.append((VALUE_WAS_NULL, b"true"))
        value = b""
    return DeadLetter(key=key, value=value, headers=[*headers, *extra])


def bounded_dead_letter(
    *,
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes]],
    topic: str,
    partition: int,
    offset: int,
    reasons: Sequence[str],
    reason_class: ReasonClass,
    attempts: int,
    now: datetime | None = None,
) -> DeadLetter:
    """A dead letter small enough for any topic: the reason and coordinates as usual, the
    original value's size and SHA-256, and prefixes of value and key. The original headers
    are left out (they may be what was too large); the source record keeps them all."""
    original = value or b""
    letter = dead_letter(
        key=None if key is None else key[:BOUNDED_PREFIX_BYTES],
        value=original[:BOUNDED_PREFIX_BYTES],
        headers=[],
        topic=topic,
        partition=partition,
        offset=offset,
        reasons=[
            *reasons,
            f"the full dead letter was refused; kept the first "
            f"{min(len(original), BOUNDED_PREFIX_BYTES)} of {len(original)} bytes",
        ],
        reason_class=reason_class,
        attempts=attempts,
        now=now,
    )
    letter.headers.extend(
        [
            (TRUNCATED, b"true"),
            (ORIGINAL_SIZE, str(len(original)).encode()),
            (ORIGINAL_SHA256, hashlib.sha256(original).hexdigest().encode()),
        ]
    )
    return letter


def original_headers(headers: Sequence[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The headers a dead-letter record had before it was dead-lettered (for replay)."""
    return [(name, value) for name, value in headers if not name.startswith(HEADER_PREFIX)]


def header(headers: Sequence[tuple[str, bytes]], name: str) -> str | None:
    """The last value of one header, decoded; None when absent."""
    found = None
    for key, value in headers:
        if key == name:
            found = value.decode("utf-8", "replace")
    return found
