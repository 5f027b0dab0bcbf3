"""Where tests find Kafka, PostgreSQL and Toxiproxy: given address, testcontainers, scripts."""

from __future__ import annotations

import contextlib
import gc
import os
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def docker_engine_answers() -> bool:
    """True only when a Docker engine really responds (a bare client binary is not enough)."""
    if os.environ.get("TESTS_NO_DOCKER"):
        return False
    # docker-py leaves the socket of a failed probe open (a socket file with no engine behind
    # it); collected later, it would fail whichever test happened to be running.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            import docker  # comes with testcontainers

            client = docker.from_env(timeout=3)
            ok = bool(client.ping())
            client.close()
        except Exception:  # any failure means "no engine here"
            return False
        finally:
            gc.collect()
    return ok


def _run_script(*args: str) -> str:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / args[0]), *args[1:]],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"scripts/{args[0]} {' '.join(args[1:])} failed:\n{result.stderr[-3000:]}"
        )
    return result.stdout.strip()


@contextlib.contextmanager
def kafka_bootstrap() -> Iterator[str]:
    explicit = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if explicit:
        yield explicit
        return
    if docker_engine_answers():
        from testcontainers.kafka import KafkaContainer

        with KafkaContainer("apache/kafka:4.1.1").with_kraft() as container:
            yield str(container.get_bootstrap_server())
        return
    port = os.environ.get("KAFKA_PORT", "9092")
    _run_script("kafka.sh", "up")
    yield f"127.0.0.1:{port}"


@contextlib.contextmanager
def postgres_url() -> Iterator[str]:
    explicit = os.environ.get("TEST_DATABASE_URL")
    if explicit:
        yield explicit
        return
    if docker_engine_answers():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver=None) as container:
            yield str(container.get_connection_url())
        return
    yield _run_script("pg.sh", "up")


@contextlib.contextmanager
def toxiproxy_url() -> Iterator[str]:
    """Toxiproxy's API: TOXIPROXY_URL, or scripts/toxiproxy.sh, which builds it once (Go)."""
    explicit = os.environ.get("TOXIPROXY_URL")
    if explicit:
        yield explicit
        return
    yield _run_script("toxiproxy.sh", "up").splitlines()[-1]
