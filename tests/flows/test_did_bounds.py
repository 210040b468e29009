"""DID resolution that cannot be aimed or turned into a flood: non-public addresses
refused after DNS, failures remembered, a refetch bound, and a bound on fetches in
flight. No test sends a packet to a non-loopback address: the DNS answers are made
up, and a refused one is refused before any connection."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from atproto_fakes import ES256, ES256K, DidHost, Issuer, KeyPair, new_plc_did, web_did
from prometheus_client import CollectorRegistry
from support import LIST, call

from sidecar.app import Sidecar, create_xrpc_app, open_sidecar
from sidecar.auth.did_keys import decode_multikey
from sidecar.auth.did_resolver import DidResolver
from sidecar.auth.public_addresses import NonPublicAddress, PublicOnlyResolver, did_session
from sidecar.errors import DidResolutionError
from sidecar.settings import Settings

if TYPE_CHECKING:
    from support import AiohttpClient, SidecarFactory

    from sidecar.auth.did_keys import PublicKey
    from sidecar.xrpc.lexicon import LexiconRegistry


class MadeUpDns(AbstractResolver):
    """A DNS that answers every name with the same addresses, and notes each question."""

    def __init__(self, *addresses: str) -> None:
        self.addresses = addresses
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            {
                "hostname": host,
                "host": address,
                "port": port,
                "family": socket.AF_INET6 if ":" in address else socket.AF_INET,
                "proto": 0,
                "flags": 0,
            }
            for address in self.addresses
        ]

    async def close(self) -> None:
        pass


NON_PUBLIC = [
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",  # carrier-grade NAT, shared
    "169.254.169.254",  # cloud metadata
    "127.0.0.1",
    "0.0.0.0",
    "224.0.0.1",
    "240.0.0.1",
    "192.0.2.1",  # documentation
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "ff02::1",
    "::ffff:10.0.0.1",
    "2002:a00:1::1",  # 6to4 around 10.0.0.1
]


@pytest.mark.parametrize("address", NON_PUBLIC)
async def test_a_name_resolving_to_a_non_public_address_is_refused(address: str) -> None:
    """Private, shared, link-local, loopback, unspecified, multicast, reserved and
    mapped addresses are all refused by the connector's resolver."""
    resolver = PublicOnlyResolver(MadeUpDns(address))
    with pytest.raises(NonPublicAddress):
        await resolver.resolve("issuer.example", 443)


async def test_public_answers_pass_and_one_private_answer_spoils_them() -> None:
    """Public answers come through as they are; a name with one private answer among
    public ones is refused whole."""
    assert [a["host"] for a in await PublicOnlyResolver(MadeUpDns("93.184.216.34")).resolve(
        "issuer.example", 443
    )] == ["93.184.216.34"]  # fmt: skip
    with pytest.raises(NonPublicAddress):
        await PublicOnlyResolver(MadeUpDns("93.184.216.34", "10.0.0.1")).resolve("x.example")


async def test_only_the_operator_exceptions_pass_non_public_answers() -> None:
    """The PLC directory's host passes whatever it resolves to; a loopback answer passes
    for a loopback name with the development setting only, never for another name."""
    trusted = PublicOnlyResolver(MadeUpDns("10.0.0.9"), trusted_hosts=frozenset({"plc.internal"}))
    assert len(await trusted.resolve("plc.internal", 443)) == 1
    with pytest.raises(NonPublicAddress):
        await trusted.resolve("other.internal", 443)
    loopback = PublicOnlyResolver(MadeUpDns("127.0.0.1"), allow_loopback=True)
    assert len(await loopback.resolve("localhost", 80)) == 1
    with pytest.raises(NonPublicAddress):
        await loopback.resolve("rebind.example", 80)
    with pytest.raises(NonPublicAddress):
        await PublicOnlyResolver(MadeUpDns("127.0.0.1")).resolve("localhost", 80)


@pytest.fixture
async def open_with_dns(
    env: dict[str, str], jwt_env: dict[str, str], lexicons: LexiconRegistry
) -> AsyncIterator[Callable[..., Any]]:
    """Open sidecars with service auth on whose DID hosts are looked up in a given DNS."""
    async with AsyncExitStack() as stack:

        async def make(dns: AbstractResolver, **overrides: str) -> Sidecar:
            settings = Settings.from_env({**env, **jwt_env, **overrides})
            return await stack.enter_async_context(
                open_sidecar(settings, registry=CollectorRegistry(), lexicons=lexicons, dns=dns)
            )

        yield make


def sample(sidecar: Sidecar, name: str, **labels: str) -> float:
    """A metric sample of ``sidecar``, 0 when absent."""
    return sidecar.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_did_web_aimed_at_a_private_address_never_connects(
    aiohttp_client: AiohttpClient, open_with_dns: Callable[..., Any]
) -> None:
    """A did:web whose name resolves to where a listener waits is refused after DNS with
    no connection to it, counted as did_non_public_address; the next token naming it is
    refused from memory, without asking DNS again (did_failed_recently)."""
    connections: list[asyncio.StreamWriter] = []

    def accepted(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        writer.close()

    server = await asyncio.start_server(accepted, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dns = MadeUpDns("127.0.0.1")
    sidecar = await open_with_dns(dns)
    client = await aiohttp_client(create_xrpc_app(sidecar))
    issuer = Issuer(f"did:web:rebind.example%3A{port}", KeyPair.generate(ES256K))
    try:
        for _ in range(2):
            status, answer = await call(client, LIST, issuer.token(LIST), method="GET")
            assert (status, answer["error"]) == (401, "AuthenticationRequired")
    finally:
        server.close()
        await server.wait_closed()
    assert connections == []
    assert dns.asked == ["rebind.example"]
    reasons = ("did_non_public_address", "did_failed_recently", "unresolved_did")
    counts = [sample(sidecar, "wisp_sidecar_auth_failures_total", reason=r) for r in reasons]
    assert counts == [1, 1, 0]


@pytest.mark.parametrize("did", ["did:web:10.0.0.1", "did:web:169.254.169.254"])
async def test_a_did_web_naming_a_non_public_literal_is_refused_before_any_lookup(
    did: str,
) -> None:
    """An IP literal never reaches a resolver, so it is checked before any request."""
    dns = MadeUpDns("93.184.216.34")
    async with did_session(PublicOnlyResolver(dns)) as session:
        resolver = DidResolver(session, plc_url="https://plc.example", cache_ttl_s=300)
        with pytest.raises(DidResolutionError) as refused:
            await resolver.signing_key(did)
    assert refused.value.reason == "did_non_public_address"
    assert dns.asked == []


async def test_a_loopback_name_still_resolves_with_the_development_setting(
    did_host: DidHost,
) -> None:
    """With the loopback setting, did:web:localhost:<port> resolves through the real
    system DNS and the public-address check, as development needs."""
    port = did_host.host.rpartition(":")[2]
    issuer = Issuer(web_did(f"localhost:{port}"), KeyPair.generate(ES256))
    did_host.documents[issuer.did] = issuer.document()
    async with did_session(PublicOnlyResolver(allow_loopback=True)) as session:
        resolver = DidResolver(
            session, plc_url=did_host.url, cache_ttl_s=300, allow_http_loopback=True
        )
        resolved = await resolver.signing_key(issuer.did)
    assert resolved.key == key_of(issuer)


def key_of(issuer: Issuer) -> PublicKey:
    """The public key ``issuer``'s document announces."""
    return decode_multikey(issuer.key.multikey())


async def test_a_refetch_happens_at_most_once_per_interval(
    http_session: aiohttp.ClientSession, did_host: DidHost
) -> None:
    """After a cached key fails, the document is fetched again only if its last fetch is
    refetch_min_s old; in between, the refusal is did_refetch_limited and costs nothing."""
    now = [1000.0]
    issuer = Issuer(new_plc_did(), KeyPair.generate(ES256K))
    did_host.documents[issuer.did] = issuer.document()
    resolver = DidResolver(
        http_session, plc_url=did_host.url, cache_ttl_s=300, refetch_min_s=30,
        clock=lambda: now[0],
    )  # fmt: skip
    await resolver.signing_key(issuer.did)
    for _ in range(3):
        with pytest.raises(DidResolutionError) as limited:
            await resolver.signing_key(issuer.did, fresh=True)
        assert limited.value.reason == "did_refetch_limited"
    assert len(did_host.requests) == 1
    now[0] += 30
    assert (await resolver.signing_key(issuer.did, fresh=True)).cached is False
    with pytest.raises(DidResolutionError):
        await resolver.signing_key(issuer.did, fresh=True)
    assert len(did_host.requests) == 2


async def test_forged_tokens_for_a_cached_did_cause_no_refetch(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    jwt_env: dict[str, str],
    did_host: DidHost,
    alice: Issuer,
) -> None:
    """Right after a good call, forged tokens naming the same DID on two replicas are 401
    did_refetch_limited, counted as limit hits, and the directory sees one fetch each."""
    replicas = [await make_sidecar(**jwt_env, SIDECAR_DID_REFETCH_MIN_S="86400") for _ in "ab"]
    forger = KeyPair.generate(ES256K)
    for sidecar in replicas:
        client = await aiohttp_client(create_xrpc_app(sidecar))
        assert (await call(client, LIST, alice.token(LIST), method="GET"))[0] == 200
        for _ in range(3):
            status, _ = await call(client, LIST, alice.token(LIST, key=forger), method="GET")
            assert status == 401
        assert (
            sample(sidecar, "wisp_sidecar_auth_failures_total", reason="did_refetch_limited") == 3
        )
        assert sample(sidecar, "wisp_sidecar_limit_hits_total", kind="did_refetch") == 3
    assert len(did_host.requests) == 2


async def test_past_the_in_flight_bound_a_jwt_call_gets_a_fast_503(
    aiohttp_client: AiohttpClient,
    aiohttp_server: Callable[[web.Application], Any],
    make_sidecar: SidecarFactory,
    jwt_env: dict[str, str],
    did_host: DidHost,
    alice: Issuer,
) -> None:
    """With one resolution allowed in flight and one stalled, a token naming another DID
    is answered 503 NotEnoughResources with Retry-After at once, without a fetch; once the
    stalled one ends, the other DID resolves."""
    arrived, release = asyncio.Event(), asyncio.Event()

    async def stalled(request: web.Request) -> web.Response:
        arrived.set()
        await release.wait()
        return web.json_response({"message": "not here"}, status=404)

    app = web.Application()
    app.router.add_get("/.well-known/did.json", stalled)
    server = await aiohttp_server(app)
    slow = Issuer(web_did(f"127.0.0.1:{server.port}"), KeyPair.generate(ES256K))
    sidecar = await make_sidecar(**jwt_env, SIDECAR_DID_MAX_IN_FLIGHT="1")
    client = await aiohttp_client(create_xrpc_app(sidecar))

    first = asyncio.create_task(call(client, LIST, slow.token(LIST), method="GET"))
    async with asyncio.timeout(30):  # against a hang only
        await arrived.wait()
    async with client.get(
        f"/xrpc/{LIST}", headers={"Authorization": f"Bearer {alice.token(LIST)}"}
    ) as response:
        assert response.status == 503
        assert (await response.json())["error"] == "NotEnoughResources"
        assert response.headers["Retry-After"] == "1"
    assert did_host.requests == []
    assert sample(sidecar, "wisp_sidecar_limit_hits_total", kind="did_resolutions_in_flight") == 1
    release.set()
    assert (await first)[0] == 401
    assert (await call(client, LIST, alice.token(LIST), method="GET"))[0] == 200
