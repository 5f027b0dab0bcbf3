"""Optional tracing: a Tracer when OpenTelemetry is installed and OTEL_* asks for spans, else None.

The worker keeps what `from_environment` returns and guards every use with
`if tracer is not None`, so that without the `otel` extra, or without configuration, no
OpenTelemetry code is imported or run. The spans themselves are in consumer.spans.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final, Literal

import structlog

from consumer.errors import ConfigurationError

if TYPE_CHECKING:
    from opentelemetry.sdk.trace.export import SpanExporter

    from consumer.spans import Tracer

# The span types are consumer.spans' (import them under TYPE_CHECKING: that module needs
# OpenTelemetry at run time).
__all__ = ["OUTCOMES", "Outcome", "from_environment", "requested"]

log = structlog.get_logger("consumer.tracing")

Outcome = Literal["applied", "duplicate", "replay", "owed", "skipped", "dead_lettered"]
OUTCOMES: Final[tuple[Outcome, ...]] = (
    "applied",
    "duplicate",
    "replay",
    "owed",
    "skipped",
    "dead_lettered",
)

# The standard variables that ask for trace export. An OTLP endpoint alone means the
# specification's default exporter, otlp.
_EXPORTER: Final = "OTEL_TRACES_EXPORTER"
_ENDPOINTS: Final = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_INSTALL: Final = "pip install 'loyalty-consumer[otel]'"


def requested(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether the environment asks for traces (read without importing OpenTelemetry)."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = environ.get(_EXPORTER, "").strip().lower()
    if exporter:
        return exporter != "none"
    return any(environ.get(name, "").strip() for name in _ENDPOINTS)


def from_environment(*, consumer_group: str, client_id: str) -> Tracer | None:
    """The worker's Tracer as the OTEL_* variables configure it, or None when tracing is off.

    Raises ConfigurationError when the variables name an exporter that is not installed.
    """
    if not requested():
        return None
    try:
        from consumer import spans
    except ImportError as exc:
        log.warning(
            "tracing.unavailable",
            reason=f"OpenTelemetry is not installed ({exc.name})",
            fix=f"{_INSTALL}, or unset {_EXPORTER} and the OTLP endpoint",
        )
        return None
    exporters = _exporters()
    log.info("tracing.enabled", exporters=[type(e).__name__ for e in exporters])
    return spans.Tracer.exporting_to(exporters, consumer_group=consumer_group, client_id=client_id)


def _exporters() -> list[SpanExporter]:
    """The span exporters OTEL_TRACES_EXPORTER names, each configured by its own OTEL_* variables.

    Relies on the SDK's private configuration helpers, the ones `opentelemetry-instrument`
    uses: they resolve the names through the `opentelemetry_traces_exporter` entry points
    and pick OTLP over gRPC or HTTP from OTEL_EXPORTER_OTLP(_TRACES)_PROTOCOL.
    tests/test_tracing.py checks them on every install.
    """
    from opentelemetry.sdk._configuration import (
        _get_exporter_entry_point,
        _get_exporter_names,
        _import_exporters,
    )

    try:
        if os.environ.get(_EXPORTER, "").strip():
            names = _get_exporter_names("traces")
        else:
            names = [_get_exporter_entry_point("otlp", "traces")]
        classes, _, _ = _import_exporters(names, [], [])
    except RuntimeError as exc:  # what the SDK raises for an unknown name or protocol
        raise ConfigurationError(
            f"{_EXPORTER}={os.environ.get(_EXPORTER, '')!r}: {exc}. Name installed exporters "
            "(console, otlp, otlp_proto_grpc, otlp_proto_http) or none; OTLP needs "
            f"OTEL_EXPORTER_OTLP_PROTOCOL grpc or http/protobuf ({_INSTALL})"
        ) from None
    try:
        return [exporter() for exporter in classes.values()]
    except ValueError as exc:  # an exporter's own OTEL_EXPORTER_* variable it cannot read
        raise ConfigurationError(
            f"{_EXPORTER}: the exporter could not be configured ({exc}); fix its "
            "OTEL_EXPORTER_* variables"
        ) from None
