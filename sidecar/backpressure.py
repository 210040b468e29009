"""What one HTTP connection may hold for a client that sends and does not read.

Three bounds, each a setting (docs/operations.md#slow-clients):

- ``max_pipelined`` requests awaiting an answer: at the bound the connection
  is not read until one is answered. Bytes parsed are fed a slice at a time,
  so one read of tiny pipelined requests overshoots the bound by little.
- ``max_queued_bytes`` of unsent answers, in the process (the transport's
  high-water mark) and in the kernel (the socket's send buffer, which left
  alone grows to megabytes): over it the connection is not read either.
- ``write_timeout_s``: answers over that mark which do not drain within it,
  or left unsent by a close, get the connection aborted with a reset, which
  drops what was queued here and in the kernel at once. A connection that
  times out idle with answers still unread in the kernel is aborted as well.
"""

from __future__ import annotations

import contextlib
import fcntl
import socket
import struct
import termios
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import asyncio
    from collections.abc import Callable

# Incoming bytes are parsed this many at a time.
FEED_SLICE: Final = 4096
# What pause_reading/resume_reading raise on a transport that is closing.
_TRANSPORT_GONE: Final = (AttributeError, NotImplementedError, RuntimeError)


class Backpressure:
    """The holds on reading one connection, and the write timeout of its answers.

    ``parse`` hands bytes to the HTTP parser; ``backlog`` says how many parsed
    requests await an answer; ``parser_holds`` whether another holds reading
    (aiohttp, whose body buffer is full, or the XRPC loop share); ``abort`` is
    called, with the reason, just before the transport is aborted.
    """

    def __init__(
        self,
        transport: asyncio.Transport,
        loop: asyncio.AbstractEventLoop,
        *,
        max_pipelined: int,
        max_queued_bytes: int,
        write_timeout_s: float,
        parse: Callable[[bytes], None],
        backlog: Callable[[], int],
        parser_holds: Callable[[], bool],
        abort: Callable[[str], None],
    ) -> None:
        self._transport: asyncio.Transport | None = transport
        self._loop = loop
        self._max_pipelined = max_pipelined
        self._write_timeout_s = write_timeout_s
        self._parse = parse
        self._backlog = backlog
        self._parser_holds = parser_holds
        self._on_abort = abort
        # Why reading is held ("pipeline", "write"), and what came meanwhile.
        self._holds: set[str] = set()
        self._held: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        transport.set_write_buffer_limits(high=max_queued_bytes)
        _bound_socket(transport, max_queued_bytes, write_timeout_s)

    @property
    def holding(self) -> bool:
        """Whether one of these bounds holds reading now."""
        return bool(self._holds)

    def received(self, data: bytes) -> None:
        """Bytes from the client: parsed, or kept while reading is held."""
        if self._holds:
            # aiohttp resumed reading for its own reasons; the hold stands.
            self._held.append(data)
            self._pause()
            return
        self._feed(data)

    def answered(self) -> None:
        """An answer went out: under the bound, the connection is read again."""
        if self._backlog() < self._max_pipelined:
            self._release("pipeline")

    def writing_paused(self) -> None:
        """Over ``max_queued_bytes``: read no more, and give the queue the write timeout."""
        self._hold("write")
        self._start_timer()

    def writing_resumed(self) -> None:
        self._stop_timer()
        self._release("write")

    def closing(self) -> None:
        """The connection is being closed: answers still unsent get the write timeout."""
        transport = self._transport
        if transport is not None and transport.get_write_buffer_size() > 0:
            self._start_timer()

    def unsent(self) -> bool:
        """Whether answers are still queued, here or (on Linux) unacknowledged in the kernel."""
        transport = self._transport
        if transport is None:
            return False
        if transport.get_write_buffer_size() > 0:
            return True
        sock = transport.get_extra_info("socket")
        if sock is None:
            return False
        try:
            queued = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0")
        except OSError:
            return False
        return bool(struct.unpack("i", queued)[0])

    def lost(self) -> None:
        self._stop_timer()
        self._held.clear()
        self._transport = None

    def _feed(self, data: bytes) -> None:
        if _fewer_requests_end_in(data, self._max_pipelined - self._backlog()):
            # Too few request heads can end in ``data`` to reach the bound: parsed
            # whole, as a request body (a batch of 100 KiB) mostly is, rather than
            # in slices that each cost a pass through the parser and the body reader.
            self._parse(data)
            if self._backlog() >= self._max_pipelined:
                self._hold("pipeline")
            return
        # An empty ``data`` too: aiohttp passes b"" to parse what it kept back.
        for at in range(0, max(len(data), 1), FEED_SLICE):
            self._parse(data[at : at + FEED_SLICE] if len(data) > FEED_SLICE else data)
            if self._backlog() >= self._max_pipelined:
                rest = data[at + FEED_SLICE :]
                if rest:
                    self._held.insert(0, rest)
                self._hold("pipeline")
                return

    def _hold(self, reason: str) -> None:
        self._holds.add(reason)
        self._pause()

    def _release(self, reason: str) -> None:
        if reason not in self._holds:
            return
        self._holds.discard(reason)
        while self._held and not self._holds:
            self._feed(self._held.pop(0))
        if self._holds or self._transport is None or self._parser_holds():
            return
        with contextlib.suppress(*_TRANSPORT_GONE):
            self._transport.resume_reading()

    def _pause(self) -> None:
        if self._transport is not None:
            with contextlib.suppress(*_TRANSPORT_GONE):
                self._transport.pause_reading()

    def _start_timer(self) -> None:
        if self._timer is None:
            self._timer = self._loop.call_later(self._write_timeout_s, self.abort)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def abort(self) -> None:
        """Reset the connection: what it has queued, here and in the kernel, is dropped."""
        self._stop_timer()
        transport = self._transport
        if transport is None:
            return
        self._on_abort("write_timeout")
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # A zero linger makes the close a reset, which frees the kernel's
            # send buffer at once instead of leaving it to an orphaned socket.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()


def _fewer_requests_end_in(data: bytes, room: int) -> bool:
    """Whether fewer than ``room`` request heads can end in ``data``.

    A head ends with a blank line, two line feeds, and one more head may end with
    what the previous read split off; so fewer than ``2 * room - 2`` line feeds are
    enough. ``find`` (memchr) stops at that count, and costs about a microsecond
    on a 100 KiB body with none, where ``count`` would scan it all. Line feeds in
    bodies and header lines only make the answer "no" more often.
    """
    at = -1
    for _ in range(2 * room - 2):
        at = data.find(b"\n", at + 1)
        if at < 0:
            return True
    return False


def _bound_socket(transport: asyncio.Transport, send_buffer: int, write_timeout_s: float) -> None:
    """Bound what the kernel holds for a TCP connection: a send buffer of
    ``send_buffer`` (Linux doubles it), and, on Linux, a reset once sent bytes stay
    unacknowledged (or unsent, the client's window being shut) for twice the write
    timeout. That second bound is a backstop for a connection already closed with
    answers unsent; the write timeout proper is the process's, which comes first."""
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if option is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, option, int(write_timeout_s * 2000))
