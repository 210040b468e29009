"""Every Redis call the sidecar makes goes through ``RedisCalls``.

Every call runs under one deadline, so a Redis that stops answering fails as
fast as one that refuses, and every Redis failure leaves as one of our
exceptions: ``StorageUnavailable`` (the caller answers 503) or, for an error
reply that means a bug, ``StorageError`` (500). A change is sent with its
durability wait on one connection (see ``sidecar.storage.durability``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final, TypeVar

import structlog
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import MovedError, RedisError

from sidecar.errors import ChangeNotDurable, StorageError, StorageUnavailable
from sidecar.storage.connection import UNAVAILABLE
from sidecar.storage.durability import Durability, no_fsync_reason

if TYPE_CHECKING:
    from sidecar.storage.connection import Client, FailoverHook, RedisConnection

T = TypeVar("T")

log = structlog.get_logger("sidecar.redis")

# Why fsync ``auto`` stops asking a server that runs so (see ``fsync_refusal``).
APPENDFSYNC_NO: Final = "the Redis primary runs with appendfsync no, so it never confirms an fsync"
_UNKNOWN: Final = "unknown"

ErrorHook = Callable[[str], None]


# Every operation a call is counted under when it fails (redis_errors_total),
# known in advance so the metric shows each at 0 from start.
OPERATIONS: Final = (
    "create",
    "rotate",
    "delete",
    "rewrap",
    "claim_jti",
    "list",
    "count",
    "get_envelopes",
    "audit",
    "ping",
    "publish",
    "replication",
    "scan",
    "rate_limit",
)


class RedisCalls:
    """One Redis deployment's client, with deadlines, durability and error counting."""

    def __init__(
        self,
        connection: RedisConnection,
        *,
        timeout_s: float,
        durability: Durability | None = None,
        on_error: ErrorHook | None = None,
        on_not_durable: ErrorHook | None = None,
    ) -> None:
        self._connection = connection
        self._redis = connection.client
        self._timeout_s = timeout_s
        self._durability = durability or Durability()
        self._on_error = on_error
        self._on_not_durable = on_not_durable
        # The cluster slot map being learnt again after a node failed (see _relearn_slots).
        self._relearning: asyncio.Task[None] | None = None
        # With fsync ``auto``: why the last change (or the start-up check) found
        # that the primary cannot fsync, None when it could, _UNKNOWN before either.
        self._fsync_state: str | None = _UNKNOWN

    @property
    def client(self) -> Client:
        return self._redis

    @property
    def durability(self) -> Durability:
        return self._durability

    def watch_primary(self) -> None:
        """Follow a Sentinel failover the moment the sentinels name the new primary."""
        self._connection.watch_primary()

    def on_failover(self, hook: FailoverHook) -> None:
        """Call ``hook`` once the connections to a replaced primary were dropped."""
        self._connection.on_failover(hook)

    async def close(self) -> None:
        if self._relearning is not None:
            self._relearning.cancel()
        await self._connection.aclose()

    async def ping(self) -> None:
        await self.run("ping", lambda: self._redis.ping())

    async def replicas_per_primary(self) -> list[int]:
        """How many replicas each primary has connected now: one number per primary."""
        client = self._redis
        if isinstance(client, RedisCluster):

            async def per_node() -> list[int]:
                await client.initialize()
                infos: Any = await client.info("replication", target_nodes=RedisCluster.PRIMARIES)
                # One primary answers bare; several answer by node name.
                found = infos.values() if "role" not in infos else [infos]
                return [int(info["connected_slaves"]) for info in found]

            return await self.run("replication", per_node)
        info: Any = await self.run("replication", lambda: client.info("replication"))
        return [int(info["connected_slaves"])]

    async def server_version(self) -> str:
        """The server's name and version, such as ``valkey 9.0.0`` (a cluster: its seed's)."""
        info: Any = await self.run("replication", lambda: self._redis.info("server"))
        if "redis_version" not in info and info:
            # A cluster client answers per node: {node name: info}.
            info = next(iter(info.values()))
        if "valkey_version" in info:
            return f"valkey {info['valkey_version']}"
        return f"redis {info.get('redis_version', 'unknown')}"

    async def fsync_refusal(self) -> str | None:
        """Why the primaries cannot confirm an fsync with WAITAOF, or None when they can.

        Each primary is asked (a cluster's all of them). ``appendfsync no``
        is read with ``CONFIG GET`` where the server allows it: such a server
        answers WAITAOF, but only ever with a timeout.
        """
        client = self._redis
        probe = ("WAITAOF", 1, 0, 1)
        try:
            if isinstance(client, RedisCluster):
                await self.run("replication", client.initialize)
                await self.run(
                    "replication",
                    lambda: client.execute_command(*probe, target_nodes=RedisCluster.PRIMARIES),
                )
            else:
                await self.run(
                    "replication",
                    # redis-py leaves Redis.execute_command unannotated.
                    lambda: client.execute_command(*probe),  # type: ignore[no-untyped-call]
                )
        except StorageError as exc:
            reason = no_fsync_reason(exc.__cause__)
            if reason is None:
                raise
            return reason
        return APPENDFSYNC_NO if "no" in await self._appendfsync_policies() else None

    async def _appendfsync_policies(self) -> set[str]:
        """Every primary's ``appendfsync``; none known when CONFIG is denied or renamed."""
        client = self._redis
        try:
            if isinstance(client, RedisCluster):
                reply: Any = await self.run(
                    "replication",
                    lambda: client.config_get("appendfsync", target_nodes=RedisCluster.PRIMARIES),
                )
            else:
                reply = await self.run("replication", lambda: client.config_get("appendfsync"))
        except StorageError:
            return set()
        return set(_policies(reply))

    def without_fsync(self, reason: str) -> None:
        """Say, in one warning line, that the primary cannot fsync (fsync ``auto``, at start).

        A server with ``appendfsync no`` is not asked again: its WAITAOF
        would only time out, and every change would answer 503.
        """
        if reason == APPENDFSYNC_NO:
            self._durability = replace(self._durability, fsync="off")
        self._fsync_state = reason
        log.warning(
            "durability_without_fsync",
            reason=reason,
            hint="changes are acknowledged before the primary's AOF is fsynced, so a crash "
            "of the server can lose them; turn on appendonly (appendfsync everysec or "
            "always, Redis 7.2+ or Valkey 8+), or set SIDECAR_DURABLE_FSYNC=off to say "
            "this is meant",
        )

    def with_fsync(self) -> None:
        """Note that the primaries fsync (fsync ``auto``, at start); a later change is logged."""
        self._fsync_state = None

    def _observe_fsync(self, reason: str | None) -> None:
        """What a change's WAITAOF answer showed; a change from what was known is logged once."""
        known, self._fsync_state = self._fsync_state, reason
        if known in (_UNKNOWN, reason):
            # Before the start-up check (or in a command line tool) nothing is said.
            return
        if reason is None:
            log.info("durability_fsync_restored")
        else:
            log.warning("durability_without_fsync", reason=reason, hint="see SIDECAR_DURABLE_FSYNC")

    async def change(
        self, operation: str, key: str, command: tuple[str | int, ...]
    ) -> tuple[Any, Any]:
        """Send one change and, when durability is configured, its wait: ``(reply, wait reply)``.

        Both go on one connection, the wait right behind the change (see
        ``sidecar.storage.durability``); on a cluster, to the primary that owns
        ``key``'s slot. The deadline grows by the wait's own timeout. A change
        is sent as EVAL, not EVALSHA: a NOSCRIPT retry would leave the wait
        behind on the first connection. The wait reply is None when nothing
        was waited for, else the list of the wait replies; whether they suffice
        is for ``require_durable``.
        """
        durability = self._durability
        commands = [command, *durability.wait_commands()]
        timeout_s = self._timeout_s + durability.timeout_s
        deadline = asyncio.get_running_loop().time() + timeout_s
        replies = await self.run(
            operation, lambda: self._send_together(key, commands), deadline=deadline
        )
        reply = replies[0]
        if isinstance(reply, Exception):
            self.count(operation)
            if isinstance(reply, UNAVAILABLE) or str(reply).startswith("NOREPLICAS"):
                self._relearn_slots()
                # Refused before it ran: a replica, a cluster that is down or
                # moving the slot, or too few replicas (min-replicas-to-write).
                raise StorageUnavailable("storage refused the change") from reply
            raise StorageError(f"redis refused {operation}") from reply
        # The durability goes with its replies: the start-up check may turn
        # fsync waits off while this change was in flight.
        return reply, (durability, replies[1:]) if durability.waits else None

    async def _send_together(self, key: str, commands: list[tuple[str | int, ...]]) -> list[Any]:
        """The replies to ``commands``, sent in one round trip on one connection.

        Errors come back as exception objects in the list, not raised.
        """
        client = self._redis
        if not isinstance(client, RedisCluster):
            async with client.pipeline(transaction=False) as pipe:
                for command in commands:
                    pipe.execute_command(*command)
                return list(await pipe.execute(raise_on_error=False))
        await client.initialize()
        while True:
            node = client.get_node_from_key(key)
            # Every command aimed at one node goes on one of its connections.
            # Redirections are not followed: a change resent elsewhere would
            # leave its wait behind.
            async with client.pipeline() as pipe:
                for command in commands:
                    pipe.execute_command(*command, target_nodes=node)
                replies = list(await pipe.execute(raise_on_error=False, allow_redirections=False))
            if not isinstance(replies[0], MovedError):
                return replies
            # The slot has a new owner (a failover or a reshard) and the change
            # did not run: learn the owner and resend, within the deadline.
            await client.nodes_manager.move_slot(replies[0])

    def require_durable(self, operation: str, waited: Any) -> None:
        """Raise ``ChangeNotDurable`` unless the wait replies show the durability was reached."""
        if waited is None:
            return
        durability, replies = waited
        reached, no_fsync = durability.judge(replies)
        if durability.fsync == "auto":
            self._observe_fsync(no_fsync)
        if reached:
            return
        if self._on_not_durable is not None:
            self._on_not_durable(operation)
        raise ChangeNotDurable(f"the {operation} was not confirmed durable in time")

    async def read(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run an idempotent read, retrying once on a dropped connection.

        A pooled connection can be stale after Redis restarts; one retry inside
        the same deadline hides that without ever delaying past the timeout.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        try:
            return await self.run(operation, call, deadline=deadline, count_error=False)
        except StorageUnavailable:
            if loop.time() >= deadline:
                self.count(operation)
                raise
        if self._relearning is not None:
            # The retry goes by the slot map learnt since, if that is in time.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await asyncio.shield(self._relearning)
        return await self.run(operation, call, deadline=deadline)

    async def run(
        self,
        operation: str,
        call: Callable[[], Awaitable[T]],
        *,
        deadline: float | None = None,
        count_error: bool = True,
    ) -> T:
        if deadline is None:
            deadline = asyncio.get_running_loop().time() + self._timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                return await call()
        except UNAVAILABLE as exc:
            if count_error:
                self.count(operation)
            self._relearn_slots()
            raise StorageUnavailable("storage did not answer in time") from exc
        except RedisError as exc:
            # Not unavailable but refused: a bug, or a server that denies a
            # command (an ACL without INFO, say). It leaves as our own error,
            # which the listeners answer with a 500 that carries no detail.
            self.count(operation)
            raise StorageError(f"redis refused {operation}") from exc

    def _relearn_slots(self) -> None:
        """On a cluster, ask the nodes again which primary owns which slot.

        The cluster client is built without retries (see ``connect``), and
        redis-py relearns the slot map only in a retry, so after a primary
        dies it would keep sending to the dead node even once the cluster has
        promoted its replica. One relearning runs at a time; every failure
        meanwhile starts the next, so the map follows the failover as soon as
        the cluster reports it.
        """
        client = self._redis
        if not isinstance(client, RedisCluster):
            return
        if self._relearning is not None and not self._relearning.done():
            return

        async def relearn() -> None:
            # A failure leaves the old map, and the next failed call tries again.
            with contextlib.suppress(*UNAVAILABLE, RedisError):
                async with asyncio.timeout(self._timeout_s):
                    await client.nodes_manager.initialize()

        self._relearning = asyncio.get_running_loop().create_task(relearn())

    def count(self, operation: str) -> None:
        if self._on_error is not None:
            self._on_error(operation)


def _policies(reply: Any) -> list[str]:
    """The ``appendfsync`` values in a CONFIG GET reply: a pair, a mapping, or one per node."""
    if isinstance(reply, dict):
        for key, value in reply.items():
            if _text(key) == "appendfsync":
                return [_text(value)]
        return [policy for value in reply.values() for policy in _policies(value)]
    if isinstance(reply, list | tuple) and len(reply) == 2 and _text(reply[0]) == "appendfsync":
        return [_text(reply[1])]
    return []


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
