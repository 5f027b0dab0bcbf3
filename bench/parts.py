"""The parts of a bench run: contenders, latency, the sweeps, memory and batch sizes.

Each part that gives throughput figures runs its configurations in `Plan.rounds`
interleaved rounds (`bench.rounds.orders`) and reports each figure as the median of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench import latency as latency_at_rate
from bench.children import Children
from bench.contender import Kind
from bench.expect import InputIndex
from bench.rounds import orders, summarise
from bench.run import (
    LINE_UP,
    PARTITIONS,
    POISON_SHARE,
    RATE,
    START_TIMEOUT_S,
    WIDEST,
    Bar,
    Bench,
    Config,
    Input,
    say,
    workload_of,
)


async def in_rounds(bench: Bench, configs: Sequence[Config]) -> dict[str, dict[str, Any]]:
    """Every configuration measured once a round, in each round's order; medians."""
    runs: dict[str, list[dict[str, Any]]] = {config.name: [] for config in configs}
    for round_no, order in enumerate(orders(list(configs), bench.plan.rounds)):
        say(f"round {round_no + 1} of {bench.plan.rounds}: {', '.join(c.name for c in order)}")
        for config in order:
            runs[config.name].append(await bench.measure(config, round_no))
    found = {}
    for config in configs:
        measured = sorted(runs[config.name], key=lambda run: int(run["round"]))
        found[config.name] = {
            "events_per_s": summarise([run["events_per_s"] for run in measured]),
            "cpu_s_per_10k": summarise([run["cpu_s_per_10k"] for run in measured], 3),
            "peak_rss_mb": max(run["peak_rss_mb"] for run in measured),
            "first_commit_s": summarise([run["first_commit_s"] for run in measured], 2),
            "partitions": config.partitions,
            "replicas": config.replicas,
            "store": config.store,
            "settings": config.settings,
            "runs": measured,
        }
        say(
            f"{config.name}: median {found[config.name]['events_per_s']['median']:,.0f} "
            f"events/s, rounds {found[config.name]['events_per_s']['rounds']}"
        )
    return found


def ratio(found: dict[str, dict[str, Any]], top: str, bottom: str) -> dict[str, Any]:
    """`top / bottom`: of the medians, and round by round (the same round's two runs)."""
    medians = found[top]["events_per_s"]["median"] / found[bottom]["events_per_s"]["median"]
    pairs = zip(found[top]["runs"], found[bottom]["runs"], strict=True)
    by_round = [a["events_per_s"] / b["events_per_s"] for a, b in pairs if b["events_per_s"]]
    return {"of_medians": round(medians, 3), "rounds": [round(value, 3) for value in by_round]}


async def contenders(bench: Bench) -> dict[str, Any]:
    found = await in_rounds(bench, [LINE_UP[name] for name in bench.plan.contenders])
    ratios = {
        f"ours_to_{other.replace('-', '_')}": ratio(found, "ours-postgresql", other)
        for other in ("limit", "naive", "faststream", "ours-sqlite")
        if other in found and "ours-postgresql" in found
    }
    return {"by_contender": found, "ratios": ratios}


async def sweeps(bench: Bench) -> dict[str, Any]:
    """Partitions (one replica; and more at the widest) and poison, in the same rounds.

    The poison sweep's 0% point is the 6-partition run of the partition sweep: the same
    contender on the same input in the same rounds.
    """
    plan = bench.plan
    configs = [Config(f"partitions-{n}", "ours", partitions=n) for n in plan.sweep_partitions]
    widest = max(plan.sweep_partitions)
    if plan.wide_replicas > 1:
        configs.append(
            Config(
                f"partitions-{widest}x{plan.wide_replicas}",
                "ours",
                partitions=widest,
                replicas=plan.wide_replicas,
            )
        )
    configs.append(Config("poison", "ours", poison=True))
    found = await in_rounds(bench, configs)
    by_partitions = {
        (str(c.partitions) if c.replicas == 1 else f"{c.partitions}x{c.replicas}"): found[c.name]
        for c in configs
        if not c.poison
    }
    share = None
    if str(PARTITIONS) in by_partitions and str(widest) in by_partitions:
        share = ratio(
            {"wide": by_partitions[str(widest)], "narrow": by_partitions[str(PARTITIONS)]},
            "wide",
            "narrow",
        )
    poison: dict[str, Any] = {f"{POISON_SHARE:g}": found["poison"]}
    if str(PARTITIONS) in by_partitions:
        poison = {"0": {"same_as": f"partitions {PARTITIONS}"}, **poison}
    return {
        "partitions": by_partitions,
        "widest": widest,
        "widest_to_narrowest": share,
        "poison": poison,
    }


async def batch_sizes(bench: Bench) -> dict[str, Any]:
    kinds: tuple[tuple[str, Kind], ...] = (("ours-postgresql", "ours"), ("limit", "limit"))
    configs = [
        Config(f"{name}-b{size}", kind, settings={"batch_max_records": size})
        for size in bench.plan.batch_sizes
        for name, kind in kinds
    ]
    found = await in_rounds(bench, configs)
    return {
        name: {str(size): found[f"{name}-b{size}"] for size in bench.plan.batch_sizes}
        for name in ("ours-postgresql", "limit")
    }


# --------------------------------------------------------------------------- latency


async def latency(bench: Bench) -> dict[str, Any]:
    return {name: await latency_of(bench, LINE_UP[name]) for name in bench.plan.latency_contenders}


async def latency_of(bench: Bench, config: Config) -> dict[str, Any]:
    """p50/p99 from input timestamp to read_committed visibility at RATE records a second."""
    plan = bench.plan
    seconds = plan.latency_s + plan.latency_warm_up_s
    records = list(workload_of(4242, int(RATE * seconds), PARTITIONS).records())
    index = InputIndex(PARTITIONS)
    index.add(records)
    name = config.name
    input_topic = bench.topic(f"{name}-lat-in")
    await bench.create(input_topic)
    spec = await bench.spec(
        config.kind, f"{name}-lat", input_topic, target=len(records), store=config.store
    )
    children = Children(f"{name}@1k", [spec], bench.logs)
    say(f"{name}: {len(records):,} records at {RATE:,.0f}/s for latency")
    finished = False
    await children.start()
    try:
        await children.ready(within_s=START_TIMEOUT_S)
        result = await latency_at_rate.measure(
            bench.svc.bootstrap,
            input_topic,
            spec.output_topic,
            records,
            rate=RATE,
            warm_up_s=plan.latency_warm_up_s,
            by_seq=config.kind == "limit",
        )
        try:
            await children.wait(within_s=60 if result.complete else 1)
            finished = True
        except RuntimeError:
            if result.complete:
                raise
            # A contender slower than RATE is still behind: its backlog is its latency.
    finally:
        children.kill()
    state = "" if result.complete else f" ({result.samples:,}/{result.expected:,} seen)"
    say(f"{name}: p50 {result.p50_ms:,.1f} ms, p99 {result.p99_ms:,.1f} ms at 1k/s{state}")
    checked = None
    if finished:  # a contender cut off behind its input stopped anywhere: nothing to check
        source = Input(input_topic, PARTITIONS, 0.0, index, 0.0)
        checked = await bench.check(f"{name}@1k", spec, source, children)
    return {
        "p50_ms": round(result.p50_ms, 1),
        "p90_ms": round(result.p90_ms, 1),
        "p99_ms": round(result.p99_ms, 1),
        "max_ms": round(result.max_ms, 1),
        "samples": result.samples,
        "expected": result.expected,
        "complete": result.complete,
        "sent_per_s": round(result.sent_per_s, 1),
        "peak_rss_mb": round(children.peak_rss_mb(), 1),
        "check": checked,
    }


# --------------------------------------------------------------------------- memory


async def memory(bench: Bench) -> dict[str, Any]:
    """Resident memory of one worker over the whole 96-partition input: peak RSS up to each
    of `memory_marks` records. It must not grow with the events."""
    marks = bench.plan.memory_marks
    total = max(marks)
    source = await bench.input(WIDEST)
    spec = await bench.spec("ours", "ours-memory", source.name, target=total)
    children = Children("ours-memory", [spec], bench.logs)
    bar = Bar("ours-memory", total)
    children.on_sample = bar.update
    await children.start()
    try:
        await children.wait(within_s=START_TIMEOUT_S + total / 100)
    finally:
        children.kill()
    bar.close()
    peaks = {str(n): round(children.rss_at(n), 1) for n in marks}
    first, last = peaks[str(min(marks))], peaks[str(total)]
    growth = (last - first) / first if first else 0.0
    window = children.window(min(marks), total)
    say(f"memory: peak RSS {peaks} MB at {source.partitions} partitions; growth {growth:+.1%}")
    return {
        "partitions": source.partitions,
        "peak_rss_mb_after": peaks,
        "growth": round(growth, 4),
        "peak_rss_mb": round(children.peak_rss_mb(), 1),  # the process's VmHWM at exit
        "events_per_s": round(window.events_per_s, 1),
        "counts": children.counts(),
        "check": await bench.check("ours-memory", spec, source, children),
    }
