"""The results as a table, a JSON file and a plot."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROWS = (
    ("ours-postgresql", "ours, PostgreSQL (exactly-once)"),
    ("ours-sqlite", "ours, SQLite (exactly-once)"),
    ("limit", "limit: aiokafka passthrough"),
    ("naive", "naive: a record at a time"),
)

Check = Callable[[dict[str, Any]], bool]

TARGETS: tuple[tuple[str, Check], ...] = (
    ("ours ≥ 5,000 events/s (PostgreSQL)", lambda r: r["events_per_s"] >= 5_000),
    ("ours ≥ 50% of limit", lambda r: r["ratio_to_limit"] >= 0.5),
    ("ours ≥ 10x naive", lambda r: r["ratio_to_naive"] >= 10),
    ("p99 ≤ 250 ms at 1,000 events/s", lambda r: r["p99_ms_at_1k"] <= 250),
    ("peak RSS ≤ 200 MB", lambda r: r["peak_rss_mb"] <= 200),
)


def _number(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def table(results: dict[str, Any]) -> str:
    """A Markdown table: the same text goes to the terminal and into the README."""
    lines = [
        "| contender | events/s | p50 ms @1k/s | p99 ms @1k/s | CPU s / 10k events | peak RSS MB |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, label in ROWS:
        row = results["contenders"][key]
        at_rate = row.get("latency_at_1k", {})
        p50, p99 = _number(at_rate.get("p50_ms"), 0), _number(at_rate.get("p99_ms"), 0)
        if at_rate and not at_rate.get("complete", True):
            p50, p99 = f"> {p50}", f"> {p99}"  # fell behind the input: lower bounds
        lines.append(
            f"| {label} | {_number(row['events_per_s'])} | {p50} | {p99} "
            f"| {_number(row['cpu_s_per_10k'], 2)} | {_number(row['peak_rss_mb'], 0)} |"
        )
    return "\n".join(lines)


def verdicts(results: dict[str, Any]) -> str:
    lines = [
        f"ours / limit = {results['ratio_to_limit']:.1%}, "
        f"ours / naive = {results['ratio_to_naive']:.1f}x"
    ]
    rounds = {
        key: row["rounds_events_per_s"]
        for key, row in results["contenders"].items()
        if len(row.get("rounds_events_per_s", ())) > 1
    }
    if rounds:
        shown = "; ".join(
            f"{key} " + " / ".join(_number(value) for value in values)
            for key, values in rounds.items()
        )
        lines.append(f"events/s by round (the better one above): {shown}")
    for label, met in TARGETS:
        lines.append(f"  [{'met' if met(results) else 'MISSED'}] {label}")
    return "\n".join(lines)


def memory_verdict(memory: dict[str, Any]) -> str:
    """Peak RSS after the first N events against after all: steady means within 10%."""
    peaks = memory["peak_rss_mb_after"]
    shown = ", ".join(f"{int(n):,} events: {mb:.0f} MB" for n, mb in peaks.items())
    met = abs(memory["growth"]) <= 0.10 and max(peaks.values()) <= 200
    return (
        f"[{'met' if met else 'MISSED'}] memory steady and <= 200 MB: peak RSS after {shown} "
        f"({memory['growth']:+.1%}); {memory['events_per_s']:,.0f} events/s"
    )


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")


def plot(results: dict[str, Any], path: Path) -> None:
    """Throughput against batch size (ours and limit) and against replicas (ours)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweeps = results["sweeps"]
    figure, (by_batch, by_replicas) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, style in (("ours-postgresql", "o-"), ("limit", "s--")):
        points = sorted((int(k), v) for k, v in sweeps["by_batch_size"][name].items())
        by_batch.plot([p[0] for p in points], [p[1] for p in points], style, label=name)
    by_batch.set_xscale("log")
    by_batch.set_xlabel("BATCH_MAX_RECORDS")
    by_batch.set_ylabel("events/s")
    by_batch.set_title("throughput vs batch size")
    by_batch.grid(True, alpha=0.3)
    by_batch.legend()
    points = sorted((int(k), v) for k, v in sweeps["by_replicas"].items())
    by_replicas.bar([str(p[0]) for p in points], [p[1] for p in points], color="tab:blue")
    by_replicas.axhline(results["limit_events_per_s"], color="tab:orange", linestyle="--")
    by_replicas.text(
        0, results["limit_events_per_s"], " limit (1 process)", va="bottom", color="tab:orange"
    )
    by_replicas.set_xlabel("worker processes (same group, PostgreSQL)")
    by_replicas.set_ylabel("events/s")
    by_replicas.set_title("throughput vs replicas")
    by_replicas.grid(True, axis="y", alpha=0.3)
    machine = results["machine"]
    figure.suptitle(
        f"loyalty-consumer, {results['date'][:10]}: {machine['cores']} cores, "
        f"{machine['memory_gib']:.0f} GiB, broker and PostgreSQL on the same machine; "
        f"{sweeps['events']:,} records a point",
        fontsize=9,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
