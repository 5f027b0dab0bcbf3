"""Settings: every variable validated at start, errors that name it, secrets never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.config import load_settings, unknown_variables
from consumer.errors import ConfigurationError


def test_defaults_are_usable_without_any_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "INPUT_TOPIC", "DELIVERY_MODE"):
        monkeypatch.delenv(name, raising=False)

    settings = load_settings()

    assert settings.database_url == "sqlite:///loyalty.db"
    assert settings.delivery_mode == "exactly-once"
    assert settings.transactional


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("BATCH_MAX_RECORDS", "0"),
        ("BATCH_MAX_RECORDS", "many"),
        ("DELIVERY_MODE", "twice"),
        ("HTTP_PORT", "70000"),
        ("KAFKA_SECURITY_PROTOCOL", "TLS"),
        ("INPUT_TOPIC", ""),
    ],
)
def test_a_bad_value_is_reported_with_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    assert variable in str(caught.value)


def test_sasl_without_credentials_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    assert "KAFKA_SASL_USERNAME" in str(caught.value)


def test_the_sasl_password_can_come_from_a_mounted_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "PLAIN")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD_FILE", str(secret))

    settings = load_settings()

    assert settings.sasl_password() == "from-a-file"
    assert "from-a-file" not in repr(settings)


@pytest.mark.parametrize("value", ["info", "Info", "WARNING", "debug"])
def test_log_level_is_read_in_any_case(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("LOG_LEVEL", value)

    assert load_settings().log_level == value.upper()


@pytest.mark.parametrize(
    "url", ["mysql://u:Db-Secret-Q7@db/x", "sqlite://loyalty.db", "loyalty.db", "sqlite:///"]
)
def test_an_unsupported_database_url_is_refused_naming_the_variable_not_the_value(
    monkeypatch: pytest.MonkeyPatch, url: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)

    with pytest.raises(ConfigurationError) as caught:
        load_settings()

    message = str(caught.value)
    assert "DATABASE_URL: must be sqlite:///" in message and "postgresql://" in message
    assert "Db-Secret-Q7" not in message and "(got" not in message


def test_variables_a_typo_away_from_a_setting_are_found_with_the_setting_meant() -> None:
    environ = {
        "BATCH_MAX_RECORD": "10",
        "KAFKA_BOOTSTRAP_SERVER": "kafka:9092",
        "log_levl": "debug",
        "BATCH_MAX_RECORDS": "10",  # a setting
        "HTTP_PROXY": "http://proxy",  # nobody's typo of HTTP_PORT
        "TEST_DATABASE_URL": "postgresql://x",  # the tests' own
        "KAFKA_PORT": "19092",  # scripts/kafka.sh's own
        "PATH": "/usr/bin",
    }

    assert unknown_variables(environ) == [
        ("BATCH_MAX_RECORD", "BATCH_MAX_RECORDS"),
        ("KAFKA_BOOTSTRAP_SERVER", "KAFKA_BOOTSTRAP_SERVERS"),
        ("log_levl", "LOG_LEVEL"),
    ]
