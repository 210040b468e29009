"""Service proxying end to end: a client calls its PDS with ``atproto-proxy``, the PDS
resolves our did.json, mints a JWT for ``<did>#wisp_sidecar`` and forwards the call.

Real sockets throughout: the sidecar's XRPC listener, the PDS stand-in, the
loopback PLC directory, and Redis.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from aiohttp import web
from atproto_fakes import Issuer, ProxyingPds, new_plc_did, web_did
from support import CREATE, LIST, ROTATE, parsed

from harness import run_command, sidecar_env
from sidecar.app import create_xrpc_app
from sidecar.storage.embedded import free_port

if TYPE_CHECKING:
    from pathlib import Path

    from support import SidecarFactory

    from sidecar.app import Sidecar

ServerFactory = Callable[..., Any]


@dataclass
class Deployment:
    """A did:web sidecar listening on loopback, and what it answers to."""

    sidecar: Sidecar
    did: str
    endpoint: str


@pytest.fixture
async def deployment(
    make_sidecar: SidecarFactory, jwt_env: dict[str, str], aiohttp_server: ServerFactory
) -> Deployment:
    """A sidecar whose service DID is the did:web of its own loopback XRPC listener."""
    port = free_port()
    did = web_did(f"127.0.0.1:{port}")
    endpoint = f"http://127.0.0.1:{port}"
    sidecar = await make_sidecar(
        **{**jwt_env, "SIDECAR_SERVICE_DID": did, "SIDECAR_SERVICE_ENDPOINT": endpoint}
    )
    await aiohttp_server(create_xrpc_app(sidecar), port=port)
    return Deployment(sidecar, did, endpoint)


@pytest.fixture
async def session() -> Any:
    """A plain HTTP client session, for the client and for the PDS stand-in."""
    async with aiohttp.ClientSession() as opened:
        yield opened


@pytest.fixture
async def pds(alice: Issuer, session: aiohttp.ClientSession, aiohttp_server: ServerFactory) -> Any:
    """Alice's PDS, proxying as the reference one does, on a real socket; yields (pds, url)."""
    standin = ProxyingPds(alice, session)
    server = await aiohttp_server(standin.app())
    return standin, str(server.make_url("")).rstrip("/")


def claims_of(token: str) -> dict[str, Any]:
    """The payload of ``token``, decoded without any check."""
    payload = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    return decoded


def counted(sidecar: Sidecar, reason: str) -> float:
    """How many auth failures of ``reason`` the sidecar counted."""
    value = sidecar.metrics.registry.get_sample_value(
        "wisp_sidecar_auth_failures_total", {"reason": reason}
    )
    return value or 0.0


async def through_pds(
    session: aiohttp.ClientSession,
    pds: tuple[ProxyingPds, str],
    proxy_to: str,
    nsid: str,
    body: Any = None,
) -> tuple[int, Any]:
    """Call ``nsid`` on the PDS as the client would, with ``atproto-proxy: <proxy_to>``."""
    standin, url = pds
    headers = {"Authorization": f"Bearer {standin.access_token}", "atproto-proxy": proxy_to}
    method = "GET" if nsid == LIST else "POST"
    async with session.request(method, f"{url}/xrpc/{nsid}", headers=headers, json=body) as answer:
        return answer.status, await answer.json()


async def direct(
    session: aiohttp.ClientSession, endpoint: str, token: str, nsid: str = LIST
) -> tuple[int, Any]:
    """Call ``nsid`` on the sidecar's endpoint directly with ``token``."""
    async with session.get(
        f"{endpoint}/xrpc/{nsid}", headers={"Authorization": f"Bearer {token}"}
    ) as answer:
        return answer.status, await answer.json()


# The DID document


async def test_did_web_sidecar_serves_its_did_document(
    deployment: Deployment, session: aiohttp.ClientSession
) -> None:
    """GET /.well-known/did.json names the DID and one #wisp_sidecar entry with the endpoint."""
    async with session.get(f"{deployment.endpoint}/.well-known/did.json") as answer:
        assert answer.status == 200
        assert answer.content_type == "application/json"
        document = await answer.json()
    assert document == {
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": deployment.did,
        "service": [
            {"id": "#wisp_sidecar", "type": "WispSidecar", "serviceEndpoint": deployment.endpoint}
        ],
    }


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "HEAD"])
async def test_other_verbs_on_the_did_document_get_the_json_405(
    deployment: Deployment, session: aiohttp.ClientSession, method: str
) -> None:
    """A verb other than GET on the document's path is 405 with the JSON error shape."""
    async with session.request(method, f"{deployment.endpoint}/.well-known/did.json") as answer:
        assert answer.status == 405
        assert answer.headers["Allow"] == "GET"
        if method != "HEAD":
            assert await answer.json() == {
                "error": "InvalidRequest",
                "message": "Method not allowed",
            }


async def test_service_id_and_type_settings_shape_the_entry(
    make_sidecar: SidecarFactory,
    jwt_env: dict[str, str],
    aiohttp_client: Callable[[web.Application], Any],
) -> None:
    """SIDECAR_SERVICE_ID and SIDECAR_SERVICE_TYPE are what the service entry announces."""
    sidecar = await make_sidecar(
        **jwt_env, SIDECAR_SERVICE_ID="wisp_sidecar_eu", SIDECAR_SERVICE_TYPE="WispSidecarEu"
    )
    client = await aiohttp_client(create_xrpc_app(sidecar))
    async with client.get("/.well-known/did.json") as answer:
        document = await answer.json()
    assert document["service"] == [
        {
            "id": "#wisp_sidecar_eu",
            "type": "WispSidecarEu",
            "serviceEndpoint": "https://sidecar.example.com",
        }
    ]


async def test_other_did_methods_serve_no_document(
    make_sidecar: SidecarFactory,
    jwt_env: dict[str, str],
    aiohttp_client: Callable[[web.Application], Any],
) -> None:
    """A did:plc sidecar publishes its entry at the PLC directory: the path is a JSON 404."""
    sidecar = await make_sidecar(**{**jwt_env, "SIDECAR_SERVICE_DID": new_plc_did()})
    client = await aiohttp_client(create_xrpc_app(sidecar))
    async with client.get("/.well-known/did.json") as answer:
        assert answer.status == 404
        assert (await answer.json())["error"] == "NotFound"


# Through the PDS


async def test_a_proxied_call_works_end_to_end(
    deployment: Deployment,
    pds: tuple[ProxyingPds, str],
    session: aiohttp.ClientSession,
    alice: Issuer,
) -> None:
    """Through the PDS, with aud <did>#wisp_sidecar, Alice creates, lists and rotates a secret."""
    proxy_to = f"{deployment.did}#wisp_sidecar"
    status, created = await through_pds(session, pds, proxy_to, CREATE, {"name": "orders"})
    assert status == 200, created
    assert created["token"].startswith("wsk_")
    status, listed = await through_pds(session, pds, proxy_to, LIST)
    assert (status, [s["name"] for s in listed["secrets"]]) == (200, ["orders"])
    status, rotated = await through_pds(session, pds, proxy_to, ROTATE, {"name": "orders"})
    assert status == 200, rotated
    assert rotated["token"] != created["token"]
    standin, _ = pds
    audiences = {claims_of(token)["aud"] for token in standin.minted}
    assert audiences == {proxy_to}
    assert counted(deployment.sidecar, "bad_audience") == 0


async def test_a_pds_finds_no_entry_for_another_service_id(
    deployment: Deployment, pds: tuple[ProxyingPds, str], session: aiohttp.ClientSession
) -> None:
    """Asked for <did>#other, the PDS finds no such entry in our document and sends nothing."""
    status, body = await through_pds(session, pds, f"{deployment.did}#other", LIST)
    assert (status, body["message"]) == (400, "could not resolve proxy did service url")
    standin, _ = pds
    assert standin.minted == []


@pytest.mark.parametrize(
    "suffix",
    [
        "#other",
        "#wisp",
        "#wisp_sidecar_2",
        "#wisp_sidecar#wisp_sidecar",
        "#",
        "0#wisp_sidecar",
        "0",
    ],
)
async def test_other_fragments_and_prefix_matches_are_refused(
    deployment: Deployment,
    session: aiohttp.ClientSession,
    alice: Issuer,
    log_lines: list[str],
    suffix: str,
) -> None:
    """A token for another fragment, or whose aud merely starts with ours, is a plain 401."""
    token = alice.token(LIST, aud=f"{deployment.did}{suffix}")
    status, body = await direct(session, deployment.endpoint, token)
    assert (status, body["error"]) == (401, "AuthenticationRequired")
    # The reason is for metrics and logs, never for the caller.
    assert "audience" not in json.dumps(body)
    assert counted(deployment.sidecar, "bad_audience") == 1
    failures = [line for line in parsed(log_lines) if line["event"] == "auth_failed"]
    assert [line["reason"] for line in failures] == ["bad_audience"]
    assert token not in "\n".join(log_lines)


async def test_a_prefix_of_our_did_is_refused(
    deployment: Deployment, session: aiohttp.ClientSession, alice: Issuer
) -> None:
    """A token whose aud is our DID cut short (another port's DID) is a plain 401."""
    token = alice.token(LIST, aud=deployment.did[:-1] + "#wisp_sidecar")
    status, body = await direct(session, deployment.endpoint, token)
    assert (status, body["error"]) == (401, "AuthenticationRequired")
    assert counted(deployment.sidecar, "bad_audience") == 1


async def test_the_bare_did_still_works_beside_the_fragment(
    deployment: Deployment, session: aiohttp.ClientSession, alice: Issuer
) -> None:
    """A getServiceAuth token for the bare DID keeps working when proxying is on."""
    status, body = await direct(session, deployment.endpoint, alice.token(LIST, aud=deployment.did))
    assert (status, body) == (200, {"secrets": []})


async def test_serve_refuses_a_did_web_without_an_endpoint(tmp_path: Path) -> None:
    """serve with a did:web service DID and no endpoint exits 2 with one line naming it."""
    env = sidecar_env(tmp_path, SIDECAR_SERVICE_DID="did:web:sidecar.example.com")
    code, _out, err = await run_command("serve", env=env)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "SIDECAR_SERVICE_ENDPOINT" in lines[0]
