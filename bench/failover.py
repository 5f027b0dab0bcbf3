"""Start-up and hand-over: what a replica costs when it starts, joins, and is lost.

One scenario a round, per partition count, on a fresh group:

1. replica A starts: **start-up** is from spawning its process to its first commit;
2. once A has worked for `STEADY_S`, replica B starts: **join** is from spawning B to B's
   first commit (A gives up half of its partitions to it);
3. once both have worked for `STEADY_S`, A is killed (SIGKILL: no goodbye to the group):
   **hand-over** is from the kill until every partition's committed offset has moved past
   where it stood, that is until B commits the partitions A held. The group coordinator
   notices the loss only after the session timeout (`SESSION_TIMEOUT_MS`), so that is the
   floor of this figure with the settings given.

The group's committed offsets are read from the broker every `POLL_S`, so the figures do
not depend on the worker's own reports. Afterwards every committed notification must be
there once (a killed replica's open transactions must never become visible).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final

from bench.children import Children
from bench.rounds import orders, summarise
from bench.run import START_TIMEOUT_S, STOP_TIMEOUT_S, Bench, Input, say
from bench.verify import BenchFailure, committed_offsets, no_output_twice

STEADY_S: Final = 2.0
POLL_S: Final = 0.05
# A commit the killed process had already sent may still be applied by the broker just after
# the kill; offsets read sooner would count it as the hand-over's first commit.
IN_FLIGHT_S: Final = 0.25
HANDOVER_TIMEOUT_S: Final = 180.0


async def failover(bench: Bench) -> dict[str, Any]:
    plan = bench.plan
    runs: dict[int, list[dict[str, Any]]] = {n: [] for n in plan.failover_partitions}
    for round_no, order in enumerate(orders(list(plan.failover_partitions), plan.rounds)):
        for partitions in order:
            runs[partitions].append(await scenario(bench, partitions, round_no))
    found: dict[str, Any] = {}
    for partitions, measured in runs.items():
        found[str(partitions)] = {
            name: summarise([run[name] for run in measured], 2)
            for name in ("startup_s", "join_s", "handover_s")
        } | {"runs": measured}
    return found


async def scenario(bench: Bench, partitions: int, round_no: int) -> dict[str, Any]:
    source = await bench.input(partitions)
    label = f"failover-p{partitions}-r{round_no + 1}"
    spec = await bench.spec("ours", label, source.name)
    first = Children(f"{label}.a", [spec], bench.logs)
    second = Children(f"{label}.b", [spec], bench.logs)
    await first.start()
    try:
        committed_at = await first.first_commits(within_s=START_TIMEOUT_S)
        startup = committed_at - first.children[0].started_at
        await first.run_until(committed_at + STEADY_S, source.records)
        await second.start()
        joined_at = await second.first_commits(within_s=START_TIMEOUT_S)
        join = joined_at - second.children[0].started_at
        await second.run_until(joined_at + STEADY_S, source.records)
        killed_at = first.kill_child(0)
        handover, stalled = await handed_over(bench, spec.group, source, second, killed_at)
        second.terminate()
        await second.wait(within_s=STOP_TIMEOUT_S)
    finally:
        first.kill()
        second.kill()
    logs = f"{first.log_paths()}, {second.log_paths()}"
    outputs = await no_output_twice(bench.svc.bootstrap, spec.output_topic, label, logs)
    say(
        f"{label}: start-up {startup:.2f} s, join {join:.2f} s, hand-over {handover:.2f} s "
        f"({stalled} partitions waited); {outputs:,} notifications, none twice"
    )
    return {
        "round": round_no + 1,
        "startup_s": round(startup, 2),
        "join_s": round(join, 2),
        "handover_s": round(handover, 2),
        "stalled_partitions": stalled,
        "notifications": outputs,
    }


async def handed_over(
    bench: Bench, group: str, source: Input, survivor: Children, killed_at: float
) -> tuple[float, int]:
    """Seconds from the kill until every partition committed again; how many had stalled
    (first commit more than a second after the kill: those the killed replica held)."""
    await asyncio.sleep(IN_FLIGHT_S)
    ends = source.index.ends()
    before = await committed_offsets(bench.admin, group, source.name)
    # A partition read to its end cannot move again; it has nothing to hand over.
    waiting = {p for p in range(source.partitions) if before.get(p, 0) < ends[p]}
    moved: dict[int, float] = {}
    deadline = time.monotonic() + HANDOVER_TIMEOUT_S
    while waiting - moved.keys():
        if time.monotonic() > deadline:
            raise BenchFailure(
                f"{group}: partitions {sorted(waiting - moved.keys())} committed nothing "
                f"within {HANDOVER_TIMEOUT_S:.0f}s of losing a replica; see {survivor.log_paths()}"
            )
        if any(c.process.returncode is not None for c in survivor.children):
            raise BenchFailure(f"{group}: the surviving replica exited; see {survivor.log_paths()}")
        now = await committed_offsets(bench.admin, group, source.name)
        seen = time.time()
        for partition in waiting - moved.keys():
            if now.get(partition, 0) > before.get(partition, 0):
                moved[partition] = seen
        await asyncio.sleep(POLL_S)
    if not moved:
        return 0.0, 0
    stalled = sum(1 for at in moved.values() if at - killed_at > 1.0)
    return max(moved.values()) - killed_at, stalled
