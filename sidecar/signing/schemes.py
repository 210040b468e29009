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

Every scheme is one entry of ``TABLE``: its name, how it signs, how it
verifies, and the headers it sends. A new scheme is a new entry; ``sign``,
``verify``, the parameter check and the metrics' labels all read the table.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from sidecar.errors import InvalidInput
from sidecar.signing.scheme_types import (
    MALFORMED,
    MISMATCH,
    MISSING,
    OK,
    STALE,
    Reason,
    Scheme,
    Verdict,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "DEFAULT_SCHEME",
    "DEFAULT_TOLERANCE_S",
    "SCHEMES",
    "TABLE",
    "Reason",
    "Scheme",
    "Verdict",
    "check_msg_id",
    "new_msg_id",
    "parse_scheme",
    "parse_timestamp",
    "sign",
    "verify",
]

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


# --- the schemes -------------------------------------------------------------------------------


# A key's HMAC-SHA256 state before any message: each call answers one of its own.
_Keyed = Callable[[], "hmac.HMAC"]


def _keyed(key: bytes) -> _Keyed:
    """``key``'s HMAC state, made once and copied for each message: the use hmac
    documents ``copy()`` for. A batch hashes the key's two padded blocks once, not
    once per body: a 1 KiB body signs in three quarters of the time."""
    return hmac.new(key, digestmod=hashlib.sha256).copy


def _fresh(key: bytes) -> _Keyed:
    """``key``'s HMAC state made anew at each call: for a single message, cheaper
    than making one to copy."""
    return lambda: hmac.new(key, digestmod=hashlib.sha256)


def _mac(keyed: _Keyed, prefix: bytes, body: bytes) -> bytes:
    """HMAC-SHA256 of ``prefix + body``, without copying the body."""
    mac = keyed()
    mac.update(prefix)
    mac.update(body)
    return mac.digest()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    """Look ``name`` up case-insensitively.

    The exact spelling is tried first because that is what callers usually pass
    (and a case-insensitive mapping such as aiohttp's answers it directly), then
    the lowercased one; only then are the keys scanned. Header names are ASCII
    tokens, so ``lower()`` is the right fold (``casefold()`` would also fold
    non-ASCII lookalikes such as U+017F).
    """
    value = headers.get(name)
    if value is not None:
        return value
    lower = name.lower()
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


def _any_matches(expected: bytes, given: list[bytes]) -> bool:
    """Whether any entry equals ``expected``, comparing against every entry so the
    time taken does not depend on which one matched."""
    matched = False
    for candidate in given:
        matched |= hmac.compare_digest(expected, candidate)
    return matched


def _sha256_header(header: str) -> Scheme:
    """``<header>: sha256=<hex HMAC(body)>``, no replay protection: wisp and github."""

    def sign(
        key: bytes,
        body: bytes,
        msg_id: str | None,
        timestamp: int | None,
        now: Callable[[], float],
    ) -> dict[str, str]:
        return {header: _SHA256_PREFIX + hmac.digest(key, body, hashlib.sha256).hex()}

    def sign_all(
        key: bytes,
        bodies: list[bytes],
        msg_id: str | None,
        timestamp: int | None,
        now: Callable[[], float],
    ) -> list[dict[str, str]]:
        keyed = _keyed(key)
        signed: list[dict[str, str]] = []
        for body in bodies:
            mac = keyed()
            mac.update(body)
            signed.append({header: _SHA256_PREFIX + mac.hexdigest()})
        return signed

    def verify(
        key: bytes,
        body: bytes,
        headers: Mapping[str, str],
        tolerance_s: int,
        now: Callable[[], float],
    ) -> Verdict:
        value = _header(headers, header)
        if value is None:
            return MISSING
        value = value.strip()
        if not value.startswith(_SHA256_PREFIX):
            return MALFORMED
        given = _hex_digest(value[len(_SHA256_PREFIX) :])
        if given is None:
            return MALFORMED
        expected = hmac.digest(key, body, hashlib.sha256)
        return OK if hmac.compare_digest(expected, given) else MISMATCH

    return Scheme(sign=sign, sign_all=sign_all, verify=verify, headers=(header,))


# What a timestamped scheme's headers say: the signed prefix, the timestamp and
# the candidate digests; or the Verdict that ends the check early.
_Parsed = tuple[bytes, int, list[bytes]] | Verdict


# How a timestamped scheme signs one body with a keyed state (``_keyed``).
_SignsKeyed = Callable[[_Keyed, bytes, str | None, int | None, Callable[[], float]], dict[str, str]]


def _timestamped(
    parse: Callable[[Mapping[str, str]], _Parsed],
    sign_keyed: _SignsKeyed,
    sent: tuple[str, ...],
) -> Scheme:
    """A scheme that signs ``<prefix>.<ts>.<body>`` and checks the timestamp: the
    checks after parsing are the same for all of them."""

    def sign(
        key: bytes,
        body: bytes,
        msg_id: str | None,
        timestamp: int | None,
        now: Callable[[], float],
    ) -> dict[str, str]:
        return sign_keyed(_fresh(key), body, msg_id, timestamp, now)

    def sign_all(
        key: bytes,
        bodies: list[bytes],
        msg_id: str | None,
        timestamp: int | None,
        now: Callable[[], float],
    ) -> list[dict[str, str]]:
        keyed = _keyed(key)
        return [sign_keyed(keyed, body, msg_id, timestamp, now) for body in bodies]

    def verify(
        key: bytes,
        body: bytes,
        headers: Mapping[str, str],
        tolerance_s: int,
        now: Callable[[], float],
    ) -> Verdict:
        parsed = parse(headers)
        if isinstance(parsed, Verdict):
            return parsed
        prefix, timestamp, given = parsed
        if abs(now() - timestamp) > tolerance_s:
            return STALE
        return OK if _any_matches(_mac(_fresh(key), prefix, body), given) else MISMATCH

    return Scheme(sign=sign, sign_all=sign_all, verify=verify, headers=sent)


# Standard Webhooks v1: webhook-id, webhook-timestamp, and
# webhook-signature: v1,<base64 HMAC("{id}.{ts}.{body}")>.


def _standard_prefix(msg_id: str, timestamp: int) -> bytes:
    return f"{msg_id}.{timestamp}.".encode("ascii")


def _sign_standard(
    keyed: _Keyed,
    body: bytes,
    msg_id: str | None,
    timestamp: int | None,
    now: Callable[[], float],
) -> dict[str, str]:
    ts = int(now()) if timestamp is None else timestamp
    mid = new_msg_id() if msg_id is None else msg_id
    digest = _mac(keyed, _standard_prefix(mid, ts), body)
    return {
        STANDARD_ID_HEADER: mid,
        STANDARD_TIMESTAMP_HEADER: str(ts),
        STANDARD_SIGNATURE_HEADER: "v1," + base64.b64encode(digest).decode("ascii"),
    }


def _parse_standard(headers: Mapping[str, str]) -> _Parsed:
    raw_id = _header(headers, STANDARD_ID_HEADER)
    raw_ts = _header(headers, STANDARD_TIMESTAMP_HEADER)
    raw_sig = _header(headers, STANDARD_SIGNATURE_HEADER)
    if raw_id is None or raw_ts is None or raw_sig is None:
        return MISSING
    try:
        msg_id = check_msg_id(raw_id.strip())
        timestamp = parse_timestamp(raw_ts.strip())
    except InvalidInput:
        return MALFORMED
    # The spec allows several space-separated "<version>,<signature>" entries (for key
    # rotation and future versions); v1 entries must all be well-formed, others are skipped.
    given: list[bytes] = []
    for entry in raw_sig.split():
        version, comma, signature = entry.partition(",")
        if not comma:
            return MALFORMED
        if version != "v1":
            continue
        try:
            decoded = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            return MALFORMED
        if len(decoded) != _DIGEST_SIZE:
            return MALFORMED
        given.append(decoded)
    if not given:
        return MALFORMED
    return _standard_prefix(msg_id, timestamp), timestamp, given


# Stripe: Webhook-Signature: t=<ts>,v1=<hex HMAC("{ts}.{body}")>.


def _sign_stripe(
    keyed: _Keyed,
    body: bytes,
    msg_id: str | None,
    timestamp: int | None,
    now: Callable[[], float],
) -> dict[str, str]:
    ts = int(now()) if timestamp is None else timestamp
    return {STRIPE_HEADER: f"t={ts},v1={_mac(keyed, f'{ts}.'.encode('ascii'), body).hex()}"}


def _parse_stripe(headers: Mapping[str, str]) -> _Parsed:
    value = _header(headers, STRIPE_HEADER)
    if value is None:
        return MISSING
    timestamp: int | None = None
    given: list[bytes] = []
    for item in value.split(","):
        key, equals, field = item.strip().partition("=")
        if not equals:
            return MALFORMED
        if key == "t":
            if timestamp is not None:
                return MALFORMED
            try:
                timestamp = parse_timestamp(field)
            except InvalidInput:
                return MALFORMED
        elif key == "v1":
            digest = _hex_digest(field)
            if digest is None:
                return MALFORMED
            given.append(digest)
        # Other keys (Stripe's v0 test-mode signature, future versions) are skipped.
    if timestamp is None or not given:
        return MALFORMED
    return f"{timestamp}.".encode("ascii"), timestamp, given


# Name -> scheme, in the order the docs and the metrics list them.
TABLE: Final[dict[str, Scheme]] = {
    "wisp": _sha256_header(WISP_HEADER),
    "standard": _timestamped(
        _parse_standard,
        _sign_standard,
        (STANDARD_ID_HEADER, STANDARD_TIMESTAMP_HEADER, STANDARD_SIGNATURE_HEADER),
    ),
    "github": _sha256_header(GITHUB_HEADER),
    "stripe": _timestamped(_parse_stripe, _sign_stripe, (STRIPE_HEADER,)),
}
SCHEMES: Final[tuple[str, ...]] = tuple(TABLE)
_SCHEMES_TEXT: Final = ", ".join(SCHEMES)


def _scheme(name: str) -> Scheme:
    scheme = TABLE.get(name)
    if scheme is None:
        raise _unknown_scheme(name)
    return scheme


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
    return _scheme(scheme).sign(token.encode("utf-8"), body, msg_id, timestamp, now)


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
    found = _scheme(scheme)
    if tolerance_s < 0:
        raise InvalidInput("tolerance_s must not be negative")
    return found.verify(token.encode("utf-8"), body, headers, tolerance_s, now)
