"""`loyalty-consumer validate --secret --signature`, run as the installed command is."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import workload
from tests.contract_files import SEED_NAME, contracts_dir, encode, seed_data

SECRET = "Project-Webhook-Secret-0b7e"


def validate(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOUCHERIFY_", "WEBHOOK_"))}
    return subprocess.run(
        [sys.executable, "-m", "consumer", "validate", *args],
        input=None if stdin is None else stdin.decode(),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def voucherify_signature(path: Path, secret: str = SECRET) -> str:
    """What Voucherify puts in x-voucherify-signature, computed without consumer.signature."""
    return hmac.new(secret.encode(), path.read_bytes(), hashlib.sha256).hexdigest()


@pytest.fixture
def seed_file() -> Path:
    return contracts_dir() / "examples" / SEED_NAME


@pytest.fixture
def broken_file(tmp_path: Path) -> Path:
    data = seed_data()
    del data["transaction"]["id"]
    path = tmp_path / "broken.json"
    path.write_bytes(encode(data))
    return path


def test_a_correctly_signed_file_is_applied_and_says_its_signature_is_valid(
    seed_file: Path,
) -> None:
    result = validate(
        "--secret", SECRET, "--signature", voucherify_signature(seed_file), str(seed_file)
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{seed_file}: apply (transaction {workload.SEED_TRANSACTION_ID}), signature valid"
    ]


def test_a_signature_under_another_secret_is_invalid_naming_the_signature(seed_file: Path) -> None:
    result = validate(
        "--secret",
        SECRET,
        "--signature",
        voucherify_signature(seed_file, "Some-Other-Secret"),
        str(seed_file),
    )

    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{seed_file}: invalid",
        "    header x-voucherify-signature: does not match the record value under the "
        "webhook secret",
    ]
    assert SECRET not in result.stdout + result.stderr


def test_a_file_changed_after_signing_is_invalid(seed_file: Path, tmp_path: Path) -> None:
    signature = voucherify_signature(seed_file)
    # The same JSON without its whitespace: a bridge that re-encodes the body breaks it.
    reencoded = tmp_path / "reencoded.json"
    reencoded.write_text(json.dumps(json.loads(seed_file.read_bytes()), separators=(",", ":")))
    assert reencoded.read_bytes() != seed_file.read_bytes()

    result = validate("--json", "--secret", SECRET, "--signature", signature, str(reencoded))

    assert result.returncode == 1
    assert json.loads(result.stdout) == {
        "file": str(reencoded),
        "verdict": "invalid",
        "event_type": None,
        "transaction_id": None,
        "errors": [
            "header x-voucherify-signature: does not match the record value under the "
            "webhook secret"
        ],
        "signature": "invalid",
    }


def test_the_signature_is_checked_before_the_payload(broken_file: Path) -> None:
    """A body that is also invalid is reported for its signature alone, as the worker does."""
    result = validate("--secret", SECRET, "--signature", "not-hex", str(broken_file))

    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{broken_file}: invalid",
        "    header x-voucherify-signature: not a hex HMAC-SHA256 (expected 64 hex digits, "
        "got 7 bytes)",
    ]


def test_a_signed_but_invalid_payload_gets_its_payload_reasons(broken_file: Path) -> None:
    result = validate(
        "--secret", SECRET, "--signature", voucherify_signature(broken_file), str(broken_file)
    )

    assert result.returncode == 1
    assert result.stdout.splitlines() == [
        f"{broken_file}: invalid, signature valid",
        "    data.transaction.id: required field is missing",
    ]


def test_with_a_secret_and_no_signature_a_file_is_judged_as_unsigned(seed_file: Path) -> None:
    result = validate("--json", "--secret", SECRET, str(seed_file))

    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert summary["verdict"] == "invalid"
    assert summary["errors"] == [
        "header x-voucherify-signature: missing; the bridge must forward Voucherify's "
        "signature header with the body"
    ]


def test_one_signature_per_file_in_order(seed_file: Path, broken_file: Path) -> None:
    result = validate(
        "--json",
        "--secret",
        SECRET,
        "--signature",
        voucherify_signature(seed_file),
        "--signature",
        voucherify_signature(seed_file),  # not broken_file's
        str(seed_file),
        str(broken_file),
    )

    assert result.returncode == 1
    verdicts = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(v["verdict"], v["signature"]) for v in verdicts] == [
        ("apply", "valid"),
        ("invalid", "invalid"),
    ]


def test_standard_input_can_be_checked(seed_file: Path) -> None:
    result = validate(
        "--secret",
        SECRET,
        "--signature",
        voucherify_signature(seed_file),
        "-",
        stdin=seed_file.read_bytes(),
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(", signature valid\n")


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--signature", "ab" * 32], "--signature needs --secret"),
        (
            ["--secret", SECRET, "--signature", "ab" * 32, "--signature", "cd" * 32],
            "given 2 times for 1 files",
        ),
        (["--secret", " "], "--secret is empty"),
    ],
)
def test_inconsistent_options_are_a_usage_error(
    seed_file: Path, args: list[str], problem: str
) -> None:
    result = validate(*args, str(seed_file))

    assert result.returncode == 2
    assert problem in result.stderr
    assert result.stdout == ""
    assert SECRET not in result.stderr


def test_without_a_secret_nothing_changes(seed_file: Path) -> None:
    result = validate("--json", str(seed_file))

    assert result.returncode == 0
    assert "signature" not in json.loads(result.stdout)
