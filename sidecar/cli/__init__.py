"""The ``wisp-sidecar`` command: ``serve``, ``rewrap``, ``keygen`` and ``apikey``.

The only reader of ``os.environ``. A bad setting ends the process with exit
code 2 and one line that names it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from sidecar.auth.api_keys import generate_api_key, keys_file_line
from sidecar.crypto import encode_kek, generate_kek
from sidecar.errors import (
    ChangeNotDurable,
    ConfigError,
    EmbeddedServerError,
    StartupFailed,
    StorageUnavailable,
)
from sidecar.names import is_valid_did
from sidecar.settings import Secret, Settings
from sidecar.storage.embedded import EmbeddedValkey

if TYPE_CHECKING:
    from collections.abc import Coroutine, Mapping, Sequence

T = TypeVar("T")

EXIT_CONFIG = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wisp-sidecar", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the sidecar in the foreground")
    rewrap = commands.add_parser(
        "rewrap", help="re-seal every stored token under the active KEK (after a KEK rotation)"
    )
    rewrap.add_argument(
        "--no-audit", action="store_true", help="do not add an op=rewrap entry to the audit logs"
    )
    commands.add_parser("keygen", help="print a new key-encryption key (KEK)")
    apikey = commands.add_parser("apikey", help="print a new API key and its keys-file line")
    apikey.add_argument("--did", required=True, help="the owner DID the key acts as")
    apikey.add_argument("--label", default="", help="a label for the audit log")
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = os.environ if environ is None else environ
    try:
        if args.command == "keygen":
            print(encode_kek(generate_kek()))
            return 0
        if args.command == "apikey":
            return _apikey(args.did, args.label)
        if args.command == "rewrap":
            return _rewrap(Settings.from_env(env), audit=not args.no_audit)
        return _serve(Settings.from_env(env))
    except ConfigError as exc:
        print(f"wisp-sidecar: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StartupFailed as exc:
        print(f"wisp-sidecar: cannot start: {exc}", file=sys.stderr)
        return EXIT_CONFIG


def _apikey(did: str, label: str) -> int:
    if not is_valid_did(did):
        raise ConfigError("--did", "must be a DID, such as did:plc:abc123")
    if label and (any(ch.isspace() for ch in label) or "#" in label):
        raise ConfigError("--label", "must not contain spaces or '#'")
    key = generate_api_key()
    print(f"API key (shown once; give it to the caller): {key}")
    print("Add this line to the SIDECAR_API_KEYS_FILE:")
    print(keys_file_line(did, key, label))
    return 0


def _serve(settings: Settings) -> int:
    # Imported here so keygen and apikey start fast and need no event loop.
    from sidecar.app import serve
    from sidecar.cli.devmode import embedded_binary, prepare_dev_mode, wants_dev_mode
    from sidecar.log import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    embedded: EmbeddedValkey | None = None
    if settings.redis_url is None:
        try:
            # Found first: without the server, no development key is made either.
            binary = embedded_binary()
        except EmbeddedServerError as exc:
            raise ConfigError("REDIS_URL", f"unset, and {exc}") from exc
        if wants_dev_mode(settings):
            settings, banner = prepare_dev_mode(settings)
            print("\n".join(banner), file=sys.stderr, flush=True)
        try:
            embedded = EmbeddedValkey(settings.data_dir / "valkey", binary=binary, persist=True)
            embedded.start()
        except EmbeddedServerError as exc:
            raise ConfigError("REDIS_URL", f"unset, and the embedded Valkey failed: {exc}") from exc
        print(f"embedded Valkey at {embedded.url}, data in {embedded.data_dir}", file=sys.stderr)
        settings = replace(settings, redis_url=Secret(embedded.url))
    try:
        _run(serve(settings))
    finally:
        if embedded is not None:
            embedded.stop()
    return 0


def _rewrap(settings: Settings, *, audit: bool) -> int:
    """Exit 0 when every secret is current or was re-wrapped, 1 otherwise."""
    from sidecar.app import store_for
    from sidecar.crypto import Keyring
    from sidecar.storage.rewrap import Rewrap

    if settings.redis_url is None:
        raise ConfigError("REDIS_URL", "is not set: rewrap works on the Redis your sidecars use")
    keyring = Keyring(settings.kek, settings.kek_previous)
    if not keyring.can_seal:
        raise ConfigError("SIDECAR_KEK", "is not set: rewrap seals under the active key")

    def failed(did: str, name: str, reason: str) -> None:
        print(f"rewrap: cannot open {name!r} of {did}: {reason}", file=sys.stderr)

    async def run() -> int:
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
            return 1
        except StorageUnavailable:
            print(f"rewrap: {job.report.summary()}")
            print(
                "rewrap: Redis did not answer in time; stopped with nothing half-done, "
                "run it again",
                file=sys.stderr,
            )
            return 1
        finally:
            await store.close()
        print(f"rewrap: {job.report.summary()}")
        if job.report.skipped_changed:
            print(
                "rewrap: some secrets changed during the run and were left to their writers; "
                "run it again to check that they are current",
                file=sys.stderr,
            )
        return 1 if job.report.failed_to_open else 0

    return _run(run())


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is optional off Linux/macOS
        return asyncio.run(coro)
    return uvloop.run(coro)
