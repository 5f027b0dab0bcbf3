"""Starting contender processes and reading what they report."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.contender import Spec
from bench.services import ROOT


@dataclass(frozen=True, slots=True)
class Sample:
    """One progress report of one child."""

    t: float  # wall clock (time.time()), comparable across processes
    done: int  # input records whose effects are committed
    cpu: float  # the child's user + system CPU seconds so far
    rss_kb: int


@dataclass
class Child:
    """One contender process."""

    name: str
    process: asyncio.subprocess.Process
    started_at: float  # wall clock just before the process was spawned
    samples: list[Sample] = field(default_factory=list)
    ready_at: float | None = None
    first_commit_at: float | None = None  # the first sample with records done
    result: dict[str, Any] | None = None

    def at(self, t: float) -> Sample | None:
        """The last sample taken at or before `t`."""
        found = None
        for sample in self.samples:
            if sample.t > t:
                break
            found = sample
        return found


@dataclass(frozen=True, slots=True)
class Window:
    """The measured part of a run: from the end of warm-up to the last record."""

    start: float
    end: float
    records: int
    cpu_s: float  # the contender processes' CPU seconds within the window

    @property
    def events_per_s(self) -> float:
        return self.records / (self.end - self.start) if self.end > self.start else 0.0


OnSample = Callable[[int], None]


def _log_file(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


class Children:
    """A group of contender processes measured together (one, or several replicas)."""

    def __init__(self, name: str, specs: list[Spec], log_dir: Path) -> None:
        self.name = name
        self.specs = specs
        self.log_dir = log_dir
        self.children: list[Child] = []
        self._readers: list[asyncio.Task[None]] = []
        self.on_sample: OnSample | None = None
        self.stop_at: int | None = None  # SIGTERM every child once all together did this many

    async def start(self) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for index, spec in enumerate(self.specs):
            name = f"{self.name}.{index}" if len(self.specs) > 1 else self.name
            log = _log_file(self.log_dir / f"{name}.log")
            started_at = time.time()
            try:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench.contender",
                    spec.to_json(),
                    cwd=ROOT,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=log,
                    limit=1 << 20,
                )
            finally:
                os.close(log)
            child = Child(name, process, started_at)
            self.children.append(child)
            self._readers.append(asyncio.create_task(self._read(child)))

    async def _read(self, child: Child) -> None:
        stream = child.process.stdout
        assert stream is not None
        while line := await stream.readline():
            with contextlib.suppress(ValueError):
                message = json.loads(line)
                if "result" in message:
                    child.result = message["result"]
                elif "ready" in message:
                    child.ready_at = float(message["t"])
                else:
                    sample = Sample(
                        message["t"], message["done"], message["cpu"], message["rss_kb"]
                    )
                    child.samples.append(sample)
                    if child.first_commit_at is None and sample.done > 0:
                        child.first_commit_at = sample.t
                    done = self.done()
                    if self.on_sample is not None:
                        self.on_sample(done)
                    if self.stop_at is not None and done >= self.stop_at:
                        self.stop_at = None
                        self.terminate()

    def done(self) -> int:
        return sum(c.samples[-1].done for c in self.children if c.samples)

    async def ready(self, within_s: float) -> None:
        """Wait until every child owns partitions (or one of them has exited)."""
        deadline = time.monotonic() + within_s
        while any(c.ready_at is None for c in self.children):
            if any(c.process.returncode is not None for c in self.children):
                raise RuntimeError(self._failure("exited before it was ready"))
            if time.monotonic() > deadline:
                raise RuntimeError(self._failure(f"not ready after {within_s:.0f}s"))
            await asyncio.sleep(0.05)

    async def first_commits(self, within_s: float) -> float:
        """Wait until every child has committed something; the last one's time."""
        deadline = time.monotonic() + within_s
        while any(c.first_commit_at is None for c in self.children):
            self._raise_if_exited("exited before its first commit")
            if time.monotonic() > deadline:
                raise RuntimeError(self._failure(f"committed nothing within {within_s:.0f}s"))
            await asyncio.sleep(0.05)
        return max(c.first_commit_at or 0.0 for c in self.children)

    async def run_until(self, until: float, input_records: int) -> None:
        """Let the children work until wall-clock `until`; fail if one exits or the input
        runs out first (a window measured on an idle contender would flatter nobody)."""
        while time.time() < until:
            self._raise_if_exited("exited during its measurement")
            if self.done() >= input_records:
                raise RuntimeError(
                    self._failure(
                        f"consumed all {input_records:,} input records before its window "
                        "closed: load more (the plan's events) or shorten the window"
                    )
                )
            await asyncio.sleep(0.05)

    def _raise_if_exited(self, what: str) -> None:
        if any(c.process.returncode is not None for c in self.children):
            raise RuntimeError(self._failure(what))

    def kill_child(self, index: int) -> float:
        """SIGKILL one child (a replica lost without warning); the wall-clock time of it."""
        child = self.children[index]
        child.process.kill()
        return time.time()

    async def wait(self, within_s: float) -> None:
        """Wait for every child to exit by itself; kill them all after `within_s`."""
        try:
            async with asyncio.timeout(within_s):
                await asyncio.gather(*(c.process.wait() for c in self.children))
        except TimeoutError:
            self.kill()
            await asyncio.gather(*(c.process.wait() for c in self.children))
            raise RuntimeError(self._failure(f"did not finish within {within_s:.0f}s")) from None
        finally:
            await asyncio.gather(*self._readers, return_exceptions=True)
        failed = [c for c in self.children if c.process.returncode != 0 or c.result is None]
        if failed:
            raise RuntimeError(self._failure(f"exited with status {failed[0].process.returncode}"))

    def terminate(self) -> None:
        for child in self.children:
            if child.process.returncode is None:
                child.process.terminate()

    def kill(self) -> None:
        for child in self.children:
            if child.process.returncode is None:
                child.process.kill()

    def _failure(self, what: str) -> str:
        return f"contender {self.name} {what}; see {self.log_paths()}"

    def window_between(self, start: float, end: float) -> Window:
        """The measured window: from the first sample at or after `start` (wall clock) to
        the first at or after `end`, all children's records together."""
        timeline = sorted({s.t for c in self.children for s in c.samples})
        first = next((t for t in timeline if t >= start), None)
        last = next((t for t in timeline if t >= end), None)
        if first is None or last is None or last <= first:
            raise RuntimeError(self._failure("has no samples spanning its measuring window"))

        def total(t: float, field: str) -> float:
            return float(
                sum(getattr(s, field) for c in self.children if (s := c.at(t)) is not None)
            )

        records = int(total(last, "done") - total(first, "done"))
        return Window(first, last, records, total(last, "cpu") - total(first, "cpu"))

    def log_paths(self) -> str:
        return ", ".join(str(self.log_dir / f"{c.name}.log") for c in self.children)

    def window(self, warm_up: int, records: int) -> Window:
        """The measured window: from `warm_up` records done to `records` done (all children)."""
        timeline = sorted({s.t for c in self.children for s in c.samples})
        start = end = None
        for t in timeline:
            done = sum(s.done for c in self.children if (s := c.at(t)) is not None)
            if start is None and done >= warm_up:
                start = (t, done)
            if done >= records:
                end = (t, done)
                break
        if start is None or end is None:
            raise RuntimeError(f"contender {self.name} never reached {records} records")

        def cpu(t: float) -> float:
            return sum(s.cpu for c in self.children if (s := c.at(t)) is not None)

        return Window(start[0], end[0], end[1] - start[1], cpu(end[0]) - cpu(start[0]))

    def peak_rss_mb(self) -> float:
        """The largest peak resident set of any one child (each is one replica)."""
        peaks = [(c.result or {}).get("peak_rss_kb", 0) for c in self.children]
        return max(peaks, default=0) / 1024

    def counts(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for child in self.children:
            for key, value in ((child.result or {}).get("counts") or {}).items():
                totals[key] = totals.get(key, 0) + int(value)
        return totals

    def rss_at(self, done: int) -> float:
        """Peak RSS (MB) seen in the samples up to `done` records (one child)."""
        child = self.children[0]
        seen = [s.rss_kb for s in child.samples if s.done <= done]
        return max(seen, default=0) / 1024
