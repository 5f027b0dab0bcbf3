"""The published schemas: generated from the models, committed, and kept in step with them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from consumer import deadletter
from consumer.asyncapi import DEAD_LETTER_HEADERS, DEFAULT_TOPICS, asyncapi_document, asyncapi_json
from consumer.config import Settings
from consumer.events import PendingPointsActivatedData, WebhookEnvelope, input_json_schema
from consumer.notifications import PendingPointsActivatedNotification, output_json_schema

ASYNCAPI = Path(__file__).resolve().parents[1] / "docs" / "asyncapi.json"
REGENERATE = "regenerate it: loyalty-consumer schema asyncapi > docs/asyncapi.json"


def test_the_committed_asyncapi_document_is_the_generated_one() -> None:
    assert ASYNCAPI.read_text(encoding="utf-8") == asyncapi_json(), (
        f"docs/asyncapi.json has drifted from the models; {REGENERATE}"
    )


@pytest.mark.parametrize(
    ("model", "mode"),
    [
        (WebhookEnvelope, "validation"),
        (PendingPointsActivatedData, "validation"),
        (PendingPointsActivatedNotification, "serialization"),
    ],
    ids=lambda item: getattr(item, "__name__", item),
)
def test_the_committed_message_schemas_are_the_models_schemas(model: Any, mode: Any) -> None:
    committed = json.loads(ASYNCAPI.read_text(encoding="utf-8"))["components"]["schemas"]
    generated = model.model_json_schema(mode=mode, ref_template="#/components/schemas/{model}")
    for name, definition in generated.pop("$defs", {}).items():
        assert committed[name] == definition, f"{name} drifted; {REGENERATE}"
    assert committed[model.__name__] == generated, f"{model.__name__} drifted; {REGENERATE}"


def test_the_messages_point_at_the_model_schemas() -> None:
    messages = asyncapi_document()["components"]["messages"]
    assert messages["VoucherifyWebhook"]["payload"] == {
        "anyOf": [
            {"$ref": "#/components/schemas/WebhookEnvelope"},
            {"$ref": "#/components/schemas/PendingPointsActivatedData"},
        ]
    }
    assert messages["PendingPointsActivatedNotification"]["payload"] == {
        "$ref": "#/components/schemas/PendingPointsActivatedNotification"
    }


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def _resolves(document: dict[str, Any], ref: str) -> bool:
    node: Any = document
    for part in ref.removeprefix("#/").split("/"):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.parametrize(
    "document",
    [asyncapi_document(), input_json_schema(), output_json_schema()],
    ids=["asyncapi", "input", "output"],
)
def test_every_reference_resolves_inside_its_document(document: dict[str, Any]) -> None:
    refs = _refs(document)
    assert refs
    assert [ref for ref in refs if not _resolves(document, ref)] == []


def test_the_documented_topics_are_the_settings_defaults() -> None:
    fields = Settings.model_fields
    documented = DEFAULT_TOPICS
    assert documented == {
        "INPUT_TOPIC": fields["input_topic"].default,
        "NOTIFICATION_TOPIC": fields["notification_topic"].default,
        "DEAD_LETTER_TOPIC": fields["dead_letter_topic"].default,
    }
    channels = asyncapi_document()["channels"]
    assert [channel["address"] for channel in channels.values()] == list(DEFAULT_TOPICS.values())


def test_the_documented_dead_letter_headers_are_the_ones_the_worker_writes() -> None:
    written = [
        deadletter.REASON,
        deadletter.REASON_CLASS,
        deadletter.SOURCE_TOPIC,
        deadletter.SOURCE_PARTITION,
        deadletter.SOURCE_OFFSET,
        deadletter.ATTEMPTS,
        deadletter.TIME,
    ]
    assert list(DEAD_LETTER_HEADERS) == written


def test_the_input_schema_accepts_the_envelope_or_the_bare_data() -> None:
    schema = input_json_schema()
    assert schema["anyOf"] == [
        {"$ref": "#/$defs/WebhookEnvelope"},
        {"$ref": "#/$defs/PendingPointsActivatedData"},
    ]
    transaction = schema["$defs"]["Transaction"]
    assert transaction["properties"]["type"]["const"] == "PENDING_POINTS_ACTIVATION"
    assert set(transaction["required"]) == {"id", "type", "voucher_id", "created_at"}
    points = schema["$defs"]["PendingPoints"]["properties"]["points"]
    assert (points["type"], points["minimum"], points["maximum"]) == ("integer", 1, 2**63 - 1)
