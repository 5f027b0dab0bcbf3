"""Voucherify's webhook signature: what is accepted, what is refused and why, and its settings."""

from __future__ import annotations

import hashlib
import hmac
import re
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from consumer import signature
from consumer.asyncapi import asyncapi_document
from consumer.config import Settings, load_settings
from consumer.errors import ConfigurationError
from consumer.signature import SignatureVerifier, sign
from tests import workload

HEADER = "x-voucherify-signature"
SECRET = b"whsec-current-7f3a"
PREVIOUS = b"whsec-previous-19c2"

bodies = st.binary(max_size=4096)
secrets = st.binary(min_size=1, max_size=128)


def signed(value: bytes, secret: bytes = SECRET) -> list[tuple[str, bytes]]:
    return [(HEADER, sign(value, secret).encode())]


def test_sign_is_the_hex_hmac_sha256_of_the_body() -> None:
    # Independent of consumer.signature: what `openssl dgst -sha256 -hmac` prints.
    body = workload.seed_bytes()
    assert sign(body, SECRET) == hmac.new(SECRET, body, hashlib.sha256).hexdigest()
    assert sign(b"", b"key") == "5d5d139563c95b5967b9bd9a8c9b233a9dedb45072794cd232dc1b74832607d0"


@given(body=bodies, secret=secrets)
@example(body=b"", secret=b"k")
def test_any_body_signed_with_the_secret_is_accepted(body: bytes, secret: bytes) -> None:
    verifier = SignatureVerifier([secret])
    assert verifier.check(body, [(HEADER, sign(body, secret).encode())]) is None


@given(body=bodies.filter(bool), secret=secrets, data=st.data())
def test_one_flipped_byte_of_the_body_is_refused(
    body: bytes, secret: bytes, data: st.DataObject
) -> None:
    index = data.draw(st.integers(0, len(body) - 1))
    bit = data.draw(st.integers(0, 7))
    tampered = bytearray(body)
    tampered[index] ^= 1 << bit
    verifier = SignatureVerifier([secret])

    reason = verifier.check(bytes(tampered), [(HEADER, sign(body, secret).encode())])

    assert reason == f"header {HEADER}: does not match the record value under the webhook secret"


@given(body=bodies, data=st.data())
def test_one_flipped_hex_digit_of_the_signature_is_refused(
    body: bytes, data: st.DataObject
) -> None:
    claimed = list(sign(body, SECRET))
    index = data.draw(st.integers(0, len(claimed) - 1))
    claimed[index] = data.draw(
        st.sampled_from([c for c in "0123456789abcdef" if c != claimed[index]])
    )

    reason = SignatureVerifier([SECRET]).check(body, [(HEADER, "".join(claimed).encode())])

    assert reason is not None and "does not match" in reason


@given(body=bodies)
def test_the_previous_secret_is_accepted_beside_the_current_one(body: bytes) -> None:
    verifier = SignatureVerifier([SECRET, PREVIOUS])
    assert verifier.check(body, signed(body, PREVIOUS)) is None
    assert verifier.check(body, signed(body, SECRET)) is None


def test_a_third_secret_is_refused_naming_both() -> None:
    body = workload.seed_bytes()
    reason = SignatureVerifier([SECRET, PREVIOUS]).check(body, signed(body, b"someone-else"))
    assert reason == (
        f"header {HEADER}: does not match the record value under the current or previous secret"
    )


def test_a_missing_header_is_refused_saying_the_bridge_must_forward_it() -> None:
    reason = SignatureVerifier([SECRET]).check(b"{}", [("traceparent", b"00-ab-cd-01")])
    assert reason == (
        f"header {HEADER}: missing; the bridge must forward Voucherify's signature header "
        "with the body"
    )


@pytest.mark.parametrize(
    ("claimed", "problem"),
    [
        (b"abc123", "expected 64 hex digits, got 6 bytes"),
        (b"", "expected 64 hex digits, got 0 bytes"),
        (b"g" * 64, "expected 64 hex digits, got other characters"),
        (b"\xff" * 64, "expected 64 hex digits, got other characters"),
        (b"ab " * 21 + b"a", "expected 64 hex digits, got other characters"),
        (sign(b"{}", SECRET).encode() + b"\n", "expected 64 hex digits, got 65 bytes"),
    ],
)
def test_a_header_that_is_not_a_hex_hmac_sha256_says_so(claimed: bytes, problem: str) -> None:
    reason = SignatureVerifier([SECRET]).check(b"{}", [(HEADER, claimed)])
    assert reason == f"header {HEADER}: not a hex HMAC-SHA256 ({problem})"


def test_the_header_name_and_hex_digits_may_be_in_any_case() -> None:
    body = workload.seed_bytes()
    claimed = sign(body, SECRET).upper().encode()
    assert SignatureVerifier([SECRET]).check(body, [("X-Voucherify-Signature", claimed)]) is None


def test_two_signature_headers_are_refused_even_if_one_matches() -> None:
    body = workload.seed_bytes()
    headers = [*signed(body), ("X-Voucherify-Signature", b"0" * 64)]
    reason = SignatureVerifier([SECRET]).check(body, headers)
    assert reason == f"header {HEADER}: present 2 times; exactly one is accepted"


def test_a_configured_header_name_is_the_one_read() -> None:
    body = workload.seed_bytes()
    verifier = SignatureVerifier([SECRET], header="webhook-signature")
    assert verifier.check(body, [("webhook-signature", sign(body, SECRET).encode())]) is None
    reason = verifier.check(body, signed(body))
    assert reason is not None and reason.startswith("header webhook-signature: missing")


def test_a_record_without_value_is_checked_as_an_empty_body() -> None:
    assert SignatureVerifier([SECRET]).check(None, signed(b"")) is None


@given(body=bodies, claimed=st.binary(max_size=80))
def test_no_reason_ever_contains_a_secret_or_the_expected_signature(
    body: bytes, claimed: bytes
) -> None:
    reason = SignatureVerifier([SECRET, PREVIOUS]).check(body, [(HEADER, claimed)])
    if reason is None:
        return
    for secret in (SECRET, PREVIOUS):
        assert secret.decode() not in reason
        assert sign(body, secret) not in reason.lower()


def test_a_verifier_needs_a_non_empty_secret() -> None:
    with pytest.raises(ValueError, match="at least one secret"):
        SignatureVerifier([])
    with pytest.raises(ValueError, match="none empty"):
        SignatureVerifier([SECRET, b""])


# -- settings ------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _no_secret_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "VOUCHERIFY_WEBHOOK_SECRET",
        "VOUCHERIFY_WEBHOOK_SECRET_FILE",
        "VOUCHERIFY_WEBHOOK_SECRET_PREVIOUS",
        "VOUCHERIFY_WEBHOOK_SECRET_PREVIOUS_FILE",
        "WEBHOOK_SIGNATURE_HEADER",
    ):
        monkeypatch.delenv(name, raising=False)


def test_without_a_secret_there_is_no_verifier() -> None:
    assert signature.from_settings(load_settings()) is None


def test_the_secrets_come_from_variables_current_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOUCHERIFY_WEBHOOK_SECRET", SECRET.decode())
    monkeypatch.setenv("VOUCHERIFY_WEBHOOK_SECRET_PREVIOUS", PREVIOUS.decode())
    monkeypatch.setenv("WEBHOOK_SIGNATURE_HEADER", "X-Signature")

    settings = load_settings()
    verifier = signature.from_settings(settings)

    assert settings.webhook_secrets() == [SECRET, PREVIOUS]
    assert verifier is not None
    assert (verifier.header, verifier.secrets) == ("x-signature", 2)
    assert SECRET.decode() not in repr(settings) and PREVIOUS.decode() not in repr(settings)


def test_the_secrets_can_come_from_mounted_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "current").write_bytes(SECRET + b"\n")
    (tmp_path / "previous").write_bytes(PREVIOUS + b"\r\n")
    monkeypatch.setenv("VOUCHERIFY_WEBHOOK_SECRET_FILE", str(tmp_path / "current"))
    monkeypatch.setenv("VOUCHERIFY_WEBHOOK_SECRET_PREVIOUS_FILE", str(tmp_path / "previous"))

    assert load_settings().webhook_secrets() == [SECRET, PREVIOUS]


def _refused(monkeypatch: pytest.MonkeyPatch, **variables: str) -> str:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as caught:
        load_settings()
    return str(caught.value)


def test_a_secret_both_as_variable_and_file_is_refused_without_showing_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "current").write_bytes(b"from-the-file-5e1d")
    message = _refused(
        monkeypatch,
        VOUCHERIFY_WEBHOOK_SECRET="from-the-variable-8b0c",
        VOUCHERIFY_WEBHOOK_SECRET_FILE=str(tmp_path / "current"),
    )
    assert (
        "VOUCHERIFY_WEBHOOK_SECRET: set either VOUCHERIFY_WEBHOOK_SECRET or "
        "VOUCHERIFY_WEBHOOK_SECRET_FILE, not both" in message
    )
    assert "from-the-variable-8b0c" not in message and "from-the-file-5e1d" not in message


def test_a_previous_secret_alone_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refused(monkeypatch, VOUCHERIFY_WEBHOOK_SECRET_PREVIOUS="old-secret-44aa")
    assert "VOUCHERIFY_WEBHOOK_SECRET_PREVIOUS: only accepted beside the current secret" in message
    assert "old-secret-44aa" not in message


def test_an_empty_secret_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refused(monkeypatch, VOUCHERIFY_WEBHOOK_SECRET="  ")
    assert "VOUCHERIFY_WEBHOOK_SECRET: empty" in message


def test_an_empty_or_missing_secret_file_is_refused_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "empty").write_bytes(b"\n")
    message = _refused(monkeypatch, VOUCHERIFY_WEBHOOK_SECRET_FILE=str(tmp_path / "empty"))
    assert f"VOUCHERIFY_WEBHOOK_SECRET_FILE: the file {tmp_path / 'empty'} is empty" in message

    message = _refused(monkeypatch, VOUCHERIFY_WEBHOOK_SECRET_FILE=str(tmp_path / "nowhere"))
    assert "VOUCHERIFY_WEBHOOK_SECRET_FILE: no readable file at" in message


def test_an_empty_header_name_is_refused_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    message = _refused(monkeypatch, WEBHOOK_SIGNATURE_HEADER="")
    assert "WEBHOOK_SIGNATURE_HEADER" in message


def test_the_asyncapi_document_names_the_default_header_and_its_shape() -> None:
    webhook = asyncapi_document()["components"]["messages"]["VoucherifyWebhook"]
    documented = webhook["headers"]["properties"][HEADER]
    assert Settings.model_fields["webhook_signature_header"].default == HEADER
    assert re.fullmatch(documented["pattern"], sign(workload.seed_bytes(), SECRET))
    assert not re.fullmatch(documented["pattern"], sign(b"", SECRET)[:-1])
