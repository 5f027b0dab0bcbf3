"""The README's first command works: the demo runs the reference event through to the end."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

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
