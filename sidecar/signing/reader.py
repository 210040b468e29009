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
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sidecar.storage.store import SecretStore, StoredEnvelope

Ref = tuple[str, str]


class CoalescingReader:
    """Reads current envelopes, batching the reads of one loop turn."""

    def __init__(self, store: SecretStore, on_batch: Callable[[int], None] | None = None) -> None:
        self._store = store
        self._on_batch = on_batch
        # One future per waiter, so a cancelled request cancels only its own.
        self._pending: list[tuple[Ref, asyncio.Future[StoredEnvelope | None]]] = []
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
        return list(await asyncio.gather(*(self._future(ref) for ref in refs)))

    def _future(self, ref: Ref) -> asyncio.Future[StoredEnvelope | None]:
        loop = asyncio.get_running_loop()
        if not self._pending:
            # Two hops: see the module docstring.
            loop.call_soon(loop.call_soon, self._flush)
        future: asyncio.Future[StoredEnvelope | None] = loop.create_future()
        self._pending.append((ref, future))
        return future

    def _flush(self) -> None:
        batch, self._pending = self._pending, []
        task = asyncio.get_running_loop().create_task(self._read(batch))
        # Keep a reference until done: the loop holds tasks only weakly.
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _read(self, batch: list[tuple[Ref, asyncio.Future[StoredEnvelope | None]]]) -> None:
        self.batches_sent += 1
        if self._on_batch is not None:
            self._on_batch(len(batch))
        refs = list(dict.fromkeys(ref for ref, _ in batch))
        try:
            envelopes = await self._store.get_envelopes(refs)
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except Exception as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        found = dict(zip(refs, envelopes, strict=True))
        for ref, future in batch:
            if not future.done():
                future.set_result(found[ref])
