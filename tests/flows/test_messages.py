"""Answers and log lines that say what to do: two 401s, one name rule, the methods a 501
offers, what a sign 404 looked for, and the context of every sign failure."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient
from support import (
    ALICE,
    CREATE,
    DELETE,
    LIST,
    ROTATE,
    AiohttpClient,
    Keys,
    SidecarFactory,
    bearer,
    call,
    parsed,
    sign_body,
)

from sidecar.app import create_sign_app
from sidecar.crypto import encode_kek, generate_kek, parse_kek
from sidecar.names import NAME_RULE

Client = TestClient[Any, Any]
BODY = b'{"event":"push"}'
NO_CREDENTIAL = (
    "Authentication required: no credential was sent; "
    "send it as 'Authorization: Bearer <credential>'"
)
NOT_RECOGNISED = "Authentication failed: the credential was not recognised"


async def test_xrpc_tells_a_missing_credential_from_an_unrecognised_one(
    xrpc: Client, keys: Keys
) -> None:
    """No credential and a wrong one get two different 401 messages, the second saying no more."""
    assert await call(xrpc, LIST, None, method="GET") == (
        401,
        {"error": "AuthenticationRequired", "message": NO_CREDENTIAL},
    )
    for wrong in (keys.alice + "x", "Basic abc"):
        async with xrpc.get(f"/xrpc/{LIST}", headers={"Authorization": wrong}) as response:
            assert response.status == 401
            assert await response.json() == {
                "error": "AuthenticationRequired",
                "message": NOT_RECOGNISED,
            }


async def test_the_sign_listener_says_the_same_two_things_and_never_key(
    aiohttp_client: AiohttpClient, make_sidecar: SidecarFactory
) -> None:
    """With a sign token, a missing and a wrong one get the two 401 messages, neither '<key>'."""
    token = "s" * 24
    sign = await aiohttp_client(create_sign_app(await make_sidecar(SIDECAR_SIGN_TOKEN=token)))
    async with sign.post("/v1/sign", params={"did": ALICE, "name": "a"}, data=BODY) as response:
        assert response.status == 401
        assert (await response.json())["message"] == NO_CREDENTIAL
    async with sign.post(
        "/v1/sign", params={"did": ALICE, "name": "a"}, data=BODY, headers=bearer(token + "x")
    ) as response:
        assert response.status == 401
        assert (await response.json())["message"] == NOT_RECOGNISED
    assert "<key>" not in NO_CREDENTIAL + NOT_RECOGNISED


async def test_a_bad_name_gets_the_one_rule_that_applies(xrpc: Client, keys: Keys) -> None:
    """A colon (which record keys allow) and a space get the same message: the name rule."""
    for name in ("a:b", "a b", "x" * 65, ".."):
        status, body = await call(xrpc, CREATE, keys.alice, {"name": name})
        assert (status, body) == (
            400,
            {"error": "InvalidRequest", "message": f"Input/name must be {NAME_RULE}"},
        ), name
    status, body = await call(xrpc, CREATE, keys.alice, {"name": 7})
    assert (status, body["message"]) == (400, "Input/name must be a string, not integer")


async def test_a_name_shaped_like_a_token_is_told_so(xrpc: Client, keys: Keys) -> None:
    """A 'wsk_' name is refused with a message about tokens that does not repeat the name."""
    pasted = "wsk_" + "Q" * 32
    for nsid in (CREATE, ROTATE, DELETE):
        status, body = await call(xrpc, nsid, keys.alice, {"name": pasted})
        assert status == 400
        assert body["message"].startswith(
            "Input/name must not start with 'wsk_', which is how tokens start"
        )
        assert pasted not in body["message"]


async def test_an_unknown_method_lists_the_implemented_ones(xrpc: Client) -> None:
    """A 501 names the NSID asked for and every method this server implements."""
    async with xrpc.post("/xrpc/place.wisp.v2.secret.frobnicate") as response:
        assert response.status == 501
        body = await response.json()
    assert body["error"] == "MethodNotImplemented"
    assert body["message"] == (
        "Method not implemented: place.wisp.v2.secret.frobnicate. "
        f"This server implements: {', '.join(sorted((CREATE, DELETE, LIST, ROTATE)))}"
    )


async def test_a_sign_404_names_the_did_and_the_name(sign: Client) -> None:
    """Signing with a secret that does not exist answers 404 naming the DID and name sought."""
    assert await sign_body(sign, ALICE, "nope", BODY) == (
        404,
        {"error": "NotFound", "message": f"no secret named 'nope' for {ALICE}"},
    )


async def test_sign_failure_lines_carry_did_name_error_and_request_id(
    sign: Client, log_lines: list[str]
) -> None:
    """A failed sign request's log line holds the DID, name, error code and request id."""
    async with sign.post(
        "/v1/sign",
        params={"did": ALICE, "name": "nope"},
        data=BODY,
        headers={"X-Request-Id": "req-404"},
    ) as response:
        assert response.status == 404
        assert response.headers["X-Request-Id"] == "req-404"
    (line,) = [line for line in parsed(log_lines) if line.get("listener") == "sign"]
    assert {k: line.get(k) for k in ("did", "name", "error", "request_id", "status")} == {
        "did": ALICE,
        "name": "nope",
        "error": "NotFound",
        "request_id": "req-404",
        "status": 404,
    }


async def test_an_unopenable_envelope_is_logged_with_its_context_and_counted(
    xrpc: Client,
    keys: Keys,
    kek_text: str,
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    log_lines: list[str],
) -> None:
    """A replica without the KEK that sealed a secret answers 503, logs envelope_unopenable
    with the DID, name, key id and request id, and counts it by reason."""
    assert (await call(xrpc, CREATE, keys.alice, {"name": "orders"}))[0] == 200
    lacking = await make_sidecar(SIDECAR_KEK=encode_kek(generate_kek()))
    sign = await aiohttp_client(create_sign_app(lacking))
    log_lines.clear()
    async with sign.post(
        "/v1/sign",
        params={"did": ALICE, "name": "orders"},
        data=BODY,
        headers={"X-Request-Id": "req-kek"},
    ) as response:
        assert response.status == 503
        assert (await response.json())["error"] == "WebhookSecretEncryptionUnavailable"
    (line,) = [line for line in parsed(log_lines) if line["event"] == "envelope_unopenable"]
    assert {k: line[k] for k in ("did", "name", "kid", "reason", "request_id")} == {
        "did": ALICE,
        "name": "orders",
        "kid": parse_kek(kek_text, setting="test").kid,
        "reason": "unknown_key",
        "request_id": "req-kek",
    }
    registry = lacking.metrics.registry
    sample = "wisp_sidecar_envelopes_unopenable_total"
    assert registry.get_sample_value(sample, {"reason": "unknown_key"}) == 1
    assert registry.get_sample_value(sample, {"reason": "undecryptable"}) == 0


async def test_the_key_ids_are_logged_at_start(
    make_sidecar: SidecarFactory, kek_text: str, log_lines: list[str]
) -> None:
    """Opening a sidecar logs its active key id and its previous ones, never a key."""
    previous = encode_kek(generate_kek())
    await make_sidecar(SIDECAR_KEK_PREVIOUS=previous)
    (line,) = [line for line in parsed(log_lines) if line["event"] == "keys"]
    assert line["active_kid"] == parse_kek(kek_text, setting="t").kid
    assert line["previous_kids"] == [parse_kek(previous, setting="t").kid]
    assert kek_text not in str(log_lines)
    assert previous not in str(log_lines)


async def test_a_batch_item_that_does_not_open_is_logged_under_the_answers_request_id(
    xrpc: Client,
    keys: Keys,
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    log_lines: list[str],
) -> None:
    """In a batch, an item whose envelope does not open is logged with its DID, name and the
    request id the 200 answer carries, and each item gets its own error."""
    assert (await call(xrpc, CREATE, keys.alice, {"name": "sealed"}))[0] == 200
    lacking = await make_sidecar(SIDECAR_KEK=encode_kek(generate_kek()))
    sign = await aiohttp_client(create_sign_app(lacking))
    items = [
        {"did": ALICE, "name": "sealed", "body_b64": "e30="},
        {"did": ALICE, "name": "absent", "body_b64": "e30="},
    ]
    log_lines.clear()
    async with sign.post("/v1/sign/batch", json={"items": items}) as response:
        assert response.status == 200
        rid = response.headers["X-Request-Id"]
        results = (await response.json())["results"]
    assert [result.get("error") for result in results] == [
        "WebhookSecretEncryptionUnavailable",
        "NotFound",
    ]
    (line,) = [line for line in parsed(log_lines) if line["event"] == "envelope_unopenable"]
    assert (line["did"], line["name"], line["request_id"]) == (ALICE, "sealed", rid)
