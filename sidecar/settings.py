"""The sidecar's settings: parsed once, at start, from a mapping, into one frozen object.

Sources, later wins: built-in defaults, the TOML file named by ``SIDECAR_CONFIG``,
then the environment. A TOML key is the variable's name in lower case without
the ``SIDECAR_`` prefix (``xrpc_port = 8080``; ``redis_url`` for ``REDIS_URL``).
Every bad value raises ``ConfigError`` naming the variable, so the process can
stop with one line that says what to fix.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final, TypeVar
from urllib.parse import urlsplit

from sidecar.crypto import Kek, Keyring, parse_kek
from sidecar.errors import ConfigError
from sidecar.names import is_valid_did
from sidecar.redis_url import RedisTarget, SentinelTarget, parse_redis_url

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

T = TypeVar("T")

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
LOG_FORMATS: Final = ("auto", "json", "console")
SIGN_ACCESS_LOGS: Final = ("errors", "all")


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


@dataclass(frozen=True)
class Settings:
    """Everything the sidecar is configured with. Build it with ``from_env``."""

    redis_url: Secret | None = None
    xrpc_host: str = "0.0.0.0"
    xrpc_port: int = 8080
    sign_host: str = "127.0.0.1"
    sign_port: int = 8081
    ops_host: str = "0.0.0.0"
    ops_port: int = 9090
    kek: Kek | None = None
    kek_previous: tuple[Kek, ...] = ()
    api_keys_file: Path | None = None
    data_dir: Path = Path(".data")
    log_level: str = "info"
    log_format: str = "auto"
    redis_timeout_ms: int = 500
    redis_cluster: bool = False
    redis_ca_file: Path | None = None
    # The sentinels' own password (requirepass), when they have one.
    redis_sentinel_password: Secret | None = None
    redis_connect_timeout_s: int = 10
    # What an acknowledged change must reach (see sidecar.storage.durability).
    durable_replicas: int = 0
    durable_fsync: bool = False
    durable_timeout_ms: int = 500
    start_without_redis: bool = False
    shutdown_grace_s: int = 20
    sign_max_bytes: int = 1024 * 1024
    sign_token: Secret | None = None
    sign_batch_max_bytes: int = 16 * 1024 * 1024
    sign_access_log: str = "errors"
    xrpc_max_bytes: int = 64 * 1024
    audit_log_max_len: int = 1000
    dev_did: str = "did:web:localhost"
    # atproto service auth (JWTs) is on exactly when service_did is set.
    service_did: str | None = None
    plc_url: str = "https://plc.directory"
    did_web_allow_http_loopback: bool = False
    did_cache_ttl_s: int = 300
    # None: every authenticated DID may call; otherwise only these.
    allowed_dids: frozenset[str] | None = None
    # Which sources a setting came from, for "is this explicitly configured?" checks.
    explicit: frozenset[str] = field(default=frozenset(), compare=False)

    @property
    def redis_timeout_s(self) -> float:
        return self.redis_timeout_ms / 1000

    @property
    def kek_configured(self) -> bool:
        return self.kek is not None or bool(self.kek_previous)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Parse settings from ``environ`` (and the TOML file it may name)."""
        raw = _merged_sources(environ)
        return _parse(raw)


# The variable each setting is read from. The TOML key is derived from it.
_VARIABLES: Final = (
    "REDIS_URL",
    "SIDECAR_XRPC_HOST",
    "SIDECAR_XRPC_PORT",
    "SIDECAR_SIGN_HOST",
    "SIDECAR_SIGN_PORT",
    "SIDECAR_OPS_HOST",
    "SIDECAR_OPS_PORT",
    "SIDECAR_KEK",
    "SIDECAR_KEK_FILE",
    "SIDECAR_KEK_PREVIOUS",
    "SIDECAR_API_KEYS_FILE",
    "SIDECAR_DATA_DIR",
    "SIDECAR_LOG_LEVEL",
    "SIDECAR_LOG_FORMAT",
    "SIDECAR_REDIS_TIMEOUT_MS",
    "SIDECAR_REDIS_CLUSTER",
    "SIDECAR_REDIS_CA_FILE",
    "SIDECAR_REDIS_SENTINEL_PASSWORD",
    "SIDECAR_REDIS_CONNECT_TIMEOUT_S",
    "SIDECAR_DURABLE_REPLICAS",
    "SIDECAR_DURABLE_FSYNC",
    "SIDECAR_DURABLE_TIMEOUT_MS",
    "SIDECAR_START_WITHOUT_REDIS",
    "SIDECAR_SHUTDOWN_GRACE_S",
    "SIDECAR_SIGN_MAX_BYTES",
    "SIDECAR_SIGN_TOKEN",
    "SIDECAR_SIGN_BATCH_MAX_BYTES",
    "SIDECAR_SIGN_ACCESS_LOG",
    "SIDECAR_AUDIT_LOG_MAX_LEN",
    "SIDECAR_DEV_DID",
    "SIDECAR_SERVICE_DID",
    "SIDECAR_PLC_URL",
    "SIDECAR_DID_WEB_ALLOW_HTTP_LOOPBACK",
    "SIDECAR_DID_CACHE_TTL_S",
    "SIDECAR_ALLOWED_DIDS",
)


_KEK_SPELLINGS: Final = ("SIDECAR_KEK", "SIDECAR_KEK_FILE")


def _toml_key(variable: str) -> str:
    return variable.removeprefix("SIDECAR_").lower()


def _merged_sources(environ: Mapping[str, str]) -> dict[str, str]:
    merged: dict[str, str] = {}
    config_path = environ.get("SIDECAR_CONFIG")
    if config_path:
        merged.update(_read_toml(Path(config_path)))
    # SIDECAR_KEK and SIDECAR_KEK_FILE are two spellings of one setting: either
    # one in the environment overrides both in the file.
    if any(environ.get(name) for name in _KEK_SPELLINGS):
        for name in _KEK_SPELLINGS:
            merged.pop(name, None)
    for variable in _VARIABLES:
        value = environ.get(variable)
        if value is not None and value != "":
            merged[variable] = value
    return merged


def _read_toml(path: Path) -> dict[str, str]:
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError("SIDECAR_CONFIG", f"cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("SIDECAR_CONFIG", f"{path} is not valid TOML: {exc}") from None
    by_key = {_toml_key(variable): variable for variable in _VARIABLES}
    values: dict[str, str] = {}
    for key, value in document.items():
        variable = by_key.get(key)
        if variable is None:
            raise ConfigError("SIDECAR_CONFIG", f"{path}: unknown setting {key!r}")
        if isinstance(value, bool):
            # Spelled out, so a boolean given for a number is refused, not 1.
            values[variable] = "true" if value else "false"
        elif isinstance(value, str | int):
            values[variable] = str(value)
        elif isinstance(value, list) and all(isinstance(item, str) for item in value):
            values[variable] = ",".join(value)
        else:
            raise ConfigError(variable, f"{path}: {key} must be a string or an integer")
    return values


def _parse(raw: Mapping[str, str]) -> Settings:
    def get(variable: str, parse: Callable[[str, str], T], default: T) -> T:
        value = raw.get(variable)
        return default if value is None else parse(variable, value)

    defaults = Settings()
    kek_text = raw.get("SIDECAR_KEK")
    kek_file = raw.get("SIDECAR_KEK_FILE")
    if kek_text is not None and kek_file is not None:
        raise ConfigError("SIDECAR_KEK", "set SIDECAR_KEK or SIDECAR_KEK_FILE, not both")
    kek: Kek | None = None
    if kek_text is not None:
        kek = parse_kek(kek_text, setting="SIDECAR_KEK")
    elif kek_file is not None:
        kek = parse_kek(_read_secret_file("SIDECAR_KEK_FILE", kek_file), setting="SIDECAR_KEK_FILE")
    previous = tuple(
        parse_kek(part, setting="SIDECAR_KEK_PREVIOUS")
        for part in raw.get("SIDECAR_KEK_PREVIOUS", "").split(",")
        if part.strip()
    )
    if len(previous) > Keyring.MAX_PREVIOUS:
        raise ConfigError(
            "SIDECAR_KEK_PREVIOUS", f"at most {Keyring.MAX_PREVIOUS} previous keys are allowed"
        )

    redis_cluster = get("SIDECAR_REDIS_CLUSTER", _flag, defaults.redis_cluster)
    redis_url = get("REDIS_URL", _redis_url, None)
    target = _redis_target(redis_url, cluster=redis_cluster)
    redis_ca_file = get("SIDECAR_REDIS_CA_FILE", _existing_file, None)
    sentinel_password = get("SIDECAR_REDIS_SENTINEL_PASSWORD", _password, None)
    if sentinel_password is not None and not isinstance(target, SentinelTarget):
        raise ConfigError(
            "SIDECAR_REDIS_SENTINEL_PASSWORD",
            "is set, but REDIS_URL does not name Sentinel (redis+sentinel:// or rediss+sentinel://)",
        )
    if redis_ca_file is not None and (target is None or not target.tls):
        raise ConfigError(
            "SIDECAR_REDIS_CA_FILE",
            "is set, but REDIS_URL does not use TLS (rediss:// or rediss+sentinel://)",
        )

    return Settings(
        redis_url=redis_url,
        xrpc_host=get("SIDECAR_XRPC_HOST", _host, defaults.xrpc_host),
        xrpc_port=get("SIDECAR_XRPC_PORT", _port, defaults.xrpc_port),
        sign_host=get("SIDECAR_SIGN_HOST", _host, defaults.sign_host),
        sign_port=get("SIDECAR_SIGN_PORT", _port, defaults.sign_port),
        ops_host=get("SIDECAR_OPS_HOST", _host, defaults.ops_host),
        ops_port=get("SIDECAR_OPS_PORT", _port, defaults.ops_port),
        kek=kek,
        kek_previous=previous,
        api_keys_file=get("SIDECAR_API_KEYS_FILE", _existing_file, None),
        data_dir=get("SIDECAR_DATA_DIR", _path, defaults.data_dir),
        log_level=get("SIDECAR_LOG_LEVEL", _choice(LOG_LEVELS), defaults.log_level),
        log_format=get("SIDECAR_LOG_FORMAT", _choice(LOG_FORMATS), defaults.log_format),
        redis_timeout_ms=get(
            "SIDECAR_REDIS_TIMEOUT_MS", _int_between(1, 60_000), defaults.redis_timeout_ms
        ),
        redis_cluster=redis_cluster,
        redis_ca_file=redis_ca_file,
        redis_sentinel_password=sentinel_password,
        redis_connect_timeout_s=get(
            "SIDECAR_REDIS_CONNECT_TIMEOUT_S",
            _int_between(1, 3600),
            defaults.redis_connect_timeout_s,
        ),
        durable_replicas=get(
            "SIDECAR_DURABLE_REPLICAS", _int_between(0, 100), defaults.durable_replicas
        ),
        durable_fsync=get("SIDECAR_DURABLE_FSYNC", _flag, defaults.durable_fsync),
        durable_timeout_ms=get(
            "SIDECAR_DURABLE_TIMEOUT_MS", _int_between(1, 60_000), defaults.durable_timeout_ms
        ),
        start_without_redis=get("SIDECAR_START_WITHOUT_REDIS", _flag, defaults.start_without_redis),
        # At least 1: aiohttp reads a shutdown timeout of 0 as "wait for ever".
        shutdown_grace_s=get(
            "SIDECAR_SHUTDOWN_GRACE_S", _int_between(1, 3600), defaults.shutdown_grace_s
        ),
        sign_max_bytes=get(
            "SIDECAR_SIGN_MAX_BYTES", _int_between(1, 64 * 1024 * 1024), defaults.sign_max_bytes
        ),
        sign_token=get("SIDECAR_SIGN_TOKEN", _secret_text, None),
        sign_access_log=get(
            "SIDECAR_SIGN_ACCESS_LOG", _choice(SIGN_ACCESS_LOGS), defaults.sign_access_log
        ),
        sign_batch_max_bytes=get(
            "SIDECAR_SIGN_BATCH_MAX_BYTES",
            _int_between(1, 256 * 1024 * 1024),
            defaults.sign_batch_max_bytes,
        ),
        audit_log_max_len=get(
            "SIDECAR_AUDIT_LOG_MAX_LEN", _int_between(1, 10_000_000), defaults.audit_log_max_len
        ),
        dev_did=get("SIDECAR_DEV_DID", _did, defaults.dev_did),
        service_did=get("SIDECAR_SERVICE_DID", _did, None),
        plc_url=get("SIDECAR_PLC_URL", _http_url, defaults.plc_url),
        did_web_allow_http_loopback=get(
            "SIDECAR_DID_WEB_ALLOW_HTTP_LOOPBACK", _flag, defaults.did_web_allow_http_loopback
        ),
        did_cache_ttl_s=get(
            "SIDECAR_DID_CACHE_TTL_S", _int_between(1, 86_400), defaults.did_cache_ttl_s
        ),
        allowed_dids=get("SIDECAR_ALLOWED_DIDS", _did_list, None),
        explicit=frozenset(raw),
    )


def _read_secret_file(variable: str, value: str) -> str:
    try:
        return Path(value).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(variable, f"cannot read {value}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(variable, f"{value} is not UTF-8 text") from None


def _redis_url(variable: str, value: str) -> Secret:
    # Checked whole in _redis_target, once SIDECAR_REDIS_CLUSTER is known too.
    return Secret(value)


def _redis_target(url: Secret | None, *, cluster: bool) -> RedisTarget | None:
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


def _host(variable: str, value: str) -> str:
    if not value or any(ch.isspace() for ch in value):
        raise ConfigError(variable, "must be a host name or IP address")
    return value


def _port(variable: str, value: str) -> int:
    return _int_between(0, 65535)(variable, value)


def _int_between(low: int, high: int) -> Callable[[str, str], int]:
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


def _choice(options: tuple[str, ...]) -> Callable[[str, str], str]:
    def parse(variable: str, value: str) -> str:
        lowered = value.strip().lower()
        if lowered not in options:
            raise ConfigError(variable, f"must be one of {', '.join(options)}")
        return lowered

    return parse


def _path(variable: str, value: str) -> Path:
    return Path(value)


def _existing_file(variable: str, value: str) -> Path:
    path = Path(value)
    if not path.is_file():
        raise ConfigError(variable, f"{value} is not a readable file")
    return path


def _password(variable: str, value: str) -> Secret:
    # Any text: a server's password is whatever its operator chose.
    return Secret(value)


def _secret_text(variable: str, value: str) -> Secret:
    if len(value) < 16:
        raise ConfigError(variable, "must be at least 16 characters")
    return Secret(value)


def _did(variable: str, value: str) -> str:
    if not is_valid_did(value):
        raise ConfigError(variable, "must be a DID, such as did:web:localhost")
    return value


def _did_list(variable: str, value: str) -> frozenset[str]:
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


_FLAGS: Final = {"1": True, "true": True, "0": False, "false": False}


def _flag(variable: str, value: str) -> bool:
    flag = _FLAGS.get(value.strip().lower())
    if flag is None:
        raise ConfigError(variable, "must be 0, 1, true or false")
    return flag


def _http_url(variable: str, value: str) -> str:
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
