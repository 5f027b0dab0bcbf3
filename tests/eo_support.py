"""Helpers of the issue #14 regression tests: worker processes read by their log events, and
a private broker a test may freeze without stopping anyone else's tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.structs import ConsumerRecord

from consumer.config import Settings
from tests.services import ROOT


def notified_ids(notifications: Iterable[ConsumerRecord]) -> Counter[str]:
    """How many times each transaction id was notified."""
    return Counter(json.loads(n.value)["voucherify"]["transaction_id"] for n in notifications)


def process_environment(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of `python -m consumer run` for these settings (JSON logs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_"))}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=settings.kafka_bootstrap_servers,
        DATABASE_URL=settings.database_url,
        INPUT_TOPIC=settings.input_topic,
        NOTIFICATION_TOPIC=settings.notification_topic,
        DEAD_LETTER_TOPIC=settings.dead_letter_topic,
        CONSUMER_GROUP=settings.consumer_group,
        TRANSACTIONAL_ID_PREFIX=settings.transactional_id_prefix,
        DELIVERY_MODE=settings.delivery_mode,
        BATCH_MAX_RECORDS=str(settings.batch_max_records),
        RETRY_ATTEMPT_TIMEOUT_S=str(settings.retry_attempt_timeout_s),
        RETRY_INITIAL_S=str(settings.retry_initial_s),
        RETRY_MAX_S=str(settings.retry_max_s),
        SESSION_TIMEOUT_MS=str(settings.session_timeout_ms),
        HEARTBEAT_INTERVAL_MS=str(settings.heartbeat_interval_ms),
        MAX_POLL_INTERVAL_MS=str(settings.max_poll_interval_ms),
        HTTP_PORT="0",
        MIGRATE_ON_START="true",
        LOG_FORMAT="json",
    )
    env.update(extra)
    return env


@dataclass
class WorkerProcess:
    """`python -m consumer run` as a child process, with its log events kept as they come."""

    env: dict[str, str]
    process: asyncio.subprocess.Process | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    _reader: asyncio.Task[None] | None = None
    _seen: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "consumer",
            "run",
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process is not None and self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace")
            try:
                event = json.loads(line)
            except ValueError:
                event = {"event": "(not json)", "line": line.rstrip()}
            self.events.append(event)
            self._seen.set()

    def named(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") == name]

    async def wait_for(self, name: str, *, count: int = 1, timeout: float = 60) -> None:  # noqa: ASYNC109
        """Until the process has logged `name` `count` times; fails if it exits first."""
        async with asyncio.timeout(timeout):
            while len(self.named(name)) < count:
                if self.exited:
                    raise AssertionError(
                        f"the worker exited ({self.returncode}) before logging {name}: "
                        + self.tail()
                    )
                self._seen.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.5):
                        await self._seen.wait()

    @property
    def exited(self) -> bool:
        return self.process is not None and self.process.returncode is not None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    def tail(self, lines: int = 15) -> str:
        return "\n".join(json.dumps(e) for e in self.events[-lines:])

    def signal(self, signum: signal.Signals) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signum)

    async def stop(self, timeout: float = 60) -> int:  # noqa: ASYNC109
        """SIGTERM (after SIGCONT, in case it was frozen) and the exit status."""
        assert self.process is not None
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(timeout):
                code = await self.process.wait()
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise
        if self._reader is not None:
            await self._reader
        return code

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        if self._reader is not None:
            await self._reader


def _free_port_pair() -> int:
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


@dataclass(frozen=True)
class PrivateBroker:
    bootstrap: str
    pid: int

    def freeze(self) -> None:
        os.kill(self.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.pid, signal.SIGCONT)


@contextlib.asynccontextmanager
async def private_broker(directory: Path) -> AsyncIterator[PrivateBroker]:
    """A broker of the test's own on free ports (scripts/kafka.sh), removed afterwards."""
    port = _free_port_pair()
    run_dir = directory / "broker"
    env = {
        **os.environ,
        "KAFKA_PORT": str(port),
        "KAFKA_CONTROLLER_PORT": str(port + 1),
        "KAFKA_RUN_DIR": str(run_dir),
        "KAFKA_HEAP": "-Xms128m -Xmx512m",
    }
    script = ["bash", str(ROOT / "scripts" / "kafka.sh")]
    started = await asyncio.to_thread(
        subprocess.run, [*script, "up"], env=env, capture_output=True, text=True, timeout=180
    )
    try:
        if started.returncode != 0:
            raise RuntimeError(f"the private broker did not start:\n{started.stderr[-3000:]}")
        pid = int((run_dir / "kafka.pid").read_text())
        yield PrivateBroker(f"127.0.0.1:{port}", pid)
    finally:
        with contextlib.suppress(ProcessLookupError, ValueError, FileNotFoundError):
            os.kill(int((run_dir / "kafka.pid").read_text()), signal.SIGCONT)
        await asyncio.to_thread(
            subprocess.run, [*script, "down"], env=env, capture_output=True, timeout=120
        )
