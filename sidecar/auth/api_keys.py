"""API keys: the keys file of SHA-256 digests bound to owner DIDs, and the check.

Keys are made by the CLI (``wisp-sidecar apikey``); the sidecar holds only
their digests and compares them in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import structlog

from sidecar.auth.caller import Caller
from sidecar.errors import AuthenticationFailed, ConfigError
from sidecar.names import is_valid_did

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

log = structlog.get_logger("sidecar.auth")

API_KEY_PREFIX: Final = "wsa_"
API_KEYS_SETTING: Final = "SIDECAR_API_KEYS_FILE"
_HEX: Final = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True)
class ApiKeyEntry:
    """One line of the keys file: the SHA-256 of a key, bound to its owner."""

    did: str
    digest: bytes
    label: str

    def __repr__(self) -> str:
        return f"ApiKeyEntry(did={self.did!r}, label={self.label!r})"


def generate_api_key() -> str:
    """A new API key: ``wsa_`` and 32 random bytes, base64url."""
    return API_KEY_PREFIX + secrets.token_urlsafe(32)


def api_key_digest(key: str) -> str:
    """The hex SHA-256 of a key, as the keys file holds it."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def keys_file_line(did: str, key: str, label: str = "") -> str:
    """The keys-file line that admits ``key`` as ``did``."""
    return " ".join(part for part in (did, api_key_digest(key), label) if part)


def parse_api_keys(text: str, *, source: str) -> list[ApiKeyEntry]:
    """Parse a keys file: ``<did> <sha256-hex> [label]`` a line, ``#`` starts a comment."""
    entries: list[ApiKeyEntry] = []
    # One key acting as two owners would make "who owns this secret" depend on
    # line order; refuse it.
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        content = line.split("#", 1)[0].strip()
        if not content:
            continue
        fields = content.split()
        where = f"{source} line {number}"
        if len(fields) not in (2, 3):
            raise ConfigError(API_KEYS_SETTING, f"{where}: expected '<did> <sha256-hex> [label]'")
        did, digest_hex = fields[0], fields[1].lower()
        if not is_valid_did(did):
            # Not echoed: a key pasted into the wrong column must not reach a log.
            raise ConfigError(API_KEYS_SETTING, f"{where}: the first field is not a DID")
        if len(digest_hex) != 64 or not set(digest_hex) <= _HEX:
            raise ConfigError(API_KEYS_SETTING, f"{where}: the digest must be 64 hex characters")
        label = fields[2] if len(fields) == 3 else f"key-{digest_hex[:8]}"
        if digest_hex in seen:
            first = seen[digest_hex]
            raise ConfigError(API_KEYS_SETTING, f"{where}: the same key is listed on line {first}")
        seen[digest_hex] = number
        entries.append(ApiKeyEntry(did=did, digest=bytes.fromhex(digest_hex), label=label))
    return entries


def load_api_keys(path: Path) -> list[ApiKeyEntry]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(API_KEYS_SETTING, f"cannot read {path}: {exc.strerror}") from None
    return parse_api_keys(text, source=str(path))


class ApiKeys:
    """Checks bearer API keys against the digests of the keys file."""

    def __init__(self, entries: Sequence[ApiKeyEntry]) -> None:
        self._entries = tuple(entries)

    def __len__(self) -> int:
        return len(self._entries)

    def authenticate(self, key: str) -> Caller:
        # surrogateescape: a key from undecodable header bytes hashes (and so
        # fails) instead of raising.
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
        found: ApiKeyEntry | None = None
        # Compare against every entry, without stopping early, so the time
        # taken says nothing about which digest (if any) came close.
        for entry in self._entries:
            if hmac.compare_digest(entry.digest, digest) and found is None:
                found = entry
        if found is None:
            raise AuthenticationFailed("unknown_key")
        return Caller(did=found.did, actor=f"apikey:{found.label}")
