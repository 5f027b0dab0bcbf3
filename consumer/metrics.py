"""Prometheus metrics of one worker, in a registry of its own so tests can run several."""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from consumer import __version__
from consumer.store.base import CardState

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
        # The standard process_*, python_info and python_gc_* series: memory, CPU, file
        # descriptors, and what the tuned collector (consumer.runtime) does.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.build_info = Gauge(
            f"{PREFIX}_build_info", "Always 1; the release in its label.", ["version"], registry=r
        )
        self.build_info.labels(__version__).set(1)
        self.card_updates = Counter(
            f"{PREFIX}_card_updates",
            "Card balances changed by committed batches, one per card and batch.",
            registry=r,
        )
        self.balance_drift = Counter(
            f"{PREFIX}_balance_drift",
            "Card updates that left Voucherify's reported balance different from our activated "
            "total: ahead (Voucherify has more: activations we have not applied) or behind "
            "(less: redemptions and expirations, which we never see).",
            ["direction"],
            registry=r,
        )
        self.balance_drift_points = Counter(
            f"{PREFIX}_balance_drift_points",
            "The absolute drift of those card updates, summed, by direction.",
            ["direction"],
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

        # Every label value exists from the start, so that increase() sees the first event.
        for reason_class in ("invalid", "persistent"):
            self.dead_lettered.labels(reason_class)
        for cause in ("store", "broker"):
            self.retries.labels(cause)
        self._drift = {d: self.balance_drift.labels(d) for d in ("ahead", "behind")}
        self._drift_points = {d: self.balance_drift_points.labels(d) for d in ("ahead", "behind")}

    def observe_card_drift(self, cards: Sequence[CardState]) -> None:
        """Count a batch's card updates and those it left drifting, by direction.

        What an operator can act on: the share of card updates left *ahead* (Voucherify holds
        points we never applied) rising against its baseline means activations are missing
        on our side (dead letters, webhooks the bridge did not publish); *behind* is the
        normal trace of redemptions. Counted in one pass, four increments a batch: drift is
        the rule, not the exception, on a busy card.
        """
        ahead = behind = ahead_points = behind_points = 0
        for card in cards:
            drift = card.drift
            if drift > 0:
                ahead += 1
                ahead_points += drift
            elif drift < 0:
                behind += 1
                behind_points -= drift
        self.card_updates.inc(len(cards))
        if ahead:
            self._drift["ahead"].inc(ahead)
            self._drift_points["ahead"].inc(ahead_points)
        if behind:
            self._drift["behind"].inc(behind)
            self._drift_points["behind"].inc(behind_points)

    def value(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The current value of one sample (tests and the demo read counters this way)."""
        found = self.registry.get_sample_value(name, labels or {})
        return 0.0 if found is None else found
