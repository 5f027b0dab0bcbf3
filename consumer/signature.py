"""Voucherify's webhook signature, checked on a record's exact value bytes before parsing."""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from consumer.config import Settings

__all__ = ["DEFAULT_HEADER", "SIGNATURE_HEX_DIGITS", "SignatureVerifier", "from_settings", "sign"]

DEFAULT_HEADER: Final = "x-voucherify-signature"
# Hex of an HMAC-SHA256: 32 bytes.
SIGNATURE_HEX_DIGITS: Final = 64


def sign(value: bytes, secret: bytes) -> str:
    """The signature Voucherify sends for `value`: hex HMAC-SHA256 keyed with the secret."""
    return hmac.digest(secret, value, "sha256").hex()


class SignatureVerifier:
    """Checks the signature header of one record against the current and previous secrets.

    `check` returns None for a record whose header matches its value under one of the
    secrets, else the reason for its `invalid` dead letter. Reasons name the header and
    the problem, never a secret or the expected signature.
    """

    __slots__ = ("_header", "_mismatch", "_secrets")

    def __init__(self, secrets: Sequence[bytes], header: str = DEFAULT_HEADER) -> None:
        if not secrets or not all(secrets):
            raise ValueError("a signature verifier needs at least one secret, none empty")
        if not header:
            raise ValueError("the signature header needs a name")
        self._secrets = tuple(secrets)
        # Kafka header names are case-sensitive, HTTP's are not: a bridge may forward the
        # header as it arrived (X-Voucherify-Signature) or lower-cased. Both are the header.
        self._header = header.lower()
        under = "the webhook secret" if len(secrets) == 1 else "the current or previous secret"
        self._mismatch = f"header {self._header}: does not match the record value under {under}"

    @property
    def header(self) -> str:
        return self._header

    @property
    def secrets(self) -> int:
        """How many secrets are accepted (2 during a rotation)."""
        return len(self._secrets)

    def check(self, value: bytes | None, headers: Sequence[tuple[str, bytes]]) -> str | None:
        """None when the record is signed by one of the secrets, else why not."""
        found: bytes | None = None
        seen = 0
        for name, header_value in headers:
            if name == self._header or name.lower() == self._header:
                found = header_value
                seen += 1
        if found is None:
            return (
                f"header {self._header}: missing; the bridge must forward Voucherify's "
                "signature header with the body"
            )
        if seen > 1:
            # Which one would the bridge have meant? Refuse rather than pick.
            return f"header {self._header}: present {seen} times; exactly one is accepted"
        if len(found) != SIGNATURE_HEX_DIGITS:
            return (
                f"header {self._header}: not a hex HMAC-SHA256 "
                f"(expected {SIGNATURE_HEX_DIGITS} hex digits, got {len(found)} bytes)"
            )
        try:
            claimed = bytes.fromhex(found.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            claimed = b""
        if len(claimed) != SIGNATURE_HEX_DIGITS // 2:  # fromhex also skips spaces
            return (
                f"header {self._header}: not a hex HMAC-SHA256 "
                f"(expected {SIGNATURE_HEX_DIGITS} hex digits, got other characters)"
            )
        body = value or b""
        for secret in self._secrets:
            if hmac.compare_digest(hmac.digest(secret, body, "sha256"), claimed):
                return None
        return self._mismatch


def from_settings(settings: Settings) -> SignatureVerifier | None:
    """The verifier the settings ask for; None when no webhook secret is set (no checks)."""
    secrets = settings.webhook_secrets()
    if not secrets:
        return None
    return SignatureVerifier(secrets, settings.webhook_signature_header)
