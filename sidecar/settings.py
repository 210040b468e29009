"""The sidecar's settings: declared once, parsed once at start into one frozen object.

Each field of ``Settings`` is declared with ``_setting``: its variable, its
parser, its default, its group and the text that documents it. Parsing, the
TOML example (``config/sidecar.example.toml``) and the configuration reference
(``docs/configuration.md``) are all built from that one table
(``sidecar.settings_reference`` writes the two files; a test keeps them equal).

Sources, later wins: built-in defaults, the TOML file named by ``SIDECAR_CONFIG``,
then the environment. A TOML key is the variable's name in lower case without
the ``SIDECAR_`` prefix (``xrpc_port = 8080``; ``redis_url`` for ``REDIS_URL``).
Every bad value raises ``ConfigError`` naming the variable, so the process can
stop with one line that says what to fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sidecar.crypto import Kek, Keyring, parse_kek
from sidecar.errors import ConfigError
from sidecar.redis_url import SentinelTarget
from sidecar.setting_values import (
    LOG_FORMATS,
    LOG_LEVELS,
    SIGN_ACCESS_LOGS,
    Secret,
    check_service_endpoint,
    choice,
    did,
    did_list,
    existing_file,
    flag,
    host,
    http_url,
    int_between,
    password,
    path,
    port,
    read_secret_file,
    redis_target,
    redis_url,
    secret_text,
    service_id,
    text,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

__all__ = ["GROUPS", "SPECS", "VARIABLES", "Secret", "Settings", "Spec", "toml_key"]

# The groups of the example file and the reference, in order.
GROUPS: Final = (
    "Redis",
    "Durability",
    "Listeners",
    "Lifecycle",
    "Keys",
    "atproto service auth (JWTs)",
    "Signing",
    "Local state and logs",
)


@dataclass(frozen=True)
class Spec:
    """How one setting is read and documented."""

    variable: str
    parse: Callable[[str, str], Any]
    group: str
    doc: str
    # What the example file shows, as TOML; None shows the default.
    example: str | None = None
    # A second variable for the same setting, read as a file holding the value,
    # and what the example file shows for it.
    file_variable: str | None = None
    file_example: str | None = None


def _setting(
    variable: str,
    parse: Callable[[str, str], Any],
    default: Any,
    group: str,
    doc: str,
    *,
    example: str | None = None,
    file_variable: str | None = None,
    file_example: str | None = None,
) -> Any:
    spec = Spec(variable, parse, group, doc, example, file_variable, file_example)
    return dataclasses.field(default=default, metadata={"spec": spec})


def _keks(variable: str, value: str) -> tuple[Kek, ...]:
    return tuple(parse_kek(part, setting=variable) for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """Everything the sidecar is configured with. Build it with ``from_env``."""

    # --- Redis
    redis_url: Secret | None = _setting(
        "REDIS_URL", redis_url, None, "Redis",
        "Where secrets live. One of:\n"
        "  redis://[[user]:password@]host[:port][/db]      one server\n"
        "  rediss://...                                     one server over TLS\n"
        "  unix:///path/to/redis.sock[?db=N]                one server on a local socket\n"
        "  redis+sentinel://[[user]:password@]host1:26379,host2:26379/<master>[/db]\n"
        "  rediss+sentinel://...                            Sentinel and data nodes over TLS\n"
        "The credentials of a Sentinel URL are the data nodes'. No query options but\n"
        "db: timeouts and TLS come from the settings below.\n"
        "Unset: only in development mode (no KEK and no API keys file either) or with\n"
        "embedded_redis does the sidecar start an embedded Valkey; otherwise it\n"
        "refuses to start.",
        example='"redis://redis.internal:6379/0"',
    )  # fmt: skip
    embedded_redis: bool = _setting(
        "SIDECAR_EMBEDDED_REDIS", flag, False, "Redis",
        "Start an embedded Valkey on loopback, persisted under data_dir/valkey, although\n"
        "a KEK or an API keys file is set. For a single node that keeps its data\n"
        "directory on a lasting disk; never with REDIS_URL. Without it, only\n"
        "development mode (nothing configured) starts one. 1/0/true/false.",
    )  # fmt: skip
    redis_cluster: bool = _setting(
        "SIDECAR_REDIS_CLUSTER", flag, False, "Redis",
        "Redis Cluster: REDIS_URL (redis:// or rediss://, database 0) names one seed\n"
        "node and the others are discovered. 1/0/true/false.",
    )  # fmt: skip
    redis_ca_file: Path | None = _setting(
        "SIDECAR_REDIS_CA_FILE", existing_file, None, "Redis",
        "A PEM file of the CA that signed the Redis servers' certificates, for\n"
        "rediss:// and rediss+sentinel:// URLs. Unset: the system's trusted CAs.",
        example='"/run/secrets/wisp-sidecar/redis-ca.pem"',
    )  # fmt: skip
    redis_sentinel_password: Secret | None = _setting(
        "SIDECAR_REDIS_SENTINEL_PASSWORD", password, None, "Redis",
        "The sentinels' own password, for sentinels that require one (requirepass);\n"
        "only with a redis+sentinel:// or rediss+sentinel:// URL. Unset: the sentinels\n"
        "are asked without a password.",
        example='"..."',
    )  # fmt: skip
    redis_timeout_ms: int = _setting(
        "SIDECAR_REDIS_TIMEOUT_MS", int_between(1, 60_000), 500, "Redis",
        "How long any Redis call may take before the request fails closed with 503\n"
        "StorageUnavailable. 1..60000.",
    )  # fmt: skip
    redis_connect_timeout_s: int = _setting(
        "SIDECAR_REDIS_CONNECT_TIMEOUT_S", int_between(1, 3600), 10, "Redis",
        "At start, how long to wait for Redis to answer before exiting with code 2\n"
        "and one line saying why. 1..3600.",
    )  # fmt: skip
    start_without_redis: bool = _setting(
        "SIDECAR_START_WITHOUT_REDIS", flag, False, "Redis",
        "Start anyway when Redis does not answer: /readyz says 503 until it does, and\n"
        "requests that need Redis get 503 StorageUnavailable. 1/0/true/false.",
    )  # fmt: skip
    audit_log_max_len: int = _setting(
        "SIDECAR_AUDIT_LOG_MAX_LEN", int_between(1, 10_000_000), 1000, "Redis",
        "Audit stream cap per owner, approximate.",
    )  # fmt: skip
    # --- Durability: what an acknowledged change must reach (sidecar.storage.durability)
    durable_replicas: int = _setting(
        "SIDECAR_DURABLE_REPLICAS", int_between(0, 100), 0, "Durability",
        "How many replicas must acknowledge each change (WAIT) before it is answered\n"
        "200. Redis replicates asynchronously: without this, a failover inside the\n"
        "replication window can undo a rotation already answered 200, and the old\n"
        "token signs again. Production: 1 or more. 0..100.",
        example="1",
    )  # fmt: skip
    durable_fsync: bool = _setting(
        "SIDECAR_DURABLE_FSYNC", flag, False, "Durability",
        "Each change must also be fsynced to the primary's append-only file, and to\n"
        "that of the replicas counted above (WAITAOF). Needs Redis 7.2+ or Valkey 8+\n"
        "with appendonly yes, or the sidecar refuses to start. 1/0/true/false.",
    )  # fmt: skip
    durable_timeout_ms: int = _setting(
        "SIDECAR_DURABLE_TIMEOUT_MS", int_between(1, 60_000), 500, "Durability",
        "How long a change waits for that durability before it is answered 503\n"
        "StorageUnavailable (it may or may not have been applied; the caller\n"
        "retries). A change takes at most this plus redis_timeout_ms. 1..60000.",
    )  # fmt: skip
    # --- Listeners
    xrpc_host: str = _setting(
        "SIDECAR_XRPC_HOST", host, "0.0.0.0", "Listeners",
        "XRPC: secret management for clients. The address it binds.",
    )  # fmt: skip
    xrpc_port: int = _setting("SIDECAR_XRPC_PORT", port, 8080, "Listeners", "XRPC: its port.")
    sign_host: str = _setting(
        "SIDECAR_SIGN_HOST", host, "127.0.0.1", "Listeners",
        "Sign: the dispatcher's pod-local signing API. Keep it on loopback: it is a\n"
        "signing oracle.",
    )  # fmt: skip
    sign_port: int = _setting("SIDECAR_SIGN_PORT", port, 8081, "Listeners", "Sign: its port.")
    ops_host: str = _setting(
        "SIDECAR_OPS_HOST", host, "0.0.0.0", "Listeners",
        "Ops: /metrics, /healthz, /readyz. The address it binds.",
    )  # fmt: skip
    ops_port: int = _setting("SIDECAR_OPS_PORT", port, 9090, "Listeners", "Ops: its port.")
    xrpc_max_connections: int = _setting(
        "SIDECAR_XRPC_MAX_CONNECTIONS", int_between(1, 1_000_000), 1000, "Listeners",
        "The most connections the XRPC listener holds at once; past it a new one is\n"
        "closed at once. The process's file limit lowers it if need be, always keeping\n"
        "room for the sign and ops listeners. 1..1000000.",
    )  # fmt: skip
    http_read_timeout_s: int = _setting(
        "SIDECAR_HTTP_READ_TIMEOUT_S", int_between(1, 3600), 10, "Listeners",
        "The most time a client gets to send a complete request head, and again its\n"
        "body, on every listener; then the connection is closed (a body gets 408).\n"
        "1..3600.",
    )  # fmt: skip
    http_idle_timeout_s: int = _setting(
        "SIDECAR_HTTP_IDLE_TIMEOUT_S", int_between(1, 3600), 15, "Listeners",
        "How long a kept-alive connection may sit idle between requests. 1..3600.",
    )  # fmt: skip
    # --- Lifecycle
    shutdown_grace_s: int = _setting(
        # At least 1: aiohttp reads a shutdown timeout of 0 as "wait for ever".
        "SIDECAR_SHUTDOWN_GRACE_S", int_between(1, 3600), 20, "Lifecycle",
        "On SIGTERM, /readyz turns 503 at once, the XRPC and sign listeners stop\n"
        "accepting connections, and requests in flight get this many seconds to\n"
        "finish before they are cancelled. Keep the pod's terminationGracePeriodSeconds\n"
        "above it. 1..3600.",
    )  # fmt: skip
    # --- Keys
    kek: Kek | None = _setting(
        "SIDECAR_KEK", lambda variable, text: parse_kek(text, setting=variable), None, "Keys",
        "The active key-encryption key: 64 hex, 43 base64url or 44 base64 characters.\n"
        "Prefer kek_file (a mounted secret) to putting the key in a file like this.\n"
        "Make one with `wisp-sidecar keygen`. Set kek or kek_file, not both.",
        example='"<output of wisp-sidecar keygen>"',
        file_variable="SIDECAR_KEK_FILE",
        file_example='"/run/secrets/wisp-sidecar/kek"',
    )  # fmt: skip
    kek_previous: tuple[Kek, ...] = _setting(
        "SIDECAR_KEK_PREVIOUS", _keks, (), "Keys",
        f"Up to {Keyring.MAX_PREVIOUS} decrypt-only previous keys, comma-separated, during a\n"
        "KEK rotation.",
        example='["<old key>"]',
    )  # fmt: skip
    api_keys_file: Path | None = _setting(
        "SIDECAR_API_KEYS_FILE", existing_file, None, "Keys",
        "API keys: one line per key, \"<did> <sha256-hex-of-key> [label]\"; '#' starts\n"
        "a comment. Make lines with `wisp-sidecar apikey --did <did>`.",
        example='"/run/secrets/wisp-sidecar/api-keys"',
    )  # fmt: skip
    # --- atproto service auth: on exactly when service_did is set
    service_did: str | None = _setting(
        "SIDECAR_SERVICE_DID", did, None, "atproto service auth (JWTs)",
        "The sidecar's own DID. Setting it turns on service auth: callers may then\n"
        "send \"Authorization: Bearer <jwt>\" with a token from their PDS\n"
        "(com.atproto.server.getServiceAuth?aud=<this DID>&lxm=<method NSID>), and the\n"
        "token's issuer owns the secrets. Unset: API keys only.",
        example='"did:web:sidecar.example.com"',
    )  # fmt: skip
    service_id: str = _setting(
        "SIDECAR_SERVICE_ID", service_id, "wisp_sidecar", "atproto service auth (JWTs)",
        "The id of this sidecar's service entry in the DID document: clients proxy\n"
        "through their PDS with \"atproto-proxy: <service_did>#<this>\", and a JWT's aud\n"
        "may then be \"<service_did>#<this>\" as well as the bare DID.",
    )  # fmt: skip
    service_type: str = _setting(
        "SIDECAR_SERVICE_TYPE", text, "WispSidecar", "atproto service auth (JWTs)",
        "The type of that service entry, as /.well-known/did.json announces it.",
    )  # fmt: skip
    service_endpoint: str | None = _setting(
        "SIDECAR_SERVICE_ENDPOINT", http_url, None, "atproto service auth (JWTs)",
        "The public https URL of the XRPC listener (the ingress in front of it), which\n"
        "the service entry names; a PDS forwards proxied calls there. Required when\n"
        "service_did is a did:web: the XRPC listener then serves the DID document at\n"
        "/.well-known/did.json. http only for a loopback host, with\n"
        "did_web_allow_http_loopback.",
        example='"https://sidecar.example.com"',
    )  # fmt: skip
    plc_url: str = _setting(
        "SIDECAR_PLC_URL", http_url, "https://plc.directory", "atproto service auth (JWTs)",
        "The PLC directory that resolves did:plc issuers.",
    )  # fmt: skip
    did_web_allow_http_loopback: bool = _setting(
        "SIDECAR_DID_WEB_ALLOW_HTTP_LOOPBACK", flag, False, "atproto service auth (JWTs)",
        "Resolve did:web issuers on loopback hosts over plain http. For tests and\n"
        "development only: without it, loopback did:web issuers are refused.\n"
        "1/0/true/false.",
    )  # fmt: skip
    did_cache_ttl_s: int = _setting(
        "SIDECAR_DID_CACHE_TTL_S", int_between(1, 86_400), 300, "atproto service auth (JWTs)",
        "How long an issuer's resolved key is trusted before it is fetched again, in\n"
        "seconds, 1..86400. A signature that fails with a cached key is re-checked\n"
        "against a fresh fetch at once, so key rotations need not wait for this.",
    )  # fmt: skip
    allowed_dids: frozenset[str] | None = _setting(
        "SIDECAR_ALLOWED_DIDS", did_list, None, "atproto service auth (JWTs)",
        "When set, only these DIDs may use the XRPC API, whichever credential they\n"
        "authenticate with (API key or JWT); any other caller gets 403 Forbidden.\n"
        "Unset: every authenticated caller may. Comma-separated in the environment.",
        example='["did:plc:abc123", "did:web:ops.example.com"]',
    )  # fmt: skip
    # --- Signing
    sign_max_bytes: int = _setting(
        "SIDECAR_SIGN_MAX_BYTES", int_between(1, 64 * 1024 * 1024), 1024 * 1024, "Signing",
        "Largest payload /v1/sign accepts, in bytes.",
    )  # fmt: skip
    sign_batch_max_bytes: int = _setting(
        "SIDECAR_SIGN_BATCH_MAX_BYTES", int_between(1, 256 * 1024 * 1024), 16 * 1024 * 1024,
        "Signing", "Largest /v1/sign/batch request body (JSON with base64 bodies), in bytes.",
    )  # fmt: skip
    sign_access_log: str = _setting(
        "SIDECAR_SIGN_ACCESS_LOG", choice(SIGN_ACCESS_LOGS), "errors", "Signing",
        "Which sign requests get a log line: \"errors\" (status 400 and up) or \"all\".\n"
        "A line per signature costs more CPU than the signature itself; metrics count\n"
        "every request either way.",
    )  # fmt: skip
    sign_token: Secret | None = _setting(
        "SIDECAR_SIGN_TOKEN", secret_text, None, "Signing",
        "When set, the sign listener also requires \"Authorization: Bearer <it>\";\n"
        "at least 16 characters.",
        example='"..."',
    )  # fmt: skip
    # --- Local state and logs
    data_dir: Path = _setting(
        "SIDECAR_DATA_DIR", path, Path(".data"), "Local state and logs",
        "Development files (embedded Valkey data, dev KEK and API key).",
    )  # fmt: skip
    dev_did: str = _setting(
        "SIDECAR_DEV_DID", did, "did:web:localhost", "Local state and logs",
        "The DID the development API key acts as.",
    )  # fmt: skip
    log_level: str = _setting(
        "SIDECAR_LOG_LEVEL", choice(LOG_LEVELS), "info", "Local state and logs",
        "debug, info, warning or error.",
    )  # fmt: skip
    log_format: str = _setting(
        "SIDECAR_LOG_FORMAT", choice(LOG_FORMATS), "auto", "Local state and logs",
        "auto (console on a TTY, JSON otherwise), json or console.",
    )  # fmt: skip
    # Not a setting: the XRPC input limit, 64 KiB (docs/api.md, the 413 row of the errors).
    xrpc_max_bytes: int = 64 * 1024
    # Not a setting: the variables that were given (environment or file), so a
    # default can be told from the same value set on purpose.
    given: frozenset[str] = dataclasses.field(default=frozenset(), compare=False)

    @property
    def redis_timeout_s(self) -> float:
        return self.redis_timeout_ms / 1000

    @property
    def kek_configured(self) -> bool:
        return self.kek is not None or bool(self.kek_previous)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        """Parse settings from ``environ`` (and the TOML file it may name)."""
        return _parse(_merged_sources(environ))


# Field name -> how it is read, for every field that is a setting, in declaration order.
SPECS: Final[dict[str, Spec]] = {
    f.name: f.metadata["spec"] for f in dataclasses.fields(Settings) if "spec" in f.metadata
}
# Every variable a setting is read from.
VARIABLES: Final = tuple(
    variable
    for spec in SPECS.values()
    for variable in (spec.variable, spec.file_variable)
    if variable is not None
)
# SIDECAR_* variables that are no setting but are not mistakes either: the
# file of settings, and the test suite's own (CONTRIBUTING.md), which a
# developer may keep exported while running the sidecar.
NOT_SETTINGS: Final = ("SIDECAR_CONFIG", "SIDECAR_TEST_REDIS_URL", "SIDECAR_TEST_REDIS_SERVER")


def toml_key(variable: str) -> str:
    return variable.removeprefix("SIDECAR_").lower()


def _did_you_mean(given: str, known: tuple[str, ...]) -> str:
    # Compared without the prefix they all share, which would make anything look close.
    by_stem = {name.removeprefix("SIDECAR_"): name for name in known}
    close = difflib.get_close_matches(given.removeprefix("SIDECAR_"), by_stem, n=1)
    return f"; did you mean {by_stem[close[0]]}?" if close else ""


def _refuse_unknown_variables(environ: Mapping[str, str]) -> None:
    """A misspelt variable would be dropped silently, leaving its default in force."""
    known = (*VARIABLES, *NOT_SETTINGS)
    for variable in sorted(environ):
        if variable.startswith("SIDECAR_") and variable not in known:
            raise ConfigError(variable, f"unknown setting{_did_you_mean(variable, VARIABLES)}")


def _merged_sources(environ: Mapping[str, str]) -> dict[str, str]:
    _refuse_unknown_variables(environ)
    merged: dict[str, str] = {}
    config_path = environ.get("SIDECAR_CONFIG")
    if config_path:
        merged.update(_read_toml(Path(config_path)))
    for spec in SPECS.values():
        spellings = [v for v in (spec.variable, spec.file_variable) if v is not None]
        # Two spellings of one setting (SIDECAR_KEK, SIDECAR_KEK_FILE): either
        # one in the environment overrides both in the file.
        if any(environ.get(variable) for variable in spellings):
            for variable in spellings:
                merged.pop(variable, None)
        for variable in spellings:
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
    by_key = {toml_key(variable): variable for variable in VARIABLES}
    values: dict[str, str] = {}
    for key, value in document.items():
        variable = by_key.get(key)
        if variable is None:
            hint = _did_you_mean(key, tuple(by_key))
            raise ConfigError("SIDECAR_CONFIG", f"{path}: unknown setting {key!r}{hint}")
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
    values: dict[str, Any] = {}
    for name, spec in SPECS.items():
        text = raw.get(spec.variable)
        if spec.file_variable is not None and spec.file_variable in raw:
            if text is not None:
                raise ConfigError(
                    spec.variable, f"set {spec.variable} or {spec.file_variable}, not both"
                )
            contents = read_secret_file(spec.file_variable, raw[spec.file_variable])
            values[name] = spec.parse(spec.file_variable, contents)
        elif text is not None:
            values[name] = spec.parse(spec.variable, text)
    settings = Settings(**values, given=frozenset(raw))
    _check_together(settings)
    return settings


def _check_together(settings: Settings) -> None:
    """The checks that need more than one setting."""
    # The keyring owns the rules of a key set (how many, no duplicates).
    Keyring(settings.kek, settings.kek_previous)
    target = redis_target(settings.redis_url, cluster=settings.redis_cluster)
    if settings.embedded_redis and target is not None:
        raise ConfigError("SIDECAR_EMBEDDED_REDIS", "is set, and so is REDIS_URL: choose one Redis")
    if settings.redis_sentinel_password is not None and not isinstance(target, SentinelTarget):
        raise ConfigError(
            "SIDECAR_REDIS_SENTINEL_PASSWORD",
            "is set, but REDIS_URL does not name Sentinel (redis+sentinel:// or rediss+sentinel://)",
        )
    if settings.redis_ca_file is not None and (target is None or not target.tls):
        raise ConfigError(
            "SIDECAR_REDIS_CA_FILE",
            "is set, but REDIS_URL does not use TLS (rediss:// or rediss+sentinel://)",
        )
    check_service_endpoint(
        settings.service_endpoint,
        service_did=settings.service_did,
        allow_http_loopback=settings.did_web_allow_http_loopback,
    )
