"""Generated hostile requests against both listeners of a real sidecar process.

The properties: every answer is the JSON error shape or a documented success,
never a 500; an error leaves the keyspace as it was; a body with any
``Content-Encoding`` but identity (gzip, deflate, br, unknown, stacked, in any
case, a compression bomb) is 415; and nothing the process writes is anything
but a JSON line below error level, or holds a credential that was sent.

The default run makes a fixed number of examples (``FUZZ_EXAMPLES`` per test,
default 120); ``make fuzz`` runs a long budget and prints how many requests it made.
"""

from __future__ import annotations

import gzip
import json
import os
import string
import zlib
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from raw_http import SIGN_TOKEN, Target, exchange, serve
from support import ALICE, CREATE, DELETE, LIST, ROTATE, keyspace_dump

if TYPE_CHECKING:
    from collections.abc import Iterator

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "120"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 120,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

SUCCESS = {"xrpc": {200}, "sign": {200}}
ERRORS = {
    "xrpc": {400, 401, 403, 404, 405, 408, 409, 413, 415, 417, 501, 503},
    "sign": {400, 401, 404, 405, 408, 413, 415, 417, 503},
}
REQUESTS_MADE = [0]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, redis_server_url: str) -> Iterator[Target]:
    """One sidecar process for every generated request; on teardown, its whole output
    is checked: JSON lines only, and no credential that was sent."""
    process = serve(tmp_path_factory.mktemp("fuzz"), redis_server_url)
    yield process
    process.stop()
    print(f"\nfuzz: {REQUESTS_MADE[0]} requests")
    lines = process.output_lines()
    for line in lines:
        assert isinstance(json.loads(line), dict), line
    text = "\n".join(lines)
    leaked = [credential for credential in process.sent_credentials if credential in text]
    assert leaked == []
    loud = [line for line in lines if json.loads(line).get("level") in ("error", "critical")]
    assert loud == []


@pytest.fixture(scope="module")
def keyspace(served: Target) -> Iterator[redis.Redis]:
    """A client of the sidecar's Redis, with two of Alice's secrets already made."""
    with redis.Redis.from_url(served.redis_url) as client:
        for name in ("orders", "billing"):
            answer = exchange(
                served.ports["xrpc"],
                _request(
                    "POST",
                    f"/xrpc/{CREATE}",
                    {
                        "Authorization": f"Bearer {served.api_key}",
                        "Content-Type": "application/json",
                    },
                    json.dumps({"name": name}).encode(),
                ),
            )
            assert answer is not None
            assert answer.status == 200
        yield client


def _request(method: str, target: str, headers: dict[str, str], body: bytes | None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: x", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    if body is not None and "Transfer-Encoding" not in headers:
        lines.append(f"Content-Length: {len(body)}")
    head = ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")
    return head + (body or b"")


def _chunked(body: bytes, size: int) -> bytes:
    chunks = [body[i : i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for chunk in chunks) + b"0\r\n\r\n"


# --- strategies -------------------------------------------------------------

_TOKEN_CHARS = string.ascii_letters + string.digits
# Credentials a client invents: long and distinctive, so finding one in the
# output can only mean it leaked.
_invented_secret = st.text(_TOKEN_CHARS, min_size=24, max_size=40).map(lambda s: "fz" + s)
_jwt_like = st.tuples(_invented_secret, _invented_secret, _invented_secret).map(
    lambda parts: "eyJ" + ".".join(parts)
)
_methods = st.sampled_from(
    ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE"]
) | st.text(string.ascii_uppercase, min_size=1, max_size=8)
_nsids = st.sampled_from([CREATE, LIST, ROTATE, DELETE, "_health", "com.example.nope"]) | st.text(
    string.ascii_letters + ".-", min_size=1, max_size=30
)
_text = st.text(max_size=20)  # any unicode
_query = st.lists(
    st.tuples(
        st.sampled_from(["did", "name", "scheme", "id", "timestamp", "x", "limit", "cursor"])
        | _text,
        _text,
    ),
    max_size=5,
)
_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False)
    | st.text(max_size=70),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
_special_bodies = st.sampled_from(
    [
        b'{"name": ' + b"9" * 5000 + b"}",
        b"[" * 5000 + b"]" * 5000,
        b'{"name": "orders"}',
        b'{"name": "wsk_looks_like_a_token"}',
        b'{"items": []}',
    ]
)
# 100 MiB of zeros, compressed: about 100 KiB on the wire.
_BOMBS = (
    gzip.compress(bytes(100 * 1024 * 1024), compresslevel=9, mtime=0),
    zlib.compress(bytes(100 * 1024 * 1024), 9),
)
_encoded = st.sampled_from([*_BOMBS, gzip.compress(b'{"name": "zipped"}'), b"\x1f\x8bnot gzip"])
# Codings other than identity, as clients write them (and as they should not).
_codings = st.sampled_from(
    ["gzip", "deflate", "br", "zstd", "compress", "fz-unknown", "gzip, identity", "GZip", "x-gzip"]
)
_sized = st.sampled_from(
    [64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1, 1024 * 1024 - 1, 1024 * 1024, 1024 * 1024 + 1]
).map(lambda size: b'{"name": "' + b"a" * max(0, size - 12) + b'"}')
_bodies = (
    st.none()
    | st.binary(max_size=300)
    | _json.map(lambda value: json.dumps(value).encode())
    | _special_bodies
    | _sized
    | _encoded
)


@st.composite
def _requests(draw: Any, listener: str, api_key: str) -> tuple[bytes, set[str], str]:
    """A request for ``listener``: its bytes, the credentials it carries, and its method."""
    method = draw(_methods)
    if listener == "xrpc":
        path = "/xrpc/" + quote(draw(_nsids), safe=".-_")
    else:
        path = draw(st.sampled_from(["/v1/sign", "/v1/sign/batch", "/v1/verify", "/", "/v1"]))
    pairs = draw(_query)
    if listener == "sign" and draw(st.booleans()):
        pairs = [("did", ALICE), ("name", "orders"), *pairs]
    query = "&".join(f"{quote(key)}={quote(value)}" for key, value in pairs)
    target = path + ("?" + query if query else "")
    headers: dict[str, str] = {}
    credentials: set[str] = set()
    kind = draw(st.sampled_from(["none", "api_key", "sign_token", "invented", "jwt", "basic"]))
    if kind != "none":
        secret = {
            "api_key": api_key,
            "sign_token": SIGN_TOKEN,
            "invented": draw(_invented_secret),
            "jwt": draw(_jwt_like),
            "basic": draw(_invented_secret),
        }[kind]
        credentials.add(secret)
        scheme = (
            "Basic" if kind == "basic" else draw(st.sampled_from(["Bearer", "bearer", "Token"]))
        )
        headers["Authorization"] = f"{scheme} {secret}"
    content_type = draw(
        st.sampled_from([None, "application/json", "text/plain", "application/octet-stream"])
    )
    if content_type is not None:
        headers["Content-Type"] = content_type
    expect = draw(st.sampled_from([None, "100-continue", "fz-unknown"]))
    if expect is not None:
        headers["Expect"] = expect
    coding = draw(st.none() | st.none() | st.sampled_from(["identity", "IDENTITY"]) | _codings)
    if coding is not None:
        headers["Content-Encoding"] = coding
    body = draw(_bodies)
    if body is not None and draw(st.booleans()):
        headers["Transfer-Encoding"] = "chunked"
        # At most 64 chunks: a megabyte in one-byte chunks tests nothing more, slowly.
        smallest = max(1, len(body) // 64)
        body = _chunked(body, draw(st.integers(min_value=smallest, max_value=smallest + 70000)))
    return _request(method, target, headers, body), credentials, method


# Garbage, or a sane head with one garbage header. (Only line breaks would be
# skipped by any HTTP parser as padding before a request, so they are left out.)
_malformed_heads = st.binary(min_size=1, max_size=300).filter(
    lambda raw: raw.strip(b"\r\n") != b""
).map(lambda raw: raw + b"\r\n\r\n") | st.tuples(
    st.sampled_from([b"GET /xrpc/x HTTP/1.1\r\n", b"POST /v1/sign HTTP/1.1\r\n"]),
    st.binary(min_size=1, max_size=100),
).map(lambda parts: parts[0] + b"Host: x\r\nConnection: close\r\nX-Fuzz: " + parts[1] + b"\r\n\r\n")


# --- properties -------------------------------------------------------------


def check_answer(served: Target, listener: str, request: bytes, method: str) -> int:
    """Send ``request`` to ``listener`` and check the answer's shape; its status."""
    REQUESTS_MADE[0] += 1
    answer = exchange(served.ports[listener], request)
    assert answer is not None, "the server closed without answering"
    assert answer.status != 500, answer
    assert answer.status in SUCCESS[listener] | ERRORS[listener], answer
    assert answer.headers["content-type"].startswith("application/json"), answer
    for credential in served.sent_credentials:
        assert credential.encode() not in answer.body
    if method == "HEAD":
        assert answer.body == b""
        return answer.status
    body = answer.json()
    assert isinstance(body, dict)
    if answer.status >= 400:
        assert set(body) == {"error", "message"}, body
        assert isinstance(body["error"], str)
        assert isinstance(body["message"], str)
    return answer.status


@pytest.mark.parametrize("listener", ["xrpc", "sign"])
@FUZZ
@given(data=st.data())
def test_every_answer_is_json_and_an_error_changes_nothing(
    served: Target, keyspace: redis.Redis, listener: str, data: st.DataObject
) -> None:
    """Generated requests get a JSON error or a documented success, never a 500, and an
    error leaves every key of the store as it was."""
    request, credentials, method = data.draw(_requests(listener, served.api_key))
    served.sent_credentials |= credentials
    before = keyspace_dump(keyspace)
    status = check_answer(served, listener, request, method)
    if status >= 400:
        assert keyspace_dump(keyspace) == before


@pytest.mark.parametrize("listener", ["xrpc", "sign"])
@FUZZ
@given(raw=_malformed_heads)
def test_a_malformed_head_gets_a_json_error(served: Target, listener: str, raw: bytes) -> None:
    """Bytes the HTTP parser refuses (or a head with one garbage header) are answered
    with a JSON error, never text and never a 500."""
    REQUESTS_MADE[0] += 1
    answer = exchange(served.ports[listener], raw)
    assert answer is not None, "the server closed without answering"
    assert answer.status in ERRORS[listener], answer
    assert answer.headers["content-type"].startswith("application/json")
    assert set(answer.json()) == {"error", "message"}


@pytest.mark.parametrize("listener", ["xrpc", "sign"])
@FUZZ
@given(data=st.data(), coding=_codings)
def test_an_encoded_body_is_415_whatever_else_the_request_is(
    served: Target, keyspace: redis.Redis, listener: str, data: st.DataObject, coding: str
) -> None:
    """A request saying any Content-Encoding but identity is refused with 415 before
    its verb, path, credentials or body count (a head the HTTP parser refuses is 400
    with or without it), and changes nothing."""
    request, credentials, method = data.draw(_requests(listener, served.api_key))
    served.sent_credentials |= credentials
    head, sep, body = request.partition(b"\r\n\r\n")
    head = b"\r\n".join(
        line for line in head.split(b"\r\n") if not line.lower().startswith(b"content-encoding:")
    )
    before = keyspace_dump(keyspace)
    status = check_answer(
        served, listener, head + f"\r\nContent-Encoding: {coding}".encode() + sep + body, method
    )
    if status == 400:
        # The parser refused the head (an unknown verb, say): the coding played no part.
        assert check_answer(served, listener, head + sep + body, method) == 400
    else:
        assert status == 415
    assert keyspace_dump(keyspace) == before
