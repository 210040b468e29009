"""Request bodies with a ``Content-Encoding``, against a real sidecar process over raw
sockets: refused with a JSON 415 before the body is read, on every listener and
whatever else the request would have met, never inflated, and never an
error-level line or a traceback in the log.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import redis
from raw_http import SIGN_TOKEN, Answer, Target, exchange, serve
from support import ALICE, CREATE, LIST, keyspace_dump

if TYPE_CHECKING:
    from collections.abc import Iterator

# 100 MiB of zeros, compressed to about 100 KiB: inflated, it would show in the RSS.
BOMB_BYTES = 100 * 1024 * 1024
GZIP_BOMB = gzip.compress(bytes(BOMB_BYTES), compresslevel=9, mtime=0)
DEFLATE_BOMB = zlib.compress(bytes(BOMB_BYTES), 9)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, redis_server_url: str) -> Iterator[Target]:
    """One sidecar process for the module."""
    process = serve(tmp_path_factory.mktemp("encoded"), redis_server_url)
    yield process
    process.stop()


def request(method: str, target: str, *headers: str, body: bytes = b"") -> bytes:
    """A request with ``Connection: close``, the given header lines and a sized body."""
    lines = [f"{method} {target} HTTP/1.1", "Host: x", "Connection: close", *headers]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def assert_415(answer: Answer | None) -> None:
    """``answer`` is the JSON error 415 UnsupportedMediaType, closing the connection."""
    assert answer is not None, "the server closed without answering"
    assert answer.status == 415, answer
    assert answer.headers["content-type"].startswith("application/json")
    body = answer.json()
    assert set(body) == {"error", "message"}
    assert body["error"] == "UnsupportedMediaType"
    assert answer.headers.get("connection", "").lower() == "close"


def assert_no_error_lines(served: Target) -> None:
    """Nothing the process wrote is at error level or a traceback."""
    events = served.events()
    assert events
    assert [e for e in events if e.get("level") in ("error", "critical")] == []
    assert [e for e in events if "exception" in e] == []
    assert not any("Traceback" in line for line in served.output_lines())


SIGN = f"/v1/sign?did={ALICE}&name=orders"
SIGN_AUTH = f"Authorization: Bearer {SIGN_TOKEN}"


def test_a_sign_request_with_a_gzip_header_and_a_plain_body_is_415(served: Target) -> None:
    """The issue's first reproducer: gzip said, not sent, on the sign listener is a
    JSON 415 (not 500), and nothing is logged at error level."""
    answer = exchange(
        served.ports["sign"],
        request("POST", SIGN, SIGN_AUTH, "Content-Encoding: gzip", body=b'{"event":"push"}'),
    )
    assert_415(answer)
    assert_no_error_lines(served)


def test_an_authenticated_create_with_a_gzip_body_is_415_and_creates_nothing(
    served: Target,
) -> None:
    """The second: an authenticated XRPC create, its body really gzipped, is refused
    with 415 and the store is left as it was."""
    body = gzip.compress(b'{"name": "zipped"}')
    with redis.Redis.from_url(served.redis_url) as client:
        before = keyspace_dump(client)
        answer = exchange(
            served.ports["xrpc"],
            request(
                "POST",
                f"/xrpc/{CREATE}",
                f"Authorization: Bearer {served.api_key}",
                "Content-Type: application/json",
                "Content-Encoding: gzip",
                body=body,
            ),
        )
        assert keyspace_dump(client) == before
    assert_415(answer)
    assert_no_error_lines(served)


@pytest.mark.parametrize(
    ("listener", "raw"),
    [
        (
            "xrpc",
            request(
                "POST",
                f"/xrpc/{CREATE}",
                "Content-Type: application/json",
                "Content-Encoding: deflate",
                body=b"not deflate at all",
            ),
        ),
        ("sign", request("GET", SIGN, "Content-Encoding: gzip", body=b"not gzip")),
        ("ops", request("GET", "/metrics", "Content-Encoding: deflate", body=b"not deflate")),
    ],
    ids=["xrpc-unauthenticated-deflate", "sign-get", "ops-get"],
)
def test_an_encoded_body_is_415_before_the_401_or_405_it_would_get(
    served: Target, listener: str, raw: bytes
) -> None:
    """The third: a request that would be 401 or 405 is 415 instead, its body never
    drained or inflated, so it writes no error line."""
    assert_415(exchange(served.ports[listener], raw))
    assert_no_error_lines(served)


@pytest.mark.parametrize(
    "coding", ["br", "compress", "zstd", "fz-unknown", "gzip, identity", "identity, gzip", "GZip"]
)
def test_every_coding_but_identity_is_refused(served: Target, coding: str) -> None:
    """Any coding other than identity, in any case and stacked with identity, is 415."""
    answer = exchange(
        served.ports["sign"],
        request("POST", SIGN, SIGN_AUTH, f"Content-Encoding: {coding}", body=b"payload"),
    )
    assert_415(answer)
    assert_no_error_lines(served)


@pytest.mark.parametrize("coding", ["identity", "IDENTITY", "identity, identity"])
def test_identity_is_a_body_as_it_is(served: Target, coding: str) -> None:
    """``identity`` is no encoding: the request goes on (404 for an absent secret)."""
    answer = exchange(
        served.ports["sign"],
        request("POST", SIGN, SIGN_AUTH, f"Content-Encoding: {coding}", body=b"payload"),
    )
    assert answer is not None
    assert (answer.status, answer.json()["error"]) == (404, "NotFound")


def peak_rss_kib(pid: int) -> int:
    """The process's peak resident set (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc/<pid>/status")


@pytest.mark.parametrize(
    ("coding", "bomb"), [("gzip", GZIP_BOMB), ("deflate", DEFLATE_BOMB)], ids=["gzip", "deflate"]
)
@pytest.mark.parametrize("listener", ["sign", "xrpc"])
def test_a_compression_bomb_is_refused_and_never_inflated(
    served: Target, listener: str, coding: str, bomb: bytes
) -> None:
    """100 MiB of zeros, compressed, is 415 on both listeners, and the process's peak
    RSS does not grow by anything like the 100 MiB it would inflate to."""
    before = peak_rss_kib(served.process.pid)
    if listener == "sign":
        raw = request("POST", SIGN, SIGN_AUTH, f"Content-Encoding: {coding}", body=bomb)
    else:
        raw = request(
            "POST",
            f"/xrpc/{LIST}",
            f"Authorization: Bearer {served.api_key}",
            f"Content-Encoding: {coding}",
            body=bomb,
        )
    assert_415(exchange(served.ports[listener], raw))
    # The compressed bomb itself (about 100 KiB) may be buffered while the head
    # is answered; a tenth of the inflated size is far above that and far below it.
    assert peak_rss_kib(served.process.pid) - before < BOMB_BYTES // 10 // 1024
    assert_no_error_lines(served)


def test_refusals_are_counted_as_closed_connections(served: Target) -> None:
    """Each 415 closes its connection, counted under reason content_encoding."""
    exchange(served.ports["sign"], request("POST", SIGN, "Content-Encoding: gzip", body=b"x"))
    metrics = exchange(served.ports["ops"], request("GET", "/metrics"))
    assert metrics is not None
    counted = [
        line
        for line in metrics.body.decode().splitlines()
        if line.startswith("wisp_sidecar_http_connections_closed_total{")
        and 'reason="content_encoding"' in line
        and 'listener="sign"' in line
    ]
    assert counted
    assert float(counted[0].rsplit(" ", 1)[1]) >= 1
