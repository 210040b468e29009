"""The shapes of owner DIDs, secret names, caller-supplied tokens and hosts, checked
before anything uses them."""

from __future__ import annotations

import ipaddress
import re

from sidecar.errors import InvalidInput

# docs/architecture.md §4: names are case-sensitive, never trimmed, and not "." or "..".
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
NAME_RULE = "1-64 characters of A-Z a-z 0-9 . _ -, not '.' or '..', and not starting 'wsk_'"
# Tokens start with "wsk_" and fit the name alphabet, so a token pasted as a
# name would sit in Redis and in every list answer in plaintext. Refuse them.
_TOKEN_PREFIX = "wsk_"  # noqa: S105  (a prefix to refuse, not a credential)

# The atproto DID syntax. It excludes "{" and "}", which keeps the owner's
# Redis hash tag ("{<did>}") unambiguous, so every key of an owner shares a slot.
_DID_RE = re.compile(r"did:[a-z]+:[A-Za-z0-9._:%-]*[A-Za-z0-9._-]")
MAX_DID_LENGTH = 2048
# A DID document's service id, the part after "#" in "atproto-proxy: <did>#<id>".
# Kept to a plain alphabet: it travels in a header and is compared byte for byte.
_SERVICE_ID_RE = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")


def is_valid_name(name: str) -> bool:
    """Whether ``name`` is a well-formed secret name."""
    return (
        _NAME_RE.fullmatch(name) is not None
        and name not in (".", "..")
        and not name.startswith(_TOKEN_PREFIX)
    )


def validate_name(name: object, field: str = "name") -> str:
    """Return ``name`` unchanged, or raise ``InvalidInput`` saying what a name must be.

    ``field`` is how the message names the value (``Input/name`` on XRPC).
    """
    if not isinstance(name, str) or not is_valid_name(name):
        if isinstance(name, str) and name.startswith(_TOKEN_PREFIX):
            # Not echoed: it may well be a real token.
            raise InvalidInput(
                f"{field} must not start with '{_TOKEN_PREFIX}', which is how tokens start: "
                "a name is stored and listed in plain text, so a token must never be one"
            )
        raise InvalidInput(f"{field} must be {NAME_RULE}")
    return name


def is_valid_did(did: str) -> bool:
    """Whether ``did`` follows the atproto DID syntax."""
    return len(did) <= MAX_DID_LENGTH and _DID_RE.fullmatch(did) is not None


def validate_did(did: object) -> str:
    """Return ``did`` unchanged, or raise ``InvalidInput``."""
    if not isinstance(did, str) or not is_valid_did(did):
        raise InvalidInput("did must be a DID, such as did:plc:abc123 or did:web:example.com")
    return did


# A token a caller brings (issue 14: the tokens receivers already hold), as
# wisp.place's secret.create takes it: printable ASCII, no whitespace. The
# lexicon bounds the length too; this also checks the alphabet, which it cannot.
MIN_TOKEN_LENGTH = 32
MAX_TOKEN_LENGTH = 256
_TOKEN_RE = re.compile(rf"[\x21-\x7e]{{{MIN_TOKEN_LENGTH},{MAX_TOKEN_LENGTH}}}")
TOKEN_RULE = f"{MIN_TOKEN_LENGTH}-{MAX_TOKEN_LENGTH} printable ASCII characters, with no whitespace"


def is_valid_token(token: str) -> bool:
    """Whether ``token`` may be imported as a signing token."""
    return _TOKEN_RE.fullmatch(token) is not None


def validate_token(token: object, field: str = "token") -> str:
    """Return ``token`` unchanged, or raise ``InvalidInput`` stating the rule.

    The message never quotes the value, nor says which character broke the
    rule: either would put part of a real secret in an error body or a log.
    """
    if not isinstance(token, str) or not is_valid_token(token):
        raise InvalidInput(f"{field} must be {TOKEN_RULE}")
    return token


def is_valid_service_id(service_id: str) -> bool:
    """Whether ``service_id`` is a service id this sidecar may announce (no ``#``)."""
    return _SERVICE_ID_RE.fullmatch(service_id) is not None


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` is this machine: ``localhost``, ``*.localhost``, 127.0.0.0/8 or ::1."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
