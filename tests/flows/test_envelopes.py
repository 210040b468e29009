"""The coalescing envelope reader: one round trip per loop turn, never an old batch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from support import ALICE, BOB, SidecarFactory

from sidecar.app import Sidecar
from sidecar.errors import StorageUnavailable
from sidecar.signing.reader import CoalescingReader


async def seed(sidecar: Sidecar, did: str, name: str) -> str:
    """Store a new secret ``name`` of ``did`` and return the envelope it is sealed in."""
    envelope = sidecar.keyring.seal("wsk_" + "A" * 32, did=did, name=name)
    await sidecar.store.create(did, name, envelope, actor="test")
    return envelope


async def test_reads_of_one_loop_turn_share_one_round_trip(sidecar: Sidecar) -> None:
    """100 reads started together (some of the same secret) are one batch, each with its answer."""
    first = await seed(sidecar, ALICE, "a")
    second = await seed(sidecar, BOB, "b")
    reader = CoalescingReader(sidecar.store)
    refs = [(ALICE, "a"), (BOB, "b"), (ALICE, "missing")] * 33 + [(ALICE, "a")]
    results = await asyncio.gather(*(reader.get(did, name) for did, name in refs))
    assert reader.batches_sent == 1
    by_ref = {ref: result for ref, result in zip(refs, results, strict=True)}
    alices, bobs = by_ref[(ALICE, "a")], by_ref[(BOB, "b")]
    assert alices is not None
    assert alices.envelope == first
    assert bobs is not None
    assert bobs.envelope == second
    assert by_ref[(ALICE, "missing")] is None


def batch_sent_event() -> tuple[asyncio.Event, Callable[[int], None]]:
    """An event set when the reader sends a batch, and the hook that sets it."""
    sent = asyncio.Event()
    return sent, lambda size: sent.set()


async def test_a_read_after_a_batch_was_sent_waits_for_the_next_batch(sidecar: Sidecar) -> None:
    """A read asked while a batch is in flight is not served by it, so it sees later writes."""
    await seed(sidecar, ALICE, "a")
    sent, on_batch = batch_sent_event()
    reader = CoalescingReader(sidecar.store, on_batch=on_batch)
    early = asyncio.ensure_future(reader.get(ALICE, "a"))
    await sent.wait()
    rotated = sidecar.keyring.seal("wsk_" + "B" * 32, did=ALICE, name="a")
    change = await sidecar.store.rotate(ALICE, "a", rotated, actor="test")
    late = await reader.get(ALICE, "a")
    assert reader.batches_sent == 2
    assert late is not None
    assert (late.envelope, late.version) == (rotated, change.version)
    assert (await early) is not None


async def test_one_cancelled_reader_does_not_cancel_the_others(sidecar: Sidecar) -> None:
    """Cancelling one waiting read leaves the other reads of the same batch to complete."""
    envelope = await seed(sidecar, ALICE, "a")
    sent, on_batch = batch_sent_event()
    reader = CoalescingReader(sidecar.store, on_batch=on_batch)
    doomed = asyncio.ensure_future(reader.get(ALICE, "a"))
    survivor = asyncio.ensure_future(reader.get(ALICE, "a"))
    # Cancelled once the batch both joined is on its way.
    await sent.wait()
    doomed.cancel()
    stored = await survivor
    assert stored is not None
    assert stored.envelope == envelope
    assert doomed.cancelled()


async def test_a_storage_failure_reaches_every_reader(make_sidecar: SidecarFactory) -> None:
    """When Redis is unreachable, every read of the batch raises StorageUnavailable."""
    from sidecar.storage.embedded import free_port

    dead = await make_sidecar(REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    reader = CoalescingReader(dead.store)
    results = await asyncio.gather(
        *(reader.get(ALICE, f"n{i}") for i in range(5)), return_exceptions=True
    )
    assert all(isinstance(result, StorageUnavailable) for result in results)
    assert reader.batches_sent == 1
    with pytest.raises(StorageUnavailable):
        await reader.get(ALICE, "again")
