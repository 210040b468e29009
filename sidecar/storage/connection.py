"""Connections to the three topologies ``REDIS_URL`` can name (see
``sidecar.redis_url``): one server, a primary found through Sentinel, or a
Redis Cluster. The rest of the storage package reads and writes them the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, TypeAlias

import redis.asyncio as aioredis
import structlog
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.exceptions import (
    TimeoutError as RedisTimeoutError,
)

from sidecar.redis_url import SentinelTarget, parse_redis_url

if TYPE_CHECKING:
    from pathlib import Path

log = structlog.get_logger("sidecar.redis")

# Redis errors that mean "not available now, try again", as opposed to a bug.
# ClusterError covers CLUSTERDOWN and redirections that never settle; redis-py
# raises RedisClusterException (not a RedisError) when no node answers or the
# slots are not all covered, which is the cluster's way of being down.
UNAVAILABLE: Final = (
    RedisConnectionError,
    RedisTimeoutError,
    ReadOnlyError,
    ClusterError,
    RedisClusterException,
    TimeoutError,
    OSError,
)

# Connections per cluster node. redis-py's async cluster client raises at the
# limit instead of queueing, so it is set well above what coalesced reads need.
_CLUSTER_MAX_CONNECTIONS: Final = 1024

Client: TypeAlias = aioredis.Redis | RedisCluster


# How often a Sentinel deployment's primary is asked for (see watch_primary).
PRIMARY_POLL_S: Final = 0.25

FailoverHook = Callable[[], Awaitable[None]]


class RedisConnection:
    """A client of one Redis deployment, and whatever else must close with it."""

    def __init__(
        self,
        client: Client,
        *,
        sentinel: Sentinel | None = None,
        service_name: str | None = None,
        timeout_s: float = 1.0,
    ) -> None:
        self.client = client
        self._sentinel = sentinel
        self._service_name = service_name
        self._timeout_s = timeout_s
        self._on_failover: list[FailoverHook] = []
        self._watcher: asyncio.Task[None] | None = None
        self._closing = False

    def on_failover(self, hook: FailoverHook) -> None:
        """Call ``hook`` after the connections to a replaced primary were dropped."""
        self._on_failover.append(hook)

    def watch_primary(self) -> None:
        """Through Sentinel, follow the primary the sentinels name, as soon as they name it.

        redis-py asks the sentinels only when it opens a connection, and a
        connection to the old primary stays open through a failover. Until
        the sentinels reconfigure it (seconds after a coordinated
        ``SENTINEL FAILOVER``), the old primary still says it is the primary,
        so nothing else would move reads and writes off it: here every
        connection is dropped the moment the sentinels name another address,
        and the next call connects to the new primary.
        """
        if self._sentinel is not None and self._watcher is None:
            self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        assert self._sentinel is not None
        assert self._service_name is not None
        named: Any = None
        # Not `while True`: redis-py may turn a cancellation inside a sentinel
        # call into a connection error, which this loop takes in its stride.
        while not self._closing:
            try:
                async with asyncio.timeout(self._timeout_s):
                    now = await self._sentinel.discover_master(self._service_name)
            except (*UNAVAILABLE, RedisError):
                # No sentinel answered for it: keep what was named last.
                now = named
            if named is not None and now != named:
                log.warning("redis_primary_changed")
                assert isinstance(self.client, aioredis.Redis)  # master_for() makes one
                await self.client.connection_pool.disconnect(inuse_connections=True)
                for hook in self._on_failover:
                    await hook()
            named = now
            # Sentinel tells a change only to a subscriber; asking is simpler
            # and survives a lost connection to any one sentinel.
            await asyncio.sleep(PRIMARY_POLL_S)

    async def aclose(self) -> None:
        self._closing = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        try:
            await self.client.aclose()
        finally:
            # master_for() clients do not own the sentinels' own connections.
            if self._sentinel is not None:
                await self._sentinel.aclose()


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


def connect(
    url: str,
    *,
    timeout_s: float,
    cluster: bool = False,
    ca_file: Path | None = None,
    sentinel_password: str | None = None,
) -> RedisConnection:
    """A client whose every connect gives up after ``timeout_s``.

    Its commands have no socket timeout of their own: the store bounds each
    one, connecting included, by its deadline.

    It does not retry on its own: a retried write after a lost reply could
    apply twice, and reads are retried, where that is safe, by the store. That
    holds for each topology: the cluster client's retry count is zero too (it
    still follows MOVED and ASK, which are refusals, not lost replies), and so
    is every sentinel's. Connections are made on first use, so this never
    blocks and never fails for an unreachable server.
    """
    target = parse_redis_url(url, cluster=cluster)
    timeouts: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": _no_retry(),
    }
    common: dict[str, Any] = {
        **timeouts,
        # Every command the store sends runs under its own deadline
        # (``SecretStore._run``), which also covers connecting and the retry.
        # A socket timeout on top would only duplicate it, and redis-py pays
        # for one with an extra task per command sent. A command cancelled by
        # the deadline closes its connection, so no half-read reply is reused.
        "socket_timeout": None,
        "decode_responses": False,
        "health_check_interval": 30,
    }
    tls: dict[str, Any] = {}
    if target.tls:
        tls = {"ssl_cert_reqs": "required"}
        if ca_file is not None:
            tls["ssl_ca_certs"] = str(ca_file)
    if isinstance(target, SentinelTarget):
        sentinel_kwargs: dict[str, Any] = {**timeouts}
        if target.tls:
            sentinel_kwargs.update(ssl=True, **tls)
        if sentinel_password is not None:
            sentinel_kwargs["password"] = sentinel_password
        # redis-py leaves Sentinel.__init__ unannotated.
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(target.sentinels), sentinel_kwargs=sentinel_kwargs
        )
        client = sentinel.master_for(
            target.service_name,
            db=target.db,
            username=target.username,
            password=target.password,
            ssl=target.tls,
            **common,
            **tls,
        )
        return RedisConnection(
            client, sentinel=sentinel, service_name=target.service_name, timeout_s=timeout_s
        )
    if target.cluster:
        return RedisConnection(
            RedisCluster.from_url(
                target.url,
                max_connections=_CLUSTER_MAX_CONNECTIONS,
                **common,
                **tls,
            )
        )
    return RedisConnection(aioredis.Redis.from_url(target.url, **common, **tls))
