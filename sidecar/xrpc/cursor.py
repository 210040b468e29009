"""The ``cursor`` of ``place.wisp.v2.secret.list``: where the next page starts.

A cursor is the keyset position of the last secret a page showed, its index
score and its name, so the next page starts strictly after it whatever was
created or deleted in between (``SecretStore.list_secrets``). It is opaque to
callers (unpadded base64url of a versioned text), and it holds no owner: the
owner always comes from the credential, so a cursor taken from another
account's listing can only position the caller in its own.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Final

from sidecar.errors import InvalidInput
from sidecar.names import is_valid_name

# The format's version, so a later format can tell old cursors apart.
_VERSION: Final = "1"
# Index scores are microseconds since 1970: sixteen digits until the year 2286.
_SCORE_RE: Final = re.compile(r"[0-9]{1,16}")
_BASE64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]+")
# What any bad cursor is told: it never echoes the text, which is the caller's.
_REFUSAL: Final = (
    "Params/cursor is not a cursor this method gave out: pass back the cursor of the "
    "previous page unchanged, or leave it out to start from the first page"
)


def encode_cursor(score: int, name: str) -> str:
    text = f"{_VERSION}:{score}:{name}"
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def decode_cursor(cursor: str) -> tuple[int, str]:
    """``(score, name)`` of a cursor ``encode_cursor`` made, or ``InvalidInput``."""
    if not _BASE64URL_RE.fullmatch(cursor):
        raise InvalidInput(_REFUSAL)
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise InvalidInput(_REFUSAL) from None
    version, _, rest = text.partition(":")
    score, _, name = rest.partition(":")
    if version != _VERSION or not _SCORE_RE.fullmatch(score) or not is_valid_name(name):
        raise InvalidInput(_REFUSAL)
    return int(score), name
