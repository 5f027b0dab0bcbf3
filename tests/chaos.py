"""Chaos run: worker replicas as processes, killed, paused into zombies, the broker and
PostgreSQL restarted under them, while a seed-shaped workload streams in; then the audit.

    make chaos                                   # the defaults below
    make chaos ARGS="--seed 42 --events 5000"    # reproduce a run, or a smaller one
    .venv/bin/python -m tests.chaos --help

It starts its OWN broker (on free ports) and PostgreSQL (`.run/pg-chaos-<port>`), because
it restarts both; the shared ones stay untouched, and both are removed at the end. The fault
schedule derives from the seed, like the workload, so a failing run prints everything needed
to run it again (the moments are randomized delays: the timing of the machine still varies).
Replica logs stay in .run/chaos/<seed>-<time>-<pid>/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from consumer.audit import AuditReport, audit
from consumer.config import Settings
from consumer.store import open_store
from consumer.workload import Expectation, Workload, publish
from tests.netfaults import ReplicaLinks, create_broker_proxies, create_replica_links
from tests.toxiproxy import Toxiproxy

ROOT = Path(__file__).resolve().parents[1]
FaultKind = Literal["kill", "zombie", "broker", "postgres"]


def say(message: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)  # noqa: T201


# --------------------------------------------------------------------------- configuration


@dataclass
class ChaosConfig:
    """What to run; `make chaos` uses these defaults."""

    seed: int
    events: int = 30_000
    duplicate_share: float = 0.2
    replicas: int = 3
    partitions: int = 6
    kills: int = 10
    zombies: int = 1
    broker_restarts: int = 1
    pg_restarts: int = 1
    waves: int = 60  # the stream arrives in this many slices, evenly spread over stream_s
    stream_s: float = 90.0
    session_timeout_ms: int = 6_000
    batch_max_records: int = 50
    catch_up_timeout_s: float = 900.0
    logs: Path = ROOT / ".run" / "chaos"
    # Each replica's links through proxies of its own (tests/netfaults.py); no network fault
    # is injected yet, this only wires them.
    proxies: bool = False

    def reproduce(self) -> str:
        return (
            f"make chaos ARGS='--seed {self.seed} --events {self.events} "
            f"{'--proxies ' if self.proxies else ''}"
            f"--replicas {self.replicas} --partitions {self.partitions} --kills {self.kills} "
            f"--zombies {self.zombies} --broker-restarts {self.broker_restarts} "
            f"--pg-restarts {self.pg_restarts} --waves {self.waves} --stream {self.stream_s} "
            f"--duplicates {self.duplicate_share} --batch {self.batch_max_records}'"
        )


@dataclass(frozen=True)
class Fault:
    """One fault, `at_s` seconds after the stream starts (or when the previous one is done)."""

    kind: FaultKind
    at_s: float
    pick: float  # which replica, as a fraction of the eligible ones at that moment
    downtime_s: float  # how long the victim stays down (kill, broker, postgres)

    def describe(self) -> str:
        down = f", down {self.downtime_s:.1f}s" if self.kind != "zombie" else ""
        return f"{self.at_s:.1f}s {self.kind} (pick {self.pick:.2f}{down})"


def schedule(config: ChaosConfig) -> list[Fault]:
    """The faults of a run, derived from its seed alone."""
    rng = random.Random(f"chaos-schedule-{config.seed}")
    counts: dict[FaultKind, int] = {
        "kill": config.kills,
        "zombie": config.zombies,
        "broker": config.broker_restarts,
        "postgres": config.pg_restarts,
    }
    kinds = [kind for kind, n in counts.items() for _ in range(n)]
    rng.shuffle(kinds)
    faults = [
        Fault(
            kind=kind,
            # While the stream flows, so that each fault hits batches in flight.
            at_s=round(rng.uniform(0.03, 0.9) * config.stream_s, 1),
            pick=round(rng.random(), 3),
            downtime_s=round(rng.uniform(0.5, 4.0), 2),
        )
        for kind in kinds
    ]
    return sorted(faults, key=lambda f: f.at_s)


# --------------------------------------------------------------------------- services


async def _script(name: str, action: str, env: dict[str, str]) -> str:
    process = await asyncio.create_subprocess_exec(
        "bash",
        str(ROOT / "scripts" / name),
        action,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"scripts/{name} {action} failed:\n{err.decode()[-3000:]}")
    return out.decode().strip()


def free_port_pair() -> int:
    """A port p such that p and p + 1 (the controller's) are both free right now."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        with socket.socket() as other:
            try:
                other.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no two adjacent free ports found")


@dataclass
class Services:
    """The run's own broker and PostgreSQL, which it may stop and start at will.

    Each run gets free ports and its own directories (.run/kafka-<port>, .run/pg-chaos-<port>),
    so runs started by different people at the same time cannot stop each other's services.
    """

    kafka_port: int = field(default_factory=free_port_pair)
    database_url: str = ""
    proxied_replicas: int = 0  # > 0: a Toxiproxy of its own, and links for that many replicas
    links: tuple[ReplicaLinks, ...] = ()
    toxiproxy: Toxiproxy | None = None
    _proxied_listeners: str = ""

    @property
    def pg_run_dir(self) -> Path:
        return ROOT / ".run" / f"pg-chaos-{self.kafka_port}"

    @property
    def toxiproxy_run_dir(self) -> Path:
        return ROOT / ".run" / f"toxiproxy-chaos-{self.kafka_port}"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    def _kafka_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "KAFKA_RUN_DIR"}
        env.update(
            KAFKA_PORT=str(self.kafka_port),
            KAFKA_CONTROLLER_PORT=str(self.kafka_port + 1),
            KAFKA_HEAP=os.environ.get("CHAOS_KAFKA_HEAP", "-Xms256m -Xmx768m"),
            KAFKA_PROXIED_LISTENERS=self._proxied_listeners,
        )
        return env

    def _pg_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        env["PG_RUN_DIR"] = str(self.pg_run_dir)
        return env

    def _toxiproxy_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "TOXIPROXY_PORT"}
        env["TOXIPROXY_RUN_DIR"] = str(self.toxiproxy_run_dir)
        return env

    async def up(self) -> None:
        if self.proxied_replicas:
            # The proxies first: the broker advertises their ports.
            url = (await _script("toxiproxy.sh", "up", self._toxiproxy_env())).splitlines()[-1]
            self.toxiproxy = Toxiproxy(url)
            brokers = await create_broker_proxies(
                self.toxiproxy, f"chaos-{self.kafka_port}", self.proxied_replicas
            )
            self._proxied_listeners = brokers.listeners
        await _script("kafka.sh", "up", self._kafka_env())
        self.database_url = (await _script("pg.sh", "up", self._pg_env())).splitlines()[-1]
        if self.toxiproxy is not None:
            self.links = await create_replica_links(
                self.toxiproxy, f"chaos-{self.kafka_port}", brokers, self.database_url
            )

    async def down(self) -> None:
        with contextlib.suppress(RuntimeError):
            await _script("kafka.sh", "down", self._kafka_env())
        with contextlib.suppress(RuntimeError):
            await _script("pg.sh", "down", self._pg_env())
        if self.toxiproxy is not None:
            await self.toxiproxy.close()
            self.toxiproxy, self.links = None, ()
            with contextlib.suppress(RuntimeError):
                await _script("toxiproxy.sh", "down", self._toxiproxy_env())

    def replica_env(self, index: int, env: dict[str, str]) -> dict[str, str]:
        """`env` with replica `index`'s own links, when the run has proxies."""
        if not self.links:
            return env
        link = self.links[index]
        return {
            **env,
            "KAFKA_BOOTSTRAP_SERVERS": link.bootstrap_servers,
            "DATABASE_URL": link.database_url,
        }

    async def restart_broker(self, downtime_s: float) -> None:
        await _script("kafka.sh", "stop", self._kafka_env())
        await asyncio.sleep(downtime_s)  # the outage itself, part of the workload
        await _script("kafka.sh", "start", self._kafka_env())

    async def restart_postgres(self, downtime_s: float) -> None:
        await _script("pg.sh", "stop", self._pg_env())
        await asyncio.sleep(downtime_s)
        await _script("pg.sh", "start", self._pg_env())


# --------------------------------------------------------------------------- replicas


@dataclass
class Assignment:
    seq: int
    replica: int
    partitions: frozenset[int]


@dataclass
class Replica:
    """One worker process (and its successors after kills), its log and what it said."""

    index: int
    env: dict[str, str]
    log_dir: Path
    board: Board
    incarnation: int = 0
    process: asyncio.subprocess.Process | None = None
    reader: asyncio.Task[None] | None = None
    expected_exit: bool = False
    paused: bool = False
    assignment: Assignment | None = None
    fenced: int = 0
    batches: int = 0
    running: bool = False  # this incarnation logged worker.started
    refusals: int = 0  # consecutive start-ups refused
    tail: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"replica-{self.index}"

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "consumer",
            "run",
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        # No await from here on: the supervisor must never see the new incarnation's state
        # with the old, dead process (it would report that exit a second time).
        self.incarnation += 1
        self.expected_exit = False
        self.assignment = None
        self.running = False
        self.tail = []
        self.process = process
        log = self.log_dir / f"{self.name}.{self.incarnation}.log"
        self.reader = asyncio.create_task(self._read(process, log))

    async def _read(self, process: asyncio.subprocess.Process, log: Path) -> None:
        assert process.stderr is not None
        with log.open("w") as sink:
            async for raw in process.stderr:
                line = raw.decode("utf-8", "replace")
                sink.write(line)
                self.tail = [*self.tail[-30:], line.rstrip()]
                self._observe(line)

    def _observe(self, line: str) -> None:
        if not line.startswith("{"):
            return
        try:
            event = json.loads(line)
        except ValueError:
            return
        name = event.get("event")
        if name == "worker.started":
            self.running = True
            self.refusals = 0
        elif name == "partitions.assigned":
            self.assignment = self.board.assigned(self.index, event.get("partitions", []))
        elif name == "batch.committed":
            self.batches += 1
            self.board.replays += int(event.get("replay", 0))
        elif name in ("store.retry", "broker.retry"):
            self.board.retries[name.split(".")[0]] += 1
        elif name == "transaction.in_doubt":
            self.board.in_doubt += 1
        elif name == "partition.fenced":
            self.fenced += 1
            self.board.fenced += 1

    def signal(self, signum: signal.Signals) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signum)

    async def wait(self) -> int:
        assert self.process is not None
        code = await self.process.wait()
        if self.reader is not None:
            await self.reader
        return code

    async def kill(self) -> None:
        self.expected_exit = True
        self.signal(signal.SIGKILL)
        await self.wait()

    async def terminate(self, grace_s: float) -> int | None:
        """SIGTERM, then SIGKILL after `grace_s`; the exit status, None if it had to be killed."""
        if not self.alive:
            return self.process.returncode if self.process else None
        self.expected_exit = True
        if self.paused:
            self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                return await self.wait()
        except TimeoutError:
            self.signal(signal.SIGKILL)
            await self.wait()
            return None


@dataclass
class Board:
    """What every replica's log said, in one place: assignments in order, fencing counts."""

    seq: int = 0
    history: list[Assignment] = field(default_factory=list)
    fenced: int = 0
    replays: int = 0  # records re-emitted because a crash fell between the two commits
    in_doubt: int = 0  # transactions that ended without an answer and had to be settled
    retries: Counter[str] = field(default_factory=Counter)

    def assigned(self, replica: int, partitions: list[int]) -> Assignment:
        self.seq += 1
        assignment = Assignment(self.seq, replica, frozenset(partitions))
        self.history.append(assignment)
        return assignment


# --------------------------------------------------------------------------- the run


@dataclass
class ChaosResult:
    config: ChaosConfig
    faults: list[Fault]
    injected: Counter[str] = field(default_factory=Counter)
    crashes: list[str] = field(default_factory=list)  # replicas that died after starting
    refusals: list[str] = field(default_factory=list)  # refused to start: a dependency was down
    notes: list[str] = field(default_factory=list)
    report: AuditReport | None = None
    expected: Expectation | None = None
    mismatches: list[str] = field(default_factory=list)
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        # A replica that exits by itself under a fault is a resilience bug even when the
        # accounting holds: transient failures are to be retried, not died of.
        return (
            self.report is not None and self.report.ok and not self.mismatches and not self.crashes
        )

    def summary(self) -> str:
        lines = [
            f"seed {self.config.seed}: {self.config.events} events, "
            f"{self.config.replicas} replicas, {self.config.partitions} partitions, "
            f"{self.duration_s:.0f}s",
            "faults injected: "
            + ", ".join(f"{kind} {self.injected[kind]}" for kind in _FAULT_COUNTS),
        ]
        if self.refusals:
            lines.append(
                f"start-ups refused while a dependency was down (restarted with back-off): "
                f"{len(self.refusals)}"
            )
        if self.crashes:
            lines.append(f"replicas that died after starting (restarted): {len(self.crashes)}")
            lines += [f"  {crash}" for crash in self.crashes]
        lines += self.notes
        if self.expected is not None:
            e = self.expected
            lines.append(
                f"workload: {e.records} records, {e.distinct} distinct ids, "
                f"{e.kinds.get('duplicate', 0)} duplicates, {e.kinds.get('sibling', 0)} "
                f"siblings, {e.kinds.get('malformed', 0)} malformed, "
                f"{len(e.points_by_card)} cards, {e.points} points"
            )
        if self.report is not None:
            lines += ["audit:", *("  " + line for line in self.report.summary().splitlines())]
        lines += [f"MISMATCH {m}" for m in self.mismatches]
        lines.append("chaos: OK" if self.ok else "chaos: FAILED")
        if not self.ok:
            lines.append("reproduce with: " + self.config.reproduce())
            lines.append("schedule: " + "; ".join(f.describe() for f in self.faults))
        return "\n".join(lines)


_FAULT_COUNTS = ("kill", "zombie", "fenced", "broker", "postgres")


class Chaos:
    """Runs one chaos scenario against services that are already up."""

    def __init__(self, config: ChaosConfig, services: Services) -> None:
        self.config = config
        self.services = services
        self.board = Board()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        suffix = f"{config.seed}-{stamp}-{os.getpid()}"
        self.log_dir = config.logs / suffix
        self.settings = Settings(
            kafka_bootstrap_servers=services.bootstrap,
            database_url=services.database_url,
            input_topic=f"chaos-in-{suffix}",
            notification_topic=f"chaos-notify-{suffix}",
            dead_letter_topic=f"chaos-dlq-{suffix}",
            consumer_group=f"chaos-group-{suffix}",
            transactional_id_prefix=f"chaos-tx-{suffix}",
        )
        self.replicas: list[Replica] = []
        self.result = ChaosResult(config, schedule(config))
        self._supervising = True
        self._broker_up = asyncio.Event()
        self._broker_up.set()

    def _env(self) -> dict[str, str]:
        s = self.settings
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_"))}
        env.update(
            KAFKA_BOOTSTRAP_SERVERS=s.kafka_bootstrap_servers,
            DATABASE_URL=s.database_url,
            INPUT_TOPIC=s.input_topic,
            NOTIFICATION_TOPIC=s.notification_topic,
            DEAD_LETTER_TOPIC=s.dead_letter_topic,
            CONSUMER_GROUP=s.consumer_group,
            TRANSACTIONAL_ID_PREFIX=s.transactional_id_prefix,
            HTTP_PORT="0",
            SESSION_TIMEOUT_MS=str(self.config.session_timeout_ms),
            HEARTBEAT_INTERVAL_MS=str(self.config.session_timeout_ms // 6),
            MIGRATE_ON_START="true",
            LOG_FORMAT="json",
            BATCH_MAX_RECORDS=str(self.config.batch_max_records),
            RETRY_MAX_S="2",
            # Shorter than a broker restart: transactions in flight then end without an
            # answer, the case that once published a whole batch twice.
            RETRY_ATTEMPT_TIMEOUT_S="6",
            SHUTDOWN_TIMEOUT_S="20",
        )
        return env

    async def run(self) -> ChaosResult:
        started = time.monotonic()
        config = self.config
        self.log_dir.mkdir(parents=True, exist_ok=True)
        workload = Workload(
            seed=config.seed,
            events=config.events,
            duplicate_share=config.duplicate_share,
            partitions=config.partitions,
        )
        self.result.expected = workload.expectation()
        say(f"seed {config.seed}; logs in {self.log_dir}")
        say("schedule: " + "; ".join(f.describe() for f in self.result.faults))
        await self._create_topics()
        env = self._env()
        self.replicas = [
            Replica(i, self.services.replica_env(i, env), self.log_dir, self.board)
            for i in range(config.replicas)
        ]
        for replica in self.replicas:
            await replica.start()
        supervisor = asyncio.create_task(self._supervise())
        try:
            await asyncio.gather(self._stream(workload), self._faults())
            await self._caught_up()
        finally:
            self._supervising = False
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
            await self._stop_all()
        self.result.injected["fenced"] = self.board.fenced
        self.result.notes.append(
            f"felt: {self.board.replays} replays (a batch applied in the database but not "
            f"committed in Kafka, redone), retries: store {self.board.retries['store']}, "
            f"broker {self.board.retries['broker']}; transactions in doubt settled: "
            f"{self.board.in_doubt}"
        )
        self.result.report = await audit(self.settings)
        await self._compare_with_workload()
        self.result.duration_s = time.monotonic() - started
        return self.result

    async def _create_topics(self) -> None:
        admin = AIOKafkaAdminClient(bootstrap_servers=self.services.bootstrap)
        await admin.start()
        try:
            await admin.create_topics(
                [
                    NewTopic(self.settings.input_topic, self.config.partitions, 1),
                    NewTopic(self.settings.notification_topic, 3, 1),
                    NewTopic(self.settings.dead_letter_topic, 1, 1),
                ]
            )
        finally:
            await admin.close()

    async def _stream(self, workload: Workload) -> None:
        """Publish the workload slice by slice at a steady pace; hold while the broker is down."""
        size = -(-len(workload) // self.config.waves)
        started = time.monotonic()
        for wave in range(self.config.waves):
            start, stop = wave * size, min(len(workload), (wave + 1) * size)
            if start >= stop:
                break
            due = started + wave * self.config.stream_s / self.config.waves
            await asyncio.sleep(max(0.0, due - time.monotonic()))  # the pace of the workload
            await self._broker_up.wait()
            await publish(
                workload.records(start, stop),
                self.settings.input_topic,
                bootstrap_servers=self.services.bootstrap,
            )
            if wave % max(1, self.config.waves // 10) == 0:
                say(f"published records {start}..{stop - 1}")
        say("the whole workload is published")

    async def _faults(self) -> None:
        """Inject the faults one after the other, each at its moment of the stream."""
        started = time.monotonic()
        for fault in self.result.faults:
            await asyncio.sleep(max(0.0, started + fault.at_s - time.monotonic()))
            await self._inject(fault)

    async def _inject(self, fault: Fault) -> None:
        say(f"fault: {fault.describe()}")
        if fault.kind == "kill":
            await self._kill(fault)
        elif fault.kind == "zombie":
            await self._zombie(fault)
        elif fault.kind == "broker":
            await self._while_busy()
            self._broker_up.clear()  # the bridge would buffer: hold the stream meanwhile
            try:
                await self.services.restart_broker(fault.downtime_s)
            finally:
                self._broker_up.set()
        else:
            await self.services.restart_postgres(fault.downtime_s)
        self.result.injected[fault.kind] += 1

    async def _while_busy(self) -> None:
        """Return right after some replica committed a batch: transactions are in flight."""
        done = sum(r.batches for r in self.replicas)
        await _poll(
            lambda: sum(r.batches for r in self.replicas) > done, timeout_s=10, interval_s=0.005
        )

    def _pick(self, fault: Fault, candidates: list[Replica]) -> Replica:
        return candidates[min(len(candidates) - 1, int(fault.pick * len(candidates)))]

    async def _kill(self, fault: Fault) -> None:
        victim = self._pick(fault, [r for r in self.replicas if r.alive] or self.replicas)
        await victim.kill()
        say(f"  SIGKILLed {victim.name}.{victim.incarnation}")
        await asyncio.sleep(fault.downtime_s)
        await victim.start()

    async def _zombie(self, fault: Fault) -> None:
        holding = [r for r in self.replicas if r.alive and r.assignment and r.assignment.partitions]
        victim = self._pick(fault, holding or [r for r in self.replicas if r.alive])
        # Freeze it while it works through a backlog: right after it committed a batch, the
        # next one is being applied, and its Kafka transaction is what must be fenced.
        batches = victim.batches
        await _poll(lambda: victim.batches > batches, timeout_s=10, interval_s=0.005)
        marker = self.board.seq
        fenced_before = victim.fenced
        victim.paused = True
        victim.signal(signal.SIGSTOP)
        say(f"  SIGSTOPped {victim.name}.{victim.incarnation}; waiting for its partitions to move")
        moved = await self._others_cover_all(victim, marker, timeout_s=120)
        if not moved:
            self.result.notes.append("zombie: the group did not move the partitions in 120 s")
        victim.signal(signal.SIGCONT)
        victim.paused = False
        back = await _poll(
            lambda: (
                not victim.alive
                or (victim.assignment is not None and victim.assignment.seq > marker)
            ),
            timeout_s=90,
        )
        say(
            f"  SIGCONTed {victim.name}; fenced {victim.fenced - fenced_before} time(s)"
            + ("" if back else "; it had not rejoined after 90 s")
        )

    async def _others_cover_all(self, victim: Replica, marker: int, timeout_s: float) -> bool:
        everything = set(range(self.config.partitions))

        def covered() -> bool:
            latest: dict[int, Assignment] = {}
            for assignment in self.board.history:
                if assignment.seq > marker and assignment.replica != victim.index:
                    latest[assignment.replica] = assignment
            union: set[int] = set()
            for replica, assignment in latest.items():
                if self.replicas[replica].alive:
                    union |= assignment.partitions
            return union == everything

        return await _poll(covered, timeout_s=timeout_s)

    async def _supervise(self) -> None:
        """Restart replicas that exit on their own, as Kubernetes would, and say so.

        A replica that refuses to start because a dependency is down (it exits before
        `worker.started`, naming it) is restarted with a growing delay, like a crash loop
        back-off; that is the worker's documented start-up behaviour. One that exits after it
        started is a crash: the run fails.
        """
        restart_at: dict[int, float] = {}
        while self._supervising:
            for replica in self.replicas:
                if replica.alive or replica.expected_exit or replica.process is None:
                    restart_at.pop(replica.index, None)  # started meanwhile by a kill fault
                    continue
                if replica.index not in restart_at:
                    code = await replica.wait()
                    last = " | ".join(replica.tail[-3:])[-600:]
                    exit_ = f"{replica.name}.{replica.incarnation} exited with {code}: {last}"
                    if replica.running:
                        self.result.crashes.append(exit_)
                        replica.refusals = 0
                    else:
                        self.result.refusals.append(exit_)
                        replica.refusals += 1
                    delay = min(8.0, 0.25 * 2**replica.refusals)
                    restart_at[replica.index] = time.monotonic() + delay
                    say(f"  {exit_}; restarting it in {delay:.1f}s")
                if time.monotonic() >= restart_at[replica.index] and self._supervising:
                    del restart_at[replica.index]
                    await replica.start()
            await asyncio.sleep(0.25)

    async def _caught_up(self) -> None:
        say("faults done; waiting for the group to reach the end of the input")
        deadline = time.monotonic() + self.config.catch_up_timeout_s
        behind: dict[int, int] = {}
        next_report = time.monotonic() + 15
        async with _lag_meter(self.settings) as lag:
            while time.monotonic() < deadline:
                with contextlib.suppress(KafkaError, OSError):
                    behind = await lag()
                    if behind and not any(behind.values()):
                        say("the group has committed the end of every input partition")
                        return
                if time.monotonic() > next_report:
                    say(f"  records still to commit: {sum(behind.values())} ({behind})")
                    next_report = time.monotonic() + 15
                await asyncio.sleep(1)
        tails = "\n".join(f"{r.name}: " + "\n    ".join(r.tail[-8:]) for r in self.replicas)
        raise RuntimeError(
            f"the group did not catch up within {self.config.catch_up_timeout_s}s; "
            f"lag per partition {behind}\n{tails}"
        )

    async def _stop_all(self) -> None:
        codes = await asyncio.gather(*(r.terminate(grace_s=40) for r in self.replicas))
        for replica, code in zip(self.replicas, codes, strict=True):
            if code is None:
                self.result.notes.append(f"{replica.name} ignored SIGTERM for 40 s (killed)")
            elif code != 0:
                self.result.notes.append(f"{replica.name} stopped with exit status {code}")

    async def _compare_with_workload(self) -> None:
        report, expected = self.result.report, self.result.expected
        assert report is not None and expected is not None
        mismatches = self.result.mismatches
        if report.distinct_ids != expected.distinct:
            mismatches.append(f"distinct ids {report.distinct_ids} != workload {expected.distinct}")
        if report.skipped != expected.kinds.get("sibling", 0):
            mismatches.append(f"skipped {report.skipped} != siblings {expected.kinds['sibling']}")
        if report.dead_lettered != expected.kinds.get("malformed", 0):
            mismatches.append(
                f"dead-lettered {report.dead_lettered} != malformed {expected.kinds['malformed']}"
            )
        store = await open_store(self.settings.database_url)
        try:
            counts = await store.counts()
        finally:
            await store.close()
        if (counts.ledger_entries, counts.activated_points) != (expected.distinct, expected.points):
            mismatches.append(
                f"store holds {counts.ledger_entries} entries / {counts.activated_points} points,"
                f" the workload {expected.distinct} / {expected.points}"
            )


async def _poll(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    """Poll a condition until true or the deadline; True when it became true."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(interval_s)
    return bool(check())


@contextlib.asynccontextmanager
async def _lag_meter(settings: Settings) -> AsyncIterator[Callable[[], Awaitable[dict[int, int]]]]:
    """Measures end offset (read_committed) minus the group's committed offset per partition.

    The clients live for the whole wait: they reconnect by themselves, and starting and
    stopping a consumer every second trips an aiokafka shutdown race.
    """
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    reader = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers, isolation_level="read_committed"
    )
    await admin.start()
    await reader.start()
    # Not subscribed, the reader would learn of the topic only at its next metadata refresh.
    await reader._client.force_metadata_update()
    partitions = [
        TopicPartition(settings.input_topic, p)
        for p in sorted(reader.partitions_for_topic(settings.input_topic) or [])
    ]

    async def lag() -> dict[int, int]:
        ends = await reader.end_offsets(partitions)
        committed = await admin.list_consumer_group_offsets(settings.consumer_group)
        done = {tp.partition: meta.offset for tp, meta in committed.items()}
        return {tp.partition: max(0, end - done.get(tp.partition, 0)) for tp, end in ends.items()}

    try:
        yield lag
    finally:
        await reader.stop()
        await admin.close()


@contextlib.asynccontextmanager
async def own_services(
    kafka_port: int | None = None, proxied_replicas: int = 0
) -> AsyncIterator[Services]:
    """Start the run's own broker and PostgreSQL (and proxies, for `proxied_replicas`
    replicas) and remove them afterwards."""
    services = Services(proxied_replicas=proxied_replicas)
    if kafka_port:
        services.kafka_port = kafka_port
    try:
        await services.up()
        yield services
    finally:
        await services.down()


async def run_chaos(config: ChaosConfig, services: Services) -> ChaosResult:
    chaos = Chaos(config, services)
    try:
        return await chaos.run()
    except BaseException:
        say("the run broke off: reproduce with " + config.reproduce())
        say("schedule: " + "; ".join(f.describe() for f in chaos.result.faults))
        raise


# --------------------------------------------------------------------------- command line


def _arguments(argv: list[str] | None) -> tuple[int, ChaosConfig]:
    parser = argparse.ArgumentParser(prog="make chaos ARGS=...", description=__doc__)
    parser.add_argument("--seed", type=int, default=None, help="default: a fresh one, printed")
    parser.add_argument("--events", type=int, default=30_000)
    parser.add_argument("--duplicates", type=float, default=0.2, help="share of duplicates")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--zombies", type=int, default=1)
    parser.add_argument("--broker-restarts", type=int, default=1)
    parser.add_argument("--pg-restarts", type=int, default=1)
    parser.add_argument("--waves", type=int, default=60, help="slices the stream arrives in")
    parser.add_argument("--stream", type=float, default=90.0, help="seconds the stream lasts")
    parser.add_argument("--batch", type=int, default=50, help="BATCH_MAX_RECORDS of replicas")
    parser.add_argument("--kafka-port", type=int, default=0, help="default: a free port")
    parser.add_argument(
        "--proxies",
        action="store_true",
        help="each replica's links through Toxiproxy proxies of its own (docs/proof.md)",
    )
    args = parser.parse_args(argv)
    return args.kafka_port, ChaosConfig(
        seed=args.seed if args.seed is not None else random.SystemRandom().randrange(10**6),
        events=args.events,
        duplicate_share=args.duplicates,
        replicas=args.replicas,
        partitions=args.partitions,
        kills=args.kills,
        zombies=args.zombies,
        broker_restarts=args.broker_restarts,
        pg_restarts=args.pg_restarts,
        waves=args.waves,
        stream_s=args.stream,
        batch_max_records=args.batch,
        proxies=args.proxies,
    )


async def _main(kafka_port: int, config: ChaosConfig) -> bool:
    say("starting a private broker and PostgreSQL")
    proxied = config.replicas if config.proxies else 0
    async with own_services(kafka_port or None, proxied) as services:
        say(f"broker 127.0.0.1:{services.kafka_port}, PostgreSQL {services.database_url}")
        for link in services.links:
            say(f"  replica-{link.index} through {link.broker!r} and {link.postgres!r}")
        result = await run_chaos(config, services)
    print(result.summary(), flush=True)  # noqa: T201
    return result.ok


def main(argv: list[str] | None = None) -> None:
    kafka_port, config = _arguments(argv)
    sys.exit(0 if asyncio.run(_main(kafka_port, config)) else 1)


if __name__ == "__main__":
    main()
