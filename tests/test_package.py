"""The package's face: what `import consumer` offers, and one version everywhere."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import consumer


def test_every_public_name_is_importable_from_the_package() -> None:
    missing = [name for name in consumer.__all__ if not hasattr(consumer, name)]
    assert missing == []
    assert {"Worker", "Settings", "classify", "PendingPointsActivatedNotification"} <= set(
        consumer.__all__
    )


def test_the_installed_version_is_the_package_version() -> None:
    assert importlib.metadata.version("loyalty-consumer") == consumer.__version__


def test_the_command_line_reports_the_same_version() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "consumer", "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert consumer.__version__ in shown
