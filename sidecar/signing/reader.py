"""Fresh envelope reads for signing, coalesced per event-loop turn.

Every sign request must read its secret's envelope from Redis after the
request arrived (docs/architecture.md §8): that is what makes a rotation effective at
once on every replica. To keep that from costing a round trip per request,
reads that arrive in the same loop turn share one pipelined round trip.

The batch is sent two loop turns after its first read: the extra turn takes
in the requests whose bytes arrive in the next I/O poll, which roughly
tripled the reads per round trip under load (bench/RESULTS.md).

Why this stays fresh: a read joins only a batch that has not been sent yet.
The batch is sent after every read that joined it was asked, so each read is
served by a Redis round trip that started after the request arrived.

A batch sign request joins as one waiter for all its refs (``get_many``), not
one per item: a future per item and the ``gather`` over them cost more than
the item's HMAC.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sidecar.storage.store import SecretStore, StoredEnvelope

Ref = tuple[str, str]
_ManyWaiter = tuple[list[Ref], "asyncio.Future[list[StoredEnvelope | None]]", int]


class CoalescingReader:
    """Reads current envelopes, batching the reads of one loop turn."""

    def __init__(self, store: SecretStore, on_batch: Callable[[int], None] | None = None) -> None:
        self._store = store
        self._on_batch = on_batch
        # One future per waiter, so a cancelled request cancels only its own.
        self._pending: list[tuple[Ref, asyncio.Future[StoredEnvelope | None]]] = []
        # Waiters for several refs at once (batch requests): the refs without
        # repeats, and how many reads they stand for.
        self._pending_many: list[_ManyWaiter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches_sent = 0

    def get(self, did: str, name: str) -> Awaitable[StoredEnvelope | None]:
        """The envelope stored for ``(did, name)`` now (None if there is none), to await.

        A plain function returning the future, not a coroutine: one less
        coroutine per sign request.
        """
        return self._future((did, name))

    async def get_many(self, refs: list[Ref]) -> list[StoredEnvelope | None]:
        """Like ``get`` for several refs at once, in order, in the same batch."""
        unique = list(dict.fromkeys(refs))
        loop = asyncio.get_running_loop()
        self._schedule(loop)
        future: asyncio.Future[list[StoredEnvelope | None]] = loop.create_future()
        self._pending_many.append((unique, future, len(refs)))
        envelopes = await future
        if len(unique) == len(refs):
            return envelopes  # no repeats, so already in the order asked
        found = dict(zip(unique, envelopes, strict=True))
        return [found[ref] for ref in refs]

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if not (self._pending or self._pending_many):
            # Two hops: see the module docstring.
            loop.call_soon(loop.call_soon, self._flush)

    def _future(self, ref: Ref) -> asyncio.Future[StoredEnvelope | None]:
        loop = asyncio.get_running_loop()
        self._schedule(loop)
        future: asyncio.Future[StoredEnvelope | None] = loop.create_future()
        self._pending.append((ref, future))
        return future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        many, self._pending_many = self._pending_many, []
        task = asyncio.get_running_loop().create_task(self._read(batch, many))
        # Keep a reference until done: the loop holds tasks only weakly.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(
        self,
        batch: list[tuple[Ref, asyncio.Future[StoredEnvelope | None]]],
        many: list[_ManyWaiter],
    ) -> None:
        self.batches_sent += 1
        futures: list[asyncio.Future[Any]] = [future for _, future in batch]
        futures += [future for _, future, _ in many]
        if self._on_batch is not None:
            # Each item of a batch request counts as a read, as a sign request does.
            self._on_batch(len(batch) + sum(asked for _, _, asked in many))
        wanted = dict.fromkeys(ref for ref, _ in batch)
        for refs, _, _ in many:
            wanted.update(dict.fromkeys(refs))
        refs = list(wanted)
        try:
            envelopes = await self._store.get_envelopes(refs)
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()
            raise
        except Exception as exc:
            for future in futures:
                if not future.done():
                    future.set_exception(exc)
            return
        found = dict(zip(refs, envelopes, strict=True))
        for ref, future in batch:
            if not future.done():
                future.set_result(found[ref])
        for wanted_refs, many_future, _ in many:
            if not many_future.done():
                many_future.set_result([found[ref] for ref in wanted_refs])
