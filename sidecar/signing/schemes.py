"""The signature schemes: build and check webhook signature headers over raw bytes.

Pure functions, stdlib only; nothing here knows of HTTP, Redis or envelopes
(docs/architecture.md §8). Two rules hold for every scheme:

- the HMAC key is the token's UTF-8 bytes. For ``standard`` this is the same
  key a receiver holds: its secret is ``whsec_`` + base64(token), and Standard
  Webhooks libraries base64-decode the part after ``whsec_``;
- the body is signed byte for byte as given, never decoded or re-serialised.

    scheme     headers                                                       replay protection
    wisp       X-Webhook-Signature: sha256=<hex HMAC(body)>                  none
    standard   webhook-id, webhook-timestamp,                                timestamp
               webhook-signature: v1,<base64 HMAC("{id}.{ts}.{body}")>
    github     X-Hub-Signature-256: sha256=<hex HMAC(body)>                  none
    stripe     Webhook-Signature: t=<ts>,v1=<hex HMAC("{ts}.{body}")>        timestamp

``verify`` answers with a ``Verdict`` whose ``reason`` names the check that
failed. Reasons are fixed labels and say nothing about the token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

from sidecar.errors import InvalidInput

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = [
    "DEFAULT_SCHEME",
    "DEFAULT_TOLERANCE_S",
    "SCHEMES",
    "Reason",
    "Verdict",
    "check_msg_id",
    "new_msg_id",
    "parse_scheme",
    "parse_timestamp",
    "sign",
    "verify",
]

SCHEMES: tuple[str, ...] = ("wisp", "standard", "github", "stripe")
DEFAULT_SCHEME: Final = "wisp"
DEFAULT_TOLERANCE_S: Final = 300

# Header names exactly as sent; lookups in ``verify`` use the lowercased form.
WISP_HEADER: Final = "X-Webhook-Signature"
GITHUB_HEADER: Final = "X-Hub-Signature-256"
STRIPE_HEADER: Final = "Webhook-Signature"
STANDARD_ID_HEADER: Final = "webhook-id"
STANDARD_TIMESTAMP_HEADER: Final = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER: Final = "webhook-signature"

# Ten decimal digits reach 2286-11-20; anything longer is not a webhook timestamp,
# and the bound keeps int() away from pathological inputs.
_MAX_TIMESTAMP_DIGITS: Final = 10
_MAX_TIMESTAMP: Final = 10**_MAX_TIMESTAMP_DIGITS - 1
_MAX_MSG_ID_LEN: Final = 256
_DIGEST_SIZE: Final = hashlib.sha256().digest_size
_HEX_LEN: Final = 2 * _DIGEST_SIZE
_SHA256_PREFIX: Final = "sha256="
_SCHEMES_TEXT: Final = ", ".join(SCHEMES)

Reason = Literal[
    "ok", "missing_header", "malformed_header", "timestamp_out_of_tolerance", "mismatch"
]


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of ``verify``: whether the signature holds, and which check decided."""

    valid: bool
    reason: Reason

    def __bool__(self) -> bool:
        # Without this every Verdict would be truthy, and ``if verify(...):`` would
        # accept a forged signature; make the natural spelling the correct one.
        return self.valid


# Verdicts are immutable, so one instance per outcome serves every call.
_OK: Final = Verdict(valid=True, reason="ok")
_MISSING: Final = Verdict(valid=False, reason="missing_header")
_MALFORMED: Final = Verdict(valid=False, reason="malformed_header")
_STALE: Final = Verdict(valid=False, reason="timestamp_out_of_tolerance")
_MISMATCH: Final = Verdict(valid=False, reason="mismatch")


# --- validation helpers -------------------------------------------------------------------------


def parse_scheme(value: str | None) -> str:
    """Return the scheme ``value`` names; ``None`` or ``""`` mean the default (``wisp``)."""
    if not value:
        return DEFAULT_SCHEME
    if value in SCHEMES:
        return value
    raise _unknown_scheme(value)


def _unknown_scheme(value: str) -> InvalidInput:
    # The value is not echoed: callers paste odd things (tokens among them)
    # into parameters, and error bodies must never carry them back.
    return InvalidInput(f"unknown signature scheme; expected one of: {_SCHEMES_TEXT}")


def check_msg_id(value: str) -> str:
    """Return ``value`` if it can be a Standard Webhooks message id, else raise ``InvalidInput``.

    The id goes into a header and into the signed ``{id}.{ts}.{body}`` string, so it
    must be printable ASCII without spaces, and without ``.``, which would make the
    signed string ambiguous.
    """
    if not value or len(value) > _MAX_MSG_ID_LEN:
        raise InvalidInput(f"msg_id must be 1 to {_MAX_MSG_ID_LEN} characters")
    if not (value.isascii() and value.isprintable()) or " " in value:
        raise InvalidInput("msg_id must be printable ASCII without spaces")
    if "." in value:
        raise InvalidInput("msg_id must not contain '.'")
    return value


def parse_timestamp(value: str | int) -> int:
    """Return ``value`` as unix seconds: a non-negative integer of at most ten digits.

    Strings must be plain ASCII decimal digits: no sign, no fraction, no spaces, no
    ``_`` (all of which ``int()`` would otherwise accept).
    """
    if isinstance(value, str):
        if not (0 < len(value) <= _MAX_TIMESTAMP_DIGITS and value.isascii() and value.isdigit()):
            raise InvalidInput("timestamp must be a non-negative integer of unix seconds")
        return int(value)
    # bool is an int subclass, and True is not a timestamp.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput("timestamp must be a non-negative integer of unix seconds")
    if not 0 <= value <= _MAX_TIMESTAMP:
        raise InvalidInput(f"timestamp must be between 0 and {_MAX_TIMESTAMP}")
    return value


def new_msg_id() -> str:
    """Return a fresh random message id: ``msg_`` and 24 URL-safe characters, never a ``.``."""
    return "msg_" + secrets.token_urlsafe(18)


# --- signing ------------------------------------------------------------------------------------


def _mac(token: str, prefix: bytes, body: bytes) -> bytes:
    """HMAC-SHA256 of ``prefix + body`` under the token, without copying the body."""
    mac = hmac.new(token.encode("utf-8"), prefix, hashlib.sha256)
    mac.update(body)
    return mac.digest()


def _standard_prefix(msg_id: str, timestamp: int) -> bytes:
    return f"{msg_id}.{timestamp}.".encode("ascii")


def _stripe_prefix(timestamp: int) -> bytes:
    return f"{timestamp}.".encode("ascii")


def sign(
    scheme: str,
    token: str,
    body: bytes,
    *,
    msg_id: str | None = None,
    timestamp: int | None = None,
    now: Callable[[], float] = time.time,
) -> dict[str, str]:
    """Return the headers (name -> value, exactly as to send) that sign ``body`` under ``scheme``.

    ``msg_id`` is used by ``standard`` (default: ``new_msg_id()``) and ``timestamp`` by
    ``standard`` and ``stripe`` (default: ``now()``). Either one, when given, is
    validated whatever the scheme, so a bad value is refused consistently.
    """
    if msg_id is not None:
        check_msg_id(msg_id)
    if timestamp is not None:
        parse_timestamp(timestamp)

    if scheme == "wisp" or scheme == "github":
        digest = hmac.digest(token.encode("utf-8"), body, hashlib.sha256)
        name = WISP_HEADER if scheme == "wisp" else GITHUB_HEADER
        return {name: _SHA256_PREFIX + digest.hex()}

    if scheme == "standard":
        ts = int(now()) if timestamp is None else timestamp
        mid = new_msg_id() if msg_id is None else msg_id
        digest = _mac(token, _standard_prefix(mid, ts), body)
        return {
            STANDARD_ID_HEADER: mid,
            STANDARD_TIMESTAMP_HEADER: str(ts),
            STANDARD_SIGNATURE_HEADER: "v1," + base64.b64encode(digest).decode("ascii"),
        }

    if scheme == "stripe":
        ts = int(now()) if timestamp is None else timestamp
        digest = _mac(token, _stripe_prefix(ts), body)
        return {STRIPE_HEADER: f"t={ts},v1={digest.hex()}"}

    raise _unknown_scheme(scheme)


# --- verification -------------------------------------------------------------------------------


def _header(headers: Mapping[str, str], name: str, lower: str) -> str | None:
    """Look ``name`` up case-insensitively; ``lower`` is its lowercased form.

    The exact spellings are tried first because that is what callers usually pass
    (and a case-insensitive mapping such as aiohttp's answers them directly); only
    then are the keys scanned. Header names are ASCII tokens, so ``lower()`` is the
    right fold (``casefold()`` would also fold non-ASCII lookalikes such as U+017F).
    """
    value = headers.get(name)
    if value is None:
        value = headers.get(lower)
    if value is None:
        for key, candidate in headers.items():
            if key.lower() == lower:
                return candidate
    return value


def _hex_digest(value: str) -> bytes | None:
    """Decode a 64-character hex SHA-256 digest, or return ``None`` if it is not one."""
    if len(value) != _HEX_LEN:
        return None
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        return None
    # fromhex skips whitespace, so 64 characters may still decode to fewer bytes.
    return raw if len(raw) == _DIGEST_SIZE else None


def _within(timestamp: int, tolerance_s: int, now: Callable[[], float]) -> bool:
    return abs(now() - timestamp) <= tolerance_s


def _verify_sha256_header(token: str, body: bytes, value: str | None) -> Verdict:
    if value is None:
        return _MISSING
    value = value.strip()
    if not value.startswith(_SHA256_PREFIX):
        return _MALFORMED
    given = _hex_digest(value[len(_SHA256_PREFIX) :])
    if given is None:
        return _MALFORMED
    expected = hmac.digest(token.encode("utf-8"), body, hashlib.sha256)
    return _OK if hmac.compare_digest(expected, given) else _MISMATCH


def _verify_standard(
    token: str,
    body: bytes,
    headers: Mapping[str, str],
    tolerance_s: int,
    now: Callable[[], float],
) -> Verdict:
    raw_id = _header(headers, STANDARD_ID_HEADER, STANDARD_ID_HEADER)
    raw_ts = _header(headers, STANDARD_TIMESTAMP_HEADER, STANDARD_TIMESTAMP_HEADER)
    raw_sig = _header(headers, STANDARD_SIGNATURE_HEADER, STANDARD_SIGNATURE_HEADER)
    if raw_id is None or raw_ts is None or raw_sig is None:
        return _MISSING
    try:
        msg_id = check_msg_id(raw_id.strip())
        timestamp = parse_timestamp(raw_ts.strip())
    except InvalidInput:
        return _MALFORMED

    # The spec allows several space-separated "<version>,<signature>" entries (for key
    # rotation and future versions); v1 entries must all be well-formed, others are skipped.
    given: list[bytes] = []
    for entry in raw_sig.split():
        version, comma, signature = entry.partition(",")
        if not comma:
            return _MALFORMED
        if version != "v1":
            continue
        try:
            decoded = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            return _MALFORMED
        if len(decoded) != _DIGEST_SIZE:
            return _MALFORMED
        given.append(decoded)
    if not given:
        return _MALFORMED

    if not _within(timestamp, tolerance_s, now):
        return _STALE
    expected = _mac(token, _standard_prefix(msg_id, timestamp), body)
    return _OK if _any_matches(expected, given) else _MISMATCH


def _any_matches(expected: bytes, given: list[bytes]) -> bool:
    """Whether any entry equals ``expected``, comparing against every entry so the
    time taken does not depend on which one matched."""
    matched = False
    for candidate in given:
        matched |= hmac.compare_digest(expected, candidate)
    return matched


def _verify_stripe(
    token: str,
    body: bytes,
    headers: Mapping[str, str],
    tolerance_s: int,
    now: Callable[[], float],
) -> Verdict:
    value = _header(headers, STRIPE_HEADER, STRIPE_HEADER.lower())
    if value is None:
        return _MISSING

    timestamp: int | None = None
    given: list[bytes] = []
    for item in value.split(","):
        key, equals, field = item.strip().partition("=")
        if not equals:
            return _MALFORMED
        if key == "t":
            if timestamp is not None:
                return _MALFORMED
            try:
                timestamp = parse_timestamp(field)
            except InvalidInput:
                return _MALFORMED
        elif key == "v1":
            digest = _hex_digest(field)
            if digest is None:
                return _MALFORMED
            given.append(digest)
        # Other keys (Stripe's v0 test-mode signature, future versions) are skipped.
    if timestamp is None or not given:
        return _MALFORMED

    if not _within(timestamp, tolerance_s, now):
        return _STALE
    expected = _mac(token, _stripe_prefix(timestamp), body)
    return _OK if _any_matches(expected, given) else _MISMATCH


def verify(
    scheme: str,
    token: str,
    body: bytes,
    headers: Mapping[str, str],
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: Callable[[], float] = time.time,
) -> Verdict:
    """Check ``headers`` as a ``scheme`` signature of ``body`` under ``token``.

    Header names match case-insensitively. Checks run in a fixed order and the first
    failure decides the reason: ``missing_header``, ``malformed_header``, then (for
    ``standard`` and ``stripe``) ``timestamp_out_of_tolerance`` when the timestamp is
    more than ``tolerance_s`` seconds from ``now()`` in either direction, and finally
    ``mismatch``. Digests are compared in constant time. Raises ``InvalidInput`` for
    an unknown scheme or a negative tolerance.
    """
    if scheme == "wisp":
        value = _header(headers, WISP_HEADER, "x-webhook-signature")
        return _verify_sha256_header(token, body, value)
    if scheme == "github":
        value = _header(headers, GITHUB_HEADER, "x-hub-signature-256")
        return _verify_sha256_header(token, body, value)
    if scheme == "standard" or scheme == "stripe":
        if tolerance_s < 0:
            raise InvalidInput("tolerance_s must not be negative")
        if scheme == "standard":
            return _verify_standard(token, body, headers, tolerance_s, now)
        return _verify_stripe(token, body, headers, tolerance_s, now)
    raise _unknown_scheme(scheme)
