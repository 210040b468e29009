"""Every row of the XRPC error table: the right status and name, and nothing changed."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from aiohttp.test_utils import TestClient
from support import CREATE, DELETE, LIST, ROTATE, bearer, call, keyspace_dump

from sidecar.app import create_xrpc_app
from sidecar.wire import ERRORS_BY_TYPE, HTTP_ERROR_NAMES, INTERNAL
from sidecar.xrpc.lexicon import default_lexicon_dir

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    import redis
    from support import AiohttpClient, Keys, SidecarFactory

Client = TestClient[Any, Any]


@pytest.fixture
async def seeded(xrpc: Client, keys: Keys) -> Client:
    """An XRPC client whose owner Alice already has the secret 'orders'."""
    status, _ = await call(xrpc, CREATE, keys.alice, {"name": "orders"})
    assert status == 200
    return xrpc


@pytest.fixture
def unchanged(seeded: Client, raw_redis: redis.Redis) -> Iterator[None]:
    """Fails the test if the keyspace after it differs from the seeded keyspace before it."""
    before = keyspace_dump(raw_redis)
    yield
    assert keyspace_dump(raw_redis) == before


def assert_error(status: int, body: Any, expected_status: int, expected_error: str) -> None:
    """Assert an XRPC error: the expected status, and a body of exactly that error and a message."""
    assert status == expected_status, body
    assert set(body) == {"error", "message"}, body
    assert body["error"] == expected_error
    assert isinstance(body["message"], str)
    assert body["message"]


async def post_raw(
    client: Client, nsid: str, data: bytes, headers: dict[str, str]
) -> tuple[int, Any, Any]:
    """POST ``data`` to ``nsid`` as it is; the status, the decoded body and the headers."""
    async with client.post(f"/xrpc/{nsid}", data=data, headers=headers) as response:
        return response.status, await response.json(), response.headers


# --- 401 -------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Bearer two words",
        "wsa_notevenbearer",
        "Bearer wsa_wrongwrongwrongwrongwrongwrongwrongwrongwro",
    ],
)
@pytest.mark.parametrize("nsid", [CREATE, ROTATE, DELETE])
@pytest.mark.usefixtures("unchanged")
async def test_bad_credentials_are_401_before_anything_else(
    seeded: Client, nsid: str, authorization: str | None
) -> None:
    """Missing, malformed or unknown credentials get 401 + WWW-Authenticate, despite a bad body."""
    headers = {"Content-Type": "text/plain"}
    if authorization is not None:
        headers["Authorization"] = authorization
    status, body, response_headers = await post_raw(seeded, nsid, b"{not json", headers)
    assert_error(status, body, 401, "AuthenticationRequired")
    assert response_headers["WWW-Authenticate"] == "Bearer"


@pytest.mark.usefixtures("unchanged")
async def test_list_without_credentials_is_401(seeded: Client) -> None:
    """The list query refuses an anonymous caller too."""
    status, body = await call(seeded, LIST, None, method="GET")
    assert_error(status, body, 401, "AuthenticationRequired")


@pytest.mark.usefixtures("unchanged")
async def test_oversized_body_without_credentials_is_401(seeded: Client) -> None:
    """Authentication comes before the size check: an anonymous huge body is 401, not 413."""
    status, body, _ = await post_raw(
        seeded, CREATE, b"x" * (200 * 1024), {"Content-Type": "application/json"}
    )
    assert_error(status, body, 401, "AuthenticationRequired")


# --- 400 -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"", "application/json"),
        (b'["orders"]', "application/json"),
        (b'"orders"', "application/json"),
        (b"null", "application/json"),
        (b"\xff\xfe\x00", "application/json"),
        (b"[" * 50_000 + b"]" * 10_000, "application/json"),
        (b'{"name": "orders2"}', "text/plain"),
        (b'{"name": "orders2"}', "application/x-www-form-urlencoded"),
        (b'{"name": "orders2"}', ""),
        (b"{}", "application/json"),
        (b'{"nmae": "orders2"}', "application/json"),
        (b'{"name": null}', "application/json"),
        (b'{"name": 42}', "application/json"),
        (b'{"name": ["orders2"]}', "application/json"),
        (b'{"name": ""}', "application/json"),
        (b'{"name": "."}', "application/json"),
        (b'{"name": ".."}', "application/json"),
        (b'{"name": "' + b"a" * 65 + b'"}', "application/json"),
        ('{"name": "caf\u00e9"}'.encode(), "application/json"),
        (b'{"name": " orders"}', "application/json"),
        (b'{"name": "orders "}', "application/json"),
        (b'{"name": "a/b"}', "application/json"),
        (b'{"name": "a:b"}', "application/json"),
        (b'{"name": "a~b"}', "application/json"),
        (b'{"name": "wsk_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}', "application/json"),
    ],
)
@pytest.mark.parametrize("nsid", [CREATE, ROTATE, DELETE])
@pytest.mark.usefixtures("unchanged")
async def test_bad_input_is_400_invalid_request(
    seeded: Client, keys: Keys, nsid: str, data: bytes, content_type: str
) -> None:
    """Bad JSON, a wrong content type, or a missing or malformed name is 400 and changes nothing."""
    headers = bearer(keys.alice)
    if content_type:
        headers["Content-Type"] = content_type
    status, body, _ = await post_raw(seeded, nsid, data, headers)
    assert_error(status, body, 400, "InvalidRequest")


@pytest.mark.usefixtures("unchanged")
async def test_query_with_a_body_or_unknown_params_is_400(seeded: Client, keys: Keys) -> None:
    """list takes no body and no parameters but its declared limit and cursor."""
    async with seeded.get(
        f"/xrpc/{LIST}", data=b'{"name": "x"}', headers=bearer(keys.alice)
    ) as response:
        assert_error(response.status, await response.json(), 400, "InvalidRequest")
    async with seeded.get(f"/xrpc/{LIST}?offset=5", headers=bearer(keys.alice)) as response:
        assert_error(response.status, await response.json(), 400, "InvalidRequest")


# --- 404, 405, 409, 413, 501 ----------------------------------------------


@pytest.mark.parametrize("nsid", [ROTATE, DELETE])
@pytest.mark.usefixtures("unchanged")
async def test_missing_secret_is_404(seeded: Client, keys: Keys, nsid: str) -> None:
    """rotate and delete of a name the caller does not have are 404 NotFound, and create nothing."""
    status, body = await call(seeded, nsid, keys.alice, {"name": "nope"})
    assert_error(status, body, 404, "NotFound")


@pytest.mark.parametrize("nsid", [ROTATE, DELETE])
@pytest.mark.usefixtures("unchanged")
async def test_another_owners_secret_is_404(seeded: Client, keys: Keys, nsid: str) -> None:
    """Bob touching Alice's 'orders' gets NotFound, exactly as if it did not exist."""
    status, body = await call(seeded, nsid, keys.bob, {"name": "orders"})
    assert_error(status, body, 404, "NotFound")


@pytest.mark.usefixtures("unchanged")
async def test_create_of_an_existing_name_is_409(seeded: Client, keys: Keys) -> None:
    """create of a name the caller has is 409 AlreadyExists and keeps the old token."""
    status, body = await call(seeded, CREATE, keys.alice, {"name": "orders"})
    assert_error(status, body, 409, "AlreadyExists")


@pytest.mark.parametrize(
    ("nsid", "verb", "allow"),
    [
        (CREATE, "GET", "POST"),
        (ROTATE, "PUT", "POST"),
        (DELETE, "DELETE", "POST"),
        (LIST, "POST", "GET"),
    ],
)
@pytest.mark.usefixtures("unchanged")
async def test_wrong_verb_is_405_with_allow(
    seeded: Client, keys: Keys, nsid: str, verb: str, allow: str
) -> None:
    """A procedure called with GET (or a query with POST) is 405 with the right Allow header."""
    async with seeded.request(
        verb, f"/xrpc/{nsid}", json={"name": "orders"}, headers=bearer(keys.alice)
    ) as response:
        assert_error(response.status, await response.json(), 405, "InvalidRequest")
        assert response.headers["Allow"] == allow


@pytest.mark.parametrize("declared", [True, False])
@pytest.mark.usefixtures("unchanged")
async def test_body_over_64_kib_is_413(seeded: Client, keys: Keys, declared: bool) -> None:
    """A body over 64 KiB is 413 PayloadTooLarge, with or without a Content-Length."""
    data = b'{"name": "big", "pad": "' + b"x" * (64 * 1024) + b'"}'
    headers = {**bearer(keys.alice), "Content-Type": "application/json"}

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(data), 8192):
            yield data[start : start + 8192]

    payload: Any = data if declared else chunks()
    async with seeded.post(f"/xrpc/{CREATE}", data=payload, headers=headers) as response:
        assert_error(response.status, await response.json(), 413, "PayloadTooLarge")


async def test_body_of_exactly_64_kib_is_accepted(seeded: Client, keys: Keys) -> None:
    """The limit is inclusive: a 64 KiB body is read and the call succeeds."""
    head, tail = b'{"name": "edge", "pad": "', b'"}'
    data = head + b"x" * (64 * 1024 - len(head) - len(tail)) + tail
    assert len(data) == 64 * 1024
    headers = {**bearer(keys.alice), "Content-Type": "application/json"}
    async with seeded.post(f"/xrpc/{CREATE}", data=data, headers=headers) as response:
        assert response.status == 200


@pytest.mark.parametrize(
    "nsid", ["place.wisp.v2.secret.explode", "com.example.nothing", "not-an-nsid", "_health2"]
)
@pytest.mark.usefixtures("unchanged")
async def test_unknown_method_is_501(seeded: Client, keys: Keys, nsid: str) -> None:
    """A method no lexicon declares is 501 MethodNotImplemented."""
    status, body = await call(seeded, nsid, keys.alice, {"name": "orders"})
    assert_error(status, body, 501, "MethodNotImplemented")


# --- 503 -------------------------------------------------------------------


@pytest.mark.parametrize("nsid", [CREATE, ROTATE])
async def test_no_active_kek_is_503_for_create_and_rotate(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    keys: Keys,
    kek_text: str,
    raw_redis: redis.Redis,
    nsid: str,
) -> None:
    """With only a previous KEK, create and rotate are 503 and change nothing; list, delete work."""
    full = await aiohttp_client(create_xrpc_app(await make_sidecar()))
    assert (await call(full, CREATE, keys.alice, {"name": "orders"}))[0] == 200
    ring_only = await make_sidecar(SIDECAR_KEK="", SIDECAR_KEK_PREVIOUS=kek_text)
    client = await aiohttp_client(create_xrpc_app(ring_only))
    before = keyspace_dump(raw_redis)
    name = "fresh" if nsid == CREATE else "orders"
    status, body = await call(client, nsid, keys.alice, {"name": name})
    assert_error(status, body, 503, "WebhookSecretEncryptionUnavailable")
    assert keyspace_dump(raw_redis) == before
    status, listed = await call(client, LIST, keys.alice, method="GET")
    assert status == 200
    assert [s["name"] for s in listed["secrets"]] == ["orders"]
    assert await call(client, DELETE, keys.alice, {"name": "orders"}) == (200, {})


async def test_unreachable_redis_is_503_with_retry_after(
    aiohttp_client: AiohttpClient, make_sidecar: SidecarFactory, keys: Keys
) -> None:
    """When Redis refuses connections, procedures answer 503 StorageUnavailable with Retry-After."""
    from sidecar.storage.embedded import free_port

    dead = await make_sidecar(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    client = await aiohttp_client(create_xrpc_app(dead))
    for nsid, body in ((CREATE, {"name": "x"}), (ROTATE, {"name": "x"}), (LIST, None)):
        method = "GET" if nsid == LIST else "POST"
        async with client.request(
            method, f"/xrpc/{nsid}", json=body, headers=bearer(keys.alice)
        ) as response:
            assert_error(response.status, await response.json(), 503, "StorageUnavailable")
            assert response.headers["Retry-After"] == "1"
    async with client.get("/xrpc/_health") as response:
        assert response.status == 503
        assert (await response.json())["error"] == "Service Unavailable"


async def test_unknown_path_is_a_json_404(seeded: Client) -> None:
    """A path outside /xrpc/ answers the same JSON error shape."""
    async with seeded.get("/nothing-here") as response:
        assert_error(response.status, await response.json(), 404, "NotFound")


# The error names every XRPC client knows without a lexicon (the atproto
# XRPC specification's generic errors).
GENERIC_XRPC_ERRORS = frozenset(
    {
        "InvalidRequest",
        "ExpiredToken",
        "InvalidToken",
        "AuthenticationRequired",
        "Forbidden",
        "XRPCNotSupported",
        "NotAcceptable",
        "PayloadTooLarge",
        "UnsupportedMediaType",
        "RateLimitExceeded",
        "InternalServerError",
        "MethodNotImplemented",
        "UpstreamFailure",
        "NotEnoughResources",
        "UpstreamTimeout",
    }
)
SOURCES = Path(__file__).resolve().parents[2] / "sidecar"


def names_the_xrpc_listener_can_send() -> set[str]:
    """Every error name in the XRPC listener's code: the exception mapping, aiohttp's
    refusals, and each ``WireError(status, "Name", ...)`` written out."""
    names = {name for _, name, _ in ERRORS_BY_TYPE.values()} | set(HTTP_ERROR_NAMES.values())
    names.add(INTERNAL.name)
    for path in [SOURCES / "wire.py", *(SOURCES / "xrpc").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "WireError"
            ):
                name = node.args[1]
                if isinstance(name, ast.Constant) and isinstance(name.value, str):
                    names.add(name.value)
                else:
                    # Only wire.py builds names from the two mappings read above.
                    assert path.name == "wire.py", f"{path}: a WireError name must be literal"
    return names


# rotate.json is the seed's document, verbatim (test_lexicon checks it), and
# does not declare these two, which it can send as create does.
UNDECLARED_BY_THE_SEED = {ROTATE: {"StorageUnavailable", "WebhookSecretEncryptionUnavailable"}}


def test_every_error_name_sent_is_declared_or_generic() -> None:
    """Each error name the XRPC listener can send is a generic XRPC error or is declared
    by a lexicon; StorageUnavailable, which any call can meet, by each method's own."""
    declared: dict[str, set[str]] = {}
    for nsid in (CREATE, LIST, ROTATE, DELETE):
        path = default_lexicon_dir() / f"{nsid.replace('.', '/')}.json"
        for error in json.loads(path.read_text())["defs"]["main"].get("errors", []):
            declared.setdefault(error["name"], set()).add(nsid)
        for name in UNDECLARED_BY_THE_SEED.get(nsid, set()):
            assert nsid not in declared.get(name, set()), "the seed declares it now: drop it"
            declared.setdefault(name, set()).add(nsid)
    sent = names_the_xrpc_listener_can_send()
    assert {"StorageUnavailable", "AlreadyExists", "MethodNotImplemented"} <= sent
    assert sent - GENERIC_XRPC_ERRORS - set(declared) == set()
    assert declared["StorageUnavailable"] == {CREATE, LIST, ROTATE, DELETE}
