"""``wisp-sidecar keys status``: stored envelopes by key id, and which this configuration opens.

Run it before retiring a key: a previous key that still seals secrets must stay
in ``SIDECAR_KEK_PREVIOUS`` until ``rewrap`` has moved them.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from sidecar.cli.common import EXIT_FAILED, EXIT_OK, counted, run
from sidecar.cli.devmode import dev_tool_settings
from sidecar.cli.rewrap import unopenable_line
from sidecar.errors import ConfigError, StorageUnavailable

if TYPE_CHECKING:
    from sidecar.crypto import Keyring
    from sidecar.errors import EnvelopeError
    from sidecar.settings import Settings
    from sidecar.storage.inventory import Inventory


def role_of(kid: str | None, keyring: Keyring) -> str:
    """What this configuration holds a key id as: active, previous, missing or malformed."""
    if kid is None:
        return "malformed"
    if kid == keyring.active_kid:
        return "active"
    return "previous" if kid in keyring.kids else "missing"


def report_lines(inventory: Inventory, keyring: Keyring) -> list[str]:
    """One line per key id (the configured ones first, even when they seal nothing)."""
    kids: list[str | None] = list(keyring.kids)
    kids += sorted((k for k in inventory.by_kid if k not in kids), key=lambda k: k or "")
    lines = []
    for kid in kids:
        count = inventory.by_kid.get(kid)
        secrets, opened = (count.secrets, count.opened) if count else (0, 0)
        lines.append(f"kid={kid or '-'} {role_of(kid, keyring)} secrets={secrets} opened={opened}")
    return lines


def status(settings: Settings) -> int:
    """Exit 0 when every stored envelope opens with this configuration, 1 otherwise."""
    with dev_tool_settings(settings) as settings:
        return _status(settings)


def _status(settings: Settings) -> int:
    from sidecar.app import store_for
    from sidecar.crypto import Keyring
    from sidecar.storage.inventory import take_inventory

    if settings.redis_url is None:
        raise ConfigError("REDIS_URL", "is not set: keys status reads the Redis your sidecars use")
    keyring = Keyring(settings.kek, settings.kek_previous)

    def failed(did: str, name: str, exc: EnvelopeError) -> None:
        print(unopenable_line("keys", did, name, exc), file=sys.stderr)

    async def work() -> Inventory:
        store = store_for(settings)
        try:
            return await take_inventory(store, keyring, on_failure=failed)
        finally:
            await store.close()

    try:
        inventory = run(work())
    except StorageUnavailable:
        print("keys: Redis did not answer in time; run it again", file=sys.stderr)
        return EXIT_FAILED
    for line in report_lines(inventory, keyring):
        print(f"keys: {line}")
    print(f"keys: {inventory.secrets} stored, {inventory.unopened} do not open")
    for kid, count in inventory.by_kid.items():
        if role_of(kid, keyring) == "previous" and count.secrets:
            print(
                f"keys: previous key {kid} still seals {counted(count.secrets, 'secret')}: "
                "run `wisp-sidecar rewrap` before retiring it",
                file=sys.stderr,
            )
    if inventory.unopened:
        print(
            "keys: some stored tokens do not open with this configuration; signatures with "
            "them answer 503. Add the missing key to SIDECAR_KEK_PREVIOUS",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return EXIT_OK
