"""``wisp-sidecar rewrap``: re-seal every stored token under the active KEK."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from sidecar.cli.common import EXIT_FAILED, EXIT_OK, run
from sidecar.cli.devmode import dev_tool_settings
from sidecar.errors import ChangeNotDurable, ConfigError, StorageUnavailable

if TYPE_CHECKING:
    from sidecar.errors import EnvelopeError
    from sidecar.settings import Settings


def unopenable_line(command: str, did: str, name: str, exc: EnvelopeError) -> str:
    """One line naming a secret that did not open, its key id and why; never the envelope."""
    return (
        f"{command}: cannot open {name!r} of {did} "
        f"(kid={exc.kid or '-'}, reason={exc.reason}): {exc}"
    )


def rewrap(settings: Settings, *, audit: bool) -> int:
    """Exit 0 when every secret is current or was re-wrapped, 1 otherwise."""
    with dev_tool_settings(settings) as settings:
        return _rewrap(settings, audit=audit)


def _rewrap(settings: Settings, *, audit: bool) -> int:
    from sidecar.app import store_for
    from sidecar.crypto import Keyring
    from sidecar.storage.rewrap import Rewrap

    if settings.redis_url is None:
        raise ConfigError("REDIS_URL", "is not set: rewrap works on the Redis your sidecars use")
    keyring = Keyring(settings.kek, settings.kek_previous)
    if not keyring.can_seal:
        raise ConfigError("SIDECAR_KEK", "is not set: rewrap seals under the active key")

    def failed(did: str, name: str, exc: EnvelopeError) -> None:
        print(unopenable_line("rewrap", did, name, exc), file=sys.stderr)

    async def work() -> int:
        store = store_for(settings)
        job = Rewrap(store, keyring, actor="rewrap" if audit else None, on_failure=failed)
        try:
            await job.run()
        except ChangeNotDurable:
            print(f"rewrap: {job.report.summary()}")
            print(
                "rewrap: a re-sealed envelope was not confirmed by the replicas "
                "SIDECAR_DURABLE_REPLICAS asks for; it may or may not have been applied, "
                "run it again",
                file=sys.stderr,
            )
            return EXIT_FAILED
        except StorageUnavailable:
            print(f"rewrap: {job.report.summary()}")
            print(
                "rewrap: Redis did not answer in time; stopped with nothing half-done, "
                "run it again",
                file=sys.stderr,
            )
            return EXIT_FAILED
        finally:
            await store.close()
        print(f"rewrap: {job.report.summary()}")
        if job.report.skipped_changed:
            print(
                "rewrap: some secrets changed during the run and were left to their writers; "
                "run it again to check that they are current",
                file=sys.stderr,
            )
        return EXIT_FAILED if job.report.failed_to_open else EXIT_OK

    return run(work())
