"""Running the worker as a process: store, HTTP endpoints, signals and a bounded shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable

import structlog

from consumer.config import Settings, unknown_variables
from consumer.errors import ConsumerError
from consumer.kafka import ignore_fenced_producer_futures
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
    """Run until SIGTERM/SIGINT (or drained with `once`); raises ConsumerError on bad start.

    Whatever fails at start (the store, the HTTP port, Kafka, the topics, the credentials),
    everything opened before it is closed on the way out: an open SQLite store alone keeps
    the process alive (aiosqlite's thread), and a failed start must exit.
    """
    loop = asyncio.get_running_loop()
    ignore_fenced_producer_futures(loop)
    for variable, meant in unknown_variables():
        log.warning("config.unknown_variable", variable=variable, did_you_mean=meant)
    async with contextlib.AsyncExitStack() as opened:
        store = await open_store(
            settings.database_url, migrate=settings.migrate_on_start, initialise_new=True
        )
        opened.push_async_callback(store.close)
        worker = Worker(
            settings, store, metrics=Metrics(), hooks=_hooks_from_environment(), burst=once
        )
        if settings.http_port:
            from consumer.http import serve

            runner = await serve(worker, store, settings.http_host, settings.http_port)
            opened.push_async_callback(runner.cleanup)
        tune_garbage_collector(settings.gc_gen0_threshold)
        task = asyncio.ensure_future(worker.run())

        def stop_within_bound() -> None:
            worker.stop()
            loop.call_later(settings.shutdown_timeout_s, _cancel_late, task)

        _install_signals(loop, stop_within_bound)
        await _until_done(task)


def _cancel_late(task: asyncio.Task[None]) -> None:
    if not task.done():
        log.warning("worker.shutdown_deadline", action="aborting the batch in flight")
        task.cancel()


async def _until_done(task: Awaitable[None]) -> None:
    with contextlib.suppress(asyncio.CancelledError):
        await task


__all__ = ["ConsumerError", "run_worker"]
