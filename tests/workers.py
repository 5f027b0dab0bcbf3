"""Running workers in tests: settings for fresh topics, and burst runs to the end of the input."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from consumer.config import Settings
from consumer.metrics import Metrics
from consumer.store import open_store
from consumer.worker import Worker


@dataclass
class Topics:
    input: str
    notifications: str
    dead_letters: str


def settings_for(bootstrap: str, topics: Topics, store_url: str, **extra: object) -> Settings:
    values: dict[str, object] = {
        "kafka_bootstrap_servers": bootstrap,
        "database_url": store_url,
        "input_topic": topics.input,
        "notification_topic": topics.notifications,
        "dead_letter_topic": topics.dead_letters,
        "consumer_group": f"g-{uuid.uuid4().hex[:8]}",
        "transactional_id_prefix": f"tx-{uuid.uuid4().hex[:8]}",
        "http_port": 0,
        "session_timeout_ms": 6000,
        "heartbeat_interval_ms": 1000,
        "retry_initial_s": 0.05,
        "retry_max_s": 0.5,
    }
    values.update(extra)
    return Settings(**values)  # type: ignore[arg-type]


async def drain(settings: Settings) -> Metrics:
    """Run one worker in burst mode until the input is drained; return its metrics."""
    store = await open_store(settings.database_url, migrate=True)
    metrics = Metrics()
    try:
        await Worker(settings, store, metrics=metrics, burst=True).run()
    finally:
        await store.close()
    return metrics
