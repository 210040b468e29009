"""End to end against the real reference PDS (``@atproto/pds``, in development mode, with an
in-memory ``@did-plc/server``), and the documented client examples run as written.

Accounts live on that PDS; the clients call it with ``atproto-proxy: <our DID>#wisp_sidecar``;
it resolves our did.json, mints its own service JWTs and forwards the calls. The sidecar
is a real ``python -m sidecar serve`` behind a pass-through "ingress" on loopback that
keeps the tokens it forwards, so that what the PDS sends can be looked at. Skipped, saying
how to install them, when node or npm is missing.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import shutil
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from reference_pds import ReferencePds, install, missing_node, node_env
from support import CREATE, DELETE, LIST, ROTATE, database_of_its_own

from harness import ServeProcess, sidecar_env, start_serve
from sidecar.crypto import encode_kek, generate_kek
from sidecar.storage.embedded import free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
MISSING = missing_node()

pytestmark = [
    pytest.mark.skipif(MISSING is not None, reason=f"end-to-end tests: {MISSING}"),
    pytest.mark.asyncio(loop_scope="module"),
]


@dataclass
class Account:
    """An account created on the reference PDS: handle, password, DID and session token."""

    handle: str
    password: str
    did: str
    access_jwt: str


@dataclass
class Ingress:
    """A pass-through in front of the sidecar's XRPC port that keeps each bearer token."""

    upstream: str
    session: aiohttp.ClientSession
    tokens: list[str] = field(default_factory=list)

    async def forward(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        if request.path.startswith("/xrpc/") and auth.startswith("Bearer "):
            self.tokens.append(auth.removeprefix("Bearer "))
        headers = {
            name: value
            for name, value in request.headers.items()
            if name.lower() in ("authorization", "content-type")
        }
        async with self.session.request(
            request.method,
            f"{self.upstream}{request.path_qs}",
            headers=headers,
            data=await request.read(),
        ) as answer:
            return web.Response(
                status=answer.status,
                body=await answer.read(),
                headers={"Content-Type": answer.headers.get("Content-Type", "application/json")},
            )


@dataclass
class Stack:
    """The reference PDS, the served sidecar, its ingress, and the sidecar's service DID."""

    pds: ReferencePds
    sidecar: ServeProcess
    ingress: Ingress
    endpoint: str
    did: str
    modules: Path
    session: aiohttp.ClientSession

    async def account(self, name: str) -> Account:
        """A new account ``<name>-<random>.test`` on the PDS."""
        handle = f"{name}-{secrets.token_hex(3)}.test"
        password = secrets.token_urlsafe(12)
        body = {"handle": handle, "password": password, "email": f"{handle}@example.com"}
        async with self.session.post(
            f"{self.pds.url}/xrpc/com.atproto.server.createAccount", json=body
        ) as answer:
            created = await answer.json()
            assert answer.status == 200, created
        return Account(handle, password, created["did"], created["accessJwt"])

    async def proxied(self, account: Account, nsid: str, body: Any = None) -> tuple[int, Any]:
        """Call ``nsid`` on the account's PDS with ``atproto-proxy`` naming the sidecar."""
        headers = {
            "Authorization": f"Bearer {account.access_jwt}",
            "atproto-proxy": f"{self.did}#wisp_sidecar",
        }
        method = "GET" if nsid == LIST else "POST"
        async with self.session.request(
            method, f"{self.pds.url}/xrpc/{nsid}", headers=headers, json=body
        ) as answer:
            return answer.status, await answer.json()

    async def direct(self, token: str, nsid: str, body: Any = None) -> tuple[int, Any]:
        """Call ``nsid`` on the sidecar itself with the bearer ``token``."""
        method = "GET" if nsid == LIST else "POST"
        async with self.session.request(
            method,
            f"{self.sidecar.xrpc}/xrpc/{nsid}",
            headers={"Authorization": f"Bearer {token}"},
            json=body,
        ) as answer:
            return answer.status, await answer.json()

    async def signature(self, account: Account, name: str, body: bytes) -> str:
        """The wisp signature header the sign API gives for ``body``."""
        async with self.session.post(
            f"{self.sidecar.sign}/v1/sign", params={"did": account.did, "name": name}, data=body
        ) as answer:
            signed = await answer.json()
            assert answer.status == 200, signed
        header: str = signed["headers"]["X-Webhook-Signature"]
        return header


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, redis_server_url: str
) -> AsyncIterator[Stack]:
    """The whole path: PLC directory and PDS, and a served sidecar behind its ingress."""
    modules = install()
    pds = await ReferencePds.start(modules)
    try:
        async with aiohttp.ClientSession() as session:
            port = free_port()
            # The PDS resolves a did:web over plain http only for the host "localhost".
            did = f"did:web:localhost%3A{port}"
            endpoint = f"http://localhost:{port}"
            data = tmp_path_factory.mktemp("e2e-sidecar")
            env = sidecar_env(
                data,
                REDIS_URL=database_of_its_own(redis_server_url),
                SIDECAR_KEK=encode_kek(generate_kek()),
                SIDECAR_SERVICE_DID=did,
                SIDECAR_SERVICE_ENDPOINT=endpoint,
                SIDECAR_PLC_URL=pds.plc,
                SIDECAR_DID_WEB_ALLOW_HTTP_LOOPBACK="1",
            )
            sidecar = await start_serve(env)
            ingress = Ingress(sidecar.xrpc, session)
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", ingress.forward)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            try:
                yield Stack(pds, sidecar, ingress, endpoint, did, modules, session)
            finally:
                await runner.cleanup()
                assert await sidecar.terminate() == 0
    finally:
        await pds.stop()


def claims_of(token: str) -> dict[str, Any]:
    """The payload of a JWT, decoded without any check."""
    payload = token.split(".")[1]
    padded = payload + "=" * (-len(payload) % 4)
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(padded))
    return claims


def wisp_signature(token: str, body: bytes) -> str:
    """The ``X-Webhook-Signature`` a receiver holding ``token`` expects for ``body``."""
    return "sha256=" + hmac.new(token.encode(), body, hashlib.sha256).hexdigest()


async def test_create_list_rotate_and_delete_through_the_pds(stack: Stack) -> None:
    """An account's four calls, proxied by the real PDS, reach the sidecar and answer as it does."""
    alice = await stack.account("alice")
    status, created = await stack.proxied(alice, CREATE, {"name": "orders"})
    assert status == 200, created
    assert (created["name"], created["token"][:4]) == ("orders", "wsk_")
    status, listed = await stack.proxied(alice, LIST)
    assert (status, [entry["name"] for entry in listed["secrets"]]) == (200, ["orders"])
    status, rotated = await stack.proxied(alice, ROTATE, {"name": "orders"})
    assert status == 200, rotated
    assert rotated["token"] not in (created["token"], "")
    status, deleted = await stack.proxied(alice, DELETE, {"name": "orders"})
    assert status == 200, deleted
    assert await stack.proxied(alice, LIST) == (200, {"secrets": []})


async def test_owners_are_separated(stack: Stack) -> None:
    """Each account's DID owns its secrets: another account neither sees nor rotates them."""
    alice, bob = await stack.account("alice"), await stack.account("bob")
    status, _ = await stack.proxied(alice, CREATE, {"name": "orders"})
    assert status == 200
    assert await stack.proxied(bob, LIST) == (200, {"secrets": []})
    status, refused = await stack.proxied(bob, ROTATE, {"name": "orders"})
    assert (status, refused["error"]) == (404, "NotFound")
    status, own = await stack.proxied(bob, CREATE, {"name": "orders"})
    assert status == 200, own
    status, listed = await stack.proxied(alice, LIST)
    assert (status, [entry["name"] for entry in listed["secrets"]]) == (200, ["orders"])


async def test_the_rotated_token_signs_and_the_old_one_does_not(stack: Stack) -> None:
    """After a rotation through the PDS, the sign API signs with the new token only."""
    alice = await stack.account("alice")
    _, created = await stack.proxied(alice, CREATE, {"name": "deploys"})
    body = b'{"event":"push"}'
    assert await stack.signature(alice, "deploys", body) == wisp_signature(created["token"], body)
    status, rotated = await stack.proxied(alice, ROTATE, {"name": "deploys"})
    assert status == 200, rotated
    signed = await stack.signature(alice, "deploys", body)
    assert signed == wisp_signature(rotated["token"], body)
    assert signed != wisp_signature(created["token"], body)


async def test_the_sidecars_400_and_409_pass_through_unchanged(stack: Stack) -> None:
    """A bad name and a name that exists come back from the PDS as the sidecar answered them."""
    alice = await stack.account("alice")
    status, bad = await stack.proxied(alice, CREATE, {"name": "wsk_not-a-name"})
    assert (status, bad["error"]) == (400, "InvalidRequest")
    assert set(bad) == {"error", "message"}
    status, _ = await stack.proxied(alice, CREATE, {"name": "orders"})
    assert status == 200
    status, again = await stack.proxied(alice, CREATE, {"name": "orders"})
    assert (status, again["error"]) == (409, "AlreadyExists")
    assert set(again) == {"error", "message"}


async def test_the_pds_sends_the_bare_service_did_as_aud_and_it_is_accepted(stack: Stack) -> None:
    """The real PDS's proxied token has aud = our bare DID (no #wisp_sidecar), and it works."""
    alice = await stack.account("alice")
    before = len(stack.ingress.tokens)
    assert (await stack.proxied(alice, LIST))[0] == 200
    forwarded = stack.ingress.tokens[before:]
    assert len(forwarded) == 1
    claims = claims_of(forwarded[0])
    assert (claims["aud"], claims["iss"], claims["lxm"]) == (stack.did, alice.did, LIST)
    assert claims["jti"]


async def test_a_pds_token_is_good_for_one_call(stack: Stack) -> None:
    """A token from the PDS's getServiceAuth works once; the same token again is refused."""
    alice = await stack.account("alice")
    async with stack.session.get(
        f"{stack.pds.url}/xrpc/com.atproto.server.getServiceAuth",
        params={"aud": stack.did, "lxm": LIST},
        headers={"Authorization": f"Bearer {alice.access_jwt}"},
    ) as answer:
        token = (await answer.json())["token"]
    assert await stack.direct(token, LIST) == (200, {"secrets": []})
    status, replayed = await stack.direct(token, LIST)
    assert (status, replayed["error"]) == (401, "AuthenticationRequired")


async def test_the_documented_atproto_api_example_runs_as_written(
    stack: Stack, tmp_path: Path
) -> None:
    """docs/examples/create_secret.mjs, unchanged, creates and lists a secret with node."""
    carol = await stack.account("carol")
    shutil.copy(EXAMPLES / "create_secret.mjs", tmp_path / "create_secret.mjs")
    # As its comment says: the packages and lexicons/ beside the script.
    (tmp_path / "node_modules").symlink_to(stack.modules)
    (tmp_path / "lexicons").symlink_to(ROOT / "lexicons")
    out = await run_example(
        [shutil.which("node") or "node", str(tmp_path / "create_secret.mjs")],
        node_env(stack.modules, **example_env(stack, carol)),
    )
    assert_created_and_listed(out)


async def test_the_documented_python_atproto_example_runs_as_written(stack: Stack) -> None:
    """docs/examples/create_secret.py, unchanged, creates and lists a secret with the SDK."""
    dave = await stack.account("dave")
    env = {"PATH": str(Path(sys.executable).parent), **example_env(stack, dave)}
    out = await run_example([sys.executable, str(EXAMPLES / "create_secret.py")], env)
    assert_created_and_listed(out)


def example_env(stack: Stack, account: Account) -> dict[str, str]:
    """The settings both examples read from the environment."""
    return {
        "PDS_URL": stack.pds.url,
        "HANDLE": account.handle,
        "APP_PASSWORD": account.password,
        "SIDECAR_DID": stack.did,
    }


async def run_example(argv: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run an example to its end and return the JSON line it printed."""
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=120)
    assert process.returncode == 0, err.decode()
    printed: dict[str, Any] = json.loads(out)
    return printed


def assert_created_and_listed(printed: dict[str, Any]) -> None:
    """The example created "orders" and then listed it."""
    created, listed = printed["created"], printed["listed"]
    assert (created["name"], created["token"][:4]) == ("orders", "wsk_")
    assert [entry["name"] for entry in listed["secrets"]] == ["orders"]
