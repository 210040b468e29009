# mypy: disable-error-code="union-attr,index,list-item,arg-type"
# (redis-py types a synchronous answer as a union with its awaitable and with None.)
"""The four place.wisp.v2.secret.* procedures, end to end on real Redis."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aiohttp.test_utils import TestClient
from support import ALICE, BOB, CREATE, DELETE, LIST, ROTATE, call

from sidecar.storage.layout import index_key, secret_key

if TYPE_CHECKING:
    import redis
    from support import Keys

    from sidecar.app import Sidecar
    from sidecar.xrpc.lexicon import LexiconRegistry

DATETIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z")
TOKEN_RE = re.compile(r"wsk_[A-Za-z0-9_-]{32}")

Client = TestClient[Any, Any]


def assert_datetime_near_now(value: str) -> None:
    """Assert ``value`` is an RFC 3339 UTC time with milliseconds, within a minute of now."""
    assert DATETIME_RE.fullmatch(value), value
    moment = datetime.strptime(value, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - moment).total_seconds()) < 60


async def test_create_returns_token_and_time(
    xrpc: Client, keys: Keys, lexicons: LexiconRegistry
) -> None:
    """create answers the name, a wsk_ token of 36 characters and an RFC 3339 createdAt."""
    status, body = await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    assert status == 200, body
    lexicons.methods[CREATE].validate_output(body)
    assert set(body) == {"name", "token", "createdAt"}
    assert body["name"] == "orders"
    assert TOKEN_RE.fullmatch(body["token"])
    assert len(body["token"]) == 36
    assert_datetime_near_now(body["createdAt"])


async def test_list_is_oldest_first_without_last_rotated_until_rotated(
    xrpc: Client, keys: Keys, lexicons: LexiconRegistry
) -> None:
    """list shows the caller's secrets oldest first; lastRotatedAt appears only after a rotate."""
    for name in ("zeta", "alpha", "mid"):
        assert (await call(xrpc, CREATE, keys.alice, {"name": name}))[0] == 200
    status, body = await call(xrpc, LIST, keys.alice, method="GET")
    assert status == 200, body
    lexicons.methods[LIST].validate_output(body)
    assert [item["name"] for item in body["secrets"]] == ["zeta", "alpha", "mid"]
    assert all("lastRotatedAt" not in item for item in body["secrets"])
    assert all("token" not in item for item in body["secrets"])

    status, rotated = await call(xrpc, ROTATE, keys.alice, {"name": "alpha"})
    assert status == 200, rotated
    _, body = await call(xrpc, LIST, keys.alice, method="GET")
    lexicons.methods[LIST].validate_output(body)
    by_name = {item["name"]: item for item in body["secrets"]}
    assert by_name["alpha"]["lastRotatedAt"] == rotated["rotatedAt"]
    assert "lastRotatedAt" not in by_name["zeta"]
    assert_datetime_near_now(by_name["alpha"]["createdAt"])


async def test_list_of_a_new_owner_is_empty(xrpc: Client, keys: Keys) -> None:
    """An owner with no secrets gets an empty list, not an error."""
    assert await call(xrpc, LIST, keys.bob, method="GET") == (200, {"secrets": []})


async def test_rotate_returns_a_new_token_and_bumps_the_version(
    xrpc: Client, keys: Keys, lexicons: LexiconRegistry, sidecar: Sidecar, raw_redis: redis.Redis
) -> None:
    """rotate answers a fresh token; the stored envelope now opens to it, at version 2."""
    _, created = await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    status, body = await call(xrpc, ROTATE, keys.alice, {"name": "orders"})
    assert status == 200, body
    lexicons.methods[ROTATE].validate_output(body)
    assert set(body) == {"name", "token", "rotatedAt"}
    assert body["name"] == "orders"
    assert TOKEN_RE.fullmatch(body["token"])
    assert body["token"] != created["token"]
    assert_datetime_near_now(body["rotatedAt"])

    stored = raw_redis.hgetall(secret_key(ALICE, "orders"))
    assert stored[b"ver"] == b"2"
    opened = sidecar.keyring.open(stored[b"env"].decode(), did=ALICE, name="orders")
    assert opened == body["token"]


async def test_delete_removes_the_secret_everywhere(
    xrpc: Client, keys: Keys, lexicons: LexiconRegistry, raw_redis: redis.Redis
) -> None:
    """delete answers {} and the secret is gone from list, from rotate and from Redis."""
    await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    await call(xrpc, CREATE, keys.alice, {"name": "keep"})
    status, body = await call(xrpc, DELETE, keys.alice, {"name": "orders"})
    assert (status, body) == (200, {})
    lexicons.methods[DELETE].validate_output(body)
    _, listed = await call(xrpc, LIST, keys.alice, method="GET")
    assert [item["name"] for item in listed["secrets"]] == ["keep"]
    assert raw_redis.exists(secret_key(ALICE, "orders")) == 0
    assert (await call(xrpc, ROTATE, keys.alice, {"name": "orders"}))[0] == 404
    assert (await call(xrpc, DELETE, keys.alice, {"name": "orders"}))[0] == 404


async def test_a_deleted_name_can_be_created_again(xrpc: Client, keys: Keys) -> None:
    """After delete, create of the same name succeeds with a new token."""
    _, first = await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    await call(xrpc, DELETE, keys.alice, {"name": "orders"})
    status, second = await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    assert status == 200
    assert second["token"] != first["token"]


async def test_names_are_case_sensitive_and_use_every_allowed_character(
    xrpc: Client, keys: Keys
) -> None:
    """'Orders' and 'orders' are two secrets, and a 64-character name of every class works."""
    long_name = ("Az09._-" * 10)[:64]
    for name in ("orders", "Orders", long_name):
        status, body = await call(xrpc, CREATE, keys.alice, {"name": name})
        assert status == 200, body
        assert body["name"] == name
    _, listed = await call(xrpc, LIST, keys.alice, method="GET")
    assert [item["name"] for item in listed["secrets"]] == ["orders", "Orders", long_name]


async def test_owners_do_not_see_each_others_secrets(xrpc: Client, keys: Keys) -> None:
    """Bob cannot list, rotate or delete Alice's secret, and may create his own of that name."""
    await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    assert await call(xrpc, LIST, keys.bob, method="GET") == (200, {"secrets": []})
    status, body = await call(xrpc, ROTATE, keys.bob, {"name": "orders"})
    assert (status, body["error"]) == (404, "NotFound")
    status, body = await call(xrpc, DELETE, keys.bob, {"name": "orders"})
    assert (status, body["error"]) == (404, "NotFound")
    assert (await call(xrpc, CREATE, keys.bob, {"name": "orders"}))[0] == 200
    _, alice = await call(xrpc, LIST, keys.alice, method="GET")
    assert [item["name"] for item in alice["secrets"]] == ["orders"]
    _, bob = await call(xrpc, LIST, keys.bob, method="GET")
    assert [item["name"] for item in bob["secrets"]] == ["orders"]


async def test_every_change_is_audited_without_the_token(
    xrpc: Client, keys: Keys, raw_redis: redis.Redis
) -> None:
    """create, rotate and delete each append op, name, version and actor to the owner's stream."""
    _, created = await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    _, rotated = await call(xrpc, ROTATE, keys.alice, {"name": "orders"})
    await call(xrpc, DELETE, keys.alice, {"name": "orders"})
    entries = [fields for _, fields in raw_redis.xrange(f"wsc:{{{ALICE}}}:log")]
    assert [(e[b"op"], e[b"name"], e[b"ver"], e[b"actor"]) for e in entries] == [
        (b"create", b"orders", b"1", b"apikey:alice-ci"),
        (b"rotate", b"orders", b"2", b"apikey:alice-ci"),
        (b"delete", b"orders", b"2", b"apikey:alice-ci"),
    ]
    blob = repr(entries).encode()
    assert created["token"].encode() not in blob
    assert rotated["token"].encode() not in blob


async def test_changes_are_published_on_the_events_channel(
    xrpc: Client, keys: Keys, raw_redis: redis.Redis
) -> None:
    """Each change publishes {did, name, ver, op} on wsc:events."""
    pubsub = raw_redis.pubsub()  # type: ignore[no-untyped-call]
    pubsub.subscribe("wsc:events")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    await call(xrpc, CREATE, keys.bob, {"name": "hooks"})
    await call(xrpc, ROTATE, keys.bob, {"name": "hooks"})
    await call(xrpc, DELETE, keys.bob, {"name": "hooks"})
    import json

    messages = [json.loads(pubsub.get_message(timeout=5)["data"]) for _ in range(3)]
    pubsub.close()
    assert messages == [
        {"did": BOB, "name": "hooks", "ver": 1, "op": "create"},
        {"did": BOB, "name": "hooks", "ver": 2, "op": "rotate"},
        {"did": BOB, "name": "hooks", "ver": 2, "op": "delete"},
    ]


async def test_health_reports_the_version(xrpc: Client) -> None:
    """GET /xrpc/_health answers the version while Redis answers."""
    async with xrpc.get("/xrpc/_health") as response:
        assert response.status == 200
        body = await response.json()
    from sidecar import __version__

    assert body == {"version": __version__}


async def test_list_order_is_creation_order_even_when_the_clock_does_not_move_forward(
    xrpc: Client, keys: Keys, raw_redis: redis.Redis
) -> None:
    """Names created while the clock ties or steps back list in creation order, not by name.

    The index score is creation time in microseconds, forced above the newest one. The
    newest entry is put an hour ahead, as after a clock step back, so every create below
    takes the forced path; a zset breaks equal scores by name, which would reverse them.
    """
    status, _ = await call(xrpc, CREATE, keys.alice, {"name": "zz-ahead"})
    assert status == 200
    ahead_us = int(raw_redis.zscore(index_key(ALICE), "zz-ahead")) + 3_600_000_000
    raw_redis.zadd(index_key(ALICE), {"zz-ahead": ahead_us}, xx=True)
    names = [f"n{i:02d}" for i in range(20, 0, -1)]
    for name in names:
        status, _ = await call(xrpc, CREATE, keys.alice, {"name": name})
        assert status == 200
    scores = [int(raw_redis.zscore(index_key(ALICE), name)) for name in names]
    assert scores == list(range(ahead_us + 1, ahead_us + 21))
    _, listed = await call(xrpc, LIST, keys.alice, method="GET")
    assert [item["name"] for item in listed["secrets"]] == ["zz-ahead", *names]
