"""Running the worker as a process: store, HTTP endpoints, signals and a bounded shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable

import structlog

from consumer.config import Settings
from consumer.errors import ConsumerError
from consumer.metrics import Metrics
from consumer.runtime import tune_garbage_collector
from consumer.store import open_store
from consumer.worker import Hooks, Worker

log = structlog.get_logger("consumer.service")

# Test-only: the crash-recovery test kills the process between the database commit and
# the Kafka commit. Never set in production; nothing else reads it.
CRASH_AFTER_DB_COMMIT = "LOYALTY_CONSUMER_TEST_CRASH_AFTER_DB_COMMIT"


def _hooks_from_environment() -> Hooks:
    hooks = Hooks()
    if os.environ.get(CRASH_AFTER_DB_COMMIT) == "1":

        async def crash() -> None:
            os.kill(os.getpid(), signal.SIGKILL)

        hooks.after_store_commit = crash
    return hooks


def _install_signals(loop: asyncio.AbstractEventLoop, on_first: Callable[[], None]) -> None:
    signals_seen = 0

    def handle(signum: int) -> None:
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            log.info("worker.stopping", signal=signal.Signals(signum).name)
            on_first()
        else:
            log.warning("worker.forced_exit", signal=signal.Signals(signum).name)
            os._exit(130)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, handle, signum)


async def run_worker(settings: Settings, *, once: bool = False) -> None:
    """Run until SIGTERM/SIGINT (or drained with `once`); raises ConsumerError on bad start."""
    store = await open_store(settings.database_url, migrate=settings.migrate_on_start)
    worker = Worker(settings, store, metrics=Metrics(), hooks=_hooks_from_environment(), burst=once)
    runner = None
    if settings.http_port:
        from consumer.http import serve

        runner = await serve(worker, store, settings.http_host, settings.http_port)
    tune_garbage_collector(settings.gc_gen0_threshold)
    task = asyncio.ensure_future(worker.run())

    def stop_within_bound() -> None:
        worker.stop()
        asyncio.get_running_loop().call_later(settings.shutdown_timeout_s, _cancel_late, task)

    _install_signals(asyncio.get_running_loop(), stop_within_bound)
    try:
        await _until_done(task)
    finally:
        if runner is not None:
            await runner.cleanup()
        await store.close()


def _cancel_late(task: asyncio.Task[None]) -> None:
    if not task.done():
        log.warning("worker.shutdown_deadline", action="aborting the batch in flight")
        task.cancel()


async def _until_done(task: Awaitable[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await task


__all__ = ["ConsumerError", "run_worker"]
