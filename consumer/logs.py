"""Structured logging: JSON lines by default, readable console output on a terminal."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

# Keys whose values must never reach a log line: personal data and secrets.
REDACTED_KEYS = frozenset(
    {
        "name",
        "customer_name",
        "email",
        "customer_email",
        "phone",
        "address",
        "password",
        "sasl_password",
        "sasl_plain_password",
        "kafka_sasl_password",
        "secret",
        "token",
        "authorization",
        "database_url",
        "dsn",
    }
)

# A string value quoted by a dead-letter reason (`path: problem, got "…"`): it is record
# content, and may be a name or an address in the wrong field. The dead letter keeps it.
_QUOTED_VALUE = re.compile(r'got "(?:[^"\\]|\\.)*(?:"|$)')
# An e-mail address anywhere in a message, but not the user@host of a URL.
_EMAIL = re.compile(r"(?<![\w.%+/:-])[\w.%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")


def scrub(value: Any) -> Any:
    """A value without quoted record content or e-mail addresses, containers included."""
    if isinstance(value, str):
        return _EMAIL.sub("[email]", _QUOTED_VALUE.sub("got a string", value))
    if isinstance(value, list | tuple):
        return [scrub(item) for item in value]
    if isinstance(value, dict):
        return {key: scrub(item) for key, item in value.items()}
    return value


def redact(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Drop personal data and secrets even if a call site passes them by mistake."""
    for key, value in list(event.items()):
        event[key] = "[redacted]" if key.lower() in REDACTED_KEYS else scrub(value)
    return event


def configure(log_format: str = "auto", level: str = "INFO") -> None:
    """Set up structlog for the process; logs go to stderr, data to stdout.

    Libraries' standard-library records (aiokafka, asyncpg, aiohttp) go through the same
    redaction and renderer, so the stream stays one format.
    """
    use_console = log_format == "console" or (log_format == "auto" and sys.stderr.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
        if use_console
        else structlog.processors.JSONRenderer()
    )
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level)),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                timestamper,
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                redact,
                renderer,
            ],
        )
    )
    # Libraries speak at WARNING and above; their INFO chatter is not ours to ship.
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
