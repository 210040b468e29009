"""/v1/sign, /v1/sign/batch and /v1/verify on the sign listener, on real Redis."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from standardwebhooks.webhooks import Webhook
from support import (
    ALICE,
    BOB,
    CREATE,
    ROTATE,
    AiohttpClient,
    Keys,
    SidecarFactory,
    call,
    read_round_trips,
    sign_body,
)
from yarl import URL

from sidecar.app import create_sign_app

Client = TestClient[Any, Any]
BODY = b'{"event":"create","rkey":"3k",  "odd":  "spacing"}\n'


@pytest.fixture
async def token(xrpc: Client, keys: Keys) -> str:
    """Alice's current token for the secret 'orders'."""
    status, body = await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    assert status == 200
    result: str = body["token"]
    return result


def hex_hmac(token: str, message: bytes) -> str:
    """The hex HMAC-SHA256 of ``message`` under ``token``."""
    return hmac.new(token.encode(), message, hashlib.sha256).hexdigest()


async def test_wisp_signature_is_hmac_of_the_exact_body(sign: Client, token: str) -> None:
    """The default scheme answers X-Webhook-Signature over the bytes as sent, and the version."""
    status, answer = await sign_body(sign, ALICE, "orders", BODY)
    assert status == 200, answer
    assert answer == {
        "headers": {"X-Webhook-Signature": "sha256=" + hex_hmac(token, BODY)},
        "name": "orders",
        "version": 1,
    }


async def test_github_signature_matches_plain_hmac(sign: Client, token: str) -> None:
    """github answers X-Hub-Signature-256 that a receiver recomputes with hmac."""
    status, answer = await sign_body(sign, ALICE, "orders", BODY, scheme="github")
    assert status == 200
    assert answer["headers"] == {"X-Hub-Signature-256": "sha256=" + hex_hmac(token, BODY)}


async def test_stripe_signature_matches_plain_hmac(sign: Client, token: str) -> None:
    """stripe signs '{ts}.{body}' and answers t= and v1= in Webhook-Signature."""
    status, answer = await sign_body(
        sign, ALICE, "orders", BODY, scheme="stripe", timestamp="1700000000"
    )
    assert status == 200
    expected = hex_hmac(token, b"1700000000." + BODY)
    assert answer["headers"] == {"Webhook-Signature": f"t=1700000000,v1={expected}"}


async def test_standard_signature_verifies_with_the_standardwebhooks_package(
    sign: Client, token: str
) -> None:
    """The standardwebhooks library accepts our headers with secret whsec_ + base64(token)."""
    before = int(time.time())
    status, answer = await sign_body(sign, ALICE, "orders", BODY, scheme="standard")
    assert status == 200
    headers = answer["headers"]
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"].startswith("msg_")
    # Stamped with the time of the request: not before it was sent, not after the answer.
    assert before <= int(headers["webhook-timestamp"]) <= int(time.time())
    receiver = Webhook("whsec_" + base64.b64encode(token.encode()).decode())
    receiver.verify(BODY.decode(), headers)
    with pytest.raises(Exception, match=r"(?i)signature"):
        receiver.verify(BODY.decode() + " ", headers)


async def test_standard_uses_the_given_id_and_timestamp(sign: Client, token: str) -> None:
    """standard takes id= and timestamp= as given and signs '{id}.{ts}.{body}'."""
    status, answer = await sign_body(
        sign, ALICE, "orders", BODY, scheme="standard", id="msg_42", timestamp="1700000000"
    )
    assert status == 200
    mac = hmac.new(token.encode(), b"msg_42.1700000000." + BODY, hashlib.sha256).digest()
    assert answer["headers"] == {
        "webhook-id": "msg_42",
        "webhook-timestamp": "1700000000",
        "webhook-signature": "v1," + base64.b64encode(mac).decode(),
    }


async def test_signatures_use_the_rotated_token_and_version(
    sign: Client, xrpc: Client, keys: Keys, token: str
) -> None:
    """After a rotate, sign answers with the new token and version 2."""
    _, rotated = await call(xrpc, ROTATE, keys.alice, {"name": "orders"})
    status, answer = await sign_body(sign, ALICE, "orders", BODY)
    assert status == 200
    assert answer["version"] == 2
    assert answer["headers"]["X-Webhook-Signature"] == "sha256=" + hex_hmac(rotated["token"], BODY)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"name": "orders"}, "did"),
        ({"did": ALICE}, "name"),
        ({"did": "alice", "name": "orders"}, "did"),
        ({"did": ALICE, "name": ".."}, "name"),
        ({"did": ALICE, "name": "orders", "scheme": "sha1"}, "scheme"),
        ({"did": ALICE, "name": "orders", "scheme": "standard", "id": "a.b"}, "id"),
        ({"did": ALICE, "name": "orders", "scheme": "standard", "timestamp": "1.5"}, "timestamp"),
        ({"did": ALICE, "name": "orders", "scheme": "stripe", "timestamp": "-1"}, "timestamp"),
        ({"did": ALICE, "name": "orders", "extra": "1"}, "unknown parameter"),
    ],
)
async def test_bad_parameters_are_400(
    sign: Client, token: str, params: dict[str, str], fragment: str
) -> None:
    """Missing or malformed did, name, scheme, id or timestamp is 400 InvalidRequest."""
    async with sign.post("/v1/sign", params=params, data=BODY) as response:
        assert response.status == 400
        answer = await response.json()
    assert answer["error"] == "InvalidRequest"
    assert fragment in answer["message"]


async def test_a_query_means_the_same_however_it_is_encoded_and_repeated(
    sign: Client, token: str
) -> None:
    """Parameters are read percent-decoded, and a refused query is refused every time."""
    encoded = "did=" + ALICE.replace(":", "%3A") + "&n%61me=orde%72s&scheme=github"
    for _ in range(2):
        async with sign.post(URL("/v1/sign?" + encoded, encoded=True), data=BODY) as response:
            assert response.status == 200
            answer = await response.json()
        assert answer["headers"] == {"X-Hub-Signature-256": "sha256=" + hex_hmac(token, BODY)}
    for _ in range(2):
        async with sign.post(
            URL("/v1/sign?" + encoded + "&did=x", encoded=True), data=BODY
        ) as response:
            assert response.status == 400
            assert "more than once" in (await response.json())["message"]


@pytest.mark.parametrize(("did", "name"), [(ALICE, "missing"), (BOB, "orders")])
async def test_unknown_secret_is_404(sign: Client, token: str, did: str, name: str) -> None:
    """A name the owner does not have (including another owner's) is 404 and signs nothing."""
    status, answer = await sign_body(sign, did, name, BODY)
    assert status == 404
    assert answer["error"] == "NotFound"
    assert "headers" not in answer


async def test_body_over_the_limit_is_413(
    aiohttp_client: AiohttpClient, make_sidecar: SidecarFactory, xrpc: Client, keys: Keys
) -> None:
    """A payload over SIDECAR_SIGN_MAX_BYTES is 413; one of exactly the limit is signed."""
    await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    client = await aiohttp_client(
        create_sign_app(await make_sidecar(SIDECAR_SIGN_MAX_BYTES="1024"))
    )
    assert (await sign_body(client, ALICE, "orders", b"x" * 1024))[0] == 200
    status, answer = await sign_body(client, ALICE, "orders", b"x" * 1025)
    assert (status, answer["error"]) == (413, "PayloadTooLarge")


async def pieces(body: bytes, size: int) -> AsyncIterator[bytes]:
    """``body`` in chunks of ``size`` bytes, to send as a chunked request."""
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.mark.parametrize(("length", "status"), [(1024, 200), (1025, 413)])
async def test_a_chunked_body_is_signed_whole_or_refused_over_the_limit(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    xrpc: Client,
    keys: Keys,
    length: int,
    status: int,
) -> None:
    """Without a Content-Length the limit holds on what arrives, and all of it is signed."""
    _, created = await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    client = await aiohttp_client(
        create_sign_app(await make_sidecar(SIDECAR_SIGN_MAX_BYTES="1024"))
    )
    body = bytes(range(256)) * 5
    params = {"did": ALICE, "name": "orders"}
    async with client.post("/v1/sign", params=params, data=pieces(body[:length], 300)) as response:
        assert response.request_info.headers.get("Transfer-Encoding") == "chunked"
        answer = await response.json()
        assert response.status == status
    if status == 200:
        expected = "sha256=" + hex_hmac(created["token"], body[:length])
        assert answer["headers"]["X-Webhook-Signature"] == expected
    else:
        assert answer["error"] == "PayloadTooLarge"


async def test_a_body_sent_after_100_continue_is_signed_whole(sign: Client, token: str) -> None:
    """With Expect: 100-continue the body comes only after the handler has started."""
    body = bytes(range(256)) * 8
    params = {"did": ALICE, "name": "orders"}
    async with sign.post("/v1/sign", params=params, data=body, expect100=True) as response:
        assert response.request_info.headers.get("Expect") == "100-continue"
        assert response.status == 200
        answer = await response.json()
    assert answer["headers"]["X-Webhook-Signature"] == "sha256=" + hex_hmac(token, body)


async def test_sign_token_is_required_when_configured(
    aiohttp_client: AiohttpClient, make_sidecar: SidecarFactory, xrpc: Client, keys: Keys
) -> None:
    """With SIDECAR_SIGN_TOKEN set, requests without that bearer are 401 and signed only with it."""
    await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    secret = "sign-token-0123456789"
    client = await aiohttp_client(create_sign_app(await make_sidecar(SIDECAR_SIGN_TOKEN=secret)))
    params = {"did": ALICE, "name": "orders"}
    for headers in (
        {},
        {"Authorization": "Bearer wrong-token-0123456789"},
        {"Authorization": secret},
    ):
        async with client.post("/v1/sign", params=params, data=BODY, headers=headers) as response:
            assert response.status == 401
            answer = await response.json()
            assert answer["error"] == "AuthenticationRequired"
            assert secret not in str(answer)
    auth = {"Authorization": f"Bearer {secret}"}
    async with client.post("/v1/sign", params=params, data=BODY, headers=auth) as response:
        assert response.status == 200


async def test_envelope_without_its_kek_is_503_and_signs_nothing(
    aiohttp_client: AiohttpClient, make_sidecar: SidecarFactory, xrpc: Client, keys: Keys
) -> None:
    """A replica whose keyring lacks the sealing KEK answers 503, never a signature."""
    await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    from sidecar.crypto import encode_kek, generate_kek

    stranger = await make_sidecar(SIDECAR_KEK=encode_kek(generate_kek()))
    client = await aiohttp_client(create_sign_app(stranger))
    status, answer = await sign_body(client, ALICE, "orders", BODY)
    assert (status, answer["error"]) == (503, "WebhookSecretEncryptionUnavailable")
    assert "headers" not in answer


# --- batch -----------------------------------------------------------------


async def test_batch_answers_in_order_with_errors_per_item(
    sign: Client, xrpc: Client, keys: Keys, token: str
) -> None:
    """A batch answers each item in order; bad items get their own error and do not fail others."""
    _, bob = await call(xrpc, CREATE, keys.bob, {"name": "hooks"})
    b64 = base64.b64encode(BODY).decode()
    items = [
        {"did": ALICE, "name": "orders", "body_b64": b64},
        {"did": BOB, "name": "hooks", "scheme": "github", "body_b64": b64},
        {"did": ALICE, "name": "missing", "body_b64": b64},
        {"did": ALICE, "name": "orders", "body_b64": "not base64!"},
        {"did": ALICE, "name": "orders", "scheme": "md5", "body_b64": b64},
        "not an object",
        {
            "did": ALICE,
            "name": "orders",
            "scheme": "stripe",
            "timestamp": 1700000000,
            "body_b64": b64,
        },
    ]
    async with sign.post("/v1/sign/batch", json={"items": items}) as response:
        assert response.status == 200
        results = (await response.json())["results"]
    assert len(results) == len(items)
    assert results[0]["headers"] == {"X-Webhook-Signature": "sha256=" + hex_hmac(token, BODY)}
    assert results[1]["headers"] == {
        "X-Hub-Signature-256": "sha256=" + hex_hmac(bob["token"], BODY)
    }
    assert [r.get("error") for r in results[2:6]] == [
        "NotFound",
        "InvalidRequest",
        "InvalidRequest",
        "InvalidRequest",
    ]
    assert all(set(r) == {"error", "message"} for r in results[2:6])
    stripe = hex_hmac(token, b"1700000000." + BODY)
    assert results[6]["headers"] == {"Webhook-Signature": f"t=1700000000,v1={stripe}"}


async def test_an_item_like_the_one_before_is_checked_as_strictly(
    sign: Client, xrpc: Client, keys: Keys, token: str
) -> None:
    """Items that repeat the fields of the item before them (the batch's shortcut) are
    refused all the same when their own body, an extra field, or a timestamp that only
    equals the one before (True == 1, 1.0 == 1) is wrong; and items interleaving two
    secrets are each signed with their own."""
    _, bob = await call(xrpc, CREATE, keys.bob, {"name": "hooks"})
    b64 = base64.b64encode(BODY).decode()
    alice = {"did": ALICE, "name": "orders"}
    stamped = {**alice, "scheme": "stripe"}
    items = [
        {**alice, "body_b64": b64},
        {**alice, "body_b64": "not base64!"},
        {**alice, "body_b64": b64, "extra": 1},
        {"did": BOB, "name": "hooks", "body_b64": b64},
        {**alice, "body_b64": b64},
        {**stamped, "timestamp": 1, "body_b64": b64},
        {**stamped, "timestamp": True, "body_b64": b64},
        {**stamped, "timestamp": 1.0, "body_b64": b64},
        {**alice, "body_b64": 5},
        {**alice, "body_b64": b64},
    ]
    async with sign.post("/v1/sign/batch", json={"items": items}) as response:
        assert response.status == 200
        results = (await response.json())["results"]
    ours = {"X-Webhook-Signature": "sha256=" + hex_hmac(token, BODY)}
    assert [r.get("headers") for r in results] == [
        ours,
        None,
        None,
        {"X-Webhook-Signature": "sha256=" + hex_hmac(bob["token"], BODY)},
        ours,
        {"Webhook-Signature": f"t=1,v1={hex_hmac(token, b'1.' + BODY)}"},
        None,
        None,
        None,
        ours,
    ]
    assert [r.get("message") for r in results if "error" in r] == [
        "body_b64 is not valid base64",
        "unknown field; expected only body_b64, did, id, name, scheme, timestamp",
        "timestamp must be unix seconds",
        "timestamp must be unix seconds",
        "body_b64 is required and must be a base64 string",
    ]


@pytest.mark.parametrize("encoded", ["YQ", "YQ==YQ==", "Y Q==", "YQ==\n", "é", "YQ=?", 5])
async def test_a_batch_body_must_be_strict_base64(sign: Client, token: str, encoded: Any) -> None:
    """Missing padding, data after padding, whitespace, non-ASCII, a non-string: the item is 400."""
    item = {"did": ALICE, "name": "orders", "body_b64": encoded}
    async with sign.post("/v1/sign/batch", json={"items": [item]}) as response:
        assert response.status == 200
        (result,) = (await response.json())["results"]
    assert result["error"] == "InvalidRequest"
    assert "body_b64" in result["message"]


@pytest.mark.parametrize("raw", [b"not json", b'{"items": [\xff]}', b"[" * 5000, b'{"items": NaN}'])
async def test_a_batch_that_is_not_json_is_400(sign: Client, raw: bytes) -> None:
    """Not JSON, invalid UTF-8, nesting deeper than any batch, or NaN: 400 as a whole."""
    headers = {"Content-Type": "application/json"}
    async with sign.post("/v1/sign/batch", data=raw, headers=headers) as response:
        assert response.status == 400
        answer = await response.json()
    assert answer == {"error": "InvalidRequest", "message": "request body is not valid JSON"}


@pytest.mark.parametrize(
    "document",
    [[], {"items": "x"}, {"things": []}, {"items": [{}] * 1001}],
)
async def test_malformed_batch_is_400(sign: Client, document: Any) -> None:
    """A batch that is not {"items": [...]} of at most 1000 items is 400 as a whole."""
    async with sign.post("/v1/sign/batch", json=document) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "InvalidRequest"


async def test_batch_of_1000_items_is_read_in_one_round_trip(
    sidecar: Any, sign: Client, token: str
) -> None:
    """A full batch is signed, and all its envelopes are read in a single Redis round trip."""
    b64 = base64.b64encode(BODY).decode()
    items = [{"did": ALICE, "name": "orders", "body_b64": b64}] * 1000
    before = read_round_trips(sidecar)
    async with sign.post("/v1/sign/batch", json={"items": items}) as response:
        assert response.status == 200
        results = (await response.json())["results"]
    assert len(results) == 1000
    assert all(r["version"] == 1 for r in results)
    assert read_round_trips(sidecar) == before + 1


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "chunked"])
async def test_a_batch_is_signed_alike_however_its_body_arrives(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    xrpc: Client,
    keys: Keys,
    chunked: bool,
) -> None:
    """A batch that came whole with its head and one still arriving in chunks when the
    handler starts are signed alike up to SIDECAR_SIGN_BATCH_MAX_BYTES; a byte more is 413."""
    _, created = await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    bodies = [bytes([n]) * 700 for n in range(8)]
    items = [
        {"did": ALICE, "name": "orders", "body_b64": base64.b64encode(body).decode()}
        for body in bodies
    ]
    document = json.dumps({"items": items}).encode()
    client = await aiohttp_client(
        create_sign_app(await make_sidecar(SIDECAR_SIGN_BATCH_MAX_BYTES=str(len(document))))
    )

    async def post(raw: bytes) -> tuple[int, dict[str, Any]]:
        data = pieces(raw, 1000) if chunked else raw
        async with client.post("/v1/sign/batch", data=data) as response:
            sent_chunked = response.request_info.headers.get("Transfer-Encoding") == "chunked"
            assert sent_chunked == chunked
            answer: dict[str, Any] = await response.json()
            return response.status, answer

    status, answer = await post(document)
    assert status == 200
    assert [r["headers"]["X-Webhook-Signature"] for r in answer["results"]] == [
        "sha256=" + hex_hmac(created["token"], body) for body in bodies
    ]
    status, answer = await post(document + b" ")
    assert (status, answer["error"]) == (413, "PayloadTooLarge")


# --- verify ----------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["wisp", "standard", "github", "stripe"])
async def test_verify_accepts_what_sign_made(sign: Client, token: str, scheme: str) -> None:
    """verify says ok for headers that sign produced, for every scheme."""
    _, answer = await sign_body(sign, ALICE, "orders", BODY, scheme=scheme)
    params = {"did": ALICE, "name": "orders", "scheme": scheme}
    async with sign.post(
        "/v1/verify", params=params, data=BODY, headers=answer["headers"]
    ) as response:
        assert response.status == 200
        assert await response.json() == {"valid": True, "reason": "ok"}


@pytest.mark.parametrize(
    ("scheme", "headers", "reason"),
    [
        ("wisp", {}, "missing_header"),
        ("wisp", {"X-Webhook-Signature": "sha1=abc"}, "malformed_header"),
        ("wisp", {"X-Webhook-Signature": "sha256=" + "0" * 64}, "mismatch"),
        ("stripe", {"Webhook-Signature": "t=1000,v1=" + "0" * 64}, "timestamp_out_of_tolerance"),
        (
            "standard",
            {"webhook-id": "msg_1", "webhook-timestamp": "1000", "webhook-signature": "v1,AAAA"},
            "malformed_header",
        ),
    ],
)
async def test_verify_names_the_failed_check(
    sign: Client, token: str, scheme: str, headers: dict[str, str], reason: str
) -> None:
    """verify answers which check failed, and nothing about the token."""
    params = {"did": ALICE, "name": "orders", "scheme": scheme}
    async with sign.post("/v1/verify", params=params, data=BODY, headers=headers) as response:
        assert response.status == 200
        answer = await response.json()
    assert answer == {"valid": False, "reason": reason}


async def test_verify_of_an_unknown_secret_says_so(sign: Client, token: str) -> None:
    """verify for a name the owner does not have answers unknown_secret."""
    params = {"did": BOB, "name": "orders"}
    headers = {"X-Webhook-Signature": "sha256=" + hex_hmac(token, BODY)}
    async with sign.post("/v1/verify", params=params, data=BODY, headers=headers) as response:
        assert await response.json() == {"valid": False, "reason": "unknown_secret"}


async def test_verify_rejects_the_old_token_after_rotate(
    sign: Client, xrpc: Client, keys: Keys, token: str
) -> None:
    """A signature made with the pre-rotation token is a mismatch once rotate has returned."""
    old = {"X-Webhook-Signature": "sha256=" + hex_hmac(token, BODY)}
    await call(xrpc, ROTATE, keys.alice, {"name": "orders"})
    params = {"did": ALICE, "name": "orders"}
    async with sign.post("/v1/verify", params=params, data=BODY, headers=old) as response:
        assert await response.json() == {"valid": False, "reason": "mismatch"}
