"""Output records as a CloudEvents consumer reads them: the official SDK's Kafka binding.

The records come from the real broker, read with read_committed after a worker ran; the
SDK (`cloudevents` 2.x, a test dependency) decodes and re-encodes them.
"""

from __future__ import annotations

import json

from cloudevents.core.bindings.kafka import KafkaMessage, from_binary, to_binary
from cloudevents.core.formats.json import JSONFormat

from tests import workload
from tests.kafkautil import produce, read_committed
from tests.workers import Topics, drain, settings_for


async def test_the_official_sdk_decodes_each_notification_and_encodes_it_back_identically(
    kafka_bootstrap: str, topics: Topics, sqlite_url: str
) -> None:
    customers = [f"cust_ce{i}" for i in range(3)]
    events = [
        workload.activation(f"vtx_ce{i}", customer_id=customer)
        for i, customer in enumerate(customers)
    ]
    await produce(kafka_bootstrap, topics.input, [workload.encode(e) for e in events])
    await drain(settings_for(kafka_bootstrap, topics, sqlite_url))

    records = await read_committed(kafka_bootstrap, topics.notifications)

    assert sorted(record.key for record in records) == [c.encode() for c in customers]
    for record in records:
        message = KafkaMessage(headers=dict(record.headers), key=record.key, value=record.value)
        event = from_binary(message, JSONFormat())
        body = json.loads(record.value)
        assert event.get_specversion() == "1.0"
        assert event.get_id() == body["notification_id"]
        assert event.get_type() == "loyalty.pending_points.activated.v1"
        assert event.get_source() == "urn:loyalty-consumer"
        assert event.get_subject() == body["voucherify"]["transaction_id"]
        time = event.get_time()
        assert time is not None
        assert time.isoformat().replace("+00:00", "Z") == body["activated_at"]
        assert event.get_datacontenttype() == "application/json"
        assert event.get_extension("partitionkey") == body["customer"]["id"]
        assert event.get_data() == body
        # What the SDK would send for this event is what we sent: the same key, and the
        # same attributes, `partitionkey` included (the binding sends it beside the key).
        again = to_binary(event, JSONFormat())
        assert again.key == record.key.decode()
        assert again.headers == dict(record.headers)
        assert json.loads(again.value) == body
