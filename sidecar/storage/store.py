"""The Redis layout of signing secrets, and every Redis call the sidecar makes.

This is the only module that imports ``redis``. Every Redis failure leaves it as
``StorageUnavailable`` (the caller answers 503), and every call runs under one
deadline, so a Redis that stops answering fails as fast as one that refuses.

``connect`` reaches the three topologies ``REDIS_URL`` can name (see
``sidecar.redis_url``): one server, a primary found through Sentinel, or a
Redis Cluster. The store reads and writes them the same way.

Keys of one owner share the hash tag ``{<did>}`` (DESIGN.md §5), so each Lua
script touches one cluster slot:

    wsc:{<did>}:s:<name>   hash    env, ver, created, rotated
    wsc:{<did>}:idx        zset    names scored by creation time (list order)
    wsc:{<did>}:log        stream  audit entries, never a token; capped
    wsc:{<did>}:jti:<h>    string  a service JWT id seen from issuer <did>, until
                                   the token expires (h: SHA-256 hex of the jti)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, TypeAlias, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import (
    ClusterError,
    MovedError,
    NoScriptError,
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

from sidecar.errors import ChangeNotDurable, SecretExists, SecretNotFound, StorageUnavailable
from sidecar.names import is_valid_did, is_valid_name, validate_did, validate_name
from sidecar.redis_url import SentinelTarget, parse_redis_url
from sidecar.storage.durability import Durability

if TYPE_CHECKING:
    from pathlib import Path

    from redis.asyncio.connection import AbstractConnection, ConnectionPool

T = TypeVar("T")

EVENTS_CHANNEL: Final = "wsc:events"

# Redis errors that mean "not available now, try again", as opposed to a bug.
# ClusterError covers CLUSTERDOWN and redirections that never settle; redis-py
# raises RedisClusterException (not a RedisError) when no node answers or the
# slots are not all covered, which is the cluster's way of being down.
_UNAVAILABLE: Final = (
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

# Reads that decide a signature or answer a caller come from the current
# primary only (DESIGN.md §5). A primary demoted by a failover keeps its
# clients' connections and, as a replica, still answers reads and no-writes
# scripts with whatever it had, so every script asks first (a write script
# too: a replica with replica-read-only off would take it). READONLY is
# what a replica answers a write with: redis-py's Sentinel connections take
# it as "this is no longer the primary", drop the connection and ask the
# sentinels again.
_PRIMARY_ONLY: Final = """
if not string.find(redis.call('INFO', 'replication'), 'role:master', 1, true) then
  return redis.error_reply('READONLY this node is not the primary')
end
"""

# Server time keeps every replica's timestamps on one clock.
_NOW_MS: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: secret hash, index, audit log. ARGV: name, envelope, actor, log cap.
_CREATE: Final = (
    _PRIMARY_ONLY
    + _NOW_MS
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return {'exists'} end
redis.call('HSET', KEYS[1], 'env', ARGV[2], 'ver', 1, 'created', now)
-- The index score is creation time in microseconds, forced to increase: two
-- creates in one millisecond (or a clock step back) must still list in the
-- order they happened, not by name, which is how a zset breaks score ties.
local score = tonumber(t[1]) * 1000000 + tonumber(t[2])
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if last[2] and tonumber(last[2]) >= score then score = tonumber(last[2]) + 1 end
redis.call('ZADD', KEYS[2], string.format('%d', score), ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*',
  'op', 'create', 'name', ARGV[1], 'ver', 1, 'at', now, 'actor', ARGV[3])
return {'ok', 1, now}
"""
)

# rotate never creates: a missing hash is NotFound (DESIGN.md §5).
_ROTATE: Final = (
    _PRIMARY_ONLY
    + _NOW_MS
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'not_found'} end
local ver = redis.call('HINCRBY', KEYS[1], 'ver', 1)
redis.call('HSET', KEYS[1], 'env', ARGV[2], 'rotated', now)
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*',
  'op', 'rotate', 'name', ARGV[1], 'ver', ver, 'at', now, 'actor', ARGV[3])
return {'ok', ver, now}
"""
)

_DELETE: Final = (
    _PRIMARY_ONLY
    + _NOW_MS
    + """
local ver = redis.call('HGET', KEYS[1], 'ver')
if not ver then return {'not_found'} end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*',
  'op', 'delete', 'name', ARGV[1], 'ver', ver, 'at', now, 'actor', ARGV[3])
return {'ok', tonumber(ver), now}
"""
)


# Reads many secrets' env and ver in one command. A pipeline of HMGETs costs
# the client far more per key (each command is packed, parsed and dispatched
# on its own), and this is the sign hot path. KEYS: secret hashes, in order.
# Declared no-writes (Redis 7+, Valkey), so Redis runs it like a read: also
# while writes are paused (CLIENT PAUSE WRITE, which a coordinated FAILOVER
# uses), where an undeclared script would wait with the writes.
_READ_ENVELOPES: Final = (
    "#!lua flags=no-writes"
    + _PRIMARY_ONLY
    + """
local out = {}
for i, key in ipairs(KEYS) do
  local row = redis.call('HMGET', key, 'env', 'ver')
  out[2 * i - 1] = row[1]
  out[2 * i] = row[2]
end
return out
"""
)
# Sent by hand on the sign path's own connections (see _ReadConnections).
# SHA-1 because EVALSHA names scripts by it; nothing here relies on its strength.
_READ_ENVELOPES_SHA: Final = hashlib.sha1(_READ_ENVELOPES.encode()).hexdigest()  # noqa: S324

# One owner's secrets in list order, in one round trip: name, ver, created,
# rotated for each (false, a nil reply, for a field that is absent). The
# hashes share the index's hash tag, so on a cluster they are in its slot.
# KEYS: index. ARGV: the owner's secret key prefix.
_LIST: Final = (
    "#!lua flags=no-writes"
    + _PRIMARY_ONLY
    + """
local out = {}
for _, name in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local row = redis.call('HMGET', ARGV[1] .. name, 'ver', 'created', 'rotated')
  table.insert(out, name)
  for i = 1, 3 do table.insert(out, row[i]) end
end
return out
"""
)

# The re-wrap compare-and-set: replace the envelope only if it is still the one
# that was read and re-sealed, so a rotation in between always wins. `ver` is
# left alone, because the token did not change. An empty actor means no audit.
# KEYS: secret hash, audit log. ARGV: expected envelope, new envelope, name,
# actor, log cap.
_REPLACE_ENVELOPE: Final = (
    _PRIMARY_ONLY
    + _NOW_MS
    + """
if redis.call('HGET', KEYS[1], 'env') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'env', ARGV[2])
if ARGV[4] ~= '' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], '*', 'op', 'rewrap', 'name', ARGV[3],
    'ver', redis.call('HGET', KEYS[1], 'ver'), 'at', now, 'actor', ARGV[4])
end
return 1
"""
)

# A service JWT's first use: OK, or false (a nil reply) when it was seen before.
# KEYS: the jti record. ARGV: its expiry, in Unix seconds.
_CLAIM_JTI: Final = (
    _PRIMARY_ONLY
    + """
return redis.call('SET', KEYS[1], 1, 'NX', 'EXAT', ARGV[1])
"""
)

# SCAN pattern for secret hashes; TYPE hash leaves out the index, the log and
# the jti records, and parse_secret_key checks each key it lets through.
_KEY_PATTERN: Final = "wsc:{*}:s:*"


def secret_key(did: str, name: str) -> str:
    return f"wsc:{{{did}}}:s:{name}"


def index_key(did: str) -> str:
    return f"wsc:{{{did}}}:idx"


def log_key(did: str) -> str:
    return f"wsc:{{{did}}}:log"


def jti_key(iss: str, jti: str) -> str:
    # Hashed: a jti is caller-chosen text of any length and alphabet.
    digest = hashlib.sha256(jti.encode("utf-8", "surrogateescape")).hexdigest()
    return f"wsc:{{{iss}}}:jti:{digest}"


def parse_secret_key(key: str) -> tuple[str, str] | None:
    """The ``(did, name)`` a secret's key stands for, or None for any other key."""
    if not key.startswith("wsc:{"):
        return None
    # A DID never holds "}" (see sidecar.names), so the first one ends the tag.
    did, brace, rest = key[len("wsc:{") :].partition("}")
    if not brace or not rest.startswith(":s:"):
        return None
    name = rest[len(":s:") :]
    if not (is_valid_did(did) and is_valid_name(name)):
        return None
    return did, name


@dataclass(frozen=True, slots=True)
class SecretChange:
    """The state a create, rotate or delete left behind."""

    name: str
    version: int
    at_ms: int


@dataclass(frozen=True, slots=True)
class SecretMeta:
    """What ``list`` shows of a secret: never its envelope."""

    name: str
    created_ms: int
    rotated_ms: int | None
    version: int


@dataclass(frozen=True, slots=True)
class StoredEnvelope:
    """A secret's current sealed token and its version."""

    envelope: str
    version: int


ErrorHook = Callable[[str], None]
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


class _ReadConnections:
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


class SecretStore:
    """Signing secrets in Redis: atomic changes, batched reads, audit and events."""

    def __init__(
        self,
        connection: RedisConnection,
        *,
        timeout_s: float,
        durability: Durability | None = None,
        audit_max_len: int = 1000,
        on_error: ErrorHook | None = None,
        on_not_durable: ErrorHook | None = None,
    ) -> None:
        self._connection = connection
        self._redis = connection.client
        self._timeout_s = timeout_s
        self._durability = durability or Durability()
        self._audit_max_len = audit_max_len
        self._on_error = on_error
        self._on_not_durable = on_not_durable
        # A registered script runs as EVALSHA and, on NOSCRIPT (a server that
        # restarted or failed over, or a cluster node that never saw it), loads
        # itself and runs again. That second run is safe: NOSCRIPT means the
        # first one never ran. Changes are sent as EVAL instead (see _change).
        self._list = self._redis.register_script(_LIST)
        self._sign_reads = (
            None
            if isinstance(self._redis, RedisCluster)
            else _ReadConnections(self._redis.connection_pool)
        )
        # The cluster slot map being learnt again after a node failed (see _relearn_slots).
        self._relearning: asyncio.Task[None] | None = None

    @property
    def client(self) -> Client:
        return self._redis

    @property
    def durability(self) -> Durability:
        return self._durability

    async def close(self) -> None:
        if self._relearning is not None:
            self._relearning.cancel()
        try:
            if self._sign_reads is not None:
                await self._sign_reads.aclose()
        finally:
            await self._connection.aclose()

    async def ping(self) -> None:
        await self._run("ping", lambda: self._redis.ping())

    async def create(self, did: str, name: str, envelope: str, *, actor: str) -> SecretChange:
        """Store a new secret; ``SecretExists`` if the owner has one of that name."""
        reply, waited = await self._script("create", _CREATE, did, name, envelope, actor)
        if reply[0] == b"exists":
            raise SecretExists(f"a secret named {name!r} already exists")
        return await self._changed("create", did, name, reply, waited)

    async def rotate(self, did: str, name: str, envelope: str, *, actor: str) -> SecretChange:
        """Replace a secret's envelope and bump its version; ``SecretNotFound`` if absent."""
        reply, waited = await self._script("rotate", _ROTATE, did, name, envelope, actor)
        if reply[0] == b"not_found":
            raise SecretNotFound(f"no secret named {name!r}")
        return await self._changed("rotate", did, name, reply, waited)

    async def delete(self, did: str, name: str, *, actor: str) -> SecretChange:
        """Remove a secret; ``SecretNotFound`` if absent."""
        reply, waited = await self._script("delete", _DELETE, did, name, "", actor)
        if reply[0] == b"not_found":
            raise SecretNotFound(f"no secret named {name!r}")
        return await self._changed("delete", did, name, reply, waited)

    async def _changed(
        self, operation: str, did: str, name: str, reply: list[Any], waited: Any
    ) -> SecretChange:
        self._require_durable(operation, waited)
        change = SecretChange(name=name, version=int(reply[1]), at_ms=int(reply[2]))
        await self._publish(did, operation, change)
        return change

    async def list_secrets(self, did: str) -> list[SecretMeta]:
        """The owner's secrets, oldest first, in one round trip."""
        validate_did(did)
        keys = [index_key(did)]
        args = [secret_key(did, "")]

        async def read() -> list[Any]:
            flat: Any = await self._list(keys=keys, args=args)
            return list(flat)

        flat = await self._read("list", read)
        metas = []
        for raw, ver, created, rotated in zip(*[iter(flat)] * 4, strict=True):
            # A name whose hash vanished meanwhile was just being deleted.
            if ver is None or created is None:
                continue
            metas.append(
                SecretMeta(
                    name=raw.decode(),
                    created_ms=int(created),
                    rotated_ms=int(rotated) if rotated is not None else None,
                    version=int(ver),
                )
            )
        return metas

    async def get_envelopes(self, refs: Sequence[tuple[str, str]]) -> list[StoredEnvelope | None]:
        """The current envelope of each ``(did, name)``, in order, in one round trip.

        On one server that is one script call. A cluster refuses a script whose
        keys span slots, and a batch of many owners spans many, so there the
        reads go as a cluster pipeline: one round trip to every node at once,
        each node answering for its own keys, and MOVED followed key by key.
        A cluster replica answers MOVED to every read, so there no node but
        the slot's primary ever answers.
        """
        if not refs:
            return []

        keys = [secret_key(did, name) for did, name in refs]
        client = self._redis
        sign_reads = self._sign_reads

        async def read() -> list[Any]:
            if sign_reads is None:
                assert isinstance(client, RedisCluster)
                async with client.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.hmget(key, "env", "ver")
                    rows: list[Any] = await pipe.execute()
                return [field for row in rows for field in row]
            try:
                return list(await sign_reads.call("EVALSHA", _READ_ENVELOPES_SHA, len(keys), *keys))
            except NoScriptError:
                # A server that restarted or failed over has lost its scripts.
                # NOSCRIPT means this call never ran, so loading and resending is safe.
                await sign_reads.call("SCRIPT", "LOAD", _READ_ENVELOPES)
                return list(await sign_reads.call("EVALSHA", _READ_ENVELOPES_SHA, len(keys), *keys))

        flat = await self._read("get_envelopes", read)
        return [
            StoredEnvelope(envelope=env.decode(), version=int(ver))
            if env is not None and ver is not None
            else None
            for env, ver in zip(flat[0::2], flat[1::2], strict=True)
        ]

    async def get_envelope(self, did: str, name: str) -> StoredEnvelope | None:
        return (await self.get_envelopes([(did, name)]))[0]

    async def claim_jti(self, iss: str, jti: str, until_s: int) -> bool:
        """Record that ``iss`` used ``jti``: True the first time, False on every reuse.

        The record expires at the Unix time ``until_s``, once the token could no
        longer pass its expiry check anyway. One ``SET NX`` on the shared Redis
        (in a script that refuses to run on a replica) makes the first use win on
        every replica. Not retried: a lost reply
        would make the retry look like a replay. A first use is durable as
        configured, or ``ChangeNotDurable``: a record a failover can lose would
        let the token be replayed.
        """
        validate_did(iss)
        key = jti_key(iss, jti)
        reply, waited = await self._change("claim_jti", key, ("EVAL", _CLAIM_JTI, 1, key, until_s))
        if reply is None:
            return False
        self._require_durable("claim_jti", waited)
        return True

    async def replace_envelope(
        self, did: str, name: str, expected: str, envelope: str, *, actor: str | None
    ) -> bool:
        """Swap the envelope for ``envelope`` if it is still ``expected``; ``ver`` stays.

        False when the secret changed (or went) since ``expected`` was read.
        With an ``actor``, an ``op=rewrap`` entry goes to the audit log. A swap
        is durable as configured, or ``ChangeNotDurable``.
        """
        validate_did(did)
        validate_name(name)
        key = secret_key(did, name)
        command = ("EVAL", _REPLACE_ENVELOPE, 2, key, log_key(did))
        args = (expected, envelope, name, actor or "", self._audit_max_len)
        reply, waited = await self._change("rewrap", key, (*command, *args))
        if not reply:
            return False
        self._require_durable("rewrap", waited)
        return True

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

            return await self._run("replication", per_node)
        info: Any = await self._run("replication", lambda: client.info("replication"))
        return [int(info["connected_slaves"])]

    async def fsync_refusal(self) -> str | None:
        """Why the primaries cannot confirm an fsync with WAITAOF, or None when they can."""
        client = self._redis
        probe = ("WAITAOF", 1, 0, 1)
        try:
            if isinstance(client, RedisCluster):
                await self._run("replication", client.initialize)
                await self._run(
                    "replication",
                    lambda: client.execute_command(*probe, target_nodes=RedisCluster.PRIMARIES),
                )
            else:
                await self._run(
                    "replication",
                    # redis-py leaves Redis.execute_command unannotated.
                    lambda: client.execute_command(*probe),  # type: ignore[no-untyped-call]
                )
        except RedisError as exc:
            text = str(exc).lower()
            if "unknown command" in text:
                return "the Redis server has no WAITAOF (it needs Redis 7.2+ or Valkey 8+)"
            if "appendonly" in text:
                return "the Redis primary runs with appendonly no"
            raise
        return None

    async def scan_secrets(self, *, page_size: int = 500) -> AsyncIterator[list[tuple[str, str]]]:
        """Every secret's ``(did, name)``, a page at a time, from every primary.

        SCAN returns each key that exists for the whole scan at least once; it
        may return one twice, and may or may not return keys made or deleted
        meanwhile, so whatever a caller does with a page must be idempotent.
        """
        client = self._redis
        if isinstance(client, RedisCluster):
            # A cluster's keys are spread over its primaries; each has its own cursor.
            await self._run("scan", client.initialize)
            for node in client.get_primaries():
                async for page in self._scan_node(page_size, node):
                    yield page
        else:
            async for page in self._scan_node(page_size, None):
                yield page

    async def _scan_node(
        self, page_size: int, node: ClusterNode | None
    ) -> AsyncIterator[list[tuple[str, str]]]:
        cursor = 0
        while True:
            page = functools.partial(self._scan_page, cursor, page_size, node)
            cursor, keys = await self._run("scan", page)
            refs = [ref for key in keys if (ref := parse_secret_key(key.decode())) is not None]
            if refs:
                yield refs
            if cursor == 0:
                return

    async def _scan_page(
        self, cursor: int, page_size: int, node: ClusterNode | None
    ) -> tuple[int, list[bytes]]:
        client = self._redis
        if isinstance(client, RedisCluster):
            assert node is not None
            # Aimed at one node, the cluster client answers ({node name: cursor}, keys).
            reply: Any = await client.scan(
                cursor, match=_KEY_PATTERN, count=page_size, _type="hash", target_nodes=node
            )
            return int(reply[0][node.name]), list(reply[1])
        reply = await client.scan(cursor, match=_KEY_PATTERN, count=page_size, _type="hash")
        return int(reply[0]), list(reply[1])

    async def _script(
        self, operation: str, script: str, did: str, name: str, envelope: str, actor: str
    ) -> tuple[list[Any], Any]:
        validate_did(did)
        validate_name(name)
        key = secret_key(did, name)
        command = ("EVAL", script, 3, key, index_key(did), log_key(did))
        args = (name, envelope, actor, self._audit_max_len)
        reply, waited = await self._change(operation, key, (*command, *args))
        return list(reply), waited

    async def _change(
        self, operation: str, key: str, command: tuple[str | int, ...]
    ) -> tuple[Any, Any]:
        """Send one change and, when durability is configured, its wait: ``(reply, wait reply)``.

        Both go on one connection, the wait right behind the change (see
        ``sidecar.storage.durability``); on a cluster, to the primary that owns
        ``key``'s slot. The deadline grows by the wait's own timeout. A change
        is sent as EVAL, not EVALSHA: a NOSCRIPT retry would leave the wait
        behind on the first connection. The wait reply is None when nothing
        was waited for; whether it suffices is for ``_require_durable``.
        """
        durability = self._durability
        commands = [command]
        timeout_s = self._timeout_s
        if durability.waits:
            commands.append(durability.wait_command())
            timeout_s += durability.timeout_s
        deadline = asyncio.get_running_loop().time() + timeout_s
        replies = await self._run(
            operation, lambda: self._send_together(key, commands), deadline=deadline
        )
        reply = replies[0]
        if isinstance(reply, Exception):
            self._count(operation)
            if isinstance(reply, _UNAVAILABLE) or str(reply).startswith("NOREPLICAS"):
                self._relearn_slots()
                # Refused before it ran: a replica, a cluster that is down or
                # moving the slot, or too few replicas (min-replicas-to-write).
                raise StorageUnavailable("storage refused the change") from reply
            raise reply
        return reply, replies[1] if durability.waits else None

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

    def _require_durable(self, operation: str, waited: Any) -> None:
        """Raise ``ChangeNotDurable`` unless the wait reply shows the durability was reached."""
        durability = self._durability
        if not durability.waits or (
            not isinstance(waited, Exception) and durability.reached(waited)
        ):
            return
        if self._on_not_durable is not None:
            self._on_not_durable(operation)
        raise ChangeNotDurable(f"the {operation} was not confirmed durable in time")

    async def _publish(self, did: str, op: str, change: SecretChange) -> None:
        # Dispatchers may react to this; correctness never depends on it
        # (DESIGN.md §5), so a failed publish is counted and otherwise ignored.
        message = json.dumps({"did": did, "name": change.name, "ver": change.version, "op": op})
        with contextlib.suppress(StorageUnavailable):
            await self._run("publish", lambda: self._redis.publish(EVENTS_CHANNEL, message))

    async def _read(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run an idempotent read, retrying once on a dropped connection.

        A pooled connection can be stale after Redis restarts; one retry inside
        the same deadline hides that without ever delaying past the timeout.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        try:
            return await self._run(operation, call, deadline=deadline, count_error=False)
        except StorageUnavailable:
            if loop.time() >= deadline:
                self._count(operation)
                raise
        if self._relearning is not None:
            # The retry goes by the slot map learnt since, if that is in time.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await asyncio.shield(self._relearning)
        return await self._run(operation, call, deadline=deadline)

    async def _run(
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
        except _UNAVAILABLE as exc:
            if count_error:
                self._count(operation)
            self._relearn_slots()
            raise StorageUnavailable("storage did not answer in time") from exc
        except RedisError:
            self._count(operation)
            raise

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
            with contextlib.suppress(*_UNAVAILABLE, RedisError):
                async with asyncio.timeout(self._timeout_s):
                    await client.nodes_manager.initialize()

        self._relearning = asyncio.get_running_loop().create_task(relearn())

    def _count(self, operation: str) -> None:
        if self._on_error is not None:
            self._on_error(operation)
