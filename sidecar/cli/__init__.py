"""The ``wisp-sidecar`` command: ``serve`` and the operator tools.

This package is the only reader of ``os.environ``. A bad setting ends the
process with exit code 2 and one line that names it.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Final

from sidecar import __version__
from sidecar.auth.api_keys import generate_api_key, keys_file_line
from sidecar.cli.common import EXIT_CONFIG, EXIT_OK
from sidecar.crypto import encode_kek, generate_kek
from sidecar.errors import ConfigError, StartupFailed
from sidecar.names import is_valid_did
from sidecar.settings import Settings

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

# What --help shows: for the person at the terminal, not for the code's readers.
DESCRIPTION: Final = (
    "wisp-sidecar keeps webhook signing secrets in Redis, sealed under a key-encryption "
    "key (KEK), serves the XRPC secret API, and signs payloads for the dispatcher."
)
SETTINGS_EPILOG: Final = (
    "Settings come from environment variables (REDIS_URL, SIDECAR_*) or from the TOML "
    "file named by SIDECAR_CONFIG; the same ones as `serve`. Every setting is described "
    "in the configuration reference, docs/configuration.md, and in "
    "config/sidecar.example.toml. A bad setting exits 2 with one line naming it."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wisp-sidecar", description=DESCRIPTION, epilog=SETTINGS_EPILOG
    )
    parser.add_argument("--version", action="version", version=f"wisp-sidecar {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=summary, description=description, epilog=SETTINGS_EPILOG
        )

    command(
        "serve",
        "run the sidecar in the foreground",
        "Run the XRPC, sign and ops listeners until SIGTERM. With nothing configured, "
        "this is development mode: an embedded Valkey and a development KEK and API key "
        "under SIDECAR_DATA_DIR, on loopback only.",
    )
    rewrap = command(
        "rewrap",
        "re-seal every stored token under the active KEK",
        "Re-seal every stored token under the active KEK, the last step of a KEK "
        "rotation. Safe to run while sidecars serve, and to run again. Exits 0 when "
        "every token is under the active key, 1 when some did not open or Redis "
        "stopped answering. In development mode it finds the development KEK and "
        "Valkey by itself.",
    )
    rewrap.add_argument(
        "--no-audit", action="store_true", help="do not add an op=rewrap entry to the audit logs"
    )
    command(
        "keygen",
        "print a new key-encryption key (KEK)",
        "Print a new random key-encryption key, for SIDECAR_KEK or SIDECAR_KEK_FILE.",
    )
    apikey = command(
        "apikey",
        "print a new API key and its keys-file line",
        "Print a new API key (shown once) and the line to add to SIDECAR_API_KEYS_FILE, "
        "which holds only the key's digest.",
    )
    apikey.add_argument("--did", required=True, help="the owner DID the key acts as")
    apikey.add_argument("--label", default="", help="a label for the audit log")
    return parser


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    env = os.environ if environ is None else environ
    try:
        if args.command == "keygen":
            print(encode_kek(generate_kek()))
            return EXIT_OK
        if args.command == "apikey":
            return _apikey(args.did, args.label)
        settings = Settings.from_env(env)
        if args.command == "rewrap":
            from sidecar.cli.rewrap import rewrap

            return rewrap(settings, audit=not args.no_audit)
        from sidecar.cli.serve import serve

        return serve(settings)
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
    return EXIT_OK
