"""Rate limits shared by every replica through Redis: changes per owner, refused
credentials per client address, the trusted-proxy rule, and what they never touch
(signing, other owners, authenticated callers by address)."""

from __future__ import annotations

import ipaddress
import os
import signal
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestClient
from support import (
    ALICE,
    BOB,
    CREATE,
    DELETE,
    LIST,
    ROTATE,
    AiohttpClient,
    Keys,
    SidecarFactory,
    call,
    sign_body,
)

from sidecar.app import Sidecar, create_sign_app, create_xrpc_app
from sidecar.storage.embedded import EmbeddedValkey
from sidecar.storage.layout import address_counter_key, change_counter_key
from sidecar.xrpc.client_address import ClientAddresses

Client = TestClient[Any, Any]


@dataclass
class Replica:
    sidecar: Sidecar
    xrpc: Client
    sign: Client

    def limit_hits(self, kind: str) -> float | None:
        return self.sidecar.metrics.registry.get_sample_value(
            "wisp_sidecar_limit_hits_total", {"kind": kind}
        )

    def auth_failures(self, reason: str) -> float | None:
        return self.sidecar.metrics.registry.get_sample_value(
            "wisp_sidecar_auth_failures_total", {"reason": reason}
        )


async def two_replicas(
    aiohttp_client: AiohttpClient, make_sidecar: SidecarFactory, **env: str
) -> tuple[Replica, Replica]:
    """Two sidecars on the one test Redis, configured with ``env``."""
    made = []
    for _ in range(2):
        sidecar = await make_sidecar(**env)
        made.append(
            Replica(
                sidecar,
                await aiohttp_client(create_xrpc_app(sidecar)),
                await aiohttp_client(create_sign_app(sidecar)),
            )
        )
    return made[0], made[1]


async def post(
    client: Client, nsid: str, key: str | None, body: Any, **headers: str
) -> tuple[int, Any, Any]:
    """POST to an XRPC method: (status, JSON body, response headers)."""
    sent = dict(headers)
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    async with client.post(f"/xrpc/{nsid}", json=body, headers=sent) as response:
        return response.status, await response.json(), response.headers


async def test_changes_are_limited_per_owner_across_replicas(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    keys: Keys,
    raw_redis: redis.Redis,
) -> None:
    """Three changes spread over two replicas use up a limit of three; the fourth, on
    either replica, is 429 with atproto's headers and changes nothing, while another
    owner's changes and the first owner's signing carry on."""
    a, b = await two_replicas(
        aiohttp_client, make_sidecar, SIDECAR_RATE_LIMIT_CHANGES_PER_MINUTE="3"
    )
    assert (await call(a.xrpc, CREATE, keys.alice, {"name": "orders"}))[0] == 200
    assert (await call(b.xrpc, ROTATE, keys.alice, {"name": "orders"}))[0] == 200
    assert (await call(a.xrpc, CREATE, keys.alice, {"name": "spare"}))[0] == 200
    audit_before = raw_redis.xlen(f"wsc:{{{ALICE}}}:log")

    for replica, nsid, name in (
        (b, CREATE, "invoices"),
        (a, ROTATE, "orders"),
        (b, DELETE, "spare"),
    ):
        status, answer, headers = await post(replica.xrpc, nsid, keys.alice, {"name": name})
        assert (status, answer["error"]) == (429, "RateLimitExceeded"), nsid
        assert "3" in answer["message"]
        assert headers["RateLimit-Limit"] == "3"
        assert headers["RateLimit-Remaining"] == "0"
        assert headers["RateLimit-Policy"] == "3;w=60"
        # The window ends within its 60 s of the server's own clock: a bound on a
        # timestamp the server computed, not a time the test measured.
        server_now_s = raw_redis.time()[0]
        assert server_now_s <= int(headers["RateLimit-Reset"]) <= server_now_s + 60
        assert 1 <= int(headers["Retry-After"]) <= 60

    # Nothing of the refused changes happened.
    _, listed = await call(a.xrpc, LIST, keys.alice, method="GET")
    assert sorted(item["name"] for item in listed["secrets"]) == ["orders", "spare"]
    assert raw_redis.hget(f"wsc:{{{ALICE}}}:s:orders", "ver") == b"2"
    assert raw_redis.xlen(f"wsc:{{{ALICE}}}:log") == audit_before
    assert a.limit_hits("changes_per_minute") == 1
    assert b.limit_hits("changes_per_minute") == 2

    # Another owner is unaffected, and so is signing for the limited one.
    assert (await call(b.xrpc, CREATE, keys.bob, {"name": "orders"}))[0] == 200
    assert (await sign_body(a.sign, ALICE, "orders", b"{}"))[0] == 200
    assert (await sign_body(b.sign, BOB, "orders", b"{}"))[0] == 200
    # Reads are no change, and are not limited.
    assert (await call(b.xrpc, LIST, keys.alice, method="GET"))[0] == 200


async def test_the_window_ends_with_its_counter(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    keys: Keys,
    raw_redis: redis.Redis,
) -> None:
    """The first change of a window starts its expiry in the owner's slot; once Redis
    expires the counter, the owner may change again."""
    a, _ = await two_replicas(
        aiohttp_client, make_sidecar, SIDECAR_RATE_LIMIT_CHANGES_PER_MINUTE="1"
    )
    assert (await call(a.xrpc, CREATE, keys.alice, {"name": "orders"}))[0] == 200
    counter = change_counter_key(ALICE)
    assert counter.startswith(f"wsc:{{{ALICE}}}:")
    assert 0 < raw_redis.pttl(counter) <= 60_000
    assert (await call(a.xrpc, ROTATE, keys.alice, {"name": "orders"}))[0] == 429
    # The window's end, brought forward: an expiry in the past removes the key.
    raw_redis.pexpire(counter, -1)
    assert (await call(a.xrpc, ROTATE, keys.alice, {"name": "orders"}))[0] == 200


async def test_refused_credentials_are_limited_per_address_before_any_credential_work(
    aiohttp_client: AiohttpClient, make_sidecar: SidecarFactory, keys: Keys
) -> None:
    """Three refused credentials from one address over two replicas use up a limit of
    three; then every call from that address is 429, a good key's too, while signing
    goes on and the address counter has a hash tag of its own."""
    a, b = await two_replicas(
        aiohttp_client, make_sidecar, SIDECAR_RATE_LIMIT_AUTH_FAILURES_PER_MINUTE="3"
    )
    for replica in (a, b, a):
        status, answer = await call(replica.xrpc, LIST, "wsa_" + "x" * 43, method="GET")
        assert (status, answer["error"]) == (401, "AuthenticationRequired")
    for replica, key in ((b, "wsa_" + "y" * 43), (a, keys.alice), (b, None)):
        status, answer, headers = await post(replica.xrpc, CREATE, key, {"name": "orders"})
        assert (status, answer["error"]) == (429, "RateLimitExceeded")
        assert headers["RateLimit-Policy"] == "3;w=60"
    # Refused before the credential was looked at: no further failure was counted.
    assert (a.auth_failures("unknown_key"), b.auth_failures("unknown_key")) == (2, 1)
    assert (a.limit_hits("auth_failures_per_minute"), b.limit_hits("auth_failures_per_minute")) == (
        1,
        2,
    )
    assert address_counter_key("127.0.0.1") == "wsc:{addr:127.0.0.1}:rl:auth"
    assert (await sign_body(a.sign, ALICE, "orders", b"{}"))[0] == 404


async def test_an_authenticated_owner_is_never_counted_by_address(
    aiohttp_client: AiohttpClient, make_sidecar: SidecarFactory, keys: Keys, raw_redis: redis.Redis
) -> None:
    """Many successful calls from one address, as from a big PDS, leave the address
    counter untouched and are never limited by it."""
    a, b = await two_replicas(
        aiohttp_client, make_sidecar, SIDECAR_RATE_LIMIT_AUTH_FAILURES_PER_MINUTE="1"
    )
    for replica in (a, b) * 5:
        assert (await call(replica.xrpc, LIST, keys.alice, method="GET"))[0] == 200
        assert (await call(replica.xrpc, LIST, keys.bob, method="GET"))[0] == 200
    assert raw_redis.exists(address_counter_key("127.0.0.1")) == 0


async def test_forwarded_for_is_ignored_from_an_untrusted_peer(
    aiohttp_client: AiohttpClient, make_sidecar: SidecarFactory, keys: Keys
) -> None:
    """Without trusted proxies, a caller that names a new X-Forwarded-For address on each
    attempt is still counted under its socket address, and limited."""
    a, b = await two_replicas(
        aiohttp_client, make_sidecar, SIDECAR_RATE_LIMIT_AUTH_FAILURES_PER_MINUTE="2"
    )
    statuses = []
    for number, replica in enumerate((a, b, a, b)):
        status, _, _ = await post(
            replica.xrpc, CREATE, "wsa_" + "x" * 43, {"name": "n"},
            **{"X-Forwarded-For": f"198.51.100.{number}"},
        )  # fmt: skip
        statuses.append(status)
    assert statuses == [401, 401, 429, 429]


async def test_forwarded_for_is_honoured_from_a_trusted_proxy(
    aiohttp_client: AiohttpClient, make_sidecar: SidecarFactory, keys: Keys
) -> None:
    """Behind a trusted proxy, each client named by X-Forwarded-For has its own count:
    one address is limited, another is not."""
    a, b = await two_replicas(
        aiohttp_client,
        make_sidecar,
        SIDECAR_RATE_LIMIT_AUTH_FAILURES_PER_MINUTE="2",
        SIDECAR_TRUSTED_PROXIES="127.0.0.0/8,::1/128",
    )
    bad = "wsa_" + "x" * 43
    attacker = {"X-Forwarded-For": "203.0.113.7"}
    for replica in (a, b):
        assert (await post(replica.xrpc, CREATE, bad, {"name": "n"}, **attacker))[0] == 401
    assert (await post(a.xrpc, CREATE, keys.alice, {"name": "n"}, **attacker))[0] == 429
    neighbour = {"X-Forwarded-For": "203.0.113.8"}
    assert (await post(b.xrpc, CREATE, bad, {"name": "n"}, **neighbour))[0] == 401
    assert (await post(b.xrpc, CREATE, keys.alice, {"name": "n"}, **neighbour))[0] == 200


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        ("192.0.2.1", ["198.51.100.1"], [], "192.0.2.1"),
        ("10.0.0.5", ["198.51.100.1"], ["10.0.0.0/8"], "198.51.100.1"),
        # The client may prepend anything; only hops a trusted proxy appended count.
        ("10.0.0.5", ["1.1.1.1, 198.51.100.1, 10.0.0.9"], ["10.0.0.0/8"], "198.51.100.1"),
        ("10.0.0.5", ["1.1.1.1", "198.51.100.1"], ["10.0.0.0/8"], "198.51.100.1"),
        ("10.0.0.5", ["not-an-address"], ["10.0.0.0/8"], "10.0.0.5"),
        ("10.0.0.5", [], ["10.0.0.0/8"], "10.0.0.5"),
        ("::ffff:192.0.2.1", [], [], "192.0.2.1"),
        ("2001:db8:1:2:3:4:5:6", [], [], "2001:db8:1:2::/64"),
        (None, ["198.51.100.1"], ["10.0.0.0/8"], "unknown"),
    ],
)
def test_client_address_rules(
    peer: str | None, forwarded: list[str], trusted: list[str], expected: str
) -> None:
    """The peer is the client unless it is a trusted proxy; then X-Forwarded-For is
    walked from the right past trusted hops; IPv6 counts by /64."""
    addresses = ClientAddresses([ipaddress.ip_network(cidr) for cidr in trusted])
    assert addresses.client(peer, forwarded) == expected


async def test_when_redis_cannot_count_a_change_gets_503_and_is_not_lost(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    keys: Keys,
    own_server: EmbeddedValkey,
) -> None:
    """With Redis frozen the limit cannot be counted: a change is 503 StorageUnavailable
    with Retry-After, never 500 or 429; thawed, the same change goes through."""
    # The suite's 10 s Redis deadline would make each refused change wait that long.
    a, _ = await two_replicas(
        aiohttp_client, make_sidecar, REDIS_URL=own_server.url,
        SIDECAR_RATE_LIMIT_CHANGES_PER_MINUTE="5", SIDECAR_REDIS_TIMEOUT_MS="500",
    )  # fmt: skip
    assert (await call(a.xrpc, CREATE, keys.alice, {"name": "orders"}))[0] == 200
    assert own_server.pid is not None
    os.kill(own_server.pid, signal.SIGSTOP)
    try:
        for nsid in (ROTATE, CREATE):
            status, answer, headers = await post(a.xrpc, nsid, keys.alice, {"name": "orders"})
            assert (status, answer["error"]) == (503, "StorageUnavailable"), nsid
            assert headers["Retry-After"] == "1"
    finally:
        os.kill(own_server.pid, signal.SIGCONT)
    status, rotated = await call(a.xrpc, ROTATE, keys.alice, {"name": "orders"})
    assert status == 200
    assert (await sign_body(a.sign, ALICE, "orders", b"{}"))[0] == 200
    assert rotated["name"] == "orders"


async def test_a_stopped_redis_gives_503_before_credential_work(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    keys: Keys,
    own_server: EmbeddedValkey,
) -> None:
    """With Redis stopped, the address check cannot be made: 503 StorageUnavailable, not a
    401 or a 500."""
    a, _ = await two_replicas(aiohttp_client, make_sidecar, REDIS_URL=own_server.url)
    own_server.stop()
    status, answer, headers = await post(a.xrpc, CREATE, "wsa_" + "x" * 43, {"name": "n"})
    assert (status, answer["error"], headers["Retry-After"]) == (503, "StorageUnavailable", "1")
