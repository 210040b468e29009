"""The HTTP connections of every listener: bounded in number and in time, and
every answer aiohttp gives on its own made the JSON error shape.

aiohttp answers some requests before any handler or middleware runs: a head
its parser refuses (a stray byte in a header, a line over 8190 bytes, a bad
request line), an ``Expect`` it does not know, a ``CONNECT``. Left alone it
answers those in text/plain, echoing the refused bytes, and logs the whole
head as an ERROR traceback, ``Authorization`` value included. Here such an
answer is a JSON error with a fixed message, and the refusal one ``info`` line
without a byte of the request.

A connection gets ``read_timeout_s`` to send a complete request head, counted
from when it opened or, on a kept-alive connection, from the first byte of the
next request; between requests it may idle for ``idle_timeout_s``. A handler
bounds its own body read by the same read timeout (``wire.read_body``). A
listener may cap its connections: past the cap a new one is closed at once.

A client that sends and never reads is bounded too. A connection with
``max_pipelined`` requests awaiting an answer is not read until one is
answered; one with more than ``max_queued_bytes`` of answers unsent is not
read either, and is aborted (reset, its buffers dropped) when that queue has
not drained within ``write_timeout_s``. The kernel's own send buffer is
bounded too (``_bound_socket``).

A request whose body has a ``Content-Encoding`` is answered 415 before any
handler runs, and its connection closed without reading the body; aiohttp's
decompression is off, so no body is ever inflated (docs/api.md#request-bodies).
"""

from __future__ import annotations

import contextlib
import errno
import resource
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from sidecar.log import sampled
from sidecar.wire import HTTP_ERROR_NAMES, encoded_body, json_answer

if TYPE_CHECKING:
    import asyncio

log = structlog.get_logger("sidecar.http")

# File descriptors kept for everything but the capped listener: the sign and
# ops listeners' connections (a dispatcher may hold a few hundred), Redis, and
# the files the process opens.
RESERVED_FDS: Final = 256

ClosedHook = Callable[[str, str], None]


# Incoming bytes are parsed this many at a time, so that one read of tiny
# pipelined requests cannot queue more than a few hundred past the bound.
_FEED_SLICE: Final = 4096
# Exceptions pause_reading/resume_reading raise on a transport that is closing.
_TRANSPORT_GONE: Final = (AttributeError, NotImplementedError, RuntimeError)


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """How many connections a listener takes, how long each may take, and how much
    each may hold."""

    read_timeout_s: float
    idle_timeout_s: float
    max_connections: int | None = None
    write_timeout_s: float = 10
    max_pipelined: int = 16
    max_queued_bytes: int = 64 * 1024


def _error_name(status: int) -> str:
    # Generic XRPC names only: these answers come before any method is known.
    if status >= 500:
        return "InternalServerError"
    return HTTP_ERROR_NAMES.get(status, "InvalidRequest")


_MESSAGES: Final = {
    400: "Malformed HTTP request",
    415: "Content-Encoding is not supported: send the body as it is (identity)",
    417: "Only 'Expect: 100-continue' is supported",
}


def json_error(status: int, headers: Any = None) -> web.Response:
    """The JSON error answer for ``status``, with a fixed message that echoes nothing."""
    message = _MESSAGES.get(status) or HTTPStatus(status).phrase
    return json_answer({"error": _error_name(status), "message": message}, status, headers)


class _Connection(RequestHandler):
    """One client connection: timed, capped, flow-controlled, and answered only in JSON."""

    _server: _Server
    _timer: asyncio.TimerHandle | None = None
    _waiting_for: str | None = None
    # The transport as it was given: aiohttp forgets it on close, and a close
    # may still have answers to send, which the write timeout bounds.
    _raw: asyncio.Transport | None = None
    _write_timer: asyncio.TimerHandle | None = None
    # Requests parsed, minus those answered: the pipelined backlog.
    _answered: int = 0
    # Why reading is held ("pipeline", "write"), and bytes received meanwhile.
    _holds: set[str]
    _held: list[bytes]
    _refuse_encoded: bool = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._holds, self._held = set(), []
        super().connection_made(transport)
        server = self._manager
        assert isinstance(server, _Server)  # only _Server makes these
        self._server = server
        if server.over_capacity():
            server.closed("over_capacity")
            self.force_close()
            return
        raw: asyncio.Transport = transport  # type: ignore[assignment] # a stream's
        self._raw = raw
        raw.set_write_buffer_limits(high=server.limits.max_queued_bytes)
        _bound_socket(raw, server.limits)
        self._wait("read_timeout", server.limits.read_timeout_s)

    def connection_lost(self, exc: BaseException | None) -> None:
        if isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT:
            # The kernel gave up on unacknowledged answers (_bound_socket).
            self._server.closed("write_timeout")
        self._stop_waiting()
        self._stop_write_timer()
        self._held.clear()
        self._raw = None
        super().connection_lost(exc)

    async def start(self) -> None:
        try:
            await super().start()
        finally:
            # A connection that ends with answers still unsent (a close, not an
            # abort, leaves them queued) gets the write timeout to send them.
            self._time_unsent()

    def force_close(self) -> None:
        super().force_close()
        self._time_unsent()

    def data_received(self, data: bytes) -> None:
        if self._waiting_for == "idle_timeout":
            # The next request has begun: its head gets the read timeout.
            self._wait("read_timeout", self._server.limits.read_timeout_s)
        if self._holds:
            # aiohttp resumed reading for its own reasons; the hold stands.
            self._held.append(data)
            self._pause_transport()
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Parse ``data``, a slice at a time, until the backlog reaches its bound."""
        limit = self._server.limits.max_pipelined
        # An empty ``data`` too: aiohttp passes b"" to parse what it kept back.
        for at in range(0, max(len(data), 1), _FEED_SLICE):
            super().data_received(data[at : at + _FEED_SLICE] if len(data) > _FEED_SLICE else data)
            if self._request_count - self._answered >= limit:
                rest = data[at + _FEED_SLICE :]
                if rest:
                    self._held.insert(0, rest)
                self._hold("pipeline")
                return

    def head_received(self) -> None:
        """A whole request head is in: the handler bounds the rest."""
        self._stop_waiting()

    def pause_writing(self) -> None:
        # Over max_queued_bytes: read no more requests, and give the queue the
        # write timeout to drain.
        super().pause_writing()
        self._hold("write")
        if self._write_timer is None:
            self._write_timer = self._loop.call_later(
                self._server.limits.write_timeout_s, self._abort, "write_timeout"
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        self._stop_write_timer()
        self._release("write")

    async def finish_response(
        # Any: aiohttp 3.11 says float here, later ones float | None.
        self,
        request: web.BaseRequest,
        resp: web.StreamResponse,
        start_time: Any,
    ) -> tuple[web.StreamResponse, bool]:
        if resp.status >= 400 and resp.content_type != "application/json":
            # aiohttp's own answers (Expect, CONNECT, a route's 405): same status, JSON.
            resp = json_error(resp.status, headers=_kept_headers(resp))
        answer = await super().finish_response(request, resp, start_time)
        self._answered += 1
        if self._refuse_encoded:
            # The encoded body is never read, not even to drain it.
            self._server.closed("content_encoding")
            self.force_close()
        if self.transport is not None and not self._force_close:
            self._wait("idle_timeout", self._server.limits.idle_timeout_s)
        if self._request_count - self._answered < self._server.limits.max_pipelined:
            self._release("pipeline")
        return answer

    def refuse_encoded(self) -> web.Response:
        """The answer to a request with an encoded body; the connection closes after it."""
        self._refuse_encoded = True
        sampled(
            log,
            "http_refused",
            "http_request_refused",
            listener=self._server.listener,
            status=415,
            reason="content_encoding",
        )
        response = json_error(415)
        response.force_close()
        return response

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # Never the exception's text or ``message``: both quote the request.
        reason = type(exc).__name__ if exc is not None else None
        if status >= 500:
            log.error("http_error", listener=self._server.listener, status=status, reason=reason)
        else:
            sampled(
                log,
                "http_refused",
                "http_request_refused",
                listener=self._server.listener,
                status=status,
                reason=reason,
            )
        if request.writer.output_size > 0:
            raise ConnectionError("the response had begun; the connection is closed instead")
        response = json_error(status)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        exc = kw.get("exc_info")
        if isinstance(exc, RequestPayloadError | ConnectionError):
            # A body the client broke off or framed wrongly while aiohttp drained
            # it after an answer: the client's doing, not an error of ours.
            sampled(
                log,
                "http_refused",
                "http_request_refused",
                listener=self._server.listener,
                reason=type(exc).__name__,
            )
            return
        super().log_exception(*args, **kw)

    def _hold(self, reason: str) -> None:
        self._holds.add(reason)
        self._pause_transport()

    def _release(self, reason: str) -> None:
        if reason not in self._holds:
            return
        self._holds.discard(reason)
        while self._held and not self._holds:
            self._feed(self._held.pop(0))
        if self._holds or self._raw is None:
            return
        # Unless aiohttp holds reading itself (a body's buffer is full).
        if not (getattr(self, "_reading_paused", False) or getattr(self, "_buffer_paused", False)):
            with contextlib.suppress(*_TRANSPORT_GONE):
                self._raw.resume_reading()

    def _pause_transport(self) -> None:
        if self._raw is not None:
            with contextlib.suppress(*_TRANSPORT_GONE):
                self._raw.pause_reading()

    def _time_unsent(self) -> None:
        raw = self._raw
        if raw is not None and self._write_timer is None and raw.get_write_buffer_size() > 0:
            self._write_timer = self._loop.call_later(
                self._server.limits.write_timeout_s, self._abort, "write_timeout"
            )

    def _stop_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _abort(self, reason: str) -> None:
        """Reset the connection: what it has queued, here and in the kernel, is dropped."""
        self._write_timer = None
        raw = self._raw
        if raw is None:
            return
        self._server.closed(reason)
        sock = raw.get_extra_info("socket")
        if sock is not None:
            # A zero linger makes the close a reset, which frees the kernel's
            # send buffer at once instead of leaving it to an orphaned socket.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.abort()

    def _wait(self, reason: str, seconds: float) -> None:
        self._stop_waiting()
        self._waiting_for = reason
        self._timer = self._loop.call_later(seconds, self._expire, reason)

    def _stop_waiting(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._waiting_for = None, None

    def _expire(self, reason: str) -> None:
        self._timer, self._waiting_for = None, None
        self._server.closed(reason)
        self.force_close()


def _bound_socket(transport: asyncio.Transport, limits: ConnectionLimits) -> None:
    """Bound what the kernel holds for a TCP connection, as the transport's limits bound
    what the process holds: a send buffer of ``max_queued_bytes`` (Linux doubles it;
    left alone it grows to megabytes for a client that never reads), and, on Linux,
    a reset of a connection whose sent bytes stay unacknowledged (or unsent, the
    client's window being shut) for twice the write timeout. That second bound is a
    backstop for a connection already closed with answers unsent; the write timeout
    proper is the process's, which aborts first and counts it."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, limits.max_queued_bytes)
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, int(limits.write_timeout_s * 2000))


def _kept_headers(resp: web.StreamResponse) -> dict[str, str]:
    allow = resp.headers.get("Allow")
    return {"Allow": allow} if allow is not None else {}


class _Server(web.Server):
    """aiohttp's server for one listener, making ``_Connection``s."""

    def __init__(
        self, plain: web.Server, *, listener: str, limits: ConnectionLimits, on_closed: ClosedHook
    ) -> None:
        factory = plain.request_factory
        handler = plain.request_handler

        def request_factory(*args: Any) -> web.BaseRequest:
            # (message, payload, protocol, writer, task): the head is complete.
            protocol: _Connection = args[2]
            protocol.head_received()
            return factory(*args)

        def request_handler(request: web.BaseRequest) -> Awaitable[web.StreamResponse]:
            # Before any route or middleware, so whatever the request (a 401,
            # a 405), its encoded body is neither read nor drained.
            if encoded_body(request):
                protocol: _Connection = request.protocol  # type: ignore[assignment]
                return _answer(protocol.refuse_encoded())
            return handler(request)

        super().__init__(
            request_handler,
            request_factory=request_factory,
            handler_cancellation=plain.handler_cancellation,
            # aiohttp keeps the connections' settings only on the server it built.
            **plain._kwargs,
        )
        self.listener = listener
        self.limits = limits
        self._on_closed = on_closed

    def __call__(self) -> RequestHandler:
        return _Connection(self, loop=self._loop, **self._kwargs)

    def over_capacity(self) -> bool:
        cap = self.limits.max_connections
        return cap is not None and len(self.connections) > cap

    def closed(self, reason: str) -> None:
        sampled(
            log,
            "connection_closed",
            "http_connection_closed",
            listener=self.listener,
            reason=reason,
        )
        self._on_closed(self.listener, reason)


async def _answer(response: web.StreamResponse) -> web.StreamResponse:
    return response


class ListenerRunner(web.AppRunner):
    """An ``AppRunner`` whose connections are bounded and answer only in JSON."""

    def __init__(
        self,
        app: web.Application,
        *,
        listener: str,
        limits: ConnectionLimits,
        on_closed: ClosedHook,
        **kwargs: Any,
    ) -> None:
        # No decompression of request bodies, ever: an encoded one is refused
        # before it is read, and nothing else may inflate one either.
        super().__init__(
            app, keepalive_timeout=limits.idle_timeout_s, auto_decompress=False, **kwargs
        )
        self._listener = listener
        self._limits = limits
        self._on_closed = on_closed

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return _Server(
            plain, listener=self._listener, limits=self._limits, on_closed=self._on_closed
        )


def connection_cap(configured: int) -> int:
    """The XRPC connection cap the process's file limit leaves room for.

    The soft limit is raised to the hard one first, as servers do. Whatever
    the cap, ``RESERVED_FDS`` stay free, so however the public port is
    flooded, the sign and ops listeners can still accept and Redis connect.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY:
        return configured
    room = max(0, soft - RESERVED_FDS)
    if configured > room:
        log.warning(
            "xrpc_connections_capped",
            configured=configured,
            cap=room,
            file_limit=soft,
            hint="raise the file limit (ulimit -n) or lower SIDECAR_XRPC_MAX_CONNECTIONS",
        )
        return room
    return configured
