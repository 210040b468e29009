"""Re-seal every stored envelope under the active KEK: ``wisp-sidecar rewrap``.

A KEK rotation deploys the new key as active and the old one as previous; this
then moves every token onto the new key, so the old one can be retired.

Each secret is re-sealed with a compare-and-set (``SecretStore.replace_envelope``):
the new envelope replaces the one that was read only if that one is still
stored, so a rotate or delete that lands in between always wins, and ``ver``
stays as it was because the token did not change. Every step either completes
or leaves a secret as it found it, which makes a run safe beside sidecars that
serve traffic, and safe to interrupt and run again.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from sidecar.errors import EncryptionUnavailable, EnvelopeError, StorageUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable

    from sidecar.crypto import Keyring
    from sidecar.storage.store import SecretStore, StoredEnvelope

# A secret that keeps changing under the command is left to its writers after
# this many tries; the next run picks it up if it still needs it.
ATTEMPTS: Final = 3

# Secrets of one SCAN page re-sealed at once: enough to hide round trips,
# few enough not to crowd out the sidecars' own traffic.
CONCURRENCY: Final = 32


@dataclass
class RewrapReport:
    """What a run did, secret by secret."""

    scanned: int = 0
    rewrapped: int = 0
    already_current: int = 0
    # Rotated, deleted or re-wrapped by someone else between read and write.
    skipped_changed: int = 0
    # Malformed, or sealed under a key the keyring does not hold.
    failed_to_open: int = 0

    def summary(self) -> str:
        return (
            f"scanned={self.scanned} rewrapped={self.rewrapped} "
            f"already_current={self.already_current} skipped_changed={self.skipped_changed} "
            f"failed_to_open={self.failed_to_open}"
        )


class Rewrap:
    """One run over every secret; ``report`` fills in as it goes, so a failed run still counts."""

    def __init__(
        self,
        store: SecretStore,
        keyring: Keyring,
        *,
        actor: str | None = "rewrap",
        on_failure: Callable[[str, str, EnvelopeError], None] | None = None,
    ) -> None:
        if not keyring.can_seal:
            raise EncryptionUnavailable("re-wrapping needs an active key-encryption key")
        self._store = store
        self._keyring = keyring
        self._actor = actor
        self._on_failure = on_failure
        self.report = RewrapReport()

    async def run(self) -> RewrapReport:
        """Re-wrap every secret; ``StorageUnavailable`` if Redis stops answering."""
        semaphore = asyncio.Semaphore(CONCURRENCY)
        async for page in self._store.scan_secrets():
            self.report.scanned += len(page)
            current = await self._store.get_envelopes(page)
            try:
                async with asyncio.TaskGroup() as group:
                    for (did, name), stored in zip(page, current, strict=True):
                        group.create_task(self._bounded(semaphore, did, name, stored))
            except ExceptionGroup as errors:
                # The group cancels the rest at the first failure; Redis being
                # away is the expected one, and is raised as itself.
                first = errors.exceptions[0]
                if isinstance(first, StorageUnavailable):
                    raise first from errors
                raise
        return self.report

    async def _bounded(
        self, semaphore: asyncio.Semaphore, did: str, name: str, stored: StoredEnvelope | None
    ) -> None:
        async with semaphore:
            await self._secret(did, name, stored)

    async def _secret(self, did: str, name: str, stored: StoredEnvelope | None) -> None:
        for attempt in range(ATTEMPTS):
            if stored is None:
                # Deleted since the scan found it.
                self.report.skipped_changed += 1
                return
            try:
                if not self._keyring.needs_rewrap(stored.envelope):
                    if attempt == 0:
                        self.report.already_current += 1
                    else:
                        self.report.skipped_changed += 1
                    return
                token = self._keyring.open(stored.envelope, did=did, name=name)
            except EnvelopeError as exc:
                self.report.failed_to_open += 1
                if self._on_failure is not None:
                    self._on_failure(did, name, exc)
                return
            envelope = self._keyring.seal(token, did=did, name=name)
            if await self._store.replace_envelope(
                did, name, stored.envelope, envelope, actor=self._actor
            ):
                self.report.rewrapped += 1
                return
            stored = await self._store.get_envelope(did, name)
        self.report.skipped_changed += 1
