"""The sign path's own connections to Redis, outside the client's pool."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from redis.asyncio.connection import AbstractConnection, ConnectionPool


class ReadConnections:
    """The sign path's own connections, outside the client's pool.

    The sign path sends one script call per loop turn. Through the client
    that read cost about twice the CPU it does here (its retry wrapper, the
    pool's lock and observability hooks: 137-174 against 72 us per read in
    process on the bench machine), a few per cent of every signature. These
    connections are made by the client's own pool, so TLS, credentials, the
    database and Sentinel discovery stay redis-py's; only the per-call
    bookkeeping is skipped. A connection cut by a deadline (redis-py closes
    it on cancellation) reconnects on its next use.
    """

    # Batches in flight at once are few (one per loop turn, each a round trip
    # long); connections beyond this many idle ones are closed.
    MAX_IDLE: Final = 4

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool
        self._idle: list[AbstractConnection] = []
        self._all: set[AbstractConnection] = set()

    async def call(self, *args: str | int) -> Any:
        """Send one command and return its reply (a Redis error reply is raised)."""
        if self._idle:
            connection = self._idle.pop()
        else:
            # redis-py leaves make_connection unannotated.
            connection = self._pool.make_connection()  # type: ignore[no-untyped-call]
            self._all.add(connection)
        try:
            if not connection.is_connected:
                # connect() itself, as the pool does: a Sentinel-managed
                # connection asks the sentinels for the primary only there.
                await connection.connect()  # type: ignore[no-untyped-call]
            await connection.send_packed_command(connection.pack_command(*args))
            return await connection.read_response()
        finally:
            if len(self._idle) < self.MAX_IDLE:
                self._idle.append(connection)
            else:
                self._all.discard(connection)
                await connection.disconnect()

    async def aclose(self) -> None:
        connections, self._all, self._idle = self._all, set(), []
        for connection in connections:
            await connection.disconnect()
