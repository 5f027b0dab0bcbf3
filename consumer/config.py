"""The one settings model: every knob comes from an environment variable, validated at start."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from consumer.errors import ConfigurationError
from consumer.runtime import DEFAULT_GC_GEN0_THRESHOLD
from consumer.signature import DEFAULT_HEADER as DEFAULT_SIGNATURE_HEADER

DeliveryMode = Literal["exactly-once", "at-least-once"]
SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]


class Settings(BaseSettings):
    """Worker configuration. Field `foo_bar` is read from the variable `FOO_BAR`."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    kafka_bootstrap_servers: str = Field("127.0.0.1:9092", min_length=1)
    database_url: str = Field("sqlite:///loyalty.db", min_length=1)
    input_topic: str = Field("voucherify.webhooks", min_length=1)
    notification_topic: str = Field("loyalty.notifications", min_length=1)
    dead_letter_topic: str = Field("voucherify.webhooks.dlq", min_length=1)
    consumer_group: str = Field("loyalty-consumer", min_length=1)
    transactional_id_prefix: str = Field("loyalty-consumer", min_length=1)
    # Default: <prefix>.<hostname>.<pid>.<n>, unique among live replicas (n counts the
    # workers of one process), and the same again when a container restarts in its pod: its
    # new producer then aborts at once what the old one left open.
    transactional_id: str | None = Field(None, min_length=1)
    # How long an unfinished transaction of a replica that died (and was not restarted with
    # its transactional id) holds back what it wrote, and, rarely, its partitions' next
    # owner, before the broker aborts it.
    kafka_transaction_timeout_ms: int = Field(20_000, ge=1_000, le=900_000)
    client_id: str = Field("loyalty-consumer", min_length=1)

    batch_max_records: int = Field(2000, ge=1, le=100_000)
    batch_max_wait_ms: int = Field(100, ge=0, le=60_000)
    delivery_mode: DeliveryMode = "exactly-once"
    max_record_attempts: int = Field(3, ge=1, le=100)
    retry_initial_s: float = Field(0.2, gt=0, le=60)
    retry_max_s: float = Field(10.0, gt=0, le=600)
    # PostgreSQL's own statement timeout is 15 s; one attempt of a Kafka transaction must end
    # before the broker's transaction timeout (KAFKA_TRANSACTION_TIMEOUT_MS) aborts it.
    retry_attempt_timeout_s: float = Field(15.0, gt=0, le=600)
    shutdown_timeout_s: float = Field(30.0, gt=0, le=3600)
    session_timeout_ms: int = Field(10_000, ge=1_000, le=300_000)
    heartbeat_interval_ms: int = Field(3_000, ge=100, le=100_000)
    max_poll_interval_ms: int = Field(300_000, ge=1_000, le=3_600_000)
    producer_linger_ms: int = Field(5, ge=0, le=10_000)
    producer_compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = "none"

    http_port: int = Field(8000, ge=0, le=65_535)
    http_host: str = "0.0.0.0"  # noqa: S104  probes and scrapes come from outside the pod
    stall_timeout_s: float = Field(120.0, gt=0)
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    migrate_on_start: bool = False
    cloudevents_source: str = Field("urn:loyalty-consumer", min_length=1)
    gc_gen0_threshold: int = Field(DEFAULT_GC_GEN0_THRESHOLD, ge=0, le=10_000_000)

    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_sasl_password_file: Path | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_keyfile_password: SecretStr | None = None

    # Set, every input record must carry Voucherify's signature of its value (README
    # "Security"); the previous secret is accepted too while a rotation is under way.
    voucherify_webhook_secret: SecretStr | None = None
    voucherify_webhook_secret_file: Path | None = None
    voucherify_webhook_secret_previous: SecretStr | None = None
    voucherify_webhook_secret_previous_file: Path | None = None
    webhook_signature_header: str = Field(DEFAULT_SIGNATURE_HEADER, min_length=1)

    @field_validator("log_level", mode="before")
    @classmethod
    def _any_case_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _any_case_format(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _supported_database(cls, value: str) -> str:
        # Refused here, before anything is contacted; the store parses the same forms.
        if database_url_problem(value):
            raise ValueError(DATABASE_URL_FORMS)
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        self._security_is_complete()
        self._webhook_secrets_are_usable()
        self._timing_is_consistent()
        return self

    def _security_is_complete(self) -> None:
        uses_sasl = self.kafka_security_protocol.startswith("SASL_")
        if uses_sasl:
            if self.kafka_sasl_mechanism is None:
                raise ValueError(
                    "KAFKA_SASL_MECHANISM: required with KAFKA_SECURITY_PROTOCOL="
                    f"{self.kafka_security_protocol}; set PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
                )
            if not self.kafka_sasl_username:
                raise ValueError("KAFKA_SASL_USERNAME: required when SASL is used")
            if self.kafka_sasl_password is None and self.kafka_sasl_password_file is None:
                raise ValueError(
                    "KAFKA_SASL_PASSWORD: required when SASL is used "
                    "(or KAFKA_SASL_PASSWORD_FILE pointing at a mounted secret)"
                )
        if self.kafka_ssl_certfile and not self.kafka_ssl_keyfile:
            raise ValueError("KAFKA_SSL_KEYFILE: required when KAFKA_SSL_CERTFILE is set")
        for name in (
            "kafka_ssl_cafile",
            "kafka_ssl_certfile",
            "kafka_ssl_keyfile",
            "kafka_sasl_password_file",
            "voucherify_webhook_secret_file",
            "voucherify_webhook_secret_previous_file",
        ):
            path: Path | None = getattr(self, name)
            if path is not None and not path.is_file():
                raise ValueError(f"{name.upper()}: no readable file at {path}")

    def _timing_is_consistent(self) -> None:
        if self.retry_initial_s > self.retry_max_s:
            raise ValueError("RETRY_INITIAL_S: must not exceed RETRY_MAX_S")
        if self.kafka_transaction_timeout_ms <= self.retry_attempt_timeout_s * 1000:
            raise ValueError(
                "KAFKA_TRANSACTION_TIMEOUT_MS: must exceed RETRY_ATTEMPT_TIMEOUT_S (in ms), or "
                "the broker aborts transactions the worker is still waiting for"
            )
        if self.heartbeat_interval_ms * 3 > self.session_timeout_ms:
            raise ValueError("HEARTBEAT_INTERVAL_MS: must be at most a third of SESSION_TIMEOUT_MS")

    def _webhook_secrets_are_usable(self) -> None:
        current = self._webhook_secret("voucherify_webhook_secret")
        previous = self._webhook_secret("voucherify_webhook_secret_previous")
        if previous is not None and current is None:
            raise ValueError(
                "VOUCHERIFY_WEBHOOK_SECRET_PREVIOUS: only accepted beside the current secret; "
                "set VOUCHERIFY_WEBHOOK_SECRET (or VOUCHERIFY_WEBHOOK_SECRET_FILE) too"
            )

    def _webhook_secret(self, name: str) -> bytes | None:
        """One webhook secret from its variable or its file; refuses both, or an empty one."""
        value: SecretStr | None = getattr(self, name)
        path: Path | None = getattr(self, f"{name}_file")
        variable = name.upper()
        if value is not None and path is not None:
            raise ValueError(f"{variable}: set either {variable} or {variable}_FILE, not both")
        if path is not None:
            try:
                # Like the SASL password file: a trailing newline is not part of the secret.
                secret = path.read_bytes().strip()
            except OSError as exc:
                raise ValueError(f"{variable}_FILE: cannot read {path} ({exc.strerror})") from None
            if not secret:
                raise ValueError(f"{variable}_FILE: the file {path} is empty")
            return secret
        if value is not None:
            secret = value.get_secret_value().strip().encode()
            if not secret:
                raise ValueError(f"{variable}: empty; set the webhook secret or unset it")
            return secret
        return None

    def webhook_secrets(self) -> list[bytes]:
        """The webhook secrets to accept, current first; empty when verification is off."""
        return [
            secret
            for name in ("voucherify_webhook_secret", "voucherify_webhook_secret_previous")
            if (secret := self._webhook_secret(name)) is not None
        ]

    @property
    def transactional(self) -> bool:
        return self.delivery_mode == "exactly-once"

    def replica_transactional_id(self, instance: int = 0) -> str:
        """The transactional id of this process's `instance`-th worker: one producer serves
        all of a worker's partitions."""
        if self.transactional_id:
            return self.transactional_id
        host = socket.gethostname()
        return f"{self.transactional_id_prefix}.{host}.{os.getpid()}.{instance}"

    def sasl_password(self) -> str | None:
        """The SASL password, from the variable or the mounted file (never logged)."""
        if self.kafka_sasl_password is not None:
            return self.kafka_sasl_password.get_secret_value()
        if self.kafka_sasl_password_file is not None:
            return self.kafka_sasl_password_file.read_text().strip()
        return None


DATABASE_URL_FORMS = (
    "must be sqlite:///relative/path.db, sqlite:////absolute/path.db, sqlite:///:memory: "
    "or postgresql://user:password@host:5432/database (postgres:// too)"
)


def database_url_problem(url: str) -> bool:
    """True when `url` is none of the forms a store is opened from."""
    scheme, separator, rest = url.partition("://")
    if scheme in {"postgresql", "postgres"} and separator:
        return False
    return not (scheme == "sqlite" and rest.startswith("/") and len(rest) > 1)


# Variables the project's own scripts and tests read: near a setting's name, but not typos.
_OTHER_VARIABLES = frozenset(
    {
        "TEST_DATABASE_URL",
        "KAFKA_PORT",
        "KAFKA_CONTROLLER_PORT",
        "KAFKA_HEAP",
        "KAFKA_VERSION",
        "KAFKA_RUN_DIR",
    }
)


def _distance(a: str, b: str, bound: int) -> int:
    """Levenshtein distance of `a` and `b`, or `bound + 1` once it is known to exceed it."""
    if abs(len(a) - len(b)) > bound:
        return bound + 1
    previous = list(range(len(b) + 1))
    for i, char in enumerate(a, 1):
        current = [i]
        for j, other in enumerate(b, 1):
            current.append(
                min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char != other))
            )
        if min(current) > bound:
            return bound + 1
        previous = current
    return previous[-1]


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[tuple[str, str]]:
    """(variable, the setting it was probably meant to be) for each variable of the
    environment that is not a setting but within two edits of one's name: a typo that would
    otherwise leave the default in force without a word. Only names are returned, never values.
    """
    names = {name.upper() for name in Settings.model_fields}
    found = []
    for variable in sorted((environ if environ is not None else os.environ).keys()):
        upper = variable.upper()
        if upper in names or upper in _OTHER_VARIABLES or len(upper) < 8:
            continue
        close = sorted((_distance(upper, name, 2), name) for name in names)
        if close and close[0][0] <= 2:
            found.append((variable, close[0][1]))
    return found


# Settings whose values an error never shows: credentials, or a URL that may embed one.
_SECRET_MARKERS = ("PASSWORD", "SECRET", "TOKEN", "CREDENTIAL", "DATABASE_URL")


def _holds_secret(variable: str) -> bool:
    return any(marker in variable for marker in _SECRET_MARKERS)


def load_settings(**overrides: object) -> Settings:
    """Read the environment; on a bad value raise one error naming every variable at fault."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]).upper()
            message = error["msg"].removeprefix("Value error, ")
            value = error.get("input")
            shown = "" if _holds_secret(where) or not where else f" (got {value!r})"
            problems.append(f"{where}: {message}{shown}" if where else message)
        raise ConfigurationError(
            "invalid configuration:\n  "
            + "\n  ".join(problems)
            + "\nFix the environment variable(s) above and start again."
        ) from None
