"""Signing secrets in Redis: atomic changes, batched reads, audit and events.

Each change is one Lua script (``sidecar.storage.scripts``) over the key layout
of ``sidecar.storage.layout``, sent through ``RedisCalls``, which bounds it by a
deadline and, when configured, waits until it is durable.
"""

from __future__ import annotations

import contextlib
import functools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoScriptError

from sidecar.errors import (
    SecretExists,
    SecretNotFound,
    SecretQuotaExceeded,
    StorageUnavailable,
)
from sidecar.names import validate_did, validate_name
from sidecar.storage import scripts
from sidecar.storage.layout import (
    EVENTS_CHANNEL,
    KEY_PATTERN,
    change_counter_key,
    index_key,
    log_key,
    parse_secret_key,
    secret_key,
)
from sidecar.storage.rate_limits import NO_CHANGE_LIMIT, ChangeLimit
from sidecar.storage.sign_reads import ReadConnections

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence

    from sidecar.storage.calls import RedisCalls


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
class ListPage:
    """One page of ``list``; ``after`` is where the next starts, None when none remain."""

    secrets: list[SecretMeta]
    after: tuple[int, str] | None


@dataclass(frozen=True, slots=True)
class StoredEnvelope:
    """A secret's current sealed token and its version."""

    envelope: str
    version: int


class SecretStore:
    """Signing secrets in Redis: atomic changes, batched reads, audit and events."""

    def __init__(
        self, calls: RedisCalls, *, audit_max_len: int = 1000, max_secrets_per_did: int = 1000
    ) -> None:
        self._calls = calls
        self._redis = calls.client
        self._audit_max_len = audit_max_len
        self._max_secrets = max_secrets_per_did
        # A registered script runs as EVALSHA and, on NOSCRIPT (a server that
        # restarted or failed over, or a cluster node that never saw it), loads
        # itself and runs again. That second run is safe: NOSCRIPT means the
        # first one never ran. Changes are sent as EVAL instead (see RedisCalls.change).
        self._list = self._redis.register_script(scripts.LIST_PAGE)
        self._sign_reads = (
            None
            if isinstance(self._redis, RedisCluster)
            else ReadConnections(self._redis.connection_pool)
        )
        if self._sign_reads is not None:
            # They are the pool's make, not in it: dropped with it on a failover.
            calls.on_failover(self._sign_reads.aclose)

    @property
    def calls(self) -> RedisCalls:
        return self._calls

    async def close(self) -> None:
        try:
            if self._sign_reads is not None:
                await self._sign_reads.aclose()
        finally:
            await self._calls.close()

    @property
    def max_secrets_per_did(self) -> int:
        return self._max_secrets

    async def create(
        self,
        did: str,
        name: str,
        envelope: str,
        *,
        actor: str,
        imported: bool = False,
        limit: ChangeLimit = NO_CHANGE_LIMIT,
    ) -> SecretChange:
        """Store a new secret; ``SecretExists`` if the owner has one of that name,
        ``SecretQuotaExceeded`` (nothing stored) if it holds its quota or more.

        ``imported`` marks a token the caller brought: the audit entry and the
        event say ``op=import``; everything else is a create's. Each change
        counts against ``limit`` (``RateLimited`` past it) in the same script.
        """
        op = "import" if imported else "create"
        quota = str(self._max_secrets)
        reply, waited = await self._script(
            "create", scripts.CREATE, did, name, envelope, actor, limit, op, quota
        )
        if reply[0] == b"exists":
            raise SecretExists(f"a secret named {name!r} already exists")
        if reply[0] == b"quota":
            raise SecretQuotaExceeded(int(reply[1]), self._max_secrets)
        return await self._changed("create", did, name, reply, waited, event=op)

    async def rotate(
        self,
        did: str,
        name: str,
        envelope: str,
        *,
        actor: str,
        limit: ChangeLimit = NO_CHANGE_LIMIT,
    ) -> SecretChange:
        """Replace a secret's envelope and bump its version; ``SecretNotFound`` if absent."""
        reply, waited = await self._script(
            "rotate", scripts.ROTATE, did, name, envelope, actor, limit
        )
        if reply[0] == b"not_found":
            raise SecretNotFound(f"no secret named {name!r}")
        return await self._changed("rotate", did, name, reply, waited)

    async def delete(
        self, did: str, name: str, *, actor: str, limit: ChangeLimit = NO_CHANGE_LIMIT
    ) -> SecretChange:
        """Remove a secret; ``SecretNotFound`` if absent."""
        reply, waited = await self._script("delete", scripts.DELETE, did, name, "", actor, limit)
        if reply[0] == b"not_found":
            raise SecretNotFound(f"no secret named {name!r}")
        return await self._changed("delete", did, name, reply, waited)

    async def _changed(
        self,
        operation: str,
        did: str,
        name: str,
        reply: list[Any],
        waited: Any,
        *,
        event: str | None = None,
    ) -> SecretChange:
        self._calls.require_durable(operation, waited)
        change = SecretChange(name=name, version=int(reply[1]), at_ms=int(reply[2]))
        await self._publish(did, event or operation, change)
        return change

    async def list_secrets(
        self, did: str, *, limit: int, after: tuple[int, str] | None = None
    ) -> ListPage:
        """Up to ``limit`` of the owner's secrets in list order (oldest first, by
        creation), starting after ``after`` (a page's ``after``), in one round trip.

        Each read costs O(log n + limit), never O(all the owner's secrets).
        """
        validate_did(did)
        keys = [index_key(did)]
        score, last = ("", "") if after is None else (str(after[0]), after[1])
        # One more than the page, to know whether another follows.
        args: list[str | int] = [secret_key(did, ""), score, last, limit + 1]

        async def read() -> list[Any]:
            flat: Any = await self._list(keys=keys, args=args)
            return list(flat)

        flat = await self._calls.read("list", read)
        rows = list(zip(*[iter(flat)] * 5, strict=True))
        metas = []
        for raw, _, ver, created, rotated in rows[:limit]:
            # The script reads index and hash in one atomic step; a name without
            # its hash would be a half-deleted secret, which no script leaves.
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
        if len(rows) <= limit:
            return ListPage(metas, None)
        # Resume after the page's last index entry. Scores are whole microseconds
        # (below 2**53, so a float holds them exactly), however the server writes them.
        name, raw_score = rows[limit - 1][0], rows[limit - 1][1]
        return ListPage(metas, (int(float(raw_score)), name.decode()))

    async def count_secrets(self, did: str) -> int:
        """How many secrets the owner holds (its index's ZCARD, O(1))."""
        validate_did(did)
        key = index_key(did)
        return int(await self._calls.read("count", lambda: self._redis.zcard(key)))

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
                return list(
                    await sign_reads.call("EVALSHA", scripts.READ_ENVELOPES_SHA, len(keys), *keys)
                )
            except NoScriptError:
                # A server that restarted or failed over has lost its scripts.
                # NOSCRIPT means this call never ran, so loading and resending is safe.
                await sign_reads.call("SCRIPT", "LOAD", scripts.READ_ENVELOPES)
                return list(
                    await sign_reads.call("EVALSHA", scripts.READ_ENVELOPES_SHA, len(keys), *keys)
                )

        flat = await self._calls.read("get_envelopes", read)
        return [
            StoredEnvelope(envelope=env.decode(), version=int(ver))
            if env is not None and ver is not None
            else None
            for env, ver in zip(flat[0::2], flat[1::2], strict=True)
        ]

    async def get_envelope(self, did: str, name: str) -> StoredEnvelope | None:
        return (await self.get_envelopes([(did, name)]))[0]

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
        command = ("EVAL", scripts.REPLACE_ENVELOPE, 2, key, log_key(did))
        args = (expected, envelope, name, actor or "", self._audit_max_len)
        reply, waited = await self._calls.change("rewrap", key, (*command, *args))
        if not reply:
            return False
        self._calls.require_durable("rewrap", waited)
        return True

    async def scan_secrets(self, *, page_size: int = 500) -> AsyncIterator[list[tuple[str, str]]]:
        """Every secret's ``(did, name)``, a page at a time, from every primary.

        SCAN returns each key that exists for the whole scan at least once; it
        may return one twice, and may or may not return keys made or deleted
        meanwhile, so whatever a caller does with a page must be idempotent.
        """
        client = self._redis
        if isinstance(client, RedisCluster):
            # A cluster's keys are spread over its primaries; each has its own cursor.
            await self._calls.run("scan", client.initialize)
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
            cursor, keys = await self._calls.run("scan", page)
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
                cursor, match=KEY_PATTERN, count=page_size, _type="hash", target_nodes=node
            )
            return int(reply[0][node.name]), list(reply[1])
        reply = await client.scan(cursor, match=KEY_PATTERN, count=page_size, _type="hash")
        return int(reply[0]), list(reply[1])

    async def _script(
        self,
        operation: str,
        script: str,
        did: str,
        name: str,
        envelope: str,
        actor: str,
        limit: ChangeLimit,
        *extra: str,
    ) -> tuple[list[Any], Any]:
        validate_did(did)
        validate_name(name)
        key = secret_key(did, name)
        keys = (key, index_key(did), log_key(did), change_counter_key(did))
        command = ("EVAL", script, len(keys), *keys)
        args: tuple[str | int, ...] = (
            name,
            envelope,
            actor,
            self._audit_max_len,
            *extra,
            *limit.args(),
        )
        reply, waited = await self._calls.change(operation, key, (*command, *args))
        if reply[0] == b"rate_limited":
            # Refused before it changed anything; the WAIT behind it has nothing to wait for.
            raise limit.exceeded(list(reply))
        return list(reply), waited

    async def _publish(self, did: str, op: str, change: SecretChange) -> None:
        # Dispatchers may react to this; correctness never depends on it
        # (docs/architecture.md §5), so a failed publish is counted and otherwise ignored.
        message = json.dumps({"did": did, "name": change.name, "ver": change.version, "op": op})
        with contextlib.suppress(StorageUnavailable):
            await self._calls.run("publish", lambda: self._redis.publish(EVENTS_CHANNEL, message))
