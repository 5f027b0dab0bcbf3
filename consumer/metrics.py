"""Prometheus metrics of one worker, in a registry of its own so tests can run several."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

PREFIX = "loyalty_consumer"

BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class Metrics:
    """Every metric the worker exposes; names follow Prometheus conventions."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.consumed = Counter(
            f"{PREFIX}_records_consumed", "Input records read from Kafka.", registry=r
        )
        self.applied = Counter(
            f"{PREFIX}_applied",
            "Activations applied to the ledger for the first time.",
            registry=r,
        )
        self.duplicates = Counter(
            f"{PREFIX}_duplicates",
            "Activations already in the ledger from another record; nothing emitted.",
            registry=r,
        )
        self.replays = Counter(
            f"{PREFIX}_replays",
            "Records re-processed after an uncommitted Kafka transaction; notification re-sent.",
            registry=r,
        )
        self.owed_paid = Counter(
            f"{PREFIX}_owed_notifications_sent",
            "Notifications held back by a dead letter after their activation was applied, "
            "sent when a record of the activation came back (its replayed dead letter).",
            registry=r,
        )
        self.skipped = Counter(
            f"{PREFIX}_skipped",
            "Voucherify events of other types, counted and skipped.",
            registry=r,
        )
        self.dead_lettered = Counter(
            f"{PREFIX}_dead_lettered",
            "Records sent to the dead-letter topic.",
            ["reason_class"],
            registry=r,
        )
        self.retries = Counter(
            f"{PREFIX}_retries", "Retries of transient failures.", ["cause"], registry=r
        )
        self.balance_drift = Counter(
            f"{PREFIX}_balance_drift",
            "Applied activations whose card's reported balance differs from our activated total.",
            registry=r,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size",
            "Records per processed batch.",
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.batch_duration = Histogram(
            f"{PREFIX}_batch_duration_seconds",
            "Time to process and commit one batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_latency = Histogram(
            f"{PREFIX}_end_to_end_latency_seconds",
            "From the input record's timestamp to the commit of its effects.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.consumer_lag = Gauge(
            f"{PREFIX}_consumer_lag",
            "Records behind the end of the partition.",
            ["topic", "partition"],
            registry=r,
        )
        self.assigned_partitions = Gauge(
            f"{PREFIX}_assigned_partitions",
            "Input partitions assigned to this worker.",
            registry=r,
        )
        self.ready = Gauge(f"{PREFIX}_ready", "1 when /readyz answers ready.", registry=r)
        self.balance_drift_points = Gauge(
            f"{PREFIX}_balance_drift_points",
            "Absolute drift (reported balance - activated total) of the card updated last.",
            registry=r,
        )

        # Every label value exists from the start, so that increase() sees the first event.
        for reason_class in ("invalid", "persistent"):
            self.dead_lettered.labels(reason_class)
        for cause in ("store", "broker"):
            self.retries.labels(cause)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The current value of one sample (tests and the demo read counters this way)."""
        found = self.registry.get_sample_value(name, labels or {})
        return 0.0 if found is None else found
