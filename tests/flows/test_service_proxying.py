"""Service proxying end to end: a client calls its PDS with ``atproto-proxy``, the PDS
resolves our did.json, mints a JWT for our DID and forwards the call to ``#wisp_sidecar``'s
endpoint. (``tests/e2e`` does the same with the real reference PDS.)

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
from atproto_fakes import DidHost, Issuer, ProxyingPds, new_plc_did, web_did
from support import CREATE, LIST, ROTATE, parsed

from harness import run_command, sidecar_env, start_serve
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
    """Through the PDS, whose tokens carry the bare DID as aud, Alice creates, lists and
    rotates a secret."""
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
    assert audiences == {deployment.did}
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


@pytest.mark.parametrize("fragment", ["", "#wisp_sidecar"])
async def test_the_bare_did_and_our_fragment_are_both_accepted(
    deployment: Deployment, session: aiohttp.ClientSession, alice: Issuer, fragment: str
) -> None:
    """aud may be the bare DID (what PDSes send) or the DID with our service id as fragment."""
    token = alice.token(LIST, aud=deployment.did + fragment)
    status, body = await direct(session, deployment.endpoint, token)
    assert (status, body) == (200, {"secrets": []})


async def test_serve_starts_with_a_did_web_and_no_endpoint(
    tmp_path: Path, env: dict[str, str], did_host: DidHost, alice: Issuer
) -> None:
    """A did:web service DID without an endpoint starts (as it did before proxying), serves no
    did.json, takes a direct service JWT, and doctor says where the document must come from."""
    served_env = (
        sidecar_env(tmp_path / "data")
        | env
        | {
            "SIDECAR_SERVICE_DID": "did:web:sidecar.example.com",
            "SIDECAR_PLC_URL": did_host.url,
            "SIDECAR_DID_WEB_ALLOW_HTTP_LOOPBACK": "1",
        }
    )
    served = await start_serve(served_env)
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{served.xrpc}/.well-known/did.json") as answer:
                assert (answer.status, (await answer.json())["error"]) == (404, "NotFound")
            status, body = await direct(
                session, served.xrpc, alice.token(LIST, aud="did:web:sidecar.example.com")
            )
        assert (status, body) == (200, {"secrets": []})
        status, out, err = await run_command("doctor", env=served_env)
    finally:
        assert await served.terminate() == 0
    assert status == 0, out + err
    proxying = [line for line in out.splitlines() if " proxying: " in line]
    assert len(proxying) == 1, out
    assert proxying[0].startswith("warn proxying: direct service-JWT calls only")
    assert "https://sidecar.example.com/.well-known/did.json" in proxying[0]
    assert "SIDECAR_SERVICE_ENDPOINT" in proxying[0]
