"""``sidecar.auth.did_resolver`` against a real loopback PLC directory and did:web host."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

import pytest
from atproto_fakes import ES256, ES256K, CannedReply, DidHost, Issuer, KeyPair, new_plc_did

from sidecar.auth.did_keys import decode_multikey
from sidecar.auth.did_resolver import DidResolver
from sidecar.errors import DidResolutionError
from sidecar.storage.embedded import free_port

if TYPE_CHECKING:
    import aiohttp

PLC = "https://plc.example.com"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# A bound against hangs only, never a measurement: far past any timeout under test.
HANG_BOUND_S = 30


def resolver(
    session: aiohttp.ClientSession, host: DidHost | None = None, **options: Any
) -> DidResolver:
    """A resolver whose PLC directory is ``host`` (or an address nothing listens on)."""
    options.setdefault("cache_ttl_s", 300)
    options.setdefault("allow_http_loopback", True)
    plc_url = host.url if host else f"http://127.0.0.1:{free_port()}"
    return DidResolver(session, plc_url=plc_url, **options)


def register(host: DidHost, alg: str = ES256K, *, web: bool = False) -> Issuer:
    """A new issuer whose document ``host`` serves, as a did:plc or as its did:web."""
    issuer = Issuer(host.did if web else new_plc_did(), KeyPair.generate(alg))
    host.documents[issuer.did] = issuer.document()
    return issuer


def key_of(issuer: Issuer) -> Any:
    """The public key ``issuer``'s document publishes, decoded as the resolver decodes it."""
    return decode_multikey(issuer.key.multikey())


# Where documents come from


@pytest.mark.parametrize(
    ("did", "url"),
    [
        ("did:plc:abcdefghijklmnopqrstuvwx", f"{PLC}/did:plc:abcdefghijklmnopqrstuvwx"),
        ("did:web:example.com", "https://example.com/.well-known/did.json"),
        ("did:web:pds.example.com%3A8443", "https://pds.example.com:8443/.well-known/did.json"),
        ("did:web:localhost", "http://localhost/.well-known/did.json"),
        ("did:web:127.0.0.1%3A5000", "http://127.0.0.1:5000/.well-known/did.json"),
        ("did:web:127.8.9.10", "http://127.8.9.10/.well-known/did.json"),
        ("did:web:app.localhost", "http://app.localhost/.well-known/did.json"),
        ("did:web:localhost.example.com", "https://localhost.example.com/.well-known/did.json"),
    ],
)
def test_document_url(http_session: aiohttp.ClientSession, did: str, url: str) -> None:
    """did:plc goes to the PLC directory, did:web to its host; http only for loopback hosts."""
    found = DidResolver(
        http_session, plc_url=PLC + "/", cache_ttl_s=1, allow_http_loopback=True
    ).document_url(did)
    assert found == url


@pytest.mark.parametrize(
    "did",
    [
        "did:web:localhost",
        "did:web:127.0.0.1%3A5000",
        "did:web:app.localhost",
    ],
)
def test_loopback_did_web_is_refused_without_the_flag(
    http_session: aiohttp.ClientSession, did: str
) -> None:
    """Without the development flag, a did:web on a loopback host is not resolved at all."""
    with pytest.raises(DidResolutionError):
        DidResolver(http_session, plc_url=PLC, cache_ttl_s=1).document_url(did)


@pytest.mark.parametrize(
    "did",
    [
        "did:plc:abcdefghijklmnopqrstuvw",
        "did:plc:abcdefghijklmnopqrstuvwxy",
        "did:plc:ABCDEFGHIJKLMNOPQRSTUVWX",
        "did:plc:abcdefghijklmnopqrstuvw0",
        "did:plc:..%2F..%2Fadminxxxxxxxxxxx",
        "did:web:example.com:user:alice",
        "did:web:exa_mple.com",
        "did:web:-example.com",
        "did:web:example..com",
        "did:web:example.com%2Fpath",
        "did:web:user%40example.com",
        "did:web:example.com%3A0",
        "did:web:example.com%3A65536",
        "did:web:example.com%3Ahttps",
        "did:key:zQ3shokFTS3brHcDQrn82RUDfCZESWL1ZdCEJwekUDPQiYBme",
        "did:example:123",
    ],
)
def test_unresolvable_dids_are_refused(http_session: aiohttp.ClientSession, did: str) -> None:
    """Malformed did:plc, path-based or malformed did:web, and other methods have no URL."""
    with pytest.raises(DidResolutionError):
        resolver(http_session).document_url(did)


# Resolving over HTTP


@pytest.mark.parametrize("alg", [ES256K, ES256])
@pytest.mark.parametrize("web", [False, True])
async def test_resolves_plc_and_web_dids(
    http_session: aiohttp.ClientSession, did_host: DidHost, alg: str, web: bool
) -> None:
    """A did:plc (from the directory) or did:web (from its host) resolves to its #atproto key."""
    issuer = register(did_host, alg, web=web)
    resolved = await resolver(http_session, did_host).signing_key(issuer.did)
    assert resolved.key == key_of(issuer)
    assert resolved.cached is False
    path = "/.well-known/did.json" if web else f"/{issuer.did}"
    assert did_host.requests == [path]


async def test_legacy_document_resolves(
    http_session: aiohttp.ClientSession, did_host: DidHost
) -> None:
    """A document with a legacy EcdsaSecp256k1VerificationKey2019 method resolves too."""
    issuer = Issuer(new_plc_did(), KeyPair.generate(ES256K))
    did_host.documents[issuer.did] = issuer.document(legacy=True)
    resolved = await resolver(http_session, did_host).signing_key(issuer.did)
    assert resolved.key == key_of(issuer)


async def test_cache_serves_until_the_ttl_then_fetches_again(
    http_session: aiohttp.ClientSession, did_host: DidHost
) -> None:
    """Within the TTL the key comes from the cache; after it, from the host again."""
    clock = Clock()
    issuer = register(did_host)
    resolve = resolver(http_session, did_host, cache_ttl_s=300, clock=clock)
    assert (await resolve.signing_key(issuer.did)).cached is False
    clock.now += 299
    again = await resolve.signing_key(issuer.did)
    assert (again.cached, again.key) == (True, key_of(issuer))
    assert len(did_host.requests) == 1
    clock.now += 1
    assert (await resolve.signing_key(issuer.did)).cached is False
    assert len(did_host.requests) == 2


async def test_fresh_lookup_bypasses_and_refreshes_the_cache(
    http_session: aiohttp.ClientSession, did_host: DidHost
) -> None:
    """fresh=True fetches even with a cached key, and the cache then holds the new key
    (with no refetch bound: test_did_bounds.py tests that)."""
    issuer = register(did_host)
    resolve = resolver(http_session, did_host, refetch_min_s=0)
    await resolve.signing_key(issuer.did)
    rotated = Issuer(issuer.did, KeyPair.generate(ES256))
    did_host.documents[issuer.did] = rotated.document()
    assert (await resolve.signing_key(issuer.did)).key == key_of(issuer)
    fresh = await resolve.signing_key(issuer.did, fresh=True)
    assert (fresh.cached, fresh.key) == (False, key_of(rotated))
    cached = await resolve.signing_key(issuer.did)
    assert (cached.cached, cached.key) == (True, key_of(rotated))
    assert len(did_host.requests) == 2


async def test_concurrent_lookups_share_one_fetch(
    http_session: aiohttp.ClientSession, did_host: DidHost
) -> None:
    """Ten lookups of one uncached DID at once make a single request to its host."""
    issuer = register(did_host)
    resolve = resolver(http_session, did_host)
    results = await asyncio.gather(*(resolve.signing_key(issuer.did) for _ in range(10)))
    assert {result.key for result in results} == {key_of(issuer)}
    assert len(did_host.requests) == 1


async def test_failures_are_remembered_only_briefly(
    http_session: aiohttp.ClientSession, did_host: DidHost
) -> None:
    """A DID that failed to resolve is refused without a fetch for failure_ttl_s, and
    resolves at the first lookup after that once its document appears."""
    now = [1000.0]
    issuer = Issuer(new_plc_did(), KeyPair.generate(ES256K))
    resolve = resolver(http_session, did_host, failure_ttl_s=30, clock=lambda: now[0])
    with pytest.raises(DidResolutionError) as first:
        await resolve.signing_key(issuer.did)
    assert first.value.reason == "unresolved_did"
    did_host.documents[issuer.did] = issuer.document()
    now[0] += 29
    with pytest.raises(DidResolutionError) as remembered:
        await resolve.signing_key(issuer.did)
    assert remembered.value.reason == "did_failed_recently"
    assert len(did_host.requests) == 1
    now[0] += 1
    assert (await resolve.signing_key(issuer.did)).key == key_of(issuer)
    assert len(did_host.requests) == 2


async def test_cache_is_bounded(http_session: aiohttp.ClientSession, did_host: DidHost) -> None:
    """With room for two entries, a third DID evicts the oldest, which is then fetched again."""
    first, second, third = (register(did_host) for _ in range(3))
    resolve = resolver(http_session, did_host, max_entries=2)
    for issuer in (first, second, third):
        await resolve.signing_key(issuer.did)
    assert (await resolve.signing_key(third.did)).cached is True
    assert (await resolve.signing_key(second.did)).cached is True
    assert (await resolve.signing_key(first.did)).cached is False


@pytest.mark.parametrize(
    "served",
    [
        CannedReply(status=500, body=b"oops"),
        CannedReply(status=410, body=b'{"message": "tombstoned"}'),
        CannedReply(body=b"<html>not json</html>"),
        CannedReply(body=b'{"id": "unterminated'),
        CannedReply(body=b'["a", "list"]'),
        CannedReply(body=b"NaN"),
        CannedReply(body=b'{"pad": "' + b"x" * (64 * 1024) + b'"}'),
        CannedReply(status=302, headers={"Location": "/elsewhere"}),
    ],
    ids=["500", "410", "html", "truncated", "list", "nan", "over-64-kib", "redirect"],
)
async def test_bad_answers_are_resolution_errors(
    http_session: aiohttp.ClientSession, did_host: DidHost, served: CannedReply
) -> None:
    """Error statuses, non-JSON, oversized documents and redirects are DidResolutionError."""
    did = new_plc_did()
    did_host.documents[did] = served
    did_host.documents["elsewhere"] = Issuer(did, KeyPair.generate(ES256K)).document()
    with pytest.raises(DidResolutionError):
        await resolver(http_session, did_host).signing_key(did)
    assert did_host.requests == [f"/{did}"]


async def test_unregistered_did_is_a_resolution_error(
    http_session: aiohttp.ClientSession, did_host: DidHost
) -> None:
    """A DID the directory does not know (404) is DidResolutionError."""
    with pytest.raises(DidResolutionError):
        await resolver(http_session, did_host).signing_key(new_plc_did())


async def test_refused_connection_fails_fast(http_session: aiohttp.ClientSession) -> None:
    """A directory that refuses connections fails the lookup at once, not after the timeout."""
    # The lookup's timeout is far past the bound against hangs, so only a failure
    # that does not wait for it can come first.
    async with asyncio.timeout(HANG_BOUND_S):
        with pytest.raises(DidResolutionError, match="ClientConnectorError"):
            await resolver(http_session, timeout_s=3600).signing_key(new_plc_did())


async def test_hanging_host_times_out_without_blocking_the_loop(
    http_session: aiohttp.ClientSession, did_host: DidHost
) -> None:
    """A host that never answers fails at the timeout, and the event loop runs on meanwhile."""
    did = new_plc_did()
    did_host.documents[did] = CannedReply(hang=True)
    ticks_while_waiting = 0

    async def tick() -> None:
        nonlocal ticks_while_waiting
        while True:
            await asyncio.sleep(0.01)
            # The request has reached the host, which holds it: the lookup is waiting.
            if did_host.requests:
                ticks_while_waiting += 1

    ticker = asyncio.create_task(tick())
    try:
        async with asyncio.timeout(HANG_BOUND_S):
            with pytest.raises(DidResolutionError, match="TimeoutError"):
                await resolver(http_session, did_host, timeout_s=0.3).signing_key(did)
    finally:
        ticker.cancel()
    assert did_host.requests == [f"/{did}"]
    assert ticks_while_waiting >= 1
