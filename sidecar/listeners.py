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

A client that sends and never reads is bounded by ``sidecar.backpressure``:
requests awaiting an answer, bytes of answers queued, and the time those take
to drain, after which the connection is aborted.

A request whose body has a ``Content-Encoding`` is answered 415 before any
handler runs, and its connection closed without reading the body; aiohttp's
decompression is off, so no body is ever inflated (docs/api.md#request-bodies).
"""

from __future__ import annotations

import errno
import resource
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler, RequestPayloadError

from sidecar.backpressure import Backpressure
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
# Makes a listener's connections: ``_Connection`` or a subclass (sidecar.loop_share).
ConnectionFactory = Callable[..., RequestHandler]


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
    _flow: Backpressure | None = None
    # Parsed requests minus answered ones: the pipelined backlog.
    _answered: int = 0
    _refuse_encoded: bool = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        server = self._manager
        assert isinstance(server, _Server)  # only _Server makes these
        self._server = server
        if server.over_capacity():
            server.closed("over_capacity")
            self.force_close()
            return
        limits = server.limits
        self._flow = Backpressure(
            transport,  # type: ignore[arg-type] # a stream's
            self._loop,
            max_pipelined=limits.max_pipelined,
            max_queued_bytes=limits.max_queued_bytes,
            write_timeout_s=limits.write_timeout_s,
            parse=super().data_received,
            backlog=lambda: self._request_count - self._answered,
            # aiohttp 3.11 has the first flag, later ones both.
            parser_holds=self.reading_held_elsewhere,
            abort=server.closed,
        )
        self._wait("read_timeout", limits.read_timeout_s)

    def reading_held_elsewhere(self) -> bool:
        """Whether reading is held by other than the backpressure: by aiohttp for its own
        buffers (3.11 has the first flag, later ones both), or by a subclass."""
        paused = getattr(self, "_reading_paused", False) or getattr(self, "_buffer_paused", False)
        return bool(paused)

    def connection_lost(self, exc: BaseException | None) -> None:
        if isinstance(exc, OSError) and exc.errno == errno.ETIMEDOUT:
            # The kernel gave up on unacknowledged answers (sidecar.backpressure).
            self._server.closed("write_timeout")
        self._stop_waiting()
        if self._flow is not None:
            self._flow.lost()
        super().connection_lost(exc)

    async def start(self) -> None:
        try:
            await super().start()
        finally:
            # A connection that ends with answers unsent (a close, not an abort,
            # leaves them queued) gets the write timeout to send them.
            if self._flow is not None:
                self._flow.closing()

    def force_close(self) -> None:
        super().force_close()
        if self._flow is not None:
            self._flow.closing()

    def data_received(self, data: bytes) -> None:
        if self._waiting_for == "idle_timeout":
            # The next request has begun: its head gets the read timeout.
            self._wait("read_timeout", self._server.limits.read_timeout_s)
        if self._flow is None:
            super().data_received(data)
        else:
            self._flow.received(data)

    def head_received(self) -> None:
        """A whole request head is in: the handler bounds the rest."""
        self._stop_waiting()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._flow is not None:
            self._flow.writing_paused()

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._flow is not None:
            self._flow.writing_resumed()

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
        if self._flow is not None:
            self._flow.answered()
        return answer

    def refuse_encoded(self) -> web.Response:
        """The answer to a request with an encoded body; the connection closes after it."""
        self._refuse_encoded = True
        self._refused(415, "content_encoding")
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
            self._refused(status, reason)
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
            self._refused(None, type(exc).__name__)
            return
        super().log_exception(*args, **kw)

    def _refused(self, status: int | None, reason: str | None) -> None:
        fields = {"listener": self._server.listener, "status": status, "reason": reason}
        sampled(log, "http_refused", "http_request_refused", **fields)

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
        if self._flow is not None and self._flow.unsent():
            # Answers unread for a whole timeout: a close would leave them queued.
            self._flow.abort()
            return
        self._server.closed(reason)
        self.force_close()


def _kept_headers(resp: web.StreamResponse) -> dict[str, str]:
    allow = resp.headers.get("Allow")
    return {"Allow": allow} if allow is not None else {}


class _Server(web.Server):
    """aiohttp's server for one listener, making ``_Connection``s."""

    def __init__(
        self,
        plain: web.Server,
        *,
        listener: str,
        limits: ConnectionLimits,
        on_closed: ClosedHook,
        connection: ConnectionFactory | None = None,
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
        self._connection: ConnectionFactory = connection or _Connection

    def __call__(self) -> RequestHandler:
        return self._connection(self, loop=self._loop, **self._kwargs)

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
        connection: ConnectionFactory | None = None,
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
        self._connection = connection

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()
        return _Server(
            plain,
            listener=self._listener,
            limits=self._limits,
            on_closed=self._on_closed,
            connection=self._connection,
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
