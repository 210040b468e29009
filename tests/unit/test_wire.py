"""Reading request bodies: whole when they have arrived, bounded either way."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import StreamReader
from aiohttp.base_protocol import BaseProtocol
from aiohttp.test_utils import make_mocked_request
from aiohttp.web import Request

from sidecar.errors import PayloadTooLarge
from sidecar.wire import arrived_body, read_body


def request_with(chunks: list[bytes], *, eof: bool, declared: int | None = None) -> Request:
    """A mocked sign request that has received ``chunks``, then EOF if ``eof``, and that
    declares a Content-Length of ``declared`` unless it is None."""
    loop = asyncio.get_running_loop()
    content = StreamReader(BaseProtocol(loop), 2**16, loop=loop)
    for chunk in chunks:
        content.feed_data(chunk)
    if eof:
        content.feed_eof()
    headers = {} if declared is None else {"Content-Length": str(declared)}
    return make_mocked_request("POST", "/v1/sign", headers=headers, payload=content)


async def test_a_body_that_has_arrived_is_taken_whole() -> None:
    """A body that has all arrived is returned at once, with no read to await."""
    request = request_with([b"abc", b"def"], eof=True, declared=6)
    assert arrived_body(request, 6) == b"abcdef"


async def test_a_body_still_arriving_is_left_to_read_body() -> None:
    """arrived_body declines a body still arriving, and read_body then reads it whole."""
    request = request_with([b"abc"], eof=False, declared=6)
    assert arrived_body(request, 6) is None
    reading = asyncio.ensure_future(read_body(request, 6, timeout_s=5))
    request.content.feed_data(b"def")
    request.content.feed_eof()
    assert await reading == b"abcdef"


@pytest.mark.parametrize("declared", [7, None])
async def test_an_arrived_body_over_the_limit_is_refused(declared: int | None) -> None:
    """Over the limit by its Content-Length, or, without one, by what arrived."""
    request = request_with([b"abcdefg"], eof=True, declared=declared)
    with pytest.raises(PayloadTooLarge):
        arrived_body(request, 6)


async def test_a_declared_length_over_the_limit_is_refused_before_anything_arrives() -> None:
    """A Content-Length over the limit is refused before any of the body arrives."""
    request = request_with([], eof=False, declared=7)
    with pytest.raises(PayloadTooLarge):
        arrived_body(request, 6)


async def test_an_empty_body_is_empty() -> None:
    """An ended request without a body or a Content-Length gives the empty body."""
    assert arrived_body(request_with([], eof=True), 6) == b""
