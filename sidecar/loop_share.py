"""A bounded share of the event loop for the XRPC listener, when one process
runs both the XRPC and the sign listener.

Signing is the data plane; whatever reaches the public XRPC port must not
slow it much. Limiting XRPC requests in flight does not do that: an anonymous
flood of cheap 401s on kept-alive connections costs the loop mostly in
aiohttp's parsing and answering, before and after any handler. So the loop
time XRPC work actually takes is measured and paid for:

- every piece of XRPC work is timed on the loop: ``connection_made`` and
  ``data_received`` of XRPC connections (accepting, parsing), and each step
  of their request-loop and handler tasks (routing, authentication, Redis
  replies, answering); nested timings count once;
- the time is charged to a token bucket that refills at ``share`` seconds of
  loop per second of wall time, up to ``burst_s``;
- when the bucket goes below zero, XRPC is *held*: every XRPC connection stops
  being read (the kernel's buffers and TCP flow control make callers wait),
  bytes that still arrive are kept unparsed, and requests already parsed wait
  before their handler starts. Signing runs meanwhile at full speed;
- once the bucket is full again, XRPC is released.

Over any long stretch XRPC uses at most ``share`` of the loop, however it is
called; a sign request is held up by at most ``burst_s`` plus one XRPC step.
XRPC callers are slowed, never answered differently.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from sidecar.listeners import _Connection

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Generator

    from aiohttp import web

    from sidecar.metrics import Metrics
    from sidecar.settings import Settings


class LoopShare:
    """The token bucket of XRPC loop time, and the XRPC connections it holds."""

    def __init__(
        self,
        *,
        share: float,
        burst_s: float,
        on_hold: Callable[[], None] | None = None,
        on_work: Callable[[float], None] | None = None,
    ) -> None:
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self.share = share
        self.burst_s = burst_s
        self._credit = burst_s
        self._refilled_at = time.perf_counter()
        self._on_hold = on_hold
        self._on_work = on_work
        self._connections: set[SharedLoopConnection] = set()
        self._released: asyncio.Event | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._depth = 0
        self._started = 0.0
        self._closed = False

    @property
    def held(self) -> bool:
        """Whether XRPC is waiting for its share to pay off what it used."""
        return self._released is not None

    def begin(self) -> None:
        """XRPC work starts on the loop (nested calls count once)."""
        self._depth += 1
        if self._depth == 1:
            self._started = time.perf_counter()

    def end(self) -> None:
        """The XRPC work begun last ends: its loop time is charged."""
        self._depth -= 1
        if self._depth == 0:
            self.charge(time.perf_counter() - self._started)

    def charge(self, seconds: float) -> None:
        """Count ``seconds`` of loop time as spent on XRPC work."""
        if self._on_work is not None:
            self._on_work(seconds)
        self._refill()
        self._credit -= seconds
        if self._credit < 0 and self._released is None and not self._closed:
            self._hold()

    async def admitted(self) -> None:
        """Return when XRPC may work, at once unless it is held."""
        while self._released is not None:
            await self._released.wait()

    def _refill(self) -> None:
        now = time.perf_counter()
        self._credit = min(self.burst_s, self._credit + (now - self._refilled_at) * self.share)
        self._refilled_at = now

    def _hold(self) -> None:
        self._released = asyncio.Event()
        if self._on_hold is not None:
            self._on_hold()
        for connection in self._connections:
            connection.stop_reading()
        self._schedule_release()

    def _schedule_release(self) -> None:
        # Back to a full bucket, so XRPC then runs for up to burst_s at a time
        # rather than one parse per release.
        wait_s = (self.burst_s - self._credit) / self.share
        self._timer = asyncio.get_running_loop().call_later(wait_s, self._release)

    def _release(self) -> None:
        self._timer = None
        self._refill()
        if self._credit < self.burst_s * 0.999 and not self._closed:
            # Work already admitted kept running while held: pay for it too.
            self._schedule_release()
            return
        released, self._released = self._released, None
        self.begin()
        try:
            for connection in list(self._connections):
                connection.start_reading()
        finally:
            self.end()
        if released is not None:
            released.set()

    def add(self, connection: SharedLoopConnection) -> None:
        self._connections.add(connection)

    def discard(self, connection: SharedLoopConnection) -> None:
        self._connections.discard(connection)

    def close(self) -> None:
        """Hold no more, and release now: on shutdown, what is in flight may finish."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._release()


class _Metered:
    """Awaits a coroutine, charging each of its steps to a ``LoopShare``."""

    __slots__ = ("_coro", "_share")

    def __init__(self, coro: Coroutine[Any, Any, Any], share: LoopShare) -> None:
        self._coro = coro
        self._share = share

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, share = self._coro, self._share
        value: Any = None
        error: BaseException | None = None
        while True:
            share.begin()
            try:
                signal = coro.send(value) if error is None else coro.throw(error)
            except StopIteration as done:
                return done.value
            finally:
                share.end()
            try:
                value, error = (yield signal), None
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                # Cancellation and the like go to the coroutine, as ``await`` does.
                value, error = None, exc


class SharedLoopConnection(_Connection):
    """An XRPC connection whose loop time is charged to a ``LoopShare``."""

    def __init__(self, *args: Any, loop_share: LoopShare, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._share = loop_share
        # What arrived while held, parsed on release; None: nothing waits.
        self._unread: bytearray | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._share.begin()
        try:
            super().connection_made(transport)
            if self.transport is not None:
                self._share.add(self)
                if self._share.held:
                    self.stop_reading()
        finally:
            self._share.end()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._share.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._share.held:
            # Read before the hold reached this transport (or aiohttp asking to
            # parse what it buffered): kept, parsed on release.
            self._unread = (self._unread or bytearray()) + data
            self.stop_reading()
            return
        self._share.begin()
        try:
            super().data_received(data)
        finally:
            self._share.end()

    def stop_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def start_reading(self) -> None:
        if self._unread is not None:
            data, self._unread = bytes(self._unread), None
            self.data_received(data)
        # aiohttp pauses a transport itself for its own buffers (a request body
        # read slowly), and the backpressure for a client that does not read;
        # each resumes its own hold when it is over.
        others_hold = super().reading_held_elsewhere() or (
            self._flow is not None and self._flow.holding
        )
        if self.transport is not None and not self._share.held and not others_hold:
            self.transport.resume_reading()

    def reading_held_elsewhere(self) -> bool:
        # The backpressure must not resume a transport this share holds.
        return super().reading_held_elsewhere() or self._share.held

    async def start(self) -> None:
        await _Metered(super().start(), self._share)

    async def _handle_request(
        self,
        request: web.BaseRequest,
        start_time: Any,
        request_handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
    ) -> tuple[web.StreamResponse, bool]:
        # Requests parsed before the hold began wait here for their turn.
        await self._share.admitted()
        result: tuple[web.StreamResponse, bool] = await _Metered(
            super()._handle_request(request, start_time, request_handler), self._share
        )
        return result


def shared_loop_connections(share: LoopShare) -> Callable[..., SharedLoopConnection]:
    """The connection factory of a listener whose work ``share`` bounds."""

    def make(*args: Any, **kwargs: Any) -> SharedLoopConnection:
        return SharedLoopConnection(*args, loop_share=share, **kwargs)

    return make


def xrpc_loop_share(settings: Settings, metrics: Metrics) -> LoopShare | None:
    """The XRPC share of a serving process, unless turned off: of the loop, beside sign
    (``SIDECAR_XRPC_LOOP_SHARE``), or of one CPU, in an XRPC process of its own
    (``SIDECAR_XRPC_CPU_SHARE``, which the loop time of a process that does nothing
    else measures)."""
    listeners = set(settings.listeners)
    if "xrpc" not in listeners:
        return None
    percent = settings.xrpc_loop_share if "sign" in listeners else settings.xrpc_cpu_share
    if percent >= 100:
        return None
    return LoopShare(
        share=percent / 100,
        burst_s=settings.xrpc_loop_burst_ms / 1000,
        on_hold=metrics.xrpc_loop_holds.inc,
        on_work=metrics.xrpc_loop_seconds.inc,
    )
