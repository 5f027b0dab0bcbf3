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


# aiokafka logs at ERROR what it then retries by itself (a connection attempt, a metadata
# refresh, a heartbeat, a coordinator lookup) or raises to us, and we say what it means: at
# start our own error names the setting to fix, while running our retry events and /readyz
# tell the state. Its line is context, a warning. Only its "Unexpected error" reports (a bug
# in the library, always logged with the exception) stay errors.
_LIBRARIES = ("aiokafka", "asyncpg", "aiosqlite")
# A group coordinator that is not available yet (a broker just started, the offsets topic
# being created, a coordinator moving) is aiokafka's normal path to finding one; it retries.
# The template of aiokafka's line (aiokafka/consumer/group_coordinator.py), matched exactly.
_COORDINATOR_LOOKUP = "Group Coordinator Request failed: %s"


class LibraryLevels(logging.Filter):
    """Gives the libraries' records the level they have for an operator (see above), then
    passes those at `threshold` or above. (A handler compares a record with its own level
    before its filters run, so the comparison is made here, after the new level is set.)"""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold

    def filter(self, record: logging.LogRecord) -> bool:
        self._relevel(record)
        return record.levelno >= self.threshold

    @staticmethod
    def _relevel(record: logging.LogRecord) -> None:
        if record.levelno != logging.ERROR or not record.name.startswith(_LIBRARIES):
            return
        if record.exc_info:
            return
        transient_lookup = (
            record.msg == _COORDINATOR_LOOKUP
            and bool(record.args)
            and isinstance(record.args, tuple)
            and bool(getattr(record.args[0], "retriable", False))
        )
        record.levelno = logging.INFO if transient_lookup else logging.WARNING
        record.levelname = logging.getLevelName(record.levelno)


def configure(
    log_format: str = "auto", level: str = "INFO", *, quiet_libraries: bool = False
) -> None:
    """Set up structlog for the process; logs go to stderr, data to stdout.

    Libraries' standard-library records (aiokafka, asyncpg, aiosqlite, aiohttp, asyncio) go
    through the same redaction and renderer, so the stream stays one format, at the level
    `LibraryLevels` gives them, when that is at least `level`. A command that ends with one
    line naming its problem sets `quiet_libraries`, keeping only their errors: the library's
    lines about the same failure would only repeat it.
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
    handler.addFilter(LibraryLevels(logging.ERROR if quiet_libraries else getattr(logging, level)))
    # Libraries' loggers pass WARNING and above (their INFO chatter is not ours to ship);
    # ERROR records lowered to INFO are shown when LOG_LEVEL is INFO, and only then.
    logging.basicConfig(level=logging.WARNING, handlers=[handler], force=True)
