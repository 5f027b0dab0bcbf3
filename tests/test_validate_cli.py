"""`loyalty-consumer validate` and `loyalty-consumer schema`, as the bridge team uses them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from consumer.asyncapi import asyncapi_json
from consumer.cli import main
from consumer.events import TARGET_EVENT_TYPE, input_json_schema
from consumer.notifications import output_json_schema
from tests.contract_files import SEED_NAME, contracts_dir, encode, seed_data, sibling_examples


def run(*args: str, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(main, list(args), input=stdin)


@pytest.fixture
def seed_file() -> str:
    return str(contracts_dir() / "examples" / SEED_NAME)


@pytest.fixture
def sibling_file() -> str:
    return str(sibling_examples()[0])


@pytest.fixture
def negative_points_file(tmp_path: Path) -> str:
    data = seed_data()
    data["pending_points"]["points"] = -5
    del data["transaction"]["id"]
    path = tmp_path / "negative.json"
    path.write_bytes(encode(data))
    return str(path)


def test_valid_and_skipped_files_exit_0_with_one_line_each(
    seed_file: str, sibling_file: str
) -> None:
    result = run("validate", seed_file, sibling_file)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        f"{seed_file}: apply (transaction vtx_0ff34b9df109a39357)",
        f"{sibling_file}: skip (voucher.loyalty_card.pending_points.* (inferred from bare data))",
    ]


def test_an_invalid_file_exits_1_with_its_reasons_indented(
    seed_file: str, negative_points_file: str
) -> None:
    result = run("validate", negative_points_file, seed_file)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        f"{negative_points_file}: invalid",
        "    data.transaction.id: required field is missing",
        "    data.pending_points.points: must be an integer ≥ 1, got -5",
        f"{seed_file}: apply (transaction vtx_0ff34b9df109a39357)",
    ]


def test_json_output_is_one_object_per_file_and_line(
    seed_file: str, sibling_file: str, negative_points_file: str
) -> None:
    result = run("validate", "--json", seed_file, sibling_file, negative_points_file)
    assert result.exit_code == 1
    lines: list[dict[str, Any]] = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines == [
        {
            "file": seed_file,
            "verdict": "apply",
            "event_type": TARGET_EVENT_TYPE,
            "transaction_id": "vtx_0ff34b9df109a39357",
            "errors": [],
        },
        {
            "file": sibling_file,
            "verdict": "skip",
            "event_type": "voucher.loyalty_card.pending_points.* (inferred from bare data)",
            "transaction_id": None,
            "errors": [],
        },
        {
            "file": negative_points_file,
            "verdict": "invalid",
            "event_type": None,
            "transaction_id": None,
            "errors": [
                "data.transaction.id: required field is missing",
                "data.pending_points.points: must be an integer ≥ 1, got -5",
            ],
        },
    ]


def test_dash_reads_standard_input() -> None:
    result = run("validate", "--json", "-", stdin=b"not json")
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "file": "-",
        "verdict": "invalid",
        "event_type": None,
        "transaction_id": None,
        "errors": ["value: not JSON (Expecting value at line 1 column 1)"],
    }


def test_a_missing_file_is_a_usage_error_naming_it(seed_file: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.json"
    result = run("validate", seed_file, str(missing))
    assert result.exit_code == 2
    assert f"cannot read {missing}" in result.stderr
    assert "No such file or directory" in result.stderr
    assert result.stdout == ""  # nothing is judged until every file could be read


def test_a_directory_is_a_usage_error(tmp_path: Path) -> None:
    result = run("validate", str(tmp_path))
    assert result.exit_code == 2
    assert "is a directory" in result.stderr


def test_no_file_is_a_usage_error() -> None:
    assert run("validate").exit_code == 2


@pytest.mark.parametrize(
    ("which", "expected"),
    [("input", input_json_schema()), ("output", output_json_schema())],
)
def test_schema_prints_the_json_schema(which: str, expected: dict[str, Any]) -> None:
    result = run("schema", which)
    assert result.exit_code == 0
    assert json.loads(result.stdout) == expected


def test_schema_asyncapi_prints_the_committed_document() -> None:
    result = run("schema", "asyncapi")
    assert result.exit_code == 0
    assert result.stdout == asyncapi_json()


def test_schema_rejects_an_unknown_name() -> None:
    assert run("schema", "sideways").exit_code == 2
