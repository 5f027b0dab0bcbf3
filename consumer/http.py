"""The worker's HTTP endpoints: /healthz (alive), /readyz (able to make progress), /metrics."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from consumer.errors import ConfigurationError
from consumer.store.base import Store
from consumer.worker import Worker

log = structlog.get_logger("consumer.http")

ALIVE_WITHIN_S = 60.0  # the loop turns at least every BATCH_MAX_WAIT_MS; a minute means stuck
# Below the probes' 3 s timeout (deploy/k8s), so a hung database still gets a reasoned 503.
PING_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    reasons: list[str]


async def readiness(worker: Worker, store: Store) -> Readiness:
    """Ready when partitions are assigned (or a normal wait for them is on), the store answers,
    nothing is being retried and no partition is stalled."""
    health = worker.health
    patience = worker.settings.stall_timeout_s
    reasons: list[str] = []
    if health.degraded:
        reasons.append(f"retrying {health.degraded}")
    unassigned = health.unassigned_for()
    if unassigned > patience:
        reasons.append(
            f"no partitions assigned for {unassigned:.0f}s "
            "(more replicas than partitions, or the group does not settle)"
        )
    try:
        async with asyncio.timeout(PING_TIMEOUT_S):
            await store.ping()
    except TimeoutError:
        reasons.append(f"store unreachable: no answer within {PING_TIMEOUT_S:g}s")
    except Exception as exc:  # noqa: BLE001  any failure means not ready; the reason is shown
        reasons.append(f"store unreachable: {exc}")
    if stalled := health.stalled_after(patience):
        reasons.append(f"no progress for over {patience:g}s on " + ", ".join(stalled))
    ready = not reasons
    worker.metrics.ready.set(1 if ready else 0)
    return Readiness(ready, reasons)


def make_app(worker: Worker, store: Store) -> web.Application:
    # A batch may legitimately take two attempt timeouts (store, then Kafka) without a turn.
    alive_within = max(ALIVE_WITHIN_S, 3 * worker.settings.retry_attempt_timeout_s)

    async def healthz(_: web.Request) -> web.Response:
        idle = time.monotonic() - worker.health.alive_at
        if idle > alive_within:
            return web.json_response({"alive": False, "loop_idle_s": round(idle, 1)}, status=503)
        return web.json_response({"alive": True})

    async def readyz(_: web.Request) -> web.Response:
        state = await readiness(worker, store)
        body = {
            "ready": state.ready,
            "reasons": state.reasons,
            "assigned_partitions": worker.health.assigned,
        }
        return web.json_response(body, status=200 if state.ready else 503)

    async def metrics(_: web.Request) -> web.Response:
        await readiness(worker, store)  # loyalty_consumer_ready is as fresh as the scrape
        return web.Response(
            body=generate_latest(worker.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def serve(worker: Worker, store: Store, host: str, port: int) -> web.AppRunner:
    """Start the endpoints on the running loop; the caller cleans up the returned runner.

    Port 0 takes a free port (tests); `runner.addresses` says which.
    """
    runner = web.AppRunner(make_app(worker, store), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigurationError(
            f"cannot serve HTTP on {host}:{port} ({exc.strerror}); "
            "set HTTP_PORT to a free port (0 turns the endpoints off)"
        ) from None
    log.info("http.listening", host=host, port=runner.addresses[0][1])
    return runner
