"""The benchmark run: the plan, the inputs, one measured run of a contender, and the parts.

Every throughput figure is the median of `Plan.rounds` interleaved rounds (`bench.rounds`).
A run starts a contender (or several replicas of it) on a fresh consumer group, waits for its
first commit, lets it warm up for `warm_up_s`, measures `window_s` seconds of its progress
reports, stops it with SIGTERM, and then checks everything it committed (`bench.verify`).
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from bench import machine, services
from bench.children import Children
from bench.contender import PROGRESS_EVERY_S, Kind, Spec
from bench.expect import InputIndex
from bench.services import RUN, Services
from bench.verify import BenchFailure, end_offsets, verify
from consumer.config import Settings
from consumer.store import open_store
from consumer.workload import GeneratedRecord, Workload, install_refusal

PARTITIONS: Final = 6  # the main input, and every output topic
WIDEST: Final = 96
# Voucherify retries for a day: a tenth of the records are re-deliveries. A few other event
# types and a little garbage keep the skip and dead-letter paths in the measurement.
DUPLICATE_SHARE: Final = 0.10
SIBLING_SHARE: Final = 0.02
MALFORMED_SHARE: Final = 0.005
POISON_SHARE: Final = 0.001  # valid activations the store refuses, in the poison sweep
RATE: Final = 1_000.0  # records a second for the latency measurement
START_TIMEOUT_S: Final = 180.0  # to the first commit: imports, the group, producers, a busy VM
STOP_TIMEOUT_S: Final = 90.0  # from SIGTERM to exit: the batch in flight, then leaving
SAMPLE_S: Final = PROGRESS_EVERY_S  # how often a contender reports
WARM_UP_EVENTS: Final = 40_000

PARTS: Final = ("contenders", "latency", "sweep", "failover", "memory", "batch")
DEFAULT_PARTS: Final = ("contenders", "latency", "sweep", "failover", "memory")


@dataclass(frozen=True)
class Config:
    """One thing measured in the rounds: a contender on an input, with its settings."""

    name: str
    kind: Kind
    store: str = "postgresql"
    partitions: int = PARTITIONS
    poison: bool = False
    replicas: int = 1
    settings: dict[str, Any] = field(default_factory=dict)


LINE_UP: Final = {
    "ours-postgresql": Config("ours-postgresql", "ours"),
    "ours-sqlite": Config("ours-sqlite", "ours", store="sqlite"),
    "limit": Config("limit", "limit"),
    "naive": Config("naive", "naive"),
    "faststream": Config("faststream", "faststream"),
}


@dataclass(frozen=True)
class Plan:
    """What a run measures, and how long each measurement lasts."""

    name: str  # the results' file stem: latest (make bench), quick, custom
    parts: tuple[str, ...] = DEFAULT_PARTS
    contenders: tuple[str, ...] = tuple(LINE_UP)
    # The naive loop and FastStream make well under 1,000 events/s: at that rate their
    # latency is their growing backlog, which their throughput already says.
    latency_contenders: tuple[str, ...] = ("ours-postgresql", "ours-sqlite", "limit")
    rounds: int = 3
    window_s: float = 10.0  # measured seconds of each run, after warm_up_s
    warm_up_s: float = 3.0  # from the (last replica's) first commit
    # Records of each input: the fastest contender on it must not reach its end before its
    # window closes (the run fails if one does). Two replicas at 96 partitions consume for
    # ~12 s before both have committed, so that input is as long as the main one.
    events: int = 800_000  # the main 6-partition input
    sweep_events: int = 300_000  # the 24-partition input and the poison input
    wide_events: int = 800_000  # the 96-partition input (sweep, failover and memory)
    memory_marks: tuple[int, ...] = (100_000, 500_000)  # peak RSS up to each, at 96 partitions
    latency_s: float = 30.0
    latency_warm_up_s: float = 5.0
    sweep_partitions: tuple[int, ...] = (6, 24, WIDEST)
    wide_replicas: int = 2
    failover_partitions: tuple[int, ...] = (6, WIDEST)
    batch_sizes: tuple[int, ...] = (250, 1000, 2000, 4000)
    settings: dict[str, Any] = field(default_factory=dict)  # worker Settings overrides

    @property
    def results(self) -> Path:
        return services.ROOT / "bench" / "results"

    def events_for(self, partitions: int, poison: bool) -> int:
        if partitions == PARTITIONS and not poison:
            return self.events
        if partitions == WIDEST and not poison:
            memory = max(self.memory_marks) if "memory" in self.parts else 0
            return max(self.wide_events, memory)
        return self.sweep_events


FULL: Final = Plan(name="latest")
QUICK: Final = Plan(
    name="quick",
    parts=("contenders", "latency"),
    contenders=("ours-postgresql", "limit", "naive", "faststream"),
    latency_contenders=("ours-postgresql",),
    latency_s=10,
    latency_warm_up_s=3,
)


def workload_of(seed: int, events: int, partitions: int, refused_share: float = 0.0) -> Workload:
    return Workload(
        seed=seed,
        events=events,
        duplicate_share=DUPLICATE_SHARE,
        sibling_share=SIBLING_SHARE,
        malformed_share=MALFORMED_SHARE,
        refused_share=refused_share,
        partitions=partitions,
    )


async def publish_in_batches(
    producer: AIOKafkaProducer, topic: str, records: list[GeneratedRecord]
) -> None:
    """Publish in order, a record batch per partition at a time: about a fifth of the CPU of
    `consumer.workload.publish`'s send() a record, which made loading the bench's millions
    of records take minutes. One idempotent producer keeps each partition's order."""
    builders: dict[int, Any] = {}
    sent: list[asyncio.Future[Any]] = []
    for record in records:
        partition = record.partition
        if partition is None:
            raise ValueError("the bench's workloads name each record's partition")
        builder = builders.get(partition)
        if builder is None:
            builder = builders[partition] = producer.create_batch()
        if builder.append(key=record.key, value=record.value, timestamp=None) is None:
            sent.append(await producer.send_batch(builder, topic, partition=partition))
            builder = builders[partition] = producer.create_batch()
            builder.append(key=record.key, value=record.value, timestamp=None)
    for partition, builder in builders.items():
        sent.append(await producer.send_batch(builder, topic, partition=partition))
    await asyncio.gather(*sent)


def _fresh_sqlite(path: Path) -> str:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    return f"sqlite:///{path}"


# --------------------------------------------------------------------------- progress


class Bar:
    """A one-line progress bar on stderr (a line every few seconds when not a terminal)."""

    WIDTH = 28

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = max(1, total)
        self.started = time.monotonic()
        self.tty = sys.stderr.isatty()
        self._last_line = 0.0
        self._finished = False

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self._finished or (not self.tty and now - self._last_line < 5 and done < self.total):
            return
        self._finished = done >= self.total
        self._last_line = now
        share = min(1.0, done / self.total)
        filled = int(share * self.WIDTH)
        rate = done / max(1e-9, now - self.started)
        line = (
            f"{self.label:<28} [{'#' * filled}{'.' * (self.WIDTH - filled)}] "
            f"{done:>9,}/{self.total:,} {rate:>8,.0f}/s"
        )
        sys.stderr.write(("\r" + line) if self.tty else (line + "\n"))
        sys.stderr.flush()

    def close(self, note: str = "") -> None:
        if self.tty:
            sys.stderr.write("\n")
        if note:
            sys.stderr.write(f"{'':<28} {note}\n")
        sys.stderr.flush()


def say(message: str) -> None:
    sys.stderr.write(f"bench: {message}\n")
    sys.stderr.flush()


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Input:
    """A loaded input topic and what each of its offsets holds."""

    name: str
    partitions: int
    refused_share: float
    index: InputIndex
    load_s: float

    @property
    def records(self) -> int:
        return len(self.index)


SEEDS: Final = {False: 2026, True: 77}  # the same stream at every partition count


class Bench:
    """One benchmark run against the private services."""

    def __init__(self, plan: Plan, svc: Services) -> None:
        self.plan = plan
        self.svc = svc
        self.run_id = uuid.uuid4().hex[:6]
        self.logs = RUN / "logs"
        self.admin = AIOKafkaAdminClient(bootstrap_servers=svc.bootstrap)
        self.inputs: dict[tuple[int, bool], Input] = {}
        self.runs_checked = 0

    def topic(self, stem: str) -> str:
        return f"bench.{stem}.{self.run_id}"

    async def create(self, *names: str, partitions: int = PARTITIONS) -> None:
        await self.admin.create_topics(
            [NewTopic(name=name, num_partitions=partitions, replication_factor=1) for name in names]
        )

    async def input(self, partitions: int, poison: bool = False) -> Input:
        """The input topic of that shape, loaded on first use."""
        key = (partitions, poison)
        if key not in self.inputs:
            self.inputs[key] = await self._load(partitions, poison)
        return self.inputs[key]

    async def _load(self, partitions: int, poison: bool, events: int | None = None) -> Input:
        started = time.monotonic()
        events = self.plan.events_for(partitions, poison) if events is None else events
        share = POISON_SHARE if poison else 0.0
        workload = workload_of(SEEDS[poison], events, partitions, refused_share=share)
        name = self.topic(f"in-p{partitions}{'-poison' if poison else ''}-{events}")
        await self.create(name, partitions=partitions)
        index = InputIndex(partitions)
        bar = Bar(f"load {name.split('.')[1]}", len(workload))
        producer = AIOKafkaProducer(
            bootstrap_servers=self.svc.bootstrap,
            enable_idempotence=True,
            acks="all",
            max_batch_size=512 * 1024,
            max_request_size=8 * 1024 * 1024,
        )
        await producer.start()
        try:
            chunk = 20_000
            for start in range(0, len(workload), chunk):
                records = list(workload.records(start, start + chunk))
                index.add(records)
                await publish_in_batches(producer, name, records)
                bar.update(min(len(workload), start + chunk))
        finally:
            await producer.stop()
        bar.close()
        await self._check_loaded(name, index)
        await self.settle()
        return Input(name, partitions, share, index, round(time.monotonic() - started, 1))

    async def _check_loaded(self, name: str, index: InputIndex) -> None:
        """The index is right only if each partition holds its records in publishing order
        from offset 0, which one idempotent producer on a fresh topic guarantees (and, with
        no transactions, each offset is a record)."""
        ends = await end_offsets(self.svc.bootstrap, name)
        if ends != index.ends():
            raise BenchFailure(f"{name} ends at {ends}, but {index.ends()} records were loaded")

    async def settle(self, idle_share: float = 0.15, within_s: float = 30) -> None:
        """Wait until the broker has digested the load (writing out, collecting garbage).

        Measured before it had, the first contender paid for it: the broker used twice the
        CPU for the same records as for the second.
        """
        deadline = time.monotonic() + within_s
        before = machine.CpuSnapshot.take(self.svc.kafka_pid, None)
        while time.monotonic() < deadline:
            await asyncio.sleep(1)
            now = machine.CpuSnapshot.take(self.svc.kafka_pid, None)
            if now.broker_s - before.broker_s < idle_share:
                return
            before = now

    async def warm_broker(self) -> None:
        """An untimed passthrough run over an input of its own, before anything is measured.

        The load uses no transactions, so the broker's JIT compiled its transaction paths
        during the first measured contender: 13.4 broker CPU-seconds for the worker's
        records, against 7.4 for the same records one contender later.
        """
        source = await self._load(PARTITIONS, False, events=WARM_UP_EVENTS)
        spec = await self.spec("limit", "broker-warm-up", source.name, target=source.records)
        children = Children("broker-warm-up", [spec], self.logs)
        await children.start()
        try:
            await children.wait(within_s=START_TIMEOUT_S + STOP_TIMEOUT_S)
        finally:
            children.kill()
        say(f"broker warmed up ({children.done():,} records passed through)")

    async def database(self, store: str, name: str) -> str:
        if store == "sqlite":
            return _fresh_sqlite(RUN / f"{name}.db")
        return await services.fresh_database(self.svc.postgres_url, name.replace("-", "_"))

    async def spec(
        self,
        kind: Kind,
        name: str,
        input_topic: str,
        target: int | None = None,
        store: str = "postgresql",
        settings: dict[str, Any] | None = None,
    ) -> Spec:
        output, dead = self.topic(f"{name}-out"), self.topic(f"{name}-dlq")
        await self.create(output)
        await self.create(dead, partitions=1)
        return Spec(
            kind=kind,
            bootstrap=self.svc.bootstrap,
            input_topic=input_topic,
            output_topic=output,
            dead_letter_topic=dead,
            group=f"{name}-{self.run_id}",
            database_url=await self.database(store, f"{name}-{self.run_id}"),
            target=target,
            settings={**self.plan.settings, **(settings or {})},
        )

    async def refuse_marked_ids(self, spec: Spec) -> None:
        """Migrate the contender's database now and make it refuse the marked activations
        (`consumer.workload.install_refusal`): the poison records of the poison input."""
        store = await open_store(spec.database_url, migrate=True)
        await store.close()
        await install_refusal(spec.database_url)

    async def check(
        self, name: str, spec: Spec, source: Input, children: Children
    ) -> dict[str, Any]:
        result = await verify(
            name=name,
            kind=spec.kind,
            admin=self.admin,
            bootstrap=self.svc.bootstrap,
            group=spec.group,
            input_topic=spec.input_topic,
            output_topic=spec.output_topic,
            dead_letter_topic=spec.dead_letter_topic,
            database_url=spec.database_url,
            index=source.index,
            done=sum((c.result or {}).get("done", 0) for c in children.children),
            counts=children.counts(),
            logs=children.log_paths(),
        )
        self.runs_checked += 1
        return result

    # ----------------------------------------------------------------------- one run

    async def measure(self, config: Config, round_no: int) -> dict[str, Any]:
        """One timed run of `config`: events/s over the window, then the check."""
        plan = self.plan
        source = await self.input(config.partitions, config.poison)
        label = f"{config.name}-r{round_no + 1}"
        spec = await self.spec(
            config.kind, label, source.name, store=config.store, settings=config.settings
        )
        if config.poison:
            await self.refuse_marked_ids(spec)
        children = Children(label, [spec] * config.replicas, self.logs)
        bar = Bar(label, source.records)
        children.on_sample = bar.update
        before = machine.CpuSnapshot.take(self.svc.kafka_pid, self.svc.postgres_pid)
        await children.start()
        try:
            first = await children.first_commits(within_s=START_TIMEOUT_S)
            start = first + plan.warm_up_s
            end = start + plan.window_s
            await children.run_until(end + 2 * SAMPLE_S, source.records)
            after = machine.CpuSnapshot.take(self.svc.kafka_pid, self.svc.postgres_pid)
            children.terminate()
            await children.wait(within_s=STOP_TIMEOUT_S)
        finally:
            children.kill()
        window = children.window_between(start, end)
        bar.close(
            f"{window.events_per_s:,.0f} events/s over {window.end - window.start:.1f} s "
            f"({window.records:,} records); checking"
        )
        checked = await self.check(label, spec, source, children)
        return {
            "round": round_no + 1,
            "events_per_s": round(window.events_per_s, 1),
            "window_s": round(window.end - window.start, 2),
            "measured_records": window.records,
            "cpu_s_per_10k": round(window.cpu_s / max(1, window.records) * 10_000, 3),
            "peak_rss_mb": round(children.peak_rss_mb(), 1),
            "first_commit_s": round(first - min(c.started_at for c in children.children), 2),
            "input": source.name,
            "counts": children.counts(),
            "check": checked,
            **after.since(before),
        }


# --------------------------------------------------------------------------- the run


async def run(plan: Plan, command: str) -> dict[str, Any]:
    from bench import failover, parts

    started = time.monotonic()
    load_before = machine.load_average()
    if load_before[0] > 0.5:
        say(f"the machine is busy (load {load_before[0]:.2f}): numbers will be noisy")
    shutil.rmtree(RUN / "logs", ignore_errors=True)
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    with services.running(durable=True) as svc:
        bench = Bench(plan, svc)
        await bench.admin.start()
        try:
            await bench.warm_broker()
            steps = {
                "contenders": parts.contenders,
                "latency": parts.latency,
                "sweep": parts.sweeps,
                "failover": failover.failover,
                "memory": parts.memory,
                "batch": parts.batch_sizes,
            }
            for part in PARTS:
                if part in plan.parts:
                    part_started = time.monotonic()
                    say(f"part {part}")
                    results[part] = await steps[part](bench)
                    timings[part] = round(time.monotonic() - part_started, 1)
        finally:
            await bench.admin.close()
        inputs = {
            f"p{key[0]}{'-poison' if key[1] else ''}": {
                "topic": value.name,
                "partitions": value.partitions,
                "records": value.records,
                "refused_share": value.refused_share,
                "load_s": value.load_s,
            }
            for key, value in bench.inputs.items()
        }
        durable, runs_checked = svc.durable, bench.runs_checked
    return {
        "format": 2,
        "plan": plan.name,
        "command": command,
        "parts": [part for part in PARTS if part in plan.parts],
        "method": {
            "rounds": plan.rounds,
            "window_s": plan.window_s,
            "warm_up_s": plan.warm_up_s,
            "sample_s": SAMPLE_S,
        },
        **results,
        "workload": {
            "duplicate_share": DUPLICATE_SHARE,
            "sibling_share": SIBLING_SHARE,
            "malformed_share": MALFORMED_SHARE,
            "poison_share": POISON_SHARE,
            "mean_value_bytes": _mean_value_bytes(),
            "latency_rate_per_s": RATE,
            "latency_seconds": plan.latency_s,
            "settings": plan.settings,
            "session_timeout_ms": int(
                plan.settings.get(
                    "session_timeout_ms", Settings.model_fields["session_timeout_ms"].default
                )
            ),
        },
        "inputs": inputs,
        "checked_runs": runs_checked,
        "postgresql_durable": durable,
        "machine": {
            **machine.describe(),
            "load_before": [round(v, 2) for v in load_before],
            "load_after": [round(v, 2) for v in machine.load_average()],
        },
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "timings_s": timings,
        "duration_s": round(time.monotonic() - started, 1),
    }


def _mean_value_bytes() -> int:
    sample = [len(r.value or b"") for r in workload_of(2026, 1_000, PARTITIONS).records()]
    return round(sum(sample) / len(sample))


def main(plan: Plan, command: str) -> dict[str, Any]:
    return asyncio.run(run(plan, command))
