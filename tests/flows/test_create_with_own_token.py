# mypy: disable-error-code="union-attr,index,list-item,arg-type"
# (redis-py types a synchronous answer as a union with its awaitable and with None.)
"""create with a caller's token (issue 14): sealed, signing and audited like any other."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp.test_utils import TestClient
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from support import ALICE, CREATE, ROTATE, call, sign_body

from sidecar.storage.layout import log_key, secret_key

if TYPE_CHECKING:
    import redis
    from support import Keys

    from sidecar.app import Sidecar
    from sidecar.xrpc.lexicon import LexiconRegistry

Client = TestClient[Any, Any]

# Every printable ASCII character but the space, as another provider's secret may hold.
IMPORTED = "".join(chr(c) for c in range(0x21, 0x7F))[:80]
BODY = b'{"event":"create","did":"did:plc:abc","rkey":"3k"}'


def hex_hmac(token: str, message: bytes) -> str:
    """Hex HMAC-SHA256 of ``message`` under ``token``'s UTF-8 bytes, as a receiver computes it."""
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


def standard_receiver(token: str) -> Webhook:
    """The Standard Webhooks reference verifier holding ``token`` as whsec_ + base64."""
    return Webhook("whsec_" + base64.b64encode(token.encode()).decode())


async def test_create_with_a_token_keeps_it_sealed_and_audits_an_import(
    xrpc: Client,
    keys: Keys,
    lexicons: LexiconRegistry,
    sidecar: Sidecar,
    raw_redis: redis.Redis,
) -> None:
    """create with a token answers the usual shape with that token, seals it, and logs op=import."""
    status, body = await call(xrpc, CREATE, keys.alice, {"name": "orders", "token": IMPORTED})
    assert status == 200, body
    lexicons.methods[CREATE].validate_output(body)
    assert set(body) == {"name", "token", "createdAt"}
    assert (body["name"], body["token"]) == ("orders", IMPORTED)
    stored = raw_redis.hgetall(secret_key(ALICE, "orders"))
    assert stored[b"ver"] == b"1"
    assert IMPORTED.encode() not in stored[b"env"]
    assert sidecar.keyring.open(stored[b"env"].decode(), did=ALICE, name="orders") == IMPORTED
    entries = [fields for _, fields in raw_redis.xrange(log_key(ALICE))]
    assert [(e[b"op"], e[b"name"], e[b"ver"]) for e in entries] == [(b"import", b"orders", b"1")]
    assert IMPORTED.encode() not in repr(entries).encode()


async def test_an_imported_name_that_exists_is_refused_and_kept(
    xrpc: Client, keys: Keys, sidecar: Sidecar, raw_redis: redis.Redis
) -> None:
    """Importing over an existing name is AlreadyExists, and the stored token stays as it was."""
    _, created = await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    status, body = await call(xrpc, CREATE, keys.alice, {"name": "orders", "token": IMPORTED})
    assert (status, body["error"]) == (409, "AlreadyExists")
    env = raw_redis.hget(secret_key(ALICE, "orders"), "env")
    assert sidecar.keyring.open(env.decode(), did=ALICE, name="orders") == created["token"]


async def test_an_imported_token_verifies_with_every_reference_verifier(
    xrpc: Client, sign: Client, keys: Keys
) -> None:
    """wisp and github match a receiver's own HMAC, and standard passes standardwebhooks."""
    await call(xrpc, CREATE, keys.alice, {"name": "orders", "token": IMPORTED})
    _, wisp = await sign_body(sign, ALICE, "orders", BODY)
    assert wisp["headers"] == {"X-Webhook-Signature": "sha256=" + hex_hmac(IMPORTED, BODY)}
    _, github = await sign_body(sign, ALICE, "orders", BODY, scheme="github")
    assert github["headers"] == {"X-Hub-Signature-256": "sha256=" + hex_hmac(IMPORTED, BODY)}
    _, standard = await sign_body(sign, ALICE, "orders", BODY, scheme="standard")
    assert standard_receiver(IMPORTED).verify(BODY, standard["headers"]) == json.loads(BODY)


async def test_a_rotate_after_an_import_retires_the_imported_token_at_once(
    xrpc: Client, sign: Client, keys: Keys
) -> None:
    """The first sign after a rotate uses the new token; the imported one no longer verifies."""
    await call(xrpc, CREATE, keys.alice, {"name": "orders", "token": IMPORTED})
    assert (await sign_body(sign, ALICE, "orders", BODY))[1]["version"] == 1
    # rotate's lexicon has no token: one sent is ignored, and a token is generated.
    status, rotated = await call(xrpc, ROTATE, keys.alice, {"name": "orders", "token": IMPORTED})
    assert status == 200, rotated
    assert rotated["token"] != IMPORTED
    _, wisp = await sign_body(sign, ALICE, "orders", BODY)
    assert wisp["version"] == 2
    assert wisp["headers"]["X-Webhook-Signature"] == "sha256=" + hex_hmac(rotated["token"], BODY)
    assert wisp["headers"]["X-Webhook-Signature"] != "sha256=" + hex_hmac(IMPORTED, BODY)
    _, standard = await sign_body(sign, ALICE, "orders", BODY, scheme="standard")
    with pytest.raises(WebhookVerificationError):
        standard_receiver(IMPORTED).verify(BODY, standard["headers"])
    standard_receiver(rotated["token"]).verify(BODY, standard["headers"])


@pytest.mark.parametrize("length", [32, 256])
async def test_tokens_of_the_boundary_lengths_are_taken(
    xrpc: Client, keys: Keys, length: int
) -> None:
    """Tokens of exactly 32 and exactly 256 characters are accepted."""
    token = ("Ab9~" * 64)[:length]
    status, body = await call(xrpc, CREATE, keys.alice, {"name": "orders", "token": token})
    assert (status, body["token"]) == (200, token)


BAD_TOKENS = [
    pytest.param("x" * 31, id="31-chars"),
    pytest.param("x" * 257, id="257-chars"),
    pytest.param("secret-with a-space-0123456789abcdef", id="space"),
    pytest.param("secret-with\ta-tab-0123456789abcdefgh", id="tab"),
    pytest.param("secret-with-é-non-ascii-0123456789ab", id="non-ascii"),
    pytest.param("secret-with-\x7f-delete-0123456789abcd", id="control"),
    pytest.param("", id="empty"),
]


@pytest.mark.parametrize("token", BAD_TOKENS)
async def test_a_bad_token_is_invalid_request_and_never_echoed(
    xrpc: Client, keys: Keys, raw_redis: redis.Redis, log_lines: list[str], token: str
) -> None:
    """A token outside the rule is a 400 InvalidRequest stating the rule, nowhere echoed."""
    status, body = await call(xrpc, CREATE, keys.alice, {"name": "orders", "token": token})
    assert (status, body["error"]) == (400, "InvalidRequest")
    assert body["message"] == (
        "Input/token must be 32-256 printable ASCII characters, with no whitespace"
    )
    assert raw_redis.exists(secret_key(ALICE, "orders")) == 0
    if token:
        for fragment in (token, token[:16], token[-16:]):
            assert fragment not in json.dumps(body, ensure_ascii=False)
            assert fragment not in "\n".join(log_lines)


async def test_a_token_that_is_not_a_string_is_refused(xrpc: Client, keys: Keys) -> None:
    """A number or null as token is a 400 InvalidRequest naming the field, not a create."""
    for token in (12345678901234567890123456789012345, None):
        status, body = await call(xrpc, CREATE, keys.alice, {"name": "orders", "token": token})
        assert (status, body["error"]) == (400, "InvalidRequest")
        assert "Input/token" in body["message"]


async def test_an_import_logs_without_the_token(
    xrpc: Client, keys: Keys, log_lines: list[str]
) -> None:
    """The import is logged as secret.imported with owner, name and version, never the token."""
    await call(xrpc, CREATE, keys.alice, {"name": "orders", "token": IMPORTED})
    events = [json.loads(line) for line in log_lines]
    imported = [e for e in events if e.get("event") == "secret.imported"]
    assert [(e["did"], e["name"], e["version"]) for e in imported] == [(ALICE, "orders", 1)]
    # The part without '"' and '\\', which JSON log lines would show escaped.
    assert IMPORTED[2:58] not in "\n".join(log_lines)
