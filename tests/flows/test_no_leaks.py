# mypy: disable-error-code="union-attr,index,list-item,arg-type"
# (redis-py types a synchronous answer as a union with its awaitable and with None.)
"""Tokens never leak: not into Redis in plaintext, not into logs, not into error bodies."""

from __future__ import annotations

import base64
from typing import TYPE_CHECKING, Any

from aiohttp.test_utils import TestClient
from support import CREATE, DELETE, LIST, ROTATE, bearer, call

if TYPE_CHECKING:
    import redis
    from support import Keys

Client = TestClient[Any, Any]


def encodings(secret: str) -> list[bytes]:
    """The forms a leaked secret could take in bytes."""
    raw = secret.encode()
    return [raw, raw.hex().encode(), base64.b64encode(raw), base64.urlsafe_b64encode(raw)]


def redis_bytes(client: redis.Redis) -> bytes:
    """Every key and value in the database, concatenated."""
    chunks: list[bytes] = []
    for key in client.scan_iter(count=1000):
        chunks.append(key)
        kind = client.type(key)
        if kind == b"hash":
            for field, value in client.hgetall(key).items():
                chunks += [field, value]
        elif kind == b"stream":
            chunks.append(repr(client.xrange(key)).encode())
        else:
            chunks.append(client.dump(key) or b"")
    return b"\n".join(chunks)


async def test_tokens_never_reach_redis_logs_or_errors(
    xrpc: Client, keys: Keys, kek_text: str, raw_redis: redis.Redis, log_lines: list[str]
) -> None:
    """A full lifecycle with deliberately bad requests leaves no token, API key or KEK anywhere."""
    bodies: list[str] = []

    async def record(nsid: str, key: str | None, body: Any = None, method: str = "POST") -> Any:
        _status, answer = await call(xrpc, nsid, key, body, method=method)
        bodies.append(repr(answer))
        return answer

    created = await record(CREATE, keys.alice, {"name": "orders"})
    rotated = await record(ROTATE, keys.alice, {"name": "orders"})
    tokens = [created["token"], rotated["token"]]
    # Bad requests that carry credentials or token-shaped text in odd places.
    await record(CREATE, keys.alice, {"name": "orders"})
    await record(CREATE, keys.alice, {"name": created["token"]})
    await record(ROTATE, created["token"], {"name": "orders"})
    await record(ROTATE, keys.alice + "x", {"name": "orders"})
    await record(LIST, keys.alice, method="GET")
    async with xrpc.post(
        f"/xrpc/{ROTATE}",
        data=f'{{"name": "{rotated["token"]}"'.encode(),
        headers={**bearer(keys.alice), "Content-Type": "application/json"},
    ) as response:
        bodies.append(await response.text())
    await record(DELETE, keys.alice, {"name": "orders"})

    assert len(log_lines) >= 9
    stored = redis_bytes(raw_redis)
    every_log = "\n".join(log_lines).encode()
    every_body = "\n".join(bodies).encode()
    # The raw JSON bodies of secret-bearing answers are expected to hold their
    # own token; every other answer must not.
    error_bodies = "\n".join(bodies[2:]).encode()
    for secret in [*tokens, keys.alice, kek_text]:
        for form in encodings(secret):
            assert form not in stored
            assert form not in every_log
            assert form not in error_bodies
    assert tokens[0].encode() in every_body  # the check above is looking at the right text


async def test_envelopes_in_redis_hold_no_plaintext(
    xrpc: Client, keys: Keys, raw_redis: redis.Redis
) -> None:
    """What Redis stores for a secret is a wsn1 envelope, never the token."""
    _, created = await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    stored = redis_bytes(raw_redis)
    assert b"wsn1." in stored
    for form in encodings(created["token"]):
        assert form not in stored


async def test_a_full_cycle_with_bad_requests_logs_no_credential(
    aiohttp_client: Any,
    make_sidecar: Any,
    keys: Keys,
    kek_text: str,
    log_lines: list[str],
) -> None:
    """create, rotate, sign, verify, delete and bad requests log no token, API key or KEK."""
    from support import ALICE, sign_body

    from sidecar.app import create_sign_app, create_xrpc_app

    sidecar = await make_sidecar(SIDECAR_SIGN_ACCESS_LOG="all", SIDECAR_LOG_LEVEL="debug")
    xrpc = await aiohttp_client(create_xrpc_app(sidecar))
    sign = await aiohttp_client(create_sign_app(sidecar))
    _, created = await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    _, rotated = await call(xrpc, ROTATE, keys.alice, {"name": "orders"})
    tokens = [created["token"], rotated["token"]]
    body = b'{"event":"create"}'
    _, signed = await sign_body(sign, ALICE, "orders", body)
    async with sign.post(
        "/v1/verify", params={"did": ALICE, "name": "orders"}, data=body, headers=signed["headers"]
    ) as response:
        assert (await response.json())["valid"] is True
    # Bad requests with credentials and tokens where they do not belong.
    await sign_body(sign, ALICE, tokens[1], body)
    await sign_body(sign, ALICE, "orders", body, scheme=tokens[0])
    async with sign.post(
        f"/v1/{tokens[1]}", data=body, headers={"X-Request-Id": tokens[0]}
    ) as response:
        assert response.status == 404
    async with xrpc.get(
        f"/xrpc/{LIST}", headers={"Authorization": f"Bearer {tokens[0]}"}
    ) as response:
        assert response.status == 401
    async with xrpc.get(f"/xrpc/{tokens[1]}", headers=bearer(keys.alice)) as response:
        assert response.status == 501
    await call(xrpc, DELETE, keys.alice, {"name": "orders"})

    assert len(log_lines) >= 10
    every_log = "\n".join(log_lines).encode()
    for secret in [*tokens, keys.alice, kek_text]:
        for form in encodings(secret):
            assert form not in every_log, "a credential reached the logs"
