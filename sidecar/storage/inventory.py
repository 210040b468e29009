"""Which key-encryption keys the stored envelopes are sealed under, and which of them a
keyring opens: what ``wisp-sidecar keys status`` and ``doctor`` report.

Each envelope is opened for real, not only matched by its key id, so a damaged
envelope counts as one that does not open. Nothing opened is kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sidecar.errors import EnvelopeError

if TYPE_CHECKING:
    from collections.abc import Callable

    from sidecar.crypto import Keyring
    from sidecar.storage.store import SecretStore


@dataclass
class KidCount:
    """The secrets sealed under one key id, and how many of them opened."""

    secrets: int = 0
    opened: int = 0


@dataclass
class Inventory:
    """Envelopes by key id (None: malformed, no key id at all)."""

    by_kid: dict[str | None, KidCount] = field(default_factory=dict)

    @property
    def secrets(self) -> int:
        return sum(count.secrets for count in self.by_kid.values())

    @property
    def unopened(self) -> int:
        return sum(count.secrets - count.opened for count in self.by_kid.values())


async def take_inventory(
    store: SecretStore,
    keyring: Keyring,
    *,
    on_failure: Callable[[str, str, EnvelopeError], None] | None = None,
) -> Inventory:
    """Count every stored envelope by key id, and whether ``keyring`` opens it."""
    inventory = Inventory()
    async for page in store.scan_secrets():
        for (did, name), stored in zip(page, await store.get_envelopes(page), strict=True):
            if stored is None:
                continue  # deleted since the scan found it
            kid = keyring.kid_of(stored.envelope)
            count = inventory.by_kid.setdefault(kid, KidCount())
            count.secrets += 1
            try:
                keyring.open(stored.envelope, did=did, name=name)
            except EnvelopeError as exc:
                if on_failure is not None:
                    on_failure(did, name, exc)
            else:
                count.opened += 1
    return inventory
