"""The results as Markdown (the terminal and docs/performance.md show the same text), JSON and
a plot. Every figure is rendered from the results file, beside the command that measures it."""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Final

FORMAT: Final = 2  # bench/run.py writes it; older results files cannot be rendered

LABELS: Final = {
    "ours-postgresql": "ours, PostgreSQL (exactly-once)",
    "ours-sqlite": "ours, SQLite (exactly-once)",
    "limit": "limit: aiokafka passthrough",
    "naive": "naive: a record at a time",
    "faststream": "FastStream: a handler a message",
}
PART_COMMAND: Final = 'make bench ARGS="--part {part}"'


def _number(value: float | None, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.{digits}f}"


def _rounds(summary: dict[str, Any], digits: int = 0) -> str:
    return " / ".join(_number(value, digits) for value in summary["rounds"])


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _ratio_line(name: str, ratio: dict[str, Any], percent: bool) -> str:
    shown = _share if percent else (lambda v: f"{v:.1f}x")
    rounds = ", ".join(shown(v) for v in ratio["rounds"])
    return f"{name} = {shown(ratio['of_medians'])} (of the medians; round by round {rounds})"


# --------------------------------------------------------------------------- Markdown


def markdown(results: dict[str, Any]) -> str:
    """Every figure of a run, each section with the command that measures it alone."""
    if results.get("format") != FORMAT:
        raise ValueError(
            "this results file comes from an older bench (no 'format': 2); run `make bench` "
            "again, or delete bench/results/latest.json"
        )
    sections = [_header(results)]
    for part, render in (
        ("contenders", _contenders),
        ("sweep", _sweeps),
        ("failover", _failover),
        ("memory", _memory),
        ("batch", _batch),
    ):
        if part in results:
            sections.append(render(results))
    sections.append(_targets(results))
    sections.append(_correctness(results))
    return "\n\n".join(sections)


def _header(results: dict[str, Any]) -> str:
    machine = results["machine"]
    method = results["method"]
    timings = ", ".join(
        f"{part} {seconds:,.0f} s" for part, seconds in results["timings_s"].items()
    )
    return (
        f"`{results['command']}`, finished {results['date'].replace('T', ' ')[:16]} UTC: "
        f"{machine['cores']} cores, {machine['memory_gib']} GiB, broker and PostgreSQL on the "
        f"same machine (load {machine['load_before'][0]:.2f} before, "
        f"{machine['load_after'][0]:.2f} after); PostgreSQL "
        f"{'durable' if results['postgresql_durable'] else 'with fsync off'}; "
        f"{results['duration_s'] / 60:.1f} minutes ({timings}). Each throughput figure is the "
        f"median of {method['rounds']} interleaved rounds, each round's run measured over "
        f"{method['window_s']:g} s after {method['warm_up_s']:g} s of warm-up; rounds are "
        "listed in the order they ran."
    )


def _contenders(results: dict[str, Any]) -> str:
    part = results["contenders"]
    latency = results.get("latency", {})
    lines = [
        f"#### Contenders (`{PART_COMMAND.format(part='contenders')}`"
        + (f", latency `{PART_COMMAND.format(part='latency')}`" if latency else "")
        + ")",
        "",
        "| contender | events/s (median) | rounds | CPU s / 10k events | peak RSS MB "
        "| p50 / p99 ms at 1,000/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in part["by_contender"].items():
        at_rate = latency.get(name)
        shown = "-"
        if at_rate:
            p50, p99 = _number(at_rate["p50_ms"]), _number(at_rate["p99_ms"])
            shown = f"{p50} / {p99}" if at_rate["complete"] else f"> {p50} / > {p99}"
        lines.append(
            f"| {LABELS.get(name, name)} | {_number(row['events_per_s']['median'])} "
            f"| {_rounds(row['events_per_s'])} | {_number(row['cpu_s_per_10k']['median'], 2)} "
            f"| {_number(row['peak_rss_mb'])} | {shown} |"
        )
    ratios = part["ratios"]
    lines.append("")
    for key, label, percent in (
        ("ours_to_limit", "ours / limit", True),
        ("ours_to_naive", "ours / naive", False),
        ("ours_to_faststream", "ours / FastStream", False),
    ):
        if key in ratios:
            lines.append(f"- {_ratio_line(label, ratios[key], percent)}")
    if latency:
        lines.append(
            "- latency: records published at 1,000 a second for "
            f"{results['workload']['latency_seconds']:g} s after a warm-up, from each input "
            "record's timestamp to its output's visibility to a `read_committed` consumer; "
            "`>`: the contender fell behind, lower bounds"
        )
    return "\n".join(lines)


def _sweeps(results: dict[str, Any]) -> str:
    sweep = results["sweep"]
    rows = sweep["partitions"]
    narrow = rows.get("6")
    lines = [
        f"#### Partitions and replicas (`{PART_COMMAND.format(part='sweep')}`)",
        "",
        "| input partitions | worker processes | events/s (median) | rounds | of 6 partitions "
        "| first commit s (median) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows.values():
        median = row["events_per_s"]["median"]
        share = median / narrow["events_per_s"]["median"] if narrow else None
        lines.append(
            f"| {row['partitions']} | {row['replicas']} | {_number(row['events_per_s']['median'])} "
            f"| {_rounds(row['events_per_s'])} | {_share(share)} "
            f"| {_number(row['first_commit_s']['median'], 1)} |"
        )
    if sweep.get("widest_to_narrowest"):
        lines += [
            "",
            "- "
            + _ratio_line(
                f"{sweep['widest']} partitions / 6 partitions, one process",
                sweep["widest_to_narrowest"],
                True,
            ),
        ]
    poison = sweep["poison"]
    lines += [
        "",
        f"#### Store-refused records (`{PART_COMMAND.format(part='sweep')}`)",
        "",
        "| refused records | events/s (median) | rounds | of 0% |",
        "| ---: | ---: | ---: | ---: |",
    ]
    clean = narrow["events_per_s"]["median"] if narrow else None
    for share_text, row in poison.items():
        measured = narrow if "same_as" in row else row
        if measured is None:
            continue
        median = measured["events_per_s"]["median"]
        lines.append(
            f"| {float(share_text):.1%} | {_number(median)} | {_rounds(measured['events_per_s'])} "
            f"| {_share(median / clean if clean else None)} |"
        )
    lines += [
        "",
        "- the 0% row is the 6-partition run above; refused records are valid activations "
        "that the database refuses (`consumer.workload.install_refusal`), one in "
        f"{1 / results['workload']['poison_share']:,.0f}",
    ]
    return "\n".join(lines)


def _failover(results: dict[str, Any]) -> str:
    lines = [
        f"#### Start-up and hand-over (`{PART_COMMAND.format(part='failover')}`)",
        "",
        "| input partitions | start-up s | join s | hand-over s | rounds (start-up; hand-over) |",
        "| ---: | ---: | ---: | ---: | --- |",
    ]
    for partitions, row in results["failover"].items():
        lines.append(
            f"| {partitions} | {_number(row['startup_s']['median'], 2)} "
            f"| {_number(row['join_s']['median'], 2)} | {_number(row['handover_s']['median'], 2)} "
            f"| {_rounds(row['startup_s'], 2)}; {_rounds(row['handover_s'], 2)} |"
        )
    session = results["workload"]["session_timeout_ms"]
    lines += [
        "",
        "- start-up: process spawned to first commit, on a fresh group; join: a second "
        "replica spawned to its first commit; hand-over: the first replica SIGKILLed to "
        "every partition committing again (medians of the rounds; session timeout "
        f"{session:,} ms); after each, no notification was committed twice",
    ]
    return "\n".join(lines)


def _memory(results: dict[str, Any]) -> str:
    memory = results["memory"]
    peaks = ", ".join(
        f"{int(n):,} events: {mb:,.0f} MB" for n, mb in memory["peak_rss_mb_after"].items()
    )
    return (
        f"#### Memory (`{PART_COMMAND.format(part='memory')}`)\n\n"
        f"One worker over {memory['partitions']} input partitions, peak RSS after {peaks} "
        f"({memory['growth']:+.1%}); {_number(memory['events_per_s'])} events/s after the "
        "first mark."
    )


def _batch(results: dict[str, Any]) -> str:
    batch = results["batch"]
    sizes = list(next(iter(batch.values())))
    lines = [
        f"#### Batch sizes (`{PART_COMMAND.format(part='batch')}`)",
        "",
        "| BATCH_MAX_RECORDS | " + " | ".join(LABELS.get(n, n) for n in batch) + " |",
        "| ---: | " + " | ".join("---:" for _ in batch) + " |",
    ]
    for size in sizes:
        cells = " | ".join(
            f"{_number(row['events_per_s']['median'])} ({_rounds(row['events_per_s'])})"
            for row in (rows[size] for rows in batch.values())
        )
        lines.append(f"| {int(size):,} | {cells} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- targets

Check = Callable[[dict[str, Any]], bool | None]  # None: not measured in this run


def _contender(results: dict[str, Any], name: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = results.get("contenders", {}).get("by_contender", {}).get(name)
    return found


def _ours_median(results: dict[str, Any]) -> float | None:
    ours = _contender(results, "ours-postgresql")
    return None if ours is None else float(ours["events_per_s"]["median"])


def _ratio(results: dict[str, Any], key: str) -> float | None:
    found = results.get("contenders", {}).get("ratios", {}).get(key)
    return None if found is None else float(found["of_medians"])


def _at_least(value: float | None, bound: float) -> bool | None:
    return None if value is None else value >= bound


def _failover_max(results: dict[str, Any], name: str) -> float | None:
    rows = results.get("failover")
    return None if not rows else max(row[name]["median"] for row in rows.values())


def _widest_share(results: dict[str, Any]) -> float | None:
    share = (results.get("sweep") or {}).get("widest_to_narrowest")
    return None if share is None else float(share["of_medians"])


def _memory_ok(results: dict[str, Any]) -> bool | None:
    memory = results.get("memory")
    if memory is None:
        return None
    return bool(abs(memory["growth"]) <= 0.10 and max(memory["peak_rss_mb_after"].values()) <= 200)


def _p99(results: dict[str, Any]) -> float | None:
    at_rate = results.get("latency", {}).get("ours-postgresql")
    return None if at_rate is None else float(at_rate["p99_ms"])


TARGETS: Final[tuple[tuple[str, Check], ...]] = (
    ("ours ≥ 5,000 events/s (PostgreSQL)", lambda r: _at_least(_ours_median(r), 5_000)),
    ("ours ≥ 50% of limit", lambda r: _at_least(_ratio(r, "ours_to_limit"), 0.5)),
    ("ours ≥ 10x naive", lambda r: _at_least(_ratio(r, "ours_to_naive"), 10)),
    (
        "p99 ≤ 250 ms at 1,000 events/s",
        lambda r: None if _p99(r) is None else (_p99(r) or 0) <= 250,
    ),
    (
        "peak RSS ≤ 200 MB (ours, PostgreSQL, 6 partitions)",
        lambda r: (
            None if (row := _contender(r, "ours-postgresql")) is None else row["peak_rss_mb"] <= 200
        ),
    ),
    ("96 partitions ≥ 70% of 6 (aim: 85%)", lambda r: _at_least(_widest_share(r), 0.7)),
    (
        "start-up ≤ 10 s",
        lambda r: None if (v := _failover_max(r, "startup_s")) is None else v <= 10,
    ),
    (
        "hand-over ≤ 10 s",
        lambda r: None if (v := _failover_max(r, "handover_s")) is None else v <= 10,
    ),
    ("memory at 96 partitions ≤ 200 MB and within 10% from the first mark", _memory_ok),
)


def verdicts(results: dict[str, Any]) -> list[tuple[str, bool]]:
    """The targets this run measured, each met or not."""
    found = []
    for label, check in TARGETS:
        met = check(results)
        if met is not None:
            found.append((label, met))
    return found


def _targets(results: dict[str, Any]) -> str:
    lines = ["#### Targets", ""]
    lines += [f"- [{'met' if met else 'MISSED'}] {label}" for label, met in verdicts(results)]
    return "\n".join(lines)


def _correctness(results: dict[str, Any]) -> str:
    return (
        "#### Correctness\n\n"
        f"{results['checked_runs']:,} runs checked after they stopped, every count as the "
        "input they committed requires: records, applied, duplicates, skipped and "
        "dead-lettered (the contender's own counts), notifications and their distinct "
        "`ce_id`s (read back `read_committed`), dead letters, ledger rows. A run that "
        "differs fails the bench, so a results file exists only if all agreed."
    )


# --------------------------------------------------------------------------- JSON and plot


def write_json(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")


def _bars(axis: Any, labels: list[str], rows: Iterable[dict[str, Any]], title: str) -> None:
    """Median bars with each round as a dot (the spread is part of the figure), labelled."""
    rows = list(rows)
    medians = [row["median"] for row in rows]
    axis.bar(range(len(rows)), medians, color="tab:blue", alpha=0.75)
    for position, row in enumerate(rows):
        axis.plot([position] * len(row["rounds"]), row["rounds"], "k.", markersize=4)
        axis.annotate(
            f"{row['median']:,.0f}" if row["median"] >= 100 else f"{row['median']:,.1f}",
            (position, row["median"]),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    axis.set_xticks(range(len(rows)), labels, fontsize=8)
    axis.set_title(title, fontsize=10)
    axis.grid(True, axis="y", alpha=0.3)


Panel = Callable[[Any, dict[str, Any]], None]


def _contenders_panel(axis: Any, results: dict[str, Any]) -> None:
    rows = results["contenders"]["by_contender"]
    _bars(axis, list(rows), [r["events_per_s"] for r in rows.values()], "contenders")
    axis.set_yscale("log")  # the naive loop and FastStream are two orders below the rest
    axis.set_ylabel("events/s (log)")
    axis.tick_params(axis="x", labelrotation=20)


def _partitions_panel(axis: Any, results: dict[str, Any]) -> None:
    rows = results["sweep"]["partitions"]
    labels = [
        f"{r['partitions']}" + (f" x{r['replicas']}" if r["replicas"] > 1 else "")
        for r in rows.values()
    ]
    _bars(
        axis, labels, [r["events_per_s"] for r in rows.values()], "input partitions (x processes)"
    )
    axis.set_ylabel("events/s")


def _poison_panel(axis: Any, results: dict[str, Any]) -> None:
    sweep = results["sweep"]
    narrow = sweep["partitions"].get("6")
    rows = [(k, narrow if "same_as" in v else v) for k, v in sweep["poison"].items()]
    shown = [(k, v) for k, v in rows if v is not None]
    _bars(
        axis,
        [f"{float(k):.1%} refused" for k, _ in shown],
        [v["events_per_s"] for _, v in shown],
        "store-refused records (6 partitions)",
    )
    axis.set_ylabel("events/s")


def _failover_panel(axis: Any, results: dict[str, Any]) -> None:
    labels, summaries = [], []
    for partitions, row in results["failover"].items():
        for name in ("startup_s", "join_s", "handover_s"):
            labels.append(f"{name.removesuffix('_s')}\n{partitions} p")
            summaries.append(row[name])
    _bars(axis, labels, summaries, "start-up, join and hand-over")
    axis.set_ylabel("seconds")


def _memory_panel(axis: Any, results: dict[str, Any]) -> None:
    memory = results["memory"]
    peaks = memory["peak_rss_mb_after"]
    axis.bar([f"{int(n):,}" for n in peaks], list(peaks.values()), color="tab:green")
    for position, value in enumerate(peaks.values()):
        axis.annotate(f"{value:,.0f}", (position, value), ha="center", va="bottom", fontsize=7)
    axis.axhline(200, color="tab:red", linestyle="--", linewidth=1)
    axis.set_title(f"peak RSS, {memory['partitions']} partitions", fontsize=10)
    axis.set_xlabel("events")
    axis.set_ylabel("MB")


def _batch_panel(axis: Any, results: dict[str, Any]) -> None:
    for name, style in (("ours-postgresql", "o-"), ("limit", "s--")):
        rows = results["batch"][name]
        sizes = sorted(int(size) for size in rows)
        medians = [rows[str(size)]["events_per_s"]["median"] for size in sizes]
        axis.plot(sizes, medians, style, label=name)
    axis.set_xscale("log")
    axis.set_xlabel("BATCH_MAX_RECORDS")
    axis.set_ylabel("events/s")
    axis.set_title("batch size", fontsize=10)
    axis.legend(fontsize=8)


PANELS: Final[tuple[tuple[str, Panel], ...]] = (
    ("contenders", _contenders_panel),
    ("sweep", _partitions_panel),
    ("sweep", _poison_panel),
    ("failover", _failover_panel),
    ("memory", _memory_panel),
    ("batch", _batch_panel),
)


def plot(results: dict[str, Any], path: Path) -> None:
    """One panel per figure of the parts that ran, medians with their rounds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [draw for part, draw in PANELS if part in results]
    columns = min(3, max(1, len(panels)))
    rows = max(1, math.ceil(len(panels) / columns))
    figure, axes = plt.subplots(rows, columns, figsize=(5 * columns, 4 * rows + 0.6), squeeze=False)
    for axis, draw in zip(axes.flat, panels, strict=False):
        draw(axis, results)
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    machine = results["machine"]
    method = results["method"]
    title = (
        f"loyalty-consumer, {results['command']}, {results['date'][:16]} UTC; "
        f"{machine['cores']} cores, {machine['memory_gib']:.0f} GiB, broker and PostgreSQL on "
        f"the same machine; bars: medians of {method['rounds']} rounds of "
        f"{method['window_s']:g} s, dots: the rounds"
    )
    figure.suptitle(textwrap.fill(title, width=70 * columns), fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
