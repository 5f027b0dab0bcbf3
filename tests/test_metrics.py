"""The balance-drift metrics: card updates, and those left drifting, by direction."""

from __future__ import annotations

from datetime import UTC, datetime

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from consumer import __version__
from consumer.metrics import Metrics
from consumer.store.base import CardState


def _card(voucher_id: str, activated: int, reported: int) -> CardState:
    return CardState(
        voucher_id=voucher_id,
        activated_points=activated,
        reported_balance=reported,
        reported_pending=0,
        last_transaction_id=f"vtx_{voucher_id}",
        last_transaction_at=datetime(2026, 1, 1, tzinfo=UTC),
    )


def test_drift_is_counted_per_card_update_by_direction() -> None:
    metrics = Metrics()

    metrics.observe_card_drift(
        [
            _card("v_even", 50, 50),
            _card("v_missing", 20, 120),  # Voucherify holds 100 points we never applied
            _card("v_redeemed", 80, 30),  # 50 redeemed, which we never see
            _card("v_redeemed_too", 10, 7),
        ]
    )
    metrics.observe_card_drift([_card("v_even", 60, 60)])

    def value(name: str, **labels: str) -> float:
        return metrics.value(f"loyalty_consumer_{name}", labels)

    assert value("card_updates_total") == 5
    assert value("balance_drift_total", direction="ahead") == 1
    assert value("balance_drift_total", direction="behind") == 2
    assert value("balance_drift_points_total", direction="ahead") == 100
    assert value("balance_drift_points_total", direction="behind") == 53


def test_the_release_is_exported_as_build_info() -> None:
    assert Metrics().value("loyalty_consumer_build_info", {"version": __version__}) == 1


def test_the_scrape_carries_the_process_the_collector_and_the_release() -> None:
    text = generate_latest(Metrics().registry).decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

    assert samples[("loyalty_consumer_build_info", (("version", __version__),))] == 1
    assert samples[("process_resident_memory_bytes", ())] > 1_000_000
    assert samples[("process_cpu_seconds_total", ())] > 0
    assert ("python_gc_collections_total", (("generation", "0"),)) in samples
    assert any(name == "python_info" for name, _ in samples)
