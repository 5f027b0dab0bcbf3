"""One contender in its own process, so that its CPU time and peak memory are its own.

`python -m bench.contender '<spec as JSON>'` runs the worker (`ours`), the passthrough
(`limit`), the record-at-a-time loop (`naive`) or the FastStream application (`faststream`)
over the input topic and reports on stdout, one JSON object a line:

- `{"ready": true, "t": …}` once it owns partitions and can commit;
- `{"t": …, "done": n, "cpu": s, "rss_kb": k}` about ten times a second, where `done`
  counts input records whose effects are committed;
- `{"result": {…}}` last: totals, CPU seconds, peak RSS and the outcome counts.

Logs go to stderr, which the harness sends to a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Kind = Literal["ours", "limit", "naive", "faststream"]

PROGRESS_EVERY_S = 0.1
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass
class Spec:
    """What one contender process runs, and on what."""

    kind: Kind
    bootstrap: str
    input_topic: str
    output_topic: str
    dead_letter_topic: str
    group: str
    database_url: str
    target: int | None  # stop after this many input records; None: on SIGTERM (replicas)
    settings: dict[str, Any] = field(default_factory=dict)  # Settings overrides

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> Spec:
        return cls(**json.loads(text))


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_kb() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE_KB


def peak_rss_kb() -> int:
    """The high-water mark of this process's resident memory.

    Not ru_maxrss: Linux carries that across execve, so a child forked from a large harness
    would report the harness's size. VmHWM belongs to the address space exec created.
    """
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class Progress:
    """Reports how many records are done, and stops the contender at its target."""

    def __init__(self, target: int | None, stop: Callable[[], None]) -> None:
        self.target = target
        self._stop = stop
        self._ready = False

    def ready(self) -> None:
        if not self._ready:
            self._ready = True
            emit({"ready": True, "t": time.time()})

    async def report(self, done: Callable[[], int]) -> None:
        """Until cancelled: a sample every PROGRESS_EVERY_S; ask to stop at the target."""
        # Replicas share the input, so none knows when all is done: the harness says so.
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self._stop)
        while True:
            count = done()
            emit({"t": time.time(), "done": count, "cpu": cpu_seconds(), "rss_kb": rss_kb()})
            if self.target is not None and count >= self.target:
                self._stop()
            await asyncio.sleep(PROGRESS_EVERY_S)


async def run(spec: Spec) -> dict[str, Any]:
    if spec.kind == "ours":
        from bench.ours import run_ours

        return await run_ours(spec)
    if spec.kind == "limit":
        from bench.passthrough import run_passthrough

        return await run_passthrough(spec)
    if spec.kind == "faststream":
        from bench.faststream_app import run_faststream

        return await run_faststream(spec)
    from bench.naive import run_naive

    return await run_naive(spec)


async def until_stopped(work: Awaitable[None], progress: Progress, done: Callable[[], int]) -> None:
    """Run the contender's loop with the progress reporter beside it; one last sample at the end."""
    reporter = asyncio.ensure_future(progress.report(done))
    try:
        await work
    finally:
        reporter.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reporter
        emit({"t": time.time(), "done": done(), "cpu": cpu_seconds(), "rss_kb": rss_kb()})


def main() -> None:
    spec = Spec.from_json(sys.argv[1])
    from consumer import logs

    logs.configure("json", os.environ.get("BENCH_LOG_LEVEL", "INFO"))
    result = asyncio.run(run(spec))
    result.update(cpu=cpu_seconds(), peak_rss_kb=peak_rss_kb())
    emit({"result": result})


if __name__ == "__main__":
    main()
