"""Shared fixtures: one real Redis-protocol server per session, a clean database
per test, fresh metrics registries, and sidecars built by the real factories."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
import redis
from aiohttp import web
from atproto_fakes import ES256K, SERVICE_DID, DidHost, Issuer, KeyPair, new_plc_did
from prometheus_client import CollectorRegistry
from support import ALICE, BOB, SERVER_BINARY, AiohttpClient, Keys, SidecarFactory

from sidecar.app import Sidecar, create_ops_app, create_sign_app, create_xrpc_app, open_sidecar
from sidecar.auth.api_keys import generate_api_key, keys_file_line
from sidecar.crypto import encode_kek, generate_kek
from sidecar.log import configure_logging
from sidecar.settings import Settings
from sidecar.storage.embedded import EmbeddedValkey
from sidecar.xrpc.lexicon import LexiconRegistry, default_lexicon_dir

if TYPE_CHECKING:
    from pathlib import Path

    from aiohttp.test_utils import TestClient

# Sentinel and Cluster topologies, and the fixtures that open sidecars on them.
pytest_plugins = ("topologies",)


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis-protocol server for the whole session.

    ``SIDECAR_TEST_REDIS_URL`` points the suite at a server you run (its
    database is flushed before every test); otherwise the embedded Valkey.
    """
    url = os.environ.get("SIDECAR_TEST_REDIS_URL")
    if url:
        yield url
        return
    server = EmbeddedValkey(tmp_path_factory.mktemp("valkey"), binary=SERVER_BINARY, persist=False)
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """The session server's URL, with an empty database."""
    with redis.Redis.from_url(redis_server_url) as client:
        client.flushdb()
    return redis_server_url


@pytest.fixture
def raw_redis(redis_url: str) -> Iterator[redis.Redis]:
    """A plain synchronous client for looking at what the sidecar stored."""
    with redis.Redis.from_url(redis_url) as client:
        yield client


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    """Fresh API keys for Alice and Bob, written to the keys file the sidecar loads."""
    alice, bob = generate_api_key(), generate_api_key()
    path = tmp_path / "api-keys"
    path.write_text(
        "# test keys\n"
        f"{keys_file_line(ALICE, alice, 'alice-ci')}\n"
        f"{keys_file_line(BOB, bob, 'bob-ci')}\n"
    )
    return Keys(alice=alice, bob=bob, path=path)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    """A Valkey of this test's own, which the test may stop, freeze and restart."""
    server = EmbeddedValkey(tmp_path / "valkey", binary=SERVER_BINARY, persist=True)
    server.start()
    yield server
    if server.pid is not None:
        os.kill(server.pid, signal.SIGCONT)
    server.stop()


@pytest.fixture
def kek_text() -> str:
    """A fresh key-encryption key, encoded as SIDECAR_KEK takes it."""
    return encode_kek(generate_kek())


@pytest.fixture
def env(redis_url: str, keys: Keys, kek_text: str, tmp_path: Path) -> dict[str, str]:
    """The environment a test sidecar is configured from; tests may change it."""
    return {
        "REDIS_URL": redis_url,
        "SIDECAR_KEK": kek_text,
        "SIDECAR_API_KEYS_FILE": str(keys.path),
        "SIDECAR_DATA_DIR": str(tmp_path / "data"),
        # A bound against hangs, not the default 500 ms: on a loaded machine a healthy
        # Redis can take longer than that. Tests of the deadline set their own.
        "SIDECAR_REDIS_TIMEOUT_MS": "10000",
    }


@pytest.fixture(scope="session")
def lexicons() -> LexiconRegistry:
    """The lexicons the sidecar ships, loaded once for the session."""
    return LexiconRegistry.load(default_lexicon_dir())


@pytest.fixture
async def make_sidecar(
    env: dict[str, str], lexicons: LexiconRegistry
) -> AsyncIterator[SidecarFactory]:
    """Open sidecars (replicas) on the test Redis, each with a fresh metrics registry."""
    async with AsyncExitStack() as stack:

        async def make(**overrides: str) -> Sidecar:
            settings = Settings.from_env({**env, **overrides})
            return await stack.enter_async_context(
                open_sidecar(settings, registry=CollectorRegistry(), lexicons=lexicons)
            )

        yield make


@pytest.fixture
async def sidecar(make_sidecar: SidecarFactory) -> Sidecar:
    """A sidecar on the test Redis, configured from ``env`` as it stands."""
    result: Sidecar = await make_sidecar()
    return result


@pytest.fixture
async def xrpc(aiohttp_client: AiohttpClient, sidecar: Sidecar) -> TestClient[Any, Any]:
    """A client of the XRPC listener, over a real socket."""
    client: TestClient[Any, Any] = await aiohttp_client(create_xrpc_app(sidecar))
    return client


@pytest.fixture
async def ops(aiohttp_client: AiohttpClient, sidecar: Sidecar) -> TestClient[Any, Any]:
    """A client of the ops listener of the same sidecar as ``xrpc``."""
    client: TestClient[Any, Any] = await aiohttp_client(create_ops_app(sidecar))
    return client


@pytest.fixture
def log_lines() -> Iterator[list[str]]:
    """Every log line the sidecar renders during the test, as JSON text."""
    lines: list[str] = []
    configure_logging("debug", "json", sink=lines.append)
    yield lines
    configure_logging("info", "json")


@pytest.fixture
async def sign(aiohttp_client: AiohttpClient, sidecar: Sidecar) -> TestClient[Any, Any]:
    """A client of the sign listener of the same sidecar as ``xrpc``."""
    client: TestClient[Any, Any] = await aiohttp_client(create_sign_app(sidecar))
    return client


@pytest.fixture
async def did_host(aiohttp_server: Callable[[web.Application], Any]) -> DidHost:
    """A loopback PLC directory and did:web host, over a real socket, with no documents yet."""
    host = DidHost()
    server = await aiohttp_server(host.app())
    host.host = f"{server.host}:{server.port}"
    host.url = str(server.make_url("")).rstrip("/")
    return host


@pytest.fixture
def jwt_env(did_host: DidHost) -> dict[str, str]:
    """Settings overrides that turn service auth on, resolving DIDs through ``did_host``."""
    return {
        "SIDECAR_SERVICE_DID": SERVICE_DID,
        "SIDECAR_SERVICE_ENDPOINT": "https://sidecar.example.com",
        "SIDECAR_PLC_URL": did_host.url,
        "SIDECAR_DID_WEB_ALLOW_HTTP_LOOPBACK": "1",
    }


@pytest.fixture
async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client session, as open_sidecar gives the DID resolver."""
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def alice(did_host: DidHost) -> Issuer:
    """A did:plc account with a secp256k1 key, registered at the loopback PLC directory."""
    issuer = Issuer(new_plc_did(), KeyPair.generate(ES256K))
    did_host.documents[issuer.did] = issuer.document()
    return issuer
