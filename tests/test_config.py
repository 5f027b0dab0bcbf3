"""Settings: every variable validated at start, errors that name it, secrets never echoed."""

from __future__ import annotations

from pathlib import Path

import pytest

from consumer.config import load_settings
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
