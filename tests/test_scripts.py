"""The project's own service scripts: idempotent, cached, and clear when they cannot start."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import ROOT, in_ci

KAFKA = ["bash", str(ROOT / "scripts" / "kafka.sh")]


def _free_port_pair() -> int:
    """A port whose successor is free too (the controller listens on port + 1)."""
    for _ in range(50):
        with socket.socket() as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
        with socket.socket() as second:
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair")


def _kafka(port: int, action: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KAFKA_PORT": str(port)}
    return subprocess.run(
        [*KAFKA, action], env=env, capture_output=True, text=True, timeout=180, check=False
    )


@pytest.fixture
def private_port() -> Iterator[int]:
    port = _free_port_pair()
    yield port
    _kafka(port, "down")


def test_kafka_up_twice_then_down_then_up_again(private_port: int) -> None:
    first = _kafka(private_port, "up")
    assert first.returncode == 0, first.stderr
    assert "ready on" in first.stderr

    second = _kafka(private_port, "up")
    assert second.returncode == 0, second.stderr
    assert "already running" in second.stderr
    assert "resolving" not in second.stderr  # the jars are cached, nothing is fetched

    assert _kafka(private_port, "down").returncode == 0
    assert _kafka(private_port, "status").returncode != 0
    again = _kafka(private_port, "up")
    assert again.returncode == 0, again.stderr
    assert "resolving" not in again.stderr
    assert (ROOT / ".cache" / "kafka").is_dir()


def test_kafka_up_on_a_taken_port_fails_fast_with_the_reason() -> None:
    port = _free_port_pair()
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        started = time.monotonic()
        result = _kafka(port, "up")
        elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert f"port {port}" in result.stderr
    assert "already in use" in result.stderr
    assert elapsed < 60  # a bound on failing, not a speed claim


TOXIPROXY = ["bash", str(ROOT / "scripts" / "toxiproxy.sh")]


def _toxiproxy(action: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*TOXIPROXY, action],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,  # the first run builds it
        check=False,
    )


def test_toxiproxy_up_twice_then_down(tmp_path: Path) -> None:
    run_dir = str(tmp_path / "toxiproxy")
    first = _toxiproxy("up", TOXIPROXY_RUN_DIR=run_dir)
    try:
        if first.returncode != 0 and "go not found" in first.stderr:
            message = f"Toxiproxy cannot be built here: {first.stderr.strip()}"
            if in_ci():
                pytest.fail(message, pytrace=False)
            pytest.skip(message)
        assert first.returncode == 0, first.stderr
        url = first.stdout.strip().splitlines()[-1]
        with urllib.request.urlopen(f"{url}/proxies", timeout=5) as answer:
            assert json.loads(answer.read()) == {}

        second = _toxiproxy("up", TOXIPROXY_RUN_DIR=run_dir)
        assert second.returncode == 0, second.stderr
        assert second.stdout.strip().splitlines()[-1] == url  # the same server, not another
        assert "building" not in second.stderr
    finally:
        assert _toxiproxy("down", TOXIPROXY_RUN_DIR=run_dir).returncode == 0
    assert _toxiproxy("status", TOXIPROXY_RUN_DIR=run_dir).returncode != 0


def test_toxiproxy_without_go_says_so_in_one_line_with_the_fix(tmp_path: Path) -> None:
    if any(Path(d, "go").exists() for d in ("/usr/bin", "/bin")):
        pytest.skip("go is installed in /usr/bin here: no PATH without it to try")
    result = _toxiproxy(
        "up",
        PATH="/usr/bin:/bin",
        TOXIPROXY_VERSION="v0.0.0-never-installed",
        TOXIPROXY_RUN_DIR=str(tmp_path / "toxiproxy"),
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "go not found" in lines[0]
    assert "apt-get install -y golang-go" in lines[0]


def test_promtool_script_gives_a_working_promtool_and_fetches_it_once() -> None:
    script = ["bash", str(ROOT / "scripts" / "promtool.sh")]
    first = subprocess.run(script, capture_output=True, text=True, timeout=300, check=False)
    if first.returncode != 0:
        message = f"scripts/promtool.sh could not provide promtool: {first.stderr.strip()}"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)

    again = subprocess.run(script, capture_output=True, text=True, timeout=30, check=True)

    path = first.stdout.strip()
    assert again.stdout.strip() == path
    assert again.stderr == ""  # nothing fetched the second time
    version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30)
    assert "promtool, version" in version.stdout + version.stderr
