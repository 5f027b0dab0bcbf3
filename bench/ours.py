"""Contender `ours`: the real worker (exactly-once mode by default) on PostgreSQL or SQLite."""

from __future__ import annotations

import asyncio
from typing import Any

from bench.contender import Progress, Spec, until_stopped
from consumer.config import Settings
from consumer.metrics import Metrics
from consumer.runtime import tune_garbage_collector
from consumer.store import open_store
from consumer.worker import Worker

# Observed once per input record when its batch's effects are committed.
COMMITTED = "loyalty_consumer_end_to_end_latency_seconds_count"
OUTCOMES = {
    "applied": "loyalty_consumer_applied_total",
    "duplicates": "loyalty_consumer_duplicates_total",
    "replays": "loyalty_consumer_replays_total",
    "skipped": "loyalty_consumer_skipped_total",
}


def settings_for(spec: Spec) -> Settings:
    values: dict[str, Any] = {
        "kafka_bootstrap_servers": spec.bootstrap,
        "database_url": spec.database_url,
        "input_topic": spec.input_topic,
        "notification_topic": spec.output_topic,
        "dead_letter_topic": spec.dead_letter_topic,
        "consumer_group": spec.group,
        "transactional_id_prefix": spec.group,
        "client_id": spec.group,
        "http_port": 0,
        **spec.settings,
    }
    return Settings(**values)


async def run_ours(spec: Spec) -> dict[str, Any]:
    settings = settings_for(spec)
    store = await open_store(settings.database_url, migrate=True)
    metrics = Metrics()
    worker = Worker(settings, store, metrics=metrics)
    progress = Progress(spec.target, worker.stop)
    tune_garbage_collector(settings.gc_gen0_threshold)  # as `consumer.service.run_worker` does

    def done() -> int:
        if worker.health.assigned:
            progress.ready()
        return int(metrics.value(COMMITTED))

    try:
        await until_stopped(asyncio.ensure_future(worker.run()), progress, done)
    finally:
        await store.close()
    counts = {name: int(metrics.value(metric)) for name, metric in OUTCOMES.items()}
    dead_lettered = sum(
        int(metrics.value("loyalty_consumer_dead_lettered_total", {"reason_class": reason}))
        for reason in ("invalid", "persistent")
    )
    return {"done": done(), "counts": {**counts, "dead_lettered": dead_lettered}}
