"""Hostile clients against a real sidecar process: malformed heads answered in JSON
without echoing or logging a credential, and connections bounded in number and time.

Every test here talks to ``python -m sidecar serve`` over raw sockets, so what
aiohttp does before any handler runs is part of what is tested.
"""

from __future__ import annotations

import json
import resource
import socket
from typing import TYPE_CHECKING

import pytest
import redis
from raw_http import SIGN_TOKEN, Target, closed_by_server, exchange, serve
from support import ALICE, CREATE, LIST

if TYPE_CHECKING:
    from collections.abc import Iterator

READ_TIMEOUT_S = 1
IDLE_TIMEOUT_S = 1
MAX_CONNECTIONS = 20
# A bound against hangs only, far past every timeout under test.
HANG_BOUND_S = 30


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, redis_server_url: str) -> Iterator[Target]:
    """One sidecar process with short connection timeouts and a small XRPC cap."""
    process = serve(
        tmp_path_factory.mktemp("hostile"),
        redis_server_url,
        SIDECAR_HTTP_READ_TIMEOUT_S=str(READ_TIMEOUT_S),
        SIDECAR_HTTP_IDLE_TIMEOUT_S=str(IDLE_TIMEOUT_S),
        SIDECAR_XRPC_MAX_CONNECTIONS=str(MAX_CONNECTIONS),
    )
    yield process
    process.stop()


def logged(served: Target, name: str, **fields: str) -> list[dict[str, object]]:
    """The log events ``name`` with ``fields`` the sidecar has written so far."""
    return [
        event
        for event in served.events()
        if event.get("event") == name and fields.items() <= event.items()
    ]


def logged_anew(served: Target, before: int, name: str, **fields: str) -> list[dict[str, object]]:
    """Those events, once there are more than ``before`` of them: a line is written after
    the answer it is about, so it is waited for, not looked for at once."""
    served.process.wait_until(
        f"a new {name} line", lambda: len(logged(served, name, **fields)) > before
    )
    return logged(served, name, **fields)


def closed_for(served: Target, reason: str) -> int:
    """How many connections the sidecar has logged closing for ``reason``."""
    return len(logged(served, "http_connection_closed", reason=reason))


def assert_json_error(answer: object, status: int) -> dict[str, str]:
    """``answer`` is a JSON error of ``status``: exactly ``error`` and ``message``."""
    assert answer is not None, "the server closed without answering"
    assert answer.status == status, answer  # type: ignore[attr-defined]
    assert answer.headers["content-type"].startswith("application/json")  # type: ignore[attr-defined]
    body = answer.json()  # type: ignore[attr-defined]
    assert set(body) == {"error", "message"}, body
    return dict(body)


def assert_output_is_json_and_clean(served: Target) -> None:
    """Every line the process wrote is a JSON object, and no credential sent appears."""
    lines = served.output_lines()
    assert lines
    for line in lines:
        assert isinstance(json.loads(line), dict), line
    text = "\n".join(lines)
    for credential in served.sent_credentials:
        assert credential not in text


def assert_sign_and_ops_answer(served: Target) -> None:
    """The sign listener answers a sign request (404 for an absent secret), and /readyz 200."""
    signed = exchange(
        served.ports["sign"],
        head(
            "POST",
            f"/v1/sign?did={ALICE}&name=absent",
            f"Authorization: Bearer {SIGN_TOKEN}".encode(),
            b"Content-Length: 0",
        ),
    )
    assert assert_json_error(signed, 404)["error"] == "NotFound"
    ready = exchange(served.ports["ops"], head("GET", "/readyz"))
    assert ready is not None
    assert ready.status == 200


def head(method: str, path: str, *lines: bytes) -> bytes:
    """A request head with ``Connection: close`` and the given header lines."""
    start = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n".encode()
    return start + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


@pytest.mark.parametrize("stray", [b"\x00", b"\x7f"])
def test_a_bad_byte_after_an_api_key_is_a_json_400_that_echoes_and_logs_nothing(
    served: Target, stray: bytes
) -> None:
    """The issue's reproducer: a refused Authorization head is a JSON 400, and the key is
    neither in the answer nor in anything the process writes."""
    request = head(
        "GET", f"/xrpc/{LIST}", b"Authorization: Bearer " + served.api_key.encode() + stray
    )
    before = len(logged(served, "http_request_refused"))
    answer = exchange(served.ports["xrpc"], request)
    body = assert_json_error(answer, 400)
    assert body["error"] == "InvalidRequest"
    assert served.api_key.encode() not in answer.body  # type: ignore[union-attr]
    refused = logged_anew(served, before, "http_request_refused")
    assert all(e["level"] == "info" for e in refused)
    assert_output_is_json_and_clean(served)


def test_a_bad_byte_after_the_sign_token_is_a_json_400_that_leaks_nothing(served: Target) -> None:
    """The sign listener answers a refused head in JSON too, and never repeats its token."""
    request = head(
        "POST", "/v1/sign?did=x&name=y", f"Authorization: Bearer {SIGN_TOKEN}\x00".encode()
    )
    answer = exchange(served.ports["sign"], request)
    assert_json_error(answer, 400)
    assert SIGN_TOKEN.encode() not in answer.body  # type: ignore[union-attr]
    assert_output_is_json_and_clean(served)


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (head("GET", f"/xrpc/{LIST}", b"X-Long: " + b"a" * 9000), 400),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /xrpc/x HTTP/9.9\r\nHost: x\r\n\r\n", 400),
        (head("OPTIONS", "*"), 404),
        (head("POST", f"/xrpc/{LIST}", b"Expect: foo", b"Content-Length: 0"), 417),
        (head("CONNECT", "127.0.0.1:443"), 404),
    ],
    ids=["long-header", "bad-request-line", "bad-version", "star-target", "expect", "connect"],
)
def test_what_aiohttp_refuses_itself_is_answered_in_json(
    served: Target, request_bytes: bytes, status: int
) -> None:
    """Parser refusals, an unknown Expect and CONNECT get the JSON error shape, not text."""
    assert_json_error(exchange(served.ports["xrpc"], request_bytes), status)
    assert_output_is_json_and_clean(served)


def test_a_json_integer_of_5000_digits_is_invalid_request_and_changes_nothing(
    served: Target,
) -> None:
    """An integer Python will not convert is a 400 InvalidRequest, never a 500."""
    body = b'{"name": ' + b"9" * 5000 + b"}"
    request = head(
        "POST",
        f"/xrpc/{CREATE}",
        f"Authorization: Bearer {served.api_key}".encode(),
        b"Content-Type: application/json",
        f"Content-Length: {len(body)}".encode(),
    )
    with redis.Redis.from_url(served.redis_url) as client:
        before = client.dbsize()
        answer = exchange(served.ports["xrpc"], request + body)
        assert client.dbsize() == before
    assert assert_json_error(answer, 400)["error"] == "InvalidRequest"


def test_a_connection_that_sends_nothing_is_closed_after_the_read_timeout(served: Target) -> None:
    """An idle new connection is closed once the read timeout passes."""
    closed_before = closed_for(served, "read_timeout")
    with socket.create_connection(("127.0.0.1", served.ports["xrpc"])) as sock:
        assert closed_by_server(sock, HANG_BOUND_S)
    # Closed by the read timeout, as the sidecar logs it, not by anything else.
    assert logged_anew(served, closed_before, "http_connection_closed", reason="read_timeout")


def test_a_slowloris_head_is_closed_though_it_keeps_sending(served: Target) -> None:
    """A head sent one line at a time never completes, and is cut at the read timeout."""
    with socket.create_connection(("127.0.0.1", served.ports["xrpc"])) as sock:
        sock.sendall(b"GET /xrpc/_health HTTP/1.1\r\n")
        closed = False
        # The drip goes on well past the read timeout; the count bounds a hang only.
        for _ in range(HANG_BOUND_S * 5):
            try:
                sock.sendall(b"X-Drip: 1\r\n")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            # The client's own pace, as an attacker's: a line per 0.2 s.
            if closed_by_server(sock, 0.2):
                closed = True
                break
        assert closed


def test_a_body_that_never_finishes_gets_408_and_the_connection_closes(served: Target) -> None:
    """An authenticated request whose body stops short is answered 408 in JSON, then closed."""
    request = head(
        "POST",
        f"/xrpc/{CREATE}",
        f"Authorization: Bearer {served.api_key}".encode(),
        b"Content-Type: application/json",
        b"Content-Length: 100",
    )
    with socket.create_connection(("127.0.0.1", served.ports["xrpc"])) as sock:
        sock.sendall(request + b'{"name":')
        raw = b""
        sock.settimeout(HANG_BOUND_S)
        while chunk := sock.recv(65536):
            raw += chunk
    status_line, _, rest = raw.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 408")
    assert json.loads(rest.partition(b"\r\n\r\n")[2])["error"] == "InvalidRequest"


def test_a_kept_alive_connection_is_closed_after_the_idle_timeout(served: Target) -> None:
    """After an answered request, a connection left idle is closed at the idle timeout."""
    with socket.create_connection(("127.0.0.1", served.ports["xrpc"])) as sock:
        sock.sendall(b"GET /xrpc/_health HTTP/1.1\r\nHost: x\r\n\r\n")
        sock.settimeout(5)
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert closed_by_server(sock, HANG_BOUND_S)


def test_past_the_cap_new_xrpc_connections_are_closed_and_signing_goes_on(served: Target) -> None:
    """With the XRPC cap held by idle clients, one more is closed at once, and the sign
    and ops listeners still answer."""
    before = closed_for(served, "over_capacity")
    held = [
        socket.create_connection(("127.0.0.1", served.ports["xrpc"]))
        for _ in range(MAX_CONNECTIONS)
    ]
    try:
        with socket.create_connection(("127.0.0.1", served.ports["xrpc"])) as extra:
            assert closed_by_server(extra, HANG_BOUND_S)
        assert_sign_and_ops_answer(served)
    finally:
        for sock in held:
            sock.close()
    # The extra connection was closed for being over the cap, as the sidecar logs it.
    assert logged_anew(served, before, "http_connection_closed", reason="over_capacity")


def test_under_a_file_limit_of_1024_a_flooded_xrpc_port_leaves_signing_working(
    tmp_path_factory: pytest.TempPathFactory, redis_server_url: str
) -> None:
    """With RLIMIT_NOFILE 1024 and the default cap of 1000, the cap is lowered (and
    logged), and while 1000 idle XRPC connections are held, signing still answers."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip(f"this test holds 1000 sockets; the hard file limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    process = serve(tmp_path_factory.mktemp("flooded"), redis_server_url, file_limit=1024)
    held: list[socket.socket] = []
    try:
        capped = [e for e in process.events() if e.get("event") == "xrpc_connections_capped"]
        assert capped
        assert capped[0]["file_limit"] == 1024
        assert capped[0]["cap"] < 1000
        for _ in range(1000):
            held.append(socket.create_connection(("127.0.0.1", process.ports["xrpc"])))
        assert_sign_and_ops_answer(process)
    finally:
        for sock in held:
            sock.close()
        process.stop()
