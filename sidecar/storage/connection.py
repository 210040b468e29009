"""Connections to the three topologies ``REDIS_URL`` can name (see
``sidecar.redis_url``): one server, a primary found through Sentinel, or a
Redis Cluster. The rest of the storage package reads and writes them the same way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterError,
    ReadOnlyError,
    RedisClusterException,
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


class RedisConnection:
    """A client of one Redis deployment, and whatever else must close with it."""

    def __init__(self, client: Client, *, sentinel: Sentinel | None = None) -> None:
        self.client = client
        self._sentinel = sentinel

    async def aclose(self) -> None:
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
        return RedisConnection(client, sentinel=sentinel)
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
