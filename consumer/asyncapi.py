"""The AsyncAPI 3.0 document of the three topics, generated from the input and output models."""

from __future__ import annotations

import json
from typing import Any, Final

from pydantic.json_schema import models_json_schema

from consumer import __version__
from consumer.events import TARGET_EVENT_TYPE, PendingPointsActivatedData, WebhookEnvelope
from consumer.notifications import (
    DEFAULT_SOURCE,
    NOTIFICATION_TYPE,
    PendingPointsActivatedNotification,
)
from consumer.signature import DEFAULT_HEADER as SIGNATURE_HEADER
from consumer.signature import SIGNATURE_HEX_DIGITS

__all__ = [
    "DEAD_LETTER_HEADERS",
    "DEFAULT_TOPICS",
    "TRACE_CONTEXT_HEADERS",
    "asyncapi_document",
    "asyncapi_json",
]

# Defaults of the settings model (consumer.config), repeated so the document stands alone.
DEFAULT_TOPICS: Final = {
    "INPUT_TOPIC": "voucherify.webhooks",
    "NOTIFICATION_TOPIC": "loyalty.notifications",
    "DEAD_LETTER_TOPIC": "voucherify.webhooks.dlq",
}

# Agreed with the worker (consumer.deadletter); every value is UTF-8 text.
DEAD_LETTER_HEADERS: Final[dict[str, dict[str, Any]]] = {
    "dlq.reason": {
        "type": "string",
        "description": "Why, for people: `path: problem, got value` reasons joined by `; `.",
    },
    "dlq.reason_class": {
        "type": "string",
        "enum": ["invalid", "persistent"],
        "description": "`invalid`: rejected by validation. `persistent`: kept failing after "
        "retries for a reason other than infrastructure.",
    },
    "dlq.source.topic": {"type": "string", "description": "Topic the record was read from."},
    "dlq.source.partition": {"type": "string", "pattern": "^[0-9]+$", "description": "Decimal."},
    "dlq.source.offset": {"type": "string", "pattern": "^[0-9]+$", "description": "Decimal."},
    "dlq.attempts": {
        "type": "string",
        "pattern": "^[1-9][0-9]*$",
        "description": "How many times processing was attempted (decimal).",
    },
    "dlq.time": {
        "type": "string",
        "format": "date-time",
        "description": "When it was dead-lettered, ISO 8601 in UTC.",
    },
}

# W3C Trace Context (consumer.spans), on input records from the bridge and on notifications.
TRACE_CONTEXT_HEADERS: Final[dict[str, dict[str, Any]]] = {
    "traceparent": {
        "type": "string",
        "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
        "description": "W3C Trace Context `traceparent`.",
    },
    "tracestate": {
        "type": "string",
        "description": "W3C Trace Context `tracestate`, passed on unchanged.",
    },
}

_SCHEMAS_REF: Final = "#/components/schemas/{model}"
_KAFKA_BINDING_VERSION: Final = "0.5.0"


def _schemas() -> dict[str, Any]:
    _, top = models_json_schema(
        [
            (WebhookEnvelope, "validation"),
            (PendingPointsActivatedData, "validation"),
            (PendingPointsActivatedNotification, "serialization"),
        ],
        ref_template=_SCHEMAS_REF,
    )
    definitions: dict[str, Any] = top["$defs"]
    return dict(sorted(definitions.items()))


def _cloudevents_headers() -> dict[str, Any]:
    return {
        "type": "object",
        "required": [
            "ce_specversion",
            "ce_id",
            "ce_source",
            "ce_type",
            "ce_time",
            "ce_partitionkey",
            "content-type",
        ],
        "properties": {
            "ce_specversion": {"const": "1.0"},
            "ce_id": {
                "type": "string",
                "format": "uuid",
                "description": "The notification id: UUIDv5 of the Voucherify transaction id.",
            },
            "ce_source": {
                "type": "string",
                "description": f"CLOUDEVENTS_SOURCE, default `{DEFAULT_SOURCE}`.",
            },
            "ce_type": {"const": NOTIFICATION_TYPE},
            "ce_time": {
                "type": "string",
                "format": "date-time",
                "description": "When the points were activated (UTC); equals `activated_at`.",
            },
            "ce_subject": {"type": "string", "description": "The Voucherify transaction id."},
            "ce_partitionkey": {
                "type": "string",
                "description": "The CloudEvents partitionkey extension: the customer id, the "
                "same as the record key (the Kafka binding sends both).",
            },
            "content-type": {"const": "application/json"},
            "traceparent": {
                **TRACE_CONTEXT_HEADERS["traceparent"],
                "description": "Present when the consumer traces (OpenTelemetry): its span for "
                "the input record, in the input's trace when the bridge sent one. Continue it.",
            },
            "tracestate": {
                **TRACE_CONTEXT_HEADERS["tracestate"],
                "description": "The input record's `tracestate`, when it had one.",
            },
        },
    }


def _webhook_headers() -> dict[str, Any]:
    return {
        "type": "object",
        "description": "Headers the bridge forwards; others are kept in dead letters, unread.",
        "properties": {
            SIGNATURE_HEADER: {
                "type": "string",
                "pattern": f"^[0-9a-fA-F]{{{SIGNATURE_HEX_DIGITS}}}$",
                "description": (
                    "Voucherify's signature of the webhook body, forwarded unchanged: hex "
                    "HMAC-SHA256 of the record value's exact bytes under the project's webhook "
                    "secret. Required when the consumer has VOUCHERIFY_WEBHOOK_SECRET set (a "
                    "record without it, or whose signature does not match, is dead-lettered "
                    "as invalid); the name is WEBHOOK_SIGNATURE_HEADER, matched in any case."
                ),
            },
            "traceparent": {
                **TRACE_CONTEXT_HEADERS["traceparent"],
                "description": "The bridge's span: the consumer's span for this record "
                "continues its trace. Absent or unreadable: a new trace.",
            },
            "tracestate": TRACE_CONTEXT_HEADERS["tracestate"],
        },
        "additionalProperties": True,
    }


def _messages() -> dict[str, Any]:
    return {
        "VoucherifyWebhook": {
            "name": "VoucherifyWebhook",
            "title": TARGET_EVENT_TYPE,
            "summary": "A Voucherify webhook body as the bridge published it, unchanged.",
            "description": (
                "The topic carries every Voucherify event type. This schema is the one the "
                "consumer applies: the v2024-01-01 envelope of the target event, or its bare "
                "`data` object. Other event types are skipped; values that are not JSON, break "
                "this schema or exceed 1 MiB or 64 levels of nesting are dead-lettered."
            ),
            "contentType": "application/json",
            "headers": _webhook_headers(),
            "payload": {
                "anyOf": [
                    {"$ref": "#/components/schemas/WebhookEnvelope"},
                    {"$ref": "#/components/schemas/PendingPointsActivatedData"},
                ]
            },
            "bindings": {
                "kafka": {
                    "key": {
                        "type": "string",
                        "description": "Whatever the bridge chose; nothing depends on it.",
                    },
                    "bindingVersion": _KAFKA_BINDING_VERSION,
                }
            },
        },
        "PendingPointsActivatedNotification": {
            "name": "PendingPointsActivatedNotification",
            "title": NOTIFICATION_TYPE,
            "summary": "One per activation, exactly once; read with isolation.level=read_committed",
            "contentType": "application/json",
            "headers": _cloudevents_headers(),
            "payload": {"$ref": "#/components/schemas/PendingPointsActivatedNotification"},
            "bindings": {
                "kafka": {
                    "key": {
                        "type": "string",
                        "description": "The customer id (UTF-8): one customer's notifications "
                        "stay in order.",
                    },
                    "bindingVersion": _KAFKA_BINDING_VERSION,
                }
            },
        },
        "DeadLetter": {
            "name": "DeadLetter",
            "title": "Dead letter",
            "summary": "An input record the consumer could not apply, kept byte for byte.",
            "description": (
                "Key, value and headers are the original record's, byte for byte (the value may "
                "be absent, not UTF-8 or not JSON). The `dlq.*` headers are appended. Replaying "
                "a dead letter drops the `dlq.*` headers and republishes the rest to the input."
            ),
            "contentType": "application/octet-stream",
            "headers": {
                "type": "object",
                "description": "The original headers, plus:",
                "required": list(DEAD_LETTER_HEADERS),
                "properties": DEAD_LETTER_HEADERS,
                "additionalProperties": True,
            },
            "payload": {"description": "The original value, byte for byte."},
            "bindings": {
                "kafka": {
                    "key": {"description": "The original key, byte for byte."},
                    "bindingVersion": _KAFKA_BINDING_VERSION,
                }
            },
        },
    }


def _channel(variable: str, message: str, description: str) -> dict[str, Any]:
    return {
        "address": DEFAULT_TOPICS[variable],
        "description": f"{description} The topic name is set by {variable}.",
        "messages": {message: {"$ref": f"#/components/messages/{message}"}},
    }


def _operation(action: str, channel: str, message: str, summary: str) -> dict[str, Any]:
    return {
        "action": action,
        "summary": summary,
        "channel": {"$ref": f"#/channels/{channel}"},
        "messages": [{"$ref": f"#/channels/{channel}/messages/{message}"}],
    }


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI document; its schemas are the models' generated JSON Schema."""
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "loyalty-consumer",
            "version": __version__,
            "description": (
                "Turns Voucherify `voucher.loyalty_card.pending_points.activated` webhooks into "
                "exactly-once balance updates and customer notifications."
            ),
        },
        "defaultContentType": "application/json",
        "channels": {
            "webhooks": _channel(
                "INPUT_TOPIC", "VoucherifyWebhook", "Voucherify webhooks, all event types."
            ),
            "notifications": _channel(
                "NOTIFICATION_TOPIC",
                "PendingPointsActivatedNotification",
                "Customer notifications, CloudEvents 1.0 in Kafka binary mode.",
            ),
            "deadLetters": _channel(
                "DEAD_LETTER_TOPIC", "DeadLetter", "Input records that could not be applied."
            ),
        },
        "operations": {
            "consumeWebhooks": _operation(
                "receive", "webhooks", "VoucherifyWebhook", "Apply activations, skip the rest."
            ),
            "publishNotifications": _operation(
                "send",
                "notifications",
                "PendingPointsActivatedNotification",
                "One notification per activation, in the same transaction as the offsets.",
            ),
            "publishDeadLetters": _operation(
                "send", "deadLetters", "DeadLetter", "Invalid or persistently failing records."
            ),
        },
        "components": {"messages": _messages(), "schemas": _schemas()},
    }


def asyncapi_json() -> str:
    """The document as committed in docs/asyncapi.json (stable formatting, trailing newline)."""
    return json.dumps(asyncapi_document(), indent=2, ensure_ascii=False) + "\n"
