# mypy: disable-error-code="union-attr,index,list-item,arg-type"
# (redis-py types a synchronous answer as a union with its awaitable and with None.)
"""atproto service auth end to end: real keys, real HTTP (XRPC and DID resolution), real Redis."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp.test_utils import TestClient
from atproto_fakes import (
    ES256,
    ES256K,
    SERVICE_DID,
    DidHost,
    Issuer,
    KeyPair,
    b64url,
    new_plc_did,
)
from support import ALICE, CREATE, DELETE, LIST, ROTATE, call, keyspace_dump, parsed

from sidecar.app import create_xrpc_app
from sidecar.storage.embedded import free_port
from sidecar.storage.layout import jti_key, secret_key

if TYPE_CHECKING:
    import redis
    from support import AiohttpClient, Keys, SidecarFactory

    from sidecar.app import Sidecar

Client = TestClient[Any, Any]
REASONS = (
    "bad_jwt",
    "bad_alg",
    "bad_type",
    "bad_audience",
    "bad_lxm",
    "expired",
    "too_long_lived",
    "replayed",
    "unresolved_did",
    "bad_signature",
)


@pytest.fixture
def bob(did_host: DidHost) -> Issuer:
    """The did:web account of the loopback host, with a P-256 key."""
    issuer = Issuer(did_host.did, KeyPair.generate(ES256))
    did_host.documents[issuer.did] = issuer.document()
    return issuer


@pytest.fixture
async def replica(make_sidecar: SidecarFactory, jwt_env: dict[str, str]) -> Sidecar:
    """A sidecar with service auth on."""
    result: Sidecar = await make_sidecar(**jwt_env)
    return result


@pytest.fixture
async def client(aiohttp_client: AiohttpClient, replica: Sidecar) -> Client:
    """A client of ``replica``'s XRPC listener, over a real socket."""
    result: Client = await aiohttp_client(create_xrpc_app(replica))
    return result


def counted(sidecar: Sidecar, reason: str) -> float:
    """How many auth failures of ``reason`` the sidecar counted."""
    value = sidecar.metrics.registry.get_sample_value(
        "wisp_sidecar_auth_failures_total", {"reason": reason}
    )
    return value or 0.0


def all_counted(sidecar: Sidecar) -> dict[str, float]:
    """The auth failures the sidecar counted, by reason, unknown_key included."""
    return {reason: counted(sidecar, reason) for reason in (*REASONS, "unknown_key")}


async def send(client: Client, nsid: str, token: str, body: Any = None) -> tuple[int, Any]:
    """Call ``nsid`` with ``token`` as bearer credential, POST with ``body`` or GET without."""
    method = "GET" if nsid == LIST else "POST"
    return await call(client, nsid, token, body, method=method)


def raw_payload(issuer: Issuer, payload: bytes) -> str:
    """A token whose payload is ``payload`` as it is, signed by ``issuer``."""
    head = b64url(json.dumps({"alg": issuer.key.alg}).encode())
    body = b64url(payload)
    signature = issuer.key.sign(f"{head}.{body}".encode())
    return f"{head}.{body}.{b64url(signature)}"


def swapped_payload(issuer: Issuer) -> str:
    """The header and signature of one good token around the payload of another."""
    head, _, signature = issuer.token(CREATE).split(".")
    return ".".join([head, issuer.token(CREATE).split(".")[1], signature])


def claims_of(token: str) -> dict[str, Any]:
    """The payload of ``token``, decoded without any check."""
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


# What a good token does


@pytest.mark.parametrize("high_s", [False, True])
async def test_both_issuers_manage_their_secrets_with_service_jwts(
    client: Client, alice: Issuer, bob: Issuer, high_s: bool
) -> None:
    """did:plc/secp256k1 and did:web/P-256 callers run the whole lifecycle, one token per call."""
    for issuer in (alice, bob):
        status, created = await send(
            client, CREATE, issuer.token(CREATE, high_s=high_s), {"name": "orders"}
        )
        assert status == 200, created
        assert created["token"].startswith("wsk_")
        status, listed = await send(client, LIST, issuer.token(LIST, high_s=high_s))
        assert (status, [s["name"] for s in listed["secrets"]]) == (200, ["orders"])
        status, rotated = await send(client, ROTATE, issuer.token(ROTATE), {"name": "orders"})
        assert status == 200, rotated
        assert rotated["token"] != created["token"]
        assert await send(client, DELETE, issuer.token(DELETE), {"name": "orders"}) == (200, {})


async def test_the_issuer_owns_the_secret_and_is_the_audit_actor(
    client: Client, alice: Issuer, raw_redis: redis.Redis
) -> None:
    """A secret made with a JWT is stored under the issuer's DID, audited as jwt:<did>."""
    token = alice.token(CREATE, iss=f"{alice.did}#atproto_labeler")
    assert (await send(client, CREATE, token, {"name": "orders"}))[0] == 200
    assert raw_redis.exists(secret_key(alice.did, "orders")) == 1
    entries = [fields for _, fields in raw_redis.xrange(f"wsc:{{{alice.did}}}:log")]
    assert [(e[b"op"], e[b"actor"]) for e in entries] == [(b"create", f"jwt:{alice.did}".encode())]


async def test_secrets_of_one_issuer_are_invisible_to_another(
    client: Client, alice: Issuer, bob: Issuer
) -> None:
    """Bob cannot list, rotate or delete Alice's secret, and may create his own of that name."""
    assert (await send(client, CREATE, alice.token(CREATE), {"name": "orders"}))[0] == 200
    assert await send(client, LIST, bob.token(LIST)) == (200, {"secrets": []})
    status, body = await send(client, ROTATE, bob.token(ROTATE), {"name": "orders"})
    assert (status, body["error"]) == (404, "NotFound")
    status, body = await send(client, DELETE, bob.token(DELETE), {"name": "orders"})
    assert (status, body["error"]) == (404, "NotFound")
    assert (await send(client, CREATE, bob.token(CREATE), {"name": "orders"}))[0] == 200
    for issuer in (alice, bob):
        _, listed = await send(client, LIST, issuer.token(LIST))
        assert [s["name"] for s in listed["secrets"]] == ["orders"]


async def test_api_keys_keep_working_next_to_jwts(
    client: Client, keys: Keys, alice: Issuer
) -> None:
    """With service auth on, API keys still authenticate as their own DIDs."""
    assert (await call(client, CREATE, keys.alice, {"name": "orders"}))[0] == 200
    assert (await send(client, LIST, alice.token(LIST))) == (200, {"secrets": []})
    _, listed = await call(client, LIST, keys.alice, method="GET")
    assert [s["name"] for s in listed["secrets"]] == ["orders"]


# Every refusal


Case = Callable[[Issuer, DidHost], str]

CASES: dict[str, list[tuple[str, Case]]] = {
    "bad_jwt": [
        ("payload-not-json", lambda a, h: raw_payload(a, b"not json")),
        ("iss-not-a-did", lambda a, h: a.token(CREATE, iss="alice")),
        ("iat-in-the-future", lambda a, h: a.token(CREATE, now=time.time() + 120)),
        ("jti-not-text", lambda a, h: a.token(CREATE, jti=7)),
    ],
    "bad_alg": [
        ("hs256", lambda a, h: a.token(CREATE, header={"alg": "HS256"})),
        ("none", lambda a, h: a.token(CREATE, header={"alg": "none"}).rsplit(".", 1)[0] + "."),
    ],
    "bad_type": [
        ("access", lambda a, h: a.token(CREATE, header={"typ": "at+jwt"})),
        ("refresh", lambda a, h: a.token(CREATE, header={"typ": "refresh+jwt"})),
        ("dpop", lambda a, h: a.token(CREATE, header={"typ": "dpop+jwt"})),
    ],
    "bad_audience": [
        ("other-service", lambda a, h: a.token(CREATE, aud="did:web:other.example.com")),
        ("missing", lambda a, h: a.token(CREATE, aud=None)),
    ],
    "bad_lxm": [
        ("other-method", lambda a, h: a.token(LIST)),
        ("missing", lambda a, h: a.token(None)),
    ],
    "expired": [("an-hour-ago", lambda a, h: a.token(CREATE, now=time.time() - 3600))],
    "too_long_lived": [
        ("an-hour", lambda a, h: a.token(CREATE, lifetime=3600)),
        ("no-iat", lambda a, h: a.token(CREATE, iat=None, exp=int(time.time()) + 900)),
    ],
    "unresolved_did": [
        ("unknown-plc", lambda a, h: Issuer(new_plc_did(), a.key).token(CREATE)),
        ("unknown-web", lambda a, h: Issuer(h.did, a.key).token(CREATE)),
        ("did-key", lambda a, h: Issuer("did:key:zQ3shokFTS3brHc", a.key).token(CREATE)),
    ],
    "bad_signature": [
        ("other-key", lambda a, h: a.token(CREATE, key=KeyPair.generate(ES256K))),
        ("alg-of-other-curve", lambda a, h: a.token(CREATE, key=KeyPair.generate(ES256))),
        ("payload-swapped", lambda a, h: swapped_payload(a)),
    ],
}


@pytest.mark.parametrize(
    ("reason", "make"),
    [
        pytest.param(reason, make, id=f"{reason}:{name}")
        for reason, cases in CASES.items()
        for name, make in cases
    ],
)
async def test_each_bad_token_is_401_counted_by_its_reason_and_changes_nothing(
    client: Client,
    replica: Sidecar,
    alice: Issuer,
    did_host: DidHost,
    raw_redis: redis.Redis,
    log_lines: list[str],
    reason: str,
    make: Case,
) -> None:
    """A bad token is 401 AuthenticationRequired; only logs and metrics learn the reason."""
    token = make(alice, did_host)
    before = keyspace_dump(raw_redis)
    async with client.post(
        f"/xrpc/{CREATE}", json={"name": "orders"}, headers={"Authorization": f"Bearer {token}"}
    ) as response:
        text = await response.text()
        assert response.status == 401, text
        assert response.headers["WWW-Authenticate"] == "Bearer"
    body = json.loads(text)
    assert body["error"] == "AuthenticationRequired"
    assert reason not in text
    assert keyspace_dump(raw_redis) == before
    assert all_counted(replica) == {name: float(name == reason) for name in all_counted(replica)}
    failures = [line for line in parsed(log_lines) if line["event"] == "auth_failed"]
    assert [(line["reason"], line["nsid"]) for line in failures] == [(reason, CREATE)]
    every_log = "\n".join(log_lines)
    assert token not in every_log
    # Nor any distinctive part of it (the payload carries a random jti).
    assert not [part for part in token.split(".")[1:] if len(part) > 16 and part in every_log]


async def test_a_list_token_cannot_rotate(
    client: Client, alice: Issuer, raw_redis: redis.Redis, replica: Sidecar
) -> None:
    """A token minted for secret.list, used on secret.rotate, is refused and rotates nothing."""
    assert (await send(client, CREATE, alice.token(CREATE), {"name": "orders"}))[0] == 200
    before = keyspace_dump(raw_redis)
    status, body = await send(client, ROTATE, alice.token(LIST), {"name": "orders"})
    assert (status, body["error"]) == (401, "AuthenticationRequired")
    assert keyspace_dump(raw_redis) == before
    assert counted(replica, "bad_lxm") == 1


async def test_authentication_comes_before_the_body(client: Client, alice: Issuer) -> None:
    """A bad token with a bad body is 401; a good token with the same body is 400."""
    for token, expected in ((alice.token(LIST), 401), (alice.token(CREATE), 400)):
        async with client.post(
            f"/xrpc/{CREATE}",
            data=b"{not json",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        ) as response:
            assert response.status == expected


# Replay


async def test_a_replayed_jti_fails_on_another_replica(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    jwt_env: dict[str, str],
    alice: Issuer,
    raw_redis: redis.Redis,
) -> None:
    """A token accepted by one replica is refused as replayed by a second, and by the first."""
    replicas = [await make_sidecar(**jwt_env), await make_sidecar(**jwt_env)]
    first, second = [await aiohttp_client(create_xrpc_app(r)) for r in replicas]
    token = alice.token(LIST, jti="one-time")
    assert (await send(first, LIST, token))[0] == 200
    status, body = await send(second, LIST, token)
    assert (status, body["error"]) == (401, "AuthenticationRequired")
    assert counted(replicas[1], "replayed") == 1
    assert (await send(first, LIST, token))[0] == 401
    assert counted(replicas[0], "replayed") == 1

    # The record lives in the issuer's slot until just after the token expires.
    key = jti_key(alice.did, "one-time")
    assert key.startswith(f"wsc:{{{alice.did}}}:jti:")
    assert raw_redis.expiretime(key) == claims_of(token)["exp"] + 6


async def test_a_token_without_jti_may_be_used_until_it_expires(
    client: Client, alice: Issuer
) -> None:
    """Without a jti there is nothing to refuse on reuse: the token works until exp."""
    token = alice.token(LIST, jti=None)
    assert (await send(client, LIST, token))[0] == 200
    assert (await send(client, LIST, token))[0] == 200


async def test_a_refused_token_does_not_use_up_its_jti(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    jwt_env: dict[str, str],
    client: Client,
    alice: Issuer,
    did_host: DidHost,
) -> None:
    """A token refused before its signature checked out can be retried once the DID
    resolves (on another replica, as this one remembers the failure for a while)."""
    del did_host.documents[alice.did]
    token = alice.token(LIST)
    assert (await send(client, LIST, token))[0] == 401
    did_host.documents[alice.did] = alice.document()
    other = await aiohttp_client(create_xrpc_app(await make_sidecar(**jwt_env)))
    assert (await send(other, LIST, token))[0] == 200


# Key rotation at the PLC directory


async def test_after_a_key_rotation_new_tokens_verify_and_old_ones_fail(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    jwt_env: dict[str, str],
    alice: Issuer,
    did_host: DidHost,
) -> None:
    """With the old key cached, a new-key token re-resolves once and passes; old-key ones
    fail (with no refetch bound: tests/test_did_bounds.py tests that)."""
    replica = await make_sidecar(**jwt_env, SIDECAR_DID_REFETCH_MIN_S="0")
    client = await aiohttp_client(create_xrpc_app(replica))
    assert (await send(client, LIST, alice.token(LIST)))[0] == 200
    assert (await send(client, LIST, alice.token(LIST)))[0] == 200
    assert len(did_host.requests) == 1  # the second call used the cached key

    rotated = Issuer(alice.did, KeyPair.generate(ES256K))
    did_host.documents[alice.did] = rotated.document()
    assert (await send(client, LIST, rotated.token(LIST)))[0] == 200
    assert len(did_host.requests) == 2
    assert (await send(client, LIST, rotated.token(LIST)))[0] == 200
    assert len(did_host.requests) == 2  # the new key is cached now

    status, _ = await send(client, LIST, alice.token(LIST))
    assert status == 401
    assert counted(replica, "bad_signature") == 1


# When resolution is impossible


async def test_an_unreachable_plc_directory_is_a_quick_401(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    jwt_env: dict[str, str],
    alice: Issuer,
    keys: Keys,
) -> None:
    """With the directory down, JWT calls fail with 401 rather than hang, and API keys still
    work (that a refused connection fails before the lookup's timeout is
    tests/unit/test_did_resolver.py's)."""
    down = await make_sidecar(**{**jwt_env, "SIDECAR_PLC_URL": f"http://127.0.0.1:{free_port()}"})
    client = await aiohttp_client(create_xrpc_app(down))
    async with asyncio.timeout(30):  # a bound against hangs only
        status, body = await send(client, LIST, alice.token(LIST))
    assert (status, body["error"]) == (401, "AuthenticationRequired")
    assert counted(down, "unresolved_did") == 1
    assert (await call(client, LIST, keys.alice, method="GET"))[0] == 200


async def test_loopback_did_web_needs_the_development_flag(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    jwt_env: dict[str, str],
    bob: Issuer,
    did_host: DidHost,
) -> None:
    """Without SIDECAR_DID_WEB_ALLOW_HTTP_LOOPBACK, a loopback did:web is refused as a
    non-public address, unfetched."""
    strict = await make_sidecar(**{**jwt_env, "SIDECAR_DID_WEB_ALLOW_HTTP_LOOPBACK": "0"})
    client = await aiohttp_client(create_xrpc_app(strict))
    assert (await send(client, LIST, bob.token(LIST)))[0] == 401
    assert counted(strict, "did_non_public_address") == 1
    assert did_host.requests == []


async def test_without_a_service_did_jwts_are_not_accepted(
    aiohttp_client: AiohttpClient, make_sidecar: SidecarFactory, alice: Issuer, did_host: DidHost
) -> None:
    """With SIDECAR_SERVICE_DID unset, a JWT is just an unknown API key, and nothing resolves."""
    off = await make_sidecar()
    client = await aiohttp_client(create_xrpc_app(off))
    assert (await send(client, LIST, alice.token(LIST)))[0] == 401
    assert counted(off, "unknown_key") == 1
    assert did_host.requests == []


# The allow-list


async def test_allow_list_refuses_other_callers_with_403_and_changes_no_secret(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    jwt_env: dict[str, str],
    alice: Issuer,
    bob: Issuer,
    keys: Keys,
    raw_redis: redis.Redis,
) -> None:
    """Only listed DIDs get in, by JWT or API key; others get 403 Forbidden and change nothing."""
    listed = await make_sidecar(**jwt_env, SIDECAR_ALLOWED_DIDS=f"{alice.did}, {ALICE}")
    client = await aiohttp_client(create_xrpc_app(listed))
    assert (await send(client, CREATE, alice.token(CREATE), {"name": "orders"}))[0] == 200
    assert (await call(client, CREATE, keys.alice, {"name": "orders"}))[0] == 200

    def secrets_state() -> dict[bytes, Any]:
        return {k: v for k, v in keyspace_dump(raw_redis).items() if b":jti:" not in k}

    before = secrets_state()
    bob_token = bob.token(CREATE, jti="bob-1")
    for status_body in (
        await send(client, CREATE, bob_token, {"name": "orders"}),
        await call(client, CREATE, keys.bob, {"name": "orders"}),
        await call(client, ROTATE, keys.bob, {"name": "orders"}),
    ):
        status, body = status_body
        assert (status, body["error"]) == (403, "Forbidden")
        assert set(body) == {"error", "message"}
    assert secrets_state() == before
    # The token did authenticate, so its id is used up like any other.
    assert raw_redis.exists(jti_key(bob.did, "bob-1")) == 1

    registry = listed.metrics.registry
    outcome = {"operation": "create", "outcome": "forbidden"}
    assert registry.get_sample_value("wisp_sidecar_secret_operations_total", outcome) == 2
    assert registry.get_sample_value("wisp_sidecar_rotations_total", {"outcome": "forbidden"}) == 1
    assert all_counted(listed) == {name: 0.0 for name in all_counted(listed)}


async def test_allow_list_does_not_hide_authentication_failures(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    jwt_env: dict[str, str],
    bob: Issuer,
) -> None:
    """An unlisted issuer with a bad token gets 401, like anyone: 403 needs a good credential."""
    listed = await make_sidecar(**jwt_env, SIDECAR_ALLOWED_DIDS=ALICE)
    client = await aiohttp_client(create_xrpc_app(listed))
    status, body = await send(client, LIST, bob.token(LIST, aud=SERVICE_DID + "x"))
    assert (status, body["error"]) == (401, "AuthenticationRequired")
    assert (await send(client, LIST, bob.token(LIST)))[0] == 403


async def test_start_warns_about_api_keys_the_allow_list_shuts_out(
    make_sidecar: SidecarFactory, jwt_env: dict[str, str], log_lines: list[str]
) -> None:
    """Opening a sidecar whose allow-list leaves out an API key's DID logs that key's label."""
    await make_sidecar(**jwt_env, SIDECAR_ALLOWED_DIDS=ALICE)
    warnings = [line for line in parsed(log_lines) if line["event"] == "api_keys_not_allowed"]
    assert [line["labels"] for line in warnings] == [["bob-ci"]]
