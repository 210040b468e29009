"""Tokens, key-encryption keys and sealed envelopes (docs/architecture.md §7).

This is the only module that imports PyNaCl, and it knows nothing of HTTP or
Redis: callers hand it strings and get strings back.

A signing token is sealed at rest with XChaCha20-Poly1305 (IETF AEAD) under a
32-byte key-encryption key (KEK), with a fresh random 24-byte nonce per seal::

    wsn1.<kid>.<base64url(nonce)>.<base64url(ciphertext+tag)>

``kid`` is the first 16 characters of base64url(SHA-256(KEK)), so an envelope
says which key opens it without revealing the key. The associated data is
``wsn1.<kid>.<did>.<name>``: it binds the envelope to one owner's secret, so a
copy pasted under another DID or name fails to open, and it binds the kid, so a
relabelled envelope fails too. All base64 here is unpadded base64url unless
said otherwise, and every decoder is strict (canonical encodings only), so a
given envelope or key has exactly one spelling.

Error messages never carry a token, a key, an envelope or a setting's value,
because they end up in logs and, for some, in responses.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import nacl.utils
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_ABYTES,
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
    crypto_aead_xchacha20poly1305_ietf_KEYBYTES,
    crypto_aead_xchacha20poly1305_ietf_NPUBBYTES,
)
from nacl.exceptions import CryptoError

from sidecar.errors import ConfigError, EncryptionUnavailable, EnvelopeError

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "TOKEN_PREFIX",
    "Kek",
    "Keyring",
    "encode_kek",
    "generate_kek",
    "generate_token",
    "looks_like_token",
    "parse_kek",
]

TOKEN_PREFIX = "wsk_"  # noqa: S105 -- a public prefix that makes tokens greppable, not a secret

# 24 random bytes is 192 bits of entropy and encodes to exactly 32 base64url
# characters with no padding, so every token has the same length.
_TOKEN_RANDOM_BYTES = 24
_TOKEN_RE = re.compile(r"wsk_[A-Za-z0-9_-]{32}")

_KEY_BYTES: int = crypto_aead_xchacha20poly1305_ietf_KEYBYTES
_NONCE_BYTES: int = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
_TAG_BYTES: int = crypto_aead_xchacha20poly1305_ietf_ABYTES
_KID_CHARS = 16

_ENVELOPE_VERSION = "wsn1"
_KID_RE = re.compile(r"[A-Za-z0-9_-]{16}")
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")

# The three spellings of a 32-byte KEK (docs/configuration.md). Character classes
# are spelled out (not \d or str.isalnum) so non-ASCII digits never match.
_KEK_HEX_RE = re.compile(r"[0-9A-Fa-f]{64}")
_KEK_B64URL_RE = re.compile(r"[A-Za-z0-9_-]{43}")
_KEK_B64_RE = re.compile(r"[A-Za-z0-9+/]{43}=")

_PREVIOUS_SETTING = "SIDECAR_KEK_PREVIOUS"


def _b64url(data: bytes) -> str:
    """Encode as unpadded base64url, the one spelling used in tokens, kids and envelopes."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes | None:
    """Decode canonical unpadded base64url, or return None.

    The standard library accepts padding, ignores stray characters unless told
    otherwise, and accepts non-zero trailing bits; any of those would give one
    value several spellings, so the result is re-encoded and compared.
    """
    if _B64URL_RE.fullmatch(text) is None or len(text) % 4 == 1:
        return None
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64url(data) != text:
        return None
    return data


def generate_token() -> str:
    """Return a fresh signing token: ``wsk_`` and 32 base64url characters (36 in all)."""
    return TOKEN_PREFIX + _b64url(nacl.utils.random(_TOKEN_RANDOM_BYTES))


def looks_like_token(value: str) -> bool:
    """Say whether ``value`` has the shape of a token; used to spot tokens, not to trust them."""
    return _TOKEN_RE.fullmatch(value) is not None


def generate_kek() -> bytes:
    """Return 32 random bytes for a new key-encryption key."""
    return nacl.utils.random(_KEY_BYTES)


def encode_kek(key: bytes) -> str:
    """Spell a KEK as 43 unpadded base64url characters, the form ``keygen`` prints."""
    if len(key) != _KEY_BYTES:
        raise ValueError(f"a KEK is {_KEY_BYTES} bytes, not {len(key)}")
    return _b64url(key)


@dataclass(frozen=True, slots=True, repr=False, eq=False)
class Kek:
    """One key-encryption key and its public key id.

    ``repr`` and ``str`` show only the kid, so a Kek can sit in settings or a
    log line without leaking. Equality compares the key in constant time.
    """

    key: bytes
    kid: str = field(init=False)

    def __post_init__(self) -> None:
        if len(self.key) != _KEY_BYTES:
            raise ValueError(f"a KEK is {_KEY_BYTES} bytes, not {len(self.key)}")
        kid = _b64url(hashlib.sha256(self.key).digest())[:_KID_CHARS]
        # The dataclass is frozen, so the derived field is set the way its own
        # generated __init__ would set it.
        object.__setattr__(self, "kid", kid)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Kek):
            return NotImplemented
        return hmac.compare_digest(self.key, other.key)

    def __hash__(self) -> int:
        # Equal keys have equal kids, so hashing the public kid is consistent
        # with __eq__ without feeding key bytes to anything else.
        return hash(self.kid)

    def __repr__(self) -> str:
        return f"Kek(kid={self.kid!r})"

    __str__ = __repr__


def parse_kek(text: str, *, setting: str) -> Kek:
    """Parse one KEK from a setting's value, strictly.

    Accepted spellings of the 32 bytes: 64 hex characters, 43 unpadded
    base64url characters, or 44 standard base64 characters ending in one
    ``=``. Surrounding whitespace is dropped first because keys are often read
    from files that end in a newline. Anything else, non-canonical base64, and
    the all-zero key (a placeholder, never a real key) raise ``ConfigError``
    naming ``setting``; the message describes the problem and never repeats
    the value.
    """
    value = text.strip()
    key: bytes | None
    if not value:
        raise ConfigError(setting, "is empty; expected a 32-byte key")
    if len(value) == 64:
        if _KEK_HEX_RE.fullmatch(value) is None:
            raise ConfigError(setting, "has 64 characters but is not hexadecimal")
        key = bytes.fromhex(value)
    elif len(value) == 43:
        if _KEK_B64URL_RE.fullmatch(value) is None:
            raise ConfigError(
                setting,
                "has 43 characters but is not unpadded base64url (A-Z, a-z, 0-9, '-', '_')",
            )
        key = _b64url_decode(value)
        if key is None:
            raise ConfigError(setting, "is not canonical base64url (the last character is wrong)")
    elif len(value) == 44:
        if _KEK_B64_RE.fullmatch(value) is None:
            raise ConfigError(
                setting,
                "has 44 characters but is not standard base64 (A-Z, a-z, 0-9, '+', '/') "
                "ending in one '='",
            )
        key = base64.b64decode(value, validate=True)
        if base64.b64encode(key).decode("ascii") != value:
            raise ConfigError(setting, "is not canonical base64 (the last character is wrong)")
    else:
        raise ConfigError(
            setting,
            "must be 64 hex, 43 base64url or 44 base64 characters "
            f"for a 32-byte key, not {len(value)} characters",
        )
    if not any(key):
        raise ConfigError(setting, "is all zeros, which is a placeholder and not a key")
    return Kek(key)


def _associated_data(kid: str, did: str, name: str) -> bytes:
    """Build the AEAD associated data that binds an envelope to its key, owner and name.

    ``did:web`` DIDs and names may both contain ``.``, so a dotted join
    (``wsn1.<kid>.<did>.<name>``) is ambiguous: ``did:web:a.b`` + ``c`` and
    ``did:web:a`` + ``b.c`` would share one AAD, and an envelope copied between
    them would open. The parts are joined with NUL, which neither a DID nor a
    name can contain, so each AAD names exactly one (kid, did, name).
    """
    return "\x00".join((_ENVELOPE_VERSION, kid, did, name)).encode()


def _parse_envelope(envelope: str) -> tuple[str, bytes, bytes]:
    """Split an envelope into kid, nonce and sealed bytes, or raise ``EnvelopeError``.

    This checks shape only; it neither finds a key nor authenticates.
    """
    parts = envelope.split(".")
    if len(parts) != 4 or parts[0] != _ENVELOPE_VERSION:
        raise EnvelopeError("envelope is malformed")
    _, kid, nonce_text, sealed_text = parts
    if _KID_RE.fullmatch(kid) is None:
        raise EnvelopeError("envelope has a malformed key id")
    nonce = _b64url_decode(nonce_text)
    if nonce is None or len(nonce) != _NONCE_BYTES:
        raise EnvelopeError("envelope has a malformed nonce")
    sealed = _b64url_decode(sealed_text)
    if sealed is None or len(sealed) < _TAG_BYTES:
        raise EnvelopeError("envelope has a malformed ciphertext")
    return kid, nonce, sealed


class Keyring:
    """The active KEK, which seals, and up to 8 previous KEKs, which only open.

    Keys are found by the kid written in each envelope, so opening costs one
    dictionary lookup and one decryption however many keys there are. A
    previous key equal to the active key is dropped rather than rejected: that
    happens naturally mid-rotation (or on rollback) and is harmless. The limit
    of 8 counts previous keys as given. A Keyring never changes after
    construction, which is what lets ``sidecar.signing.tokens.OpenedTokenCache`` trust its
    answers.
    """

    MAX_PREVIOUS = 8

    __slots__ = ("_active", "_by_kid", "_kids")

    def __init__(self, active: Kek | None, previous: Sequence[Kek] = ()) -> None:
        if len(previous) > self.MAX_PREVIOUS:
            raise ConfigError(
                _PREVIOUS_SETTING,
                f"lists {len(previous)} keys; at most {self.MAX_PREVIOUS} are allowed",
            )
        by_kid: dict[str, Kek] = {}
        if active is not None:
            by_kid[active.kid] = active
        for position, kek in enumerate(previous, start=1):
            if kek == active:
                continue
            if kek.kid in by_kid:
                # A kid is public (it is written in every envelope), so naming
                # it helps the operator find the repeat without leaking a key.
                raise ConfigError(
                    _PREVIOUS_SETTING,
                    f"key {position} (kid {kek.kid}) is listed more than once",
                )
            by_kid[kek.kid] = kek
        self._active = active
        self._by_kid = by_kid
        # Dicts keep insertion order, and the active key went in first.
        self._kids = tuple(by_kid)

    @property
    def active_kid(self) -> str | None:
        """The kid new envelopes are sealed under, or None when sealing is unavailable."""
        return None if self._active is None else self._active.kid

    @property
    def can_seal(self) -> bool:
        """Whether an active key is configured, so that create and rotate can work."""
        return self._active is not None

    @property
    def kids(self) -> tuple[str, ...]:
        """Every kid this ring can open, the active one first."""
        return self._kids

    def seal(self, token: str, *, did: str, name: str) -> str:
        """Encrypt ``token`` for secret ``name`` of owner ``did`` under the active key.

        Every call draws a fresh random nonce, so sealing the same token twice
        gives two different envelopes; XChaCha20's 192-bit nonce makes random
        nonces safe without a counter.
        """
        kek = self._active
        if kek is None:
            raise EncryptionUnavailable("no active key-encryption key is configured")
        nonce = nacl.utils.random(_NONCE_BYTES)
        sealed = crypto_aead_xchacha20poly1305_ietf_encrypt(
            token.encode("utf-8"), _associated_data(kek.kid, did, name), nonce, kek.key
        )
        return f"{_ENVELOPE_VERSION}.{kek.kid}.{_b64url(nonce)}.{_b64url(sealed)}"

    def open(self, envelope: str, *, did: str, name: str) -> str:
        """Decrypt an envelope sealed for secret ``name`` of owner ``did``.

        Raises ``EnvelopeError`` with a fixed message when the envelope is
        malformed, names a kid this ring lacks, fails authentication (wrong
        key, owner or name, or tampering), or holds a plaintext that is not
        UTF-8.
        """
        kid, nonce, sealed = _parse_envelope(envelope)
        kek = self._by_kid.get(kid)
        if kek is None:
            raise EnvelopeError(
                "envelope was sealed under a key that is not in the keyring",
                reason="unknown_key",
                kid=kid,
            )
        try:
            plaintext = crypto_aead_xchacha20poly1305_ietf_decrypt(
                sealed, _associated_data(kid, did, name), nonce, kek.key
            )
        except CryptoError:
            raise EnvelopeError(
                "envelope failed authentication", reason="undecryptable", kid=kid
            ) from None
        try:
            token: str | None = plaintext.decode("utf-8")
        except UnicodeDecodeError:
            token = None
        if token is None:
            # Raised outside the except block on purpose: a UnicodeDecodeError
            # holds the decrypted bytes, and chaining it (even suppressed, via
            # __context__) could carry them into an error reporter.
            raise EnvelopeError("envelope plaintext is not UTF-8", reason="undecryptable", kid=kid)
        return token

    @staticmethod
    def kid_of(envelope: str) -> str | None:
        """The key id an envelope names, or None when it is malformed."""
        try:
            kid, _, _ = _parse_envelope(envelope)
        except EnvelopeError:
            return None
        return kid

    def needs_rewrap(self, envelope: str) -> bool:
        """Whether the re-wrap command should re-seal this envelope under the active key.

        True when there is an active key and the envelope names another kid.
        Only the shape is checked (``EnvelopeError`` if malformed); whether the
        envelope opens is for ``open`` to find out.
        """
        kid, _, _ = _parse_envelope(envelope)
        return self._active is not None and kid != self._active.kid

    def __repr__(self) -> str:
        return f"Keyring(active_kid={self.active_kid!r}, kids={self._kids!r})"
