"""``list`` a page at a time: ``limit`` and an opaque keyset ``cursor`` that returns every
secret present throughout exactly once, oldest first, whatever changes between pages."""

from __future__ import annotations

import base64
import random
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp.test_utils import TestClient
from support import ALICE, BOB, CREATE, DELETE, LIST, bearer, call

from sidecar.app import create_xrpc_app
from sidecar.errors import LexiconError
from sidecar.storage.layout import index_key

if TYPE_CHECKING:
    import redis
    from support import AiohttpClient, Keys, SidecarFactory

    from sidecar.xrpc.lexicon import LexiconRegistry

Client = TestClient[Any, Any]


@pytest.fixture(autouse=True)
def _changes_unlimited(env: dict[str, str]) -> None:
    """These tests make more changes a minute than the rate limit allows; not theirs to test."""
    env["SIDECAR_RATE_LIMIT_CHANGES_PER_MINUTE"] = "1000000"


async def create(client: Client, key: str, *names: str) -> None:
    """Create each of ``names`` for the owner of ``key``, asserting each succeeded."""
    for name in names:
        status, body = await call(client, CREATE, key, {"name": name})
        assert status == 200, body


async def page(
    client: Client, key: str, *, limit: int | None = None, cursor: str | None = None
) -> tuple[list[str], str | None]:
    """One list page: the names in it, and its cursor (None when it has none)."""
    params: dict[str, str] = {}
    if limit is not None:
        params["limit"] = str(limit)
    if cursor is not None:
        params["cursor"] = cursor
    async with client.get(f"/xrpc/{LIST}", params=params, headers=bearer(key)) as response:
        body = await response.json()
        assert response.status == 200, body
    assert set(body) <= {"secrets", "cursor"}
    return [item["name"] for item in body["secrets"]], body.get("cursor")


async def list_error(client: Client, key: str, params: dict[str, str]) -> tuple[int, Any]:
    """A list call expected to fail: its status and body."""
    async with client.get(f"/xrpc/{LIST}", params=params, headers=bearer(key)) as response:
        return response.status, await response.json()


async def test_pages_follow_creation_order_and_a_cursor_only_while_more_remain(
    xrpc: Client, keys: Keys
) -> None:
    """Pages of 3 over 7 secrets give 3, 3 and 1 in creation order, with a cursor on the
    first two only; a page that ends exactly at the last secret has none."""
    names = ["zeta", "alpha", "mid", "b", "a", "omega", "c"]
    await create(xrpc, keys.alice, *names)
    seen: list[str] = []
    cursors: list[str | None] = []
    cursor = None
    while True:
        got, cursor = await page(xrpc, keys.alice, limit=3, cursor=cursor)
        seen += got
        cursors.append(cursor)
        if cursor is None:
            break
    assert seen == names
    assert [c is not None for c in cursors] == [True, True, False]
    assert await page(xrpc, keys.alice, limit=7) == (names, None)
    assert await page(xrpc, keys.alice, limit=1000) == (names, None)
    assert (await page(xrpc, keys.bob))[0] == []


async def test_the_default_page_is_100(xrpc: Client, keys: Keys) -> None:
    """Without limit, a page holds 100 secrets, and the cursor leads to the 101st."""
    await create(xrpc, keys.alice, *(f"s{i:03d}" for i in range(101)))
    names, cursor = await page(xrpc, keys.alice)
    assert names == [f"s{i:03d}" for i in range(100)]
    assert cursor is not None
    assert await page(xrpc, keys.alice, cursor=cursor) == (["s100"], None)


async def test_changes_between_pages_on_two_replicas_miss_and_repeat_nothing(
    make_sidecar: SidecarFactory, aiohttp_client: AiohttpClient, keys: Keys
) -> None:
    """Paging on one replica while another creates and deletes secrets between pages
    returns each secret present throughout exactly once, in creation order."""
    reader: Client = await aiohttp_client(create_xrpc_app(await make_sidecar()))
    writer: Client = await aiohttp_client(create_xrpc_app(await make_sidecar()))
    order = [f"s{i:02d}" for i in range(60)]
    await create(writer, keys.alice, *order)
    present = set(order)
    deleted: set[str] = set()
    # Seeded, not secure: the same sequence of changes every run.
    chance = random.Random(19)  # noqa: S311
    listed: list[str] = []
    cursor = None
    made = 0
    for _ in range(100):
        got, cursor = await page(reader, keys.alice, limit=7, cursor=cursor)
        listed += got
        if cursor is None:
            break
        for _ in range(3):
            if chance.random() < 0.5 and present:
                # Seen or not yet seen alike: either side of the cursor.
                gone = chance.choice(sorted(present))
                assert (await call(writer, DELETE, keys.alice, {"name": gone}))[0] == 200
                present.discard(gone)
                deleted.add(gone)
            else:
                made += 1
                await create(writer, keys.alice, f"new{made:02d}")
                order.append(f"new{made:02d}")
                present.add(f"new{made:02d}")
    assert cursor is None
    throughout = set(order[:60]) - deleted
    assert len(deleted) > 10
    assert made > 10
    assert len(listed) == len(set(listed))
    assert throughout <= set(listed)
    assert listed == sorted(listed, key=order.index)
    # Everything created while paging was created after the last page began, or listed.
    assert set(listed) <= set(order)


async def test_another_owners_cursor_positions_only_in_the_callers_own_listing(
    xrpc: Client, keys: Keys, raw_redis: redis.Redis
) -> None:
    """A cursor from Bob's listing, or one forged to name Bob's secret, shows Alice only her
    own secrets: the owner comes from the credential, never from the cursor."""
    await create(xrpc, keys.bob, "b1", "b2", "b3", "b4")
    await create(xrpc, keys.alice, "a1", "a2", "a3")
    _, bobs = await page(xrpc, keys.bob, limit=2)
    assert bobs is not None
    names, _ = await page(xrpc, keys.alice, cursor=bobs)
    assert set(names) <= {"a1", "a2", "a3"}
    assert BOB not in base64.urlsafe_b64decode(bobs + "==").decode()

    # A cursor forged from Bob's own index entry, in the documented-as-opaque format.
    score = int(raw_redis.zscore("wsc:{did:web:bob.example.com}:idx", "b1") or 0)
    forged = base64.urlsafe_b64encode(f"1:{score}:b1".encode()).decode().rstrip("=")
    names, _ = await page(xrpc, keys.alice, cursor=forged)
    assert set(names) <= {"a1", "a2", "a3"}
    assert raw_redis.zcard(index_key(ALICE)) == 3


async def test_secrets_that_share_a_score_page_by_name_each_once(
    xrpc: Client, keys: Keys, raw_redis: redis.Redis
) -> None:
    """Index entries of equal score, which creates never make but the documented order
    covers, list by name and page one at a time without a repeat or a gap."""
    await create(xrpc, keys.alice, "first", "y", "x", "m", "last")
    tied = raw_redis.zscore(index_key(ALICE), "y")
    assert tied is not None
    raw_redis.zadd(index_key(ALICE), {"x": tied, "m": tied})
    seen: list[str] = []
    cursor = None
    for _ in range(10):
        names, cursor = await page(xrpc, keys.alice, limit=1, cursor=cursor)
        seen += names
        if cursor is None:
            break
    assert seen == ["first", "m", "x", "y", "last"]


def b64(text: bytes) -> str:
    """Unpadded base64url, the cursor's outer form."""
    return base64.urlsafe_b64encode(text).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "!!!!",
        "abcde",  # a length base64 cannot have
        "a" * 257,  # over the lexicon's maxLength
        b64(b"\xff\xfe:1:a"),  # not UTF-8
        b64(b"2:1:a"),  # an unknown version
        b64(b"1:12x:a"),
        b64(b"1::a"),
        b64(b"1:1:"),
        b64(b"1:1:wsk_pasted-token-here"),
        b64(b"1:99999999999999999:a"),
        b64(b"1:1:a:b"),
    ],
)
async def test_a_malformed_cursor_is_400_and_never_echoed(
    xrpc: Client, keys: Keys, cursor: str
) -> None:
    """A cursor this method did not give out is 400 InvalidRequest saying what to do, and the
    message does not quote it."""
    await create(xrpc, keys.alice, "a")
    status, body = await list_error(xrpc, keys.alice, {"cursor": cursor})
    assert status == 400
    assert body["error"] == "InvalidRequest"
    assert body["message"].startswith("Params/cursor")
    if len(cursor) > 4:
        assert cursor not in body["message"]


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        ("0", "Params/limit must be at least 1"),
        ("1001", "Params/limit must be at most 1000"),
        ("-1", "Params/limit"),
        ("1.5", "Params/limit must be an integer"),
        ("ten", "Params/limit must be an integer"),
    ],
)
async def test_a_limit_outside_1_to_1000_is_400(
    xrpc: Client, keys: Keys, limit: str, message: str
) -> None:
    """limit 0, 1001 or a non-integer is 400 InvalidRequest naming the parameter."""
    status, body = await list_error(xrpc, keys.alice, {"limit": limit})
    assert (status, body["error"]) == (400, "InvalidRequest")
    assert body["message"].startswith(message)


async def test_a_page_reads_only_its_own_secrets_from_redis(
    xrpc: Client, keys: Keys, raw_redis: redis.Redis
) -> None:
    """A page of 2 from an owner with 200 secrets reads 3 hashes and one index range in
    Redis, as the server's own command statistics count them, not the owner's 200."""
    await create(xrpc, keys.alice, *(f"s{i:03d}" for i in range(200)))
    _, cursor = await page(xrpc, keys.alice, limit=2)
    raw_redis.config_resetstat()
    names, _ = await page(xrpc, keys.alice, limit=2, cursor=cursor)
    assert names == ["s002", "s003"]
    stats = raw_redis.info("commandstats")
    # The page and one more, to know another follows; ZRANGE twice: the cursor's
    # score (ties), then after it.
    assert stats["cmdstat_hmget"]["calls"] == 3
    assert stats["cmdstat_zrange"]["calls"] == 2


def test_the_list_output_with_a_cursor_passes_its_lexicon(lexicons: LexiconRegistry) -> None:
    """The lexicon accepts a string cursor beside the secrets and refuses any other type."""
    listing = lexicons.get(LIST)
    assert listing is not None
    listing.validate_output({"secrets": [], "cursor": "MToxOmE"})
    listing.validate_output({"secrets": []})
    with pytest.raises(LexiconError, match="cursor"):
        listing.validate_output({"secrets": [], "cursor": 5})
