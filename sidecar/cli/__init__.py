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
from sidecar.cli.audit import SINCE_HELP
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

    def command(
        name: str, summary: str, description: str, *, settings: bool = True
    ) -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=summary,
            description=description,
            epilog=SETTINGS_EPILOG if settings else None,
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
    keys = command(
        "keys",
        "which keys seal the stored tokens",
        "Report stored tokens by key id, with the key that sealed them, and which open "
        "with this configuration's SIDECAR_KEK and SIDECAR_KEK_PREVIOUS.",
    )
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="COMMAND")
    keys_commands.add_parser(
        "status",
        help="count stored tokens by key id, and which of them open",
        description="Count stored tokens by the key id that sealed them, and open each "
        "with the configured keys. Run it before retiring a previous key: a key that "
        "still seals tokens must stay until `rewrap` moves them. Exits 0 when every "
        "token opens, 1 otherwise.",
        epilog=SETTINGS_EPILOG,
    )
    audit = command(
        "audit",
        "print an owner's audit log as JSON lines",
        "Print the changes to an owner's secrets, oldest first, one JSON object a line: "
        "time, op, name, version, actor. Tokens are never stored in it, so never printed.",
    )
    audit.add_argument("--did", required=True, help="the owner whose log to print")
    audit.add_argument("--name", help="only the entries of this secret")
    audit.add_argument("--since", help=f"entries from then on: {SINCE_HELP}")
    audit.add_argument(
        "--limit",
        default="100",
        help="at most this many entries (default 100): the first ones after --since, "
        "else the latest ones",
    )
    importer = command(
        "import",
        "import tokens that receivers already hold, from JSON lines",
        "Import existing webhook secrets, so receivers keep the token they have: one JSON "
        'object a line, {"did": ..., "name": ..., "token": ...}; a token is 32-256 printable '
        "ASCII characters without whitespace. A name that exists is skipped, never "
        "overwritten, so running it again is safe. Bad lines are reported by number, never "
        "with their token. Exits 0 when every line was imported or skipped, 1 when some "
        "were bad or not done.",
    )
    importer.add_argument("file", metavar="FILE", help="the JSON lines file, or - for stdin")
    importer.add_argument(
        "--dry-run", action="store_true", help="check every line and the names; write nothing"
    )
    command(
        "doctor",
        "check a deployed sidecar: Redis, durability, keys, listeners",
        "Check, with the sidecar's own settings and from where it runs: that Redis "
        "answers and what it is, that the replicas meet SIDECAR_DURABLE_REPLICAS, the "
        "KEK and that every stored token opens with it, the API keys, and that the "
        "three listeners answer. One line per check (ok, warn, skip or FAIL); exits 1 "
        "on any FAIL. Run it after every deploy.",
    )
    command(
        "keygen",
        "print a new key-encryption key (KEK)",
        "Print a new random key-encryption key, for SIDECAR_KEK or SIDECAR_KEK_FILE.",
        settings=False,
    )
    apikey = command(
        "apikey",
        "print a new API key and its keys-file line",
        "Print a new API key (shown once) and the line to add to SIDECAR_API_KEYS_FILE, "
        "which holds only the key's digest.",
        settings=False,
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
        if args.command == "keys":
            from sidecar.cli.kek_status import status

            return status(settings)
        if args.command == "audit":
            from sidecar.cli.audit import audit

            return audit(settings, did=args.did, name=args.name, since=args.since, limit=args.limit)
        if args.command == "import":
            from sidecar.cli.importer import import_tokens

            return import_tokens(settings, source=args.file, dry_run=args.dry_run)
        if args.command == "doctor":
            from sidecar.cli.doctor import doctor

            return doctor(settings)
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
