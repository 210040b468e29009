"""The key layout of the sidecar's Redis data (docs/architecture.md §5).

Keys of one owner share the hash tag ``{<did>}``, so each Lua script touches
one cluster slot:

    wsc:{<did>}:s:<name>   hash    env, ver, created, rotated
    wsc:{<did>}:idx        zset    names scored by creation time (list order)
    wsc:{<did>}:log        stream  audit entries, never a token; capped
    wsc:{<did>}:jti:<h>    string  a service JWT id seen from issuer <did>, until
                                   the token expires (h: SHA-256 hex of the jti)
    wsc:{<did>}:rl:changes string  changes counted in the current rate-limit window
    wsc:{addr:<a>}:rl:auth string  refused credentials from client address <a> in
                                   the current window; its own hash tag, as no
                                   owner is known
"""

from __future__ import annotations

import hashlib
from typing import Final

from sidecar.names import is_valid_did, is_valid_name

EVENTS_CHANNEL: Final = "wsc:events"

# SCAN pattern for secret hashes; TYPE hash leaves out the index, the log and
# the jti records, and parse_secret_key checks each key it lets through.
KEY_PATTERN: Final = "wsc:{*}:s:*"


def secret_key(did: str, name: str) -> str:
    return f"wsc:{{{did}}}:s:{name}"


def index_key(did: str) -> str:
    return f"wsc:{{{did}}}:idx"


def log_key(did: str) -> str:
    return f"wsc:{{{did}}}:log"


def jti_key(iss: str, jti: str) -> str:
    # Hashed: a jti is caller-chosen text of any length and alphabet.
    digest = hashlib.sha256(jti.encode("utf-8", "surrogateescape")).hexdigest()
    return f"wsc:{{{iss}}}:jti:{digest}"


def change_counter_key(did: str) -> str:
    # In the owner's slot, so the change script counts it in the same call.
    return f"wsc:{{{did}}}:rl:changes"


def address_counter_key(address: str) -> str:
    # "addr:" cannot begin a DID, so this tag never shares a key with an owner's.
    return f"wsc:{{addr:{address}}}:rl:auth"


def parse_secret_key(key: str) -> tuple[str, str] | None:
    """The ``(did, name)`` a secret's key stands for, or None for any other key."""
    if not key.startswith("wsc:{"):
        return None
    # A DID never holds "}" (see sidecar.names), so the first one ends the tag.
    did, brace, rest = key[len("wsc:{") :].partition("}")
    if not brace or not rest.startswith(":s:"):
        return None
    name = rest[len(":s:") :]
    if not (is_valid_did(did) and is_valid_name(name)):
        return None
    return did, name
