"""The README's first command works: the demo runs the reference event through to the end."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path

from tests.services import ROOT


async def test_demo_prints_the_notification_the_balance_the_dead_letter_and_counts(
    kafka_bootstrap: str,
) -> None:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap}
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert '"points_activated": 23' in out
    assert "activated by us 23, Voucherify balance 23, still pending 46" in out
    assert "not JSON" in out
    for line in (
        "applied           1",
        "duplicates        1",
        "skipped           1",
        "dead_lettered     1",
    ):
        assert line in out


async def test_demo_on_a_fresh_broker_prints_no_line_at_error_level(tmp_path: Path) -> None:
    # A fresh clone's `make demo`: demo.sh starts a broker of its own, new storage and all
    # (a group coordinator that is not there yet is part of every first start), and stops it.
    ports = _free_ports(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "DATABASE_"))}
    env.update(
        KAFKA_PORT=str(ports[0]),
        KAFKA_CONTROLLER_PORT=str(ports[1]),
        KAFKA_RUN_DIR=str(tmp_path / "broker"),
        KAFKA_HEAP="-Xms128m -Xmx512m",
    )

    result = await asyncio.to_thread(
        subprocess.run,
        ["bash", str(ROOT / "scripts" / "demo.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "applied           1" in result.stdout
    for line in (result.stdout + result.stderr).splitlines():
        lowered = line.lower()
        assert "[error" not in lowered and '"level": "error"' not in lowered, line
        assert not lowered.startswith("error"), line
        assert "traceback" not in lowered and "never retrieved" not in lowered, line


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()
