"""The worker's HTTP endpoints: /healthz (alive), /readyz (able to make progress), /metrics."""

from __future__ import annotations

import time
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from consumer.store.base import Store
from consumer.worker import Worker

ALIVE_WITHIN_S = 60.0  # the loop turns at least every BATCH_MAX_WAIT_MS; a minute means stuck


@dataclass(frozen=True, slots=True)
class Readiness:
    ready: bool
    reasons: list[str]


async def readiness(worker: Worker, store: Store) -> Readiness:
    """Ready when the store answers, nothing is degraded and no partition is stalled."""
    reasons: list[str] = []
    if worker.health.degraded:
        reasons.append(f"retrying {worker.health.degraded}")
    try:
        await store.ping()
    except Exception as exc:  # noqa: BLE001  any failure means not ready; the reason is shown
        reasons.append(f"store unreachable: {exc}")
    if worker.health.stalled:
        reasons.append("stalled partitions: " + ", ".join(worker.health.stalled))
    ready = not reasons
    worker.metrics.ready.set(1 if ready else 0)
    return Readiness(ready, reasons)


def make_app(worker: Worker, store: Store) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        age = time.monotonic() - worker.health.alive_at
        if age > ALIVE_WITHIN_S:
            return web.json_response({"alive": False, "loop_idle_s": round(age, 1)}, status=503)
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
        await readiness(worker, store)
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
    """Start the endpoints on the running loop; the caller cleans up the returned runner."""
    runner = web.AppRunner(make_app(worker, store), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
