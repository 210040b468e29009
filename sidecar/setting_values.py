"""Parsers of setting values: each takes the variable's name and its text, and
returns the value or raises ``ConfigError`` naming the variable.

A parser never repeats a value that may be a credential in its message.
"""

from __future__ import annotations

import grp
import ipaddress
import os
from pathlib import Path
from typing import TYPE_CHECKING, Final
from urllib.parse import urlsplit

from sidecar.errors import ConfigError
from sidecar.names import is_loopback_host, is_valid_did, is_valid_service_id
from sidecar.redis_url import RedisTarget, parse_redis_url

if TYPE_CHECKING:
    from collections.abc import Callable

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("auto", "json", "console")
SIGN_ACCESS_LOGS: Final = ("errors", "all")
# The listeners a process may run (SIDECAR_LISTENERS), in the order they start.
LISTENER_NAMES: Final = ("xrpc", "sign", "ops")


class Secret:
    """A string that must not be printed: ``repr`` and ``str`` mask it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The real value, for the one place that needs it."""
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def read_secret_file(variable: str, value: str) -> str:
    try:
        return Path(value).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(variable, f"cannot read {value}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(variable, f"{value} is not UTF-8 text") from None


def parse_redis_url_secret(variable: str, value: str) -> Secret:
    # Checked whole in redis_target, once SIDECAR_REDIS_CLUSTER is known too.
    return Secret(value)


def redis_target(url: Secret | None, *, cluster: bool) -> RedisTarget | None:
    if url is None:
        if cluster:
            raise ConfigError(
                "SIDECAR_REDIS_CLUSTER", "needs REDIS_URL: the embedded Valkey is one server"
            )
        return None
    try:
        return parse_redis_url(url.reveal(), cluster=cluster)
    except ValueError as exc:
        # The messages of parse_redis_url never repeat the URL, which may hold a password.
        raise ConfigError("REDIS_URL", str(exc)) from None


def parse_host(variable: str, value: str) -> str:
    if not value or any(ch.isspace() for ch in value):
        raise ConfigError(variable, "must be a host name or IP address")
    return value


def parse_port(variable: str, value: str) -> int:
    # Not 0: binding port 0 takes a random free port, which nobody could find.
    return parse_int_between(1, 65535)(variable, value)


def parse_sign_port(variable: str, value: str) -> int:
    """A port, or 0 for "no TCP sign listener" (the sign API then listens only on
    SIDECAR_SIGN_SOCKET, which the settings check together)."""
    return parse_int_between(0, 65535)(variable, value)


# The kernel takes 107 bytes for a socket's path; the sidecar binds a temporary
# name beside it first (its path, a dot, the process id and ".tmp").
SOCKET_PATH_MAX_BYTES: Final = 90


def parse_socket_path(variable: str, value: str) -> Path:
    text = value.strip()
    if not text or "\0" in text:
        raise ConfigError(variable, "must be the path of a Unix socket")
    if len(os.fsencode(text)) > SOCKET_PATH_MAX_BYTES:
        raise ConfigError(
            variable, f"must be at most {SOCKET_PATH_MAX_BYTES} bytes long (a Unix socket's limit)"
        )
    return Path(text)


def parse_socket_mode(variable: str, value: str) -> str:
    """File permissions as four octal digits, as chmod takes them (``0660``; a string in
    TOML, whose integers would lose the octal); none for "others" to write, since
    writing is what connecting to a socket takes."""
    text = value.strip()
    if not (len(text) == 4 and text[0] == "0" and set(text) <= set("01234567")):
        raise ConfigError(variable, 'must be four octal digits, such as "0660"')
    if int(text, 8) & 0o002:
        raise ConfigError(
            variable,
            "lets every user connect (the 'others' write bit); "
            "use 0660 with SIDECAR_SIGN_SOCKET_GROUP for the dispatcher's group",
        )
    return text


def parse_group_id(variable: str, value: str) -> int:
    """A group, by name or number, as the number ``chown`` takes."""
    text = value.strip()
    if text.isascii() and text.isdigit():
        return int(text)
    try:
        return grp.getgrnam(text).gr_gid
    except KeyError:
        raise ConfigError(variable, f"no group named {text!r} on this system") from None


def parse_int_between(low: int, high: int) -> Callable[[str, str], int]:
    def parse(variable: str, value: str) -> int:
        text = value.strip()
        # isascii: str.isdigit() also accepts '²' and '٨', which are no port.
        if not (text.isascii() and text.isdigit()):
            raise ConfigError(variable, f"must be a whole number from {low} to {high}")
        number = int(text)
        if not low <= number <= high:
            raise ConfigError(variable, f"must be a whole number from {low} to {high}")
        return number

    return parse


def parse_choice(options: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(variable: str, value: str) -> str:
        lowered = value.strip().lower()
        if lowered not in options:
            raise ConfigError(variable, f"must be one of {', '.join(options)}")
        return lowered

    return parse


def parse_path(variable: str, value: str) -> Path:
    return Path(value)


def parse_existing_file(variable: str, value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise ConfigError(variable, f"{value} is not a readable file")
    return path


def parse_password(variable: str, value: str) -> Secret:
    # Any text: a server's password is whatever its operator chose.
    return Secret(value)


def parse_secret_text(variable: str, value: str) -> Secret:
    if len(value) < 16:
        raise ConfigError(variable, "must be at least 16 characters")
    return Secret(value)


def parse_did(variable: str, value: str) -> str:
    if not is_valid_did(value):
        raise ConfigError(variable, "must be a DID, such as did:web:localhost")
    return value


def parse_did_list(variable: str, value: str) -> frozenset[str]:
    dids = [part.strip() for part in value.split(",") if part.strip()]
    if not dids:
        # Only an explicitly empty list gets here (TOML "[]"); refusing it
        # beats guessing between "nobody" and "everybody".
        raise ConfigError(variable, "must list at least one DID; remove it to allow every DID")
    for number, did in enumerate(dids, start=1):
        if not is_valid_did(did):
            # Not echoed: a credential pasted into the wrong setting must not reach a log.
            raise ConfigError(variable, f"entry {number} is not a DID")
    return frozenset(dids)


def parse_listener_set(variable: str, value: str) -> tuple[str, ...]:
    """The listeners named, in start order: ops always, and xrpc or sign or both."""
    names = [part.strip().lower() for part in value.split(",") if part.strip()]
    for name in names:
        if name not in LISTENER_NAMES:
            raise ConfigError(variable, f"{name!r} is no listener: list xrpc, sign and ops")
    if "ops" not in names:
        # Health and metrics are how Kubernetes and Prometheus see a process;
        # one without them would be invisible, so it is refused, not implied.
        raise ConfigError(variable, "must include ops: every process serves its health and metrics")
    if not {"xrpc", "sign"} & set(names):
        raise ConfigError(variable, "must include xrpc, sign or both; ops alone serves nothing")
    return tuple(name for name in LISTENER_NAMES if name in names)


FLAGS: Final = {"1": True, "true": True, "0": False, "false": False}


def parse_flag(variable: str, value: str) -> bool:
    flag = FLAGS.get(value.strip().lower())
    if flag is None:
        raise ConfigError(variable, "must be 0, 1, true or false")
    return flag


# SIDECAR_DURABLE_FSYNC: the three modes of sidecar.storage.durability, and the
# flag spellings it took before "auto" existed, so an old configuration still parses.
FSYNC_SPELLINGS: Final = {
    "auto": "auto",
    "on": "on",
    "off": "off",
    **{text: "on" if value else "off" for text, value in FLAGS.items()},
}


def parse_fsync_mode(variable: str, value: str) -> str:
    mode = FSYNC_SPELLINGS.get(value.strip().lower())
    if mode is None:
        raise ConfigError(variable, "must be auto, on or off (or 1, 0, true, false)")
    return mode


def parse_http_url(variable: str, value: str) -> str:
    parsed = urlsplit(value.strip())
    try:
        parsed.port  # noqa: B018  (parsing the port is the check)
    except ValueError:
        raise ConfigError(variable, "has an invalid port") from None
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError(variable, "must be an http:// or https:// URL")
    if parsed.query or parsed.fragment or parsed.username or parsed.password:
        raise ConfigError(variable, "must be a plain URL: no query, fragment or credentials")
    return value.strip().rstrip("/")


def parse_service_id(variable: str, value: str) -> str:
    if not is_valid_service_id(value):
        raise ConfigError(
            variable, "must be 1-64 characters of A-Z a-z 0-9 _ -, starting with a letter, no '#'"
        )
    return value


def parse_text(variable: str, value: str) -> str:
    if not value.strip() or any(not character.isprintable() for character in value):
        raise ConfigError(variable, "must be printable text")
    return value.strip()


def check_service_endpoint(
    endpoint: str | None, *, service_did: str | None, allow_http_loopback: bool
) -> None:
    """An endpoint, when set, is what the DID document announces: an origin a PDS can reach.

    Unset, the sidecar publishes no document and takes direct service-JWT calls
    only (a did:web's did.json may well be served by another host); ``doctor``
    says so.
    """
    variable = "SIDECAR_SERVICE_ENDPOINT"
    if endpoint is None:
        return
    if service_did is None:
        raise ConfigError(variable, "is set, but SIDECAR_SERVICE_DID is not")
    parsed = urlsplit(endpoint)
    if parsed.path not in ("", "/"):
        # A PDS appends /xrpc/<nsid> to the endpoint's origin; a path would be lost.
        raise ConfigError(variable, "must be an origin, without a path")
    if parsed.scheme == "https":
        return
    # A PDS would send its users' service JWTs over plain http; only a test on
    # this machine may ask for that.
    if not (is_loopback_host(parsed.hostname or "") and allow_http_loopback):
        raise ConfigError(
            variable,
            "must be https (http only for a loopback host, with "
            "SIDECAR_DID_WEB_ALLOW_HTTP_LOOPBACK)",
        )


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_cidr_list(variable: str, value: str) -> tuple[Network, ...]:
    parts = [part.strip() for part in value.split(",") if part.strip()]
    if not parts:
        raise ConfigError(variable, "must list at least one CIDR; remove it to trust no proxy")
    networks = []
    for number, part in enumerate(parts, start=1):
        try:
            # strict: 10.0.0.1/8 is more likely a typo than a network.
            networks.append(ipaddress.ip_network(part, strict=True))
        except ValueError:
            raise ConfigError(
                variable, f"entry {number} is not a CIDR such as 10.0.0.0/8 or fd00::/8"
            ) from None
    return tuple(networks)
