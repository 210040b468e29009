"""The string formats a lexicon may name, each with its check and its rule in words.

The DID rule is ``sidecar.names``'s, the one the storage keys rely on.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import TYPE_CHECKING

from sidecar.names import is_valid_did

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

# Every pattern is applied with ``fullmatch``: ``$`` would accept a trailing newline.
_NSID_RE = re.compile(
    r"[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
    r"(?:\.[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?)+"
    r"\.[a-zA-Z][a-zA-Z0-9]{0,62}"
)
_RECORD_KEY_RE = re.compile(r"[A-Za-z0-9._:~-]{1,512}")
_HANDLE_RE = re.compile(
    r"(?:[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?\.)+"
    r"[a-zA-Z](?:[a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?"
)
_DATETIME_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.[0-9]{1,20})?"
    r"(Z|[+-][0-2][0-9]:[0-5][0-9])"
)


def is_valid_nsid(value: str) -> bool:
    """Whether ``value`` is a syntactically valid NSID (https://atproto.com/specs/nsid)."""
    if len(value) > 317 or not _NSID_RE.fullmatch(value):
        return False
    authority = value.rsplit(".", 1)[0]
    return len(authority) <= 253


def _is_datetime(value: str) -> bool:
    """Whether ``value`` is an atproto datetime: RFC 3339, upper-case ``T``, a timezone."""
    match = _DATETIME_RE.fullmatch(value)
    if match is None:
        return False
    year, month, day, hour, minute, second, offset = match.groups()
    # RFC 3339 reads -00:00 as "offset unknown"; atproto forbids it.
    if offset == "-00:00":
        return False
    tz = UTC
    if offset != "Z":
        sign = -1 if offset[0] == "-" else 1
        delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
        try:
            tz = timezone(sign * delta)
        except ValueError:
            return False
    try:
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=tz
        )
        # Must also name a real instant in UTC (0001-01-01T00:00:00+01:00 does not).
        moment.astimezone(UTC)
    except (ValueError, OverflowError):
        return False
    return True


def _is_record_key(value: str) -> bool:
    return value not in {".", ".."} and _RECORD_KEY_RE.fullmatch(value) is not None


def _is_handle(value: str) -> bool:
    return len(value) <= 253 and _HANDLE_RE.fullmatch(value) is not None


FORMAT_CHECKS: Mapping[str, tuple[Callable[[str], bool], str]] = {
    "datetime": (
        _is_datetime,
        "an RFC 3339 datetime with a timezone, like 2026-01-15T10:30:00.000Z",
    ),
    "record-key": (
        _is_record_key,
        "a valid record key: 1 to 512 of A-Z a-z 0-9 . _ : ~ - and not '.' or '..'",
    ),
    "did": (is_valid_did, "a valid DID"),
    "handle": (_is_handle, "a valid handle"),
    "nsid": (is_valid_nsid, "a valid NSID"),
    "at-identifier": (lambda v: is_valid_did(v) or _is_handle(v), "a valid DID or handle"),
}

FORMATS = frozenset(FORMAT_CHECKS)
