"""The sidecar's settings: declared once, parsed once at start into one frozen object.

Each field of ``Settings`` is declared with ``setting`` (``sidecar.setting_spec``):
its variable, its parser, its default, its group and the text that documents it. Parsing, the
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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sidecar.crypto import Kek, Keyring, parse_kek
from sidecar.errors import ConfigError
from sidecar.setting_checks import check_together
from sidecar.setting_sources import merged_sources, toml_key
from sidecar.setting_spec import Spec, setting
from sidecar.setting_values import (
    LOG_FORMATS,
    LOG_LEVELS,
    SIGN_ACCESS_LOGS,
    Network,
    Secret,
    parse_choice,
    parse_cidr_list,
    parse_did,
    parse_did_list,
    parse_existing_file,
    parse_flag,
    parse_fsync_mode,
    parse_group_id,
    parse_host,
    parse_http_url,
    parse_int_between,
    parse_listener_set,
    parse_password,
    parse_path,
    parse_port,
    parse_redis_url_secret,
    parse_secret_text,
    parse_service_id,
    parse_sign_port,
    parse_socket_mode,
    parse_socket_path,
    parse_text,
    read_secret_file,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["GROUPS", "SPECS", "VARIABLES", "Secret", "Settings", "Spec", "toml_key"]

# The groups of the example file and the reference, in order.
GROUPS: Final = (
    "Redis",
    "Durability",
    "Listeners",
    "Lifecycle",
    "Keys",
    "atproto service auth (JWTs)",
    "Limits",
    "Signing",
    "Local state and logs",
)


def _keks(variable: str, value: str) -> tuple[Kek, ...]:
    return tuple(parse_kek(part, setting=variable) for part in value.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """Everything the sidecar is configured with. Build it with ``from_env``."""

    # --- Redis
    redis_url: Secret | None = setting(
        "REDIS_URL", parse_redis_url_secret, None, "Redis",
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
    embedded_redis: bool = setting(
        "SIDECAR_EMBEDDED_REDIS", parse_flag, False, "Redis",
        "Start an embedded Valkey on loopback, persisted under data_dir/valkey, although\n"
        "a KEK or an API keys file is set. For a single node that keeps its data\n"
        "directory on a lasting disk; never with REDIS_URL. Without it, only\n"
        "development mode (nothing configured) starts one. 1/0/true/false.",
    )  # fmt: skip
    redis_cluster: bool = setting(
        "SIDECAR_REDIS_CLUSTER", parse_flag, False, "Redis",
        "Redis Cluster: REDIS_URL (redis:// or rediss://, database 0) names one seed\n"
        "node and the others are discovered. 1/0/true/false.",
    )  # fmt: skip
    redis_ca_file: Path | None = setting(
        "SIDECAR_REDIS_CA_FILE", parse_existing_file, None, "Redis",
        "A PEM file of the CA that signed the Redis servers' certificates, for\n"
        "rediss:// and rediss+sentinel:// URLs. Unset: the system's trusted CAs.",
        example='"/run/secrets/wisp-sidecar/redis-ca.pem"',
    )  # fmt: skip
    redis_sentinel_password: Secret | None = setting(
        "SIDECAR_REDIS_SENTINEL_PASSWORD", parse_password, None, "Redis",
        "The sentinels' own password, for sentinels that require one (requirepass);\n"
        "only with a redis+sentinel:// or rediss+sentinel:// URL. Unset: the sentinels\n"
        "are asked without a password.",
        example='"..."',
    )  # fmt: skip
    redis_timeout_ms: int = setting(
        "SIDECAR_REDIS_TIMEOUT_MS", parse_int_between(1, 60_000), 500, "Redis",
        "How long any Redis call may take before the request fails closed with 503\n"
        "StorageUnavailable. 1..60000.",
    )  # fmt: skip
    redis_connect_timeout_s: int = setting(
        "SIDECAR_REDIS_CONNECT_TIMEOUT_S", parse_int_between(1, 3600), 10, "Redis",
        "At start, how long to wait for Redis to answer before exiting with code 2\n"
        "and one line saying why. 1..3600.",
    )  # fmt: skip
    start_without_redis: bool = setting(
        "SIDECAR_START_WITHOUT_REDIS", parse_flag, False, "Redis",
        "Start anyway when Redis does not answer: /readyz says 503 until it does, and\n"
        "requests that need Redis get 503 StorageUnavailable. 1/0/true/false.",
    )  # fmt: skip
    audit_log_max_len: int = setting(
        "SIDECAR_AUDIT_LOG_MAX_LEN", parse_int_between(1, 10_000_000), 1000, "Redis",
        "Audit stream cap per owner, approximate.",
    )  # fmt: skip
    # --- Durability: what an acknowledged change must reach (sidecar.storage.durability)
    durable_replicas: int = setting(
        "SIDECAR_DURABLE_REPLICAS", parse_int_between(0, 100), 0, "Durability",
        "How many replicas must acknowledge each change (WAIT) before it is answered\n"
        "200. Redis replicates asynchronously: without this, a failover inside the\n"
        "replication window can undo a rotation already answered 200, and the old\n"
        "token signs again. Production: 1 or more. 0..100.",
        example="1",
    )  # fmt: skip
    durable_fsync: str = setting(
        "SIDECAR_DURABLE_FSYNC", parse_fsync_mode, "auto", "Durability",
        "Whether each change must also be fsynced to the primary's append-only file\n"
        "before it is answered 200 (WAITAOF), so that a crash or SIGKILL of the server\n"
        "cannot undo it. auto: wherever the primary can (appendonly yes, Redis 7.2+ or\n"
        "Valkey 8+), decided per change, so a failover onto a server without AOF is\n"
        "followed at once; where it cannot, changes are answered without fsync and one\n"
        "warning line says so. With replicas required, auto waits for their\n"
        "acknowledgement (WAIT), not their AOF. on: the primary's AOF and that of the\n"
        "replicas counted above (WAITAOF 1 <replicas>), and the sidecar refuses to start\n"
        "when the server cannot. off: no fsync is waited for. 1/true mean on, 0/false off.",
    )  # fmt: skip
    durable_timeout_ms: int = setting(
        "SIDECAR_DURABLE_TIMEOUT_MS", parse_int_between(1, 60_000), 500, "Durability",
        "How long a change waits for that durability before it is answered 503\n"
        "StorageUnavailable (it may or may not have been applied; the caller\n"
        "retries). Each wait command gets this long, so a change takes at most this\n"
        "plus redis_timeout_ms; with durable_fsync auto and replicas required it sends\n"
        "two (WAITAOF, then WAIT), and takes at most twice this plus redis_timeout_ms\n"
        "when both fall short. 1..60000.",
    )  # fmt: skip
    # --- Listeners
    xrpc_host: str = setting(
        "SIDECAR_XRPC_HOST", parse_host, "0.0.0.0", "Listeners",
        "XRPC: secret management for clients. The address it binds.",
    )  # fmt: skip
    xrpc_port: int = setting("SIDECAR_XRPC_PORT", parse_port, 8080, "Listeners", "XRPC: its port.")
    sign_host: str = setting(
        "SIDECAR_SIGN_HOST", parse_host, "127.0.0.1", "Listeners",
        "Sign: the dispatcher's pod-local signing API. Keep it on loopback: it is a\n"
        "signing oracle.",
    )  # fmt: skip
    sign_port: int = setting(
        "SIDECAR_SIGN_PORT", parse_sign_port, 8081, "Listeners",
        "Sign: its port; 0 for none, with sign_socket set (no other port may be 0).",
    )  # fmt: skip
    sign_socket: Path | None = setting(
        "SIDECAR_SIGN_SOCKET", parse_socket_path, None, "Listeners",
        "Sign: also on this Unix socket (at most 90 bytes), for the dispatcher alone.\n"
        "A stale socket is replaced; another file, or a live socket, is refused.",
        example='"/run/wisp-sidecar/sign.sock"',
    )  # fmt: skip
    sign_socket_mode: str = setting(
        "SIDECAR_SIGN_SOCKET_MODE", parse_socket_mode, "0660", "Listeners",
        "Its permissions, octal, set before it is reachable; no write for 'others'.",
    )  # fmt: skip
    sign_socket_group: int | None = setting(
        "SIDECAR_SIGN_SOCKET_GROUP", parse_group_id, None, "Listeners",
        "Its group (name or number): the dispatcher's, one the sidecar is in too.\n"
        "Unset: the sidecar's own.",
        example='"10002"',
    )  # fmt: skip
    ops_host: str = setting(
        "SIDECAR_OPS_HOST", parse_host, "0.0.0.0", "Listeners",
        "Ops: /metrics, /healthz, /readyz. The address it binds.",
    )  # fmt: skip
    ops_port: int = setting("SIDECAR_OPS_PORT", parse_port, 9090, "Listeners", "Ops: its port.")
    listeners: tuple[str, ...] = setting(
        "SIDECAR_LISTENERS", parse_listener_set, ("xrpc", "sign", "ops"), "Listeners",
        "The listeners this process runs (its role), comma-separated: xrpc, sign, ops.\n"
        "ops is required (health and metrics). \"sign,ops\" does no XRPC work at all\n"
        "(no API keys, no DID resolution); \"xrpc,ops\" signs nothing. Production runs\n"
        "the two roles as two containers, so the public port cannot slow signing.",
        example='["xrpc", "sign", "ops"]',
    )  # fmt: skip
    xrpc_loop_share: int = setting(
        "SIDECAR_XRPC_LOOP_SHARE", parse_int_between(1, 100), 25, "Listeners",
        "In a process that runs both xrpc and sign, the most of the event loop's time,\n"
        "in percent, that XRPC work may use; past it XRPC connections are not read\n"
        "(callers wait) until the share has paid for the excess. 100 turns it off.\n"
        "No effect on a process without sign. 1..100.",
    )  # fmt: skip
    xrpc_cpu_share: int = setting(
        "SIDECAR_XRPC_CPU_SHARE", parse_int_between(1, 100), 100, "Listeners",
        "In a process that runs xrpc without sign (the XRPC role on its own), the most\n"
        "of one CPU, in percent, that XRPC work may use, held the same way. For an XRPC\n"
        "process that shares CPUs with a sign process; the Component sets 50. 100 (the\n"
        "default) turns it off. No effect on a process with sign. 1..100.",
    )  # fmt: skip
    xrpc_loop_burst_ms: int = setting(
        "SIDECAR_XRPC_LOOP_BURST_MS", parse_int_between(1, 10_000), 10, "Listeners",
        "With either share: how much loop time XRPC may use at once before it waits;\n"
        "signing can be held up this long (plus one XRPC request). 1..10000.",
    )  # fmt: skip
    xrpc_max_connections: int = setting(
        "SIDECAR_XRPC_MAX_CONNECTIONS", parse_int_between(1, 1_000_000), 1000, "Listeners",
        "The most connections the XRPC listener holds at once; past it a new one is\n"
        "closed at once. The process's file limit lowers it if need be, always keeping\n"
        "room for the sign and ops listeners. 1..1000000.",
    )  # fmt: skip
    http_read_timeout_s: int = setting(
        "SIDECAR_HTTP_READ_TIMEOUT_S", parse_int_between(1, 3600), 10, "Listeners",
        "The most time a client gets to send a complete request head, and again its\n"
        "body, on every listener; then the connection is closed (a body gets 408).\n"
        "1..3600.",
    )  # fmt: skip
    http_idle_timeout_s: int = setting(
        "SIDECAR_HTTP_IDLE_TIMEOUT_S", parse_int_between(1, 3600), 15, "Listeners",
        "How long a kept-alive connection may sit idle between requests. 1..3600.",
    )  # fmt: skip
    http_write_timeout_s: int = setting(
        "SIDECAR_HTTP_WRITE_TIMEOUT_S", parse_int_between(1, 3600), 10, "Listeners",
        "How long answers may wait for a client that does not read them; then its\n"
        "connection is aborted (reset) and its buffers freed. 1..3600.")  # fmt: skip
    http_max_pipelined: int = setting(
        "SIDECAR_HTTP_MAX_PIPELINED", parse_int_between(1, 1024), 16, "Listeners",
        "Requests awaiting answers at which reading a connection pauses. 1..1024.")  # fmt: skip
    http_max_queued_bytes: int = setting(
        "SIDECAR_HTTP_MAX_QUEUED_BYTES", parse_int_between(4096, 1 << 26), 65536, "Listeners",
        "Unsent answer bytes one connection may queue; over it, reading pauses, and past\n"
        "http_write_timeout_s the connection is aborted. 4096..67108864.")  # fmt: skip
    # --- Lifecycle
    shutdown_grace_s: int = setting(
        # At least 1: aiohttp reads a shutdown timeout of 0 as "wait for ever".
        "SIDECAR_SHUTDOWN_GRACE_S", parse_int_between(1, 3600), 20, "Lifecycle",
        "On SIGTERM, /readyz turns 503 at once, the XRPC and sign listeners stop\n"
        "accepting connections, and requests in flight get this many seconds to\n"
        "finish before they are cancelled. Keep the pod's terminationGracePeriodSeconds\n"
        "above it. 1..3600.",
    )  # fmt: skip
    # --- Keys
    kek: Kek | None = setting(
        "SIDECAR_KEK", lambda variable, text: parse_kek(text, setting=variable), None, "Keys",
        "The active key-encryption key: 64 hex, 43 base64url or 44 base64 characters.\n"
        "Prefer kek_file (a mounted secret) to putting the key in a file like this.\n"
        "Make one with `wisp-sidecar keygen`. Set kek or kek_file, not both.",
        example='"<output of wisp-sidecar keygen>"',
        file_variable="SIDECAR_KEK_FILE",
        file_example='"/run/secrets/wisp-sidecar/kek"',
    )  # fmt: skip
    kek_previous: tuple[Kek, ...] = setting(
        "SIDECAR_KEK_PREVIOUS", _keks, (), "Keys",
        f"Up to {Keyring.MAX_PREVIOUS} decrypt-only previous keys, comma-separated, during a\n"
        "KEK rotation.",
        example='["<old key>"]',
    )  # fmt: skip
    api_keys_file: Path | None = setting(
        "SIDECAR_API_KEYS_FILE", parse_existing_file, None, "Keys",
        "API keys: one line per key, \"<did> <sha256-hex-of-key> [label]\"; '#' starts\n"
        "a comment. Make lines with `wisp-sidecar apikey --did <did>`.",
        example='"/run/secrets/wisp-sidecar/api-keys"',
    )  # fmt: skip
    # --- atproto service auth: on exactly when service_did is set
    service_did: str | None = setting(
        "SIDECAR_SERVICE_DID", parse_did, None, "atproto service auth (JWTs)",
        "The sidecar's own DID. Setting it turns on service auth: callers may then\n"
        "send \"Authorization: Bearer <jwt>\" with a token from their PDS\n"
        "(com.atproto.server.getServiceAuth?aud=<this DID>&lxm=<method NSID>), and the\n"
        "token's issuer owns the secrets. Unset: API keys only.",
        example='"did:web:sidecar.example.com"',
    )  # fmt: skip
    service_id: str = setting(
        "SIDECAR_SERVICE_ID", parse_service_id, "wisp_sidecar", "atproto service auth (JWTs)",
        "The id of this sidecar's service entry in the DID document: clients proxy\n"
        "through their PDS with \"atproto-proxy: <service_did>#<this>\". The fragment\n"
        "only picks the endpoint: the PDS's token has the bare DID as aud. A JWT's\n"
        "aud may also be \"<service_did>#<this>\".",
    )  # fmt: skip
    service_type: str = setting(
        "SIDECAR_SERVICE_TYPE", parse_text, "WispSidecar", "atproto service auth (JWTs)",
        "The type of that service entry, as /.well-known/did.json announces it.",
    )  # fmt: skip
    service_endpoint: str | None = setting(
        "SIDECAR_SERVICE_ENDPOINT", parse_http_url, None, "atproto service auth (JWTs)",
        "The public https URL of the XRPC listener (the ingress in front of it), which\n"
        "the service entry names; a PDS forwards proxied calls there. With a did:web\n"
        "service_did, setting it makes the XRPC listener serve the DID document at\n"
        "/.well-known/did.json. Unset, the sidecar serves no document: direct JWT\n"
        "calls work, and proxying needs the document served elsewhere. http only for\n"
        "a loopback host, with did_web_allow_http_loopback.",
        example='"https://sidecar.example.com"',
    )  # fmt: skip
    plc_url: str = setting(
        "SIDECAR_PLC_URL", parse_http_url, "https://plc.directory", "atproto service auth (JWTs)",
        "The PLC directory that resolves did:plc issuers.",
    )  # fmt: skip
    did_web_allow_http_loopback: bool = setting(
        "SIDECAR_DID_WEB_ALLOW_HTTP_LOOPBACK", parse_flag, False, "atproto service auth (JWTs)",
        "Resolve did:web issuers on loopback hosts over plain http. For tests and\n"
        "development only: without it, loopback did:web issuers are refused.\n"
        "1/0/true/false.",
    )  # fmt: skip
    did_cache_ttl_s: int = setting(
        "SIDECAR_DID_CACHE_TTL_S", parse_int_between(1, 86_400), 300, "atproto service auth (JWTs)",
        "How long an issuer's resolved key is trusted before it is fetched again, in\n"
        "seconds, 1..86400. A signature that fails with a cached key is re-checked\n"
        "against a fresh fetch at once, so key rotations need not wait for this.",
    )  # fmt: skip
    did_refetch_min_s: int = setting(
        "SIDECAR_DID_REFETCH_MIN_S", parse_int_between(0, 86_400), 30,
        "atproto service auth (JWTs)",
        "After a signature fails with a cached key, the issuer's document is fetched\n"
        "again at most once per this many seconds, so forged tokens cannot make the\n"
        "sidecar hammer a PLC directory or a host. A real key rotation is seen at most\n"
        "this long after the last fetch. 0..86400.",
    )  # fmt: skip
    did_failure_cache_s: int = setting(
        "SIDECAR_DID_FAILURE_CACHE_S", parse_int_between(1, 3600), 30,
        "atproto service auth (JWTs)",
        "How long a DID that failed to resolve is refused without another fetch, in\n"
        "seconds. 1..3600.",
    )  # fmt: skip
    did_max_in_flight: int = setting(
        "SIDECAR_DID_MAX_IN_FLIGHT", parse_int_between(1, 10_000), 32,
        "atproto service auth (JWTs)",
        "The most DID documents fetched at once by one process; past it a JWT that\n"
        "needs another fetch gets 503 NotEnoughResources with Retry-After at once,\n"
        "rather than a place in a queue. 1..10000.",
    )  # fmt: skip
    allowed_dids: frozenset[str] | None = setting(
        "SIDECAR_ALLOWED_DIDS", parse_did_list, None, "atproto service auth (JWTs)",
        "When set, only these DIDs may use the XRPC API, whichever credential they\n"
        "authenticate with (API key or JWT); any other caller gets 403 Forbidden.\n"
        "Unset: every authenticated caller may. Comma-separated in the environment.",
        example='["did:plc:abc123", "did:web:ops.example.com"]',
    )  # fmt: skip
    # --- Limits: every per-owner resource has a bound (docs/operations.md#sizing-the-limits)
    max_secrets_per_did: int = setting(
        "SIDECAR_MAX_SECRETS_PER_DID", parse_int_between(1, 1_000_000), 1000, "Limits",
        "The most secrets one owner DID may hold; a create or import past it is 400\n"
        "SecretQuotaExceeded and stores nothing. Lowered below what an owner holds, the\n"
        "owner keeps its secrets and can add none until it is under it. 1..1000000.",
    )  # fmt: skip
    rate_limit_changes_per_minute: int = setting(
        "SIDECAR_RATE_LIMIT_CHANGES_PER_MINUTE", parse_int_between(1, 1_000_000), 60, "Limits",
        "Creates, rotations and deletes one owner DID may make per minute, on all\n"
        "replicas together (counted in Redis); past it, 429 RateLimitExceeded with\n"
        "RateLimit-* headers and Retry-After. Signing is never limited. 1..1000000.",
    )  # fmt: skip
    rate_limit_auth_failures_per_minute: int = setting(
        "SIDECAR_RATE_LIMIT_AUTH_FAILURES_PER_MINUTE", parse_int_between(1, 1_000_000), 60,
        "Limits",
        "Refused credentials per client address (an IPv6 client by its /64) per minute,\n"
        "on all replicas together; past it, every XRPC call from that address gets 429\n"
        "before its credential is looked at, until the minute is over. 1..1000000.",
    )  # fmt: skip
    trusted_proxies: tuple[Network, ...] = setting(
        "SIDECAR_TRUSTED_PROXIES", parse_cidr_list, (), "Limits",
        "CIDRs of the proxies (an Ingress controller) whose X-Forwarded-For names the\n"
        "client address; from any other peer the header is ignored and the peer is the\n"
        "client. Unset: no proxy is trusted. Comma-separated in the environment.",
        example='["10.0.0.0/8"]',
    )  # fmt: skip
    # --- Signing
    sign_max_bytes: int = setting(
        "SIDECAR_SIGN_MAX_BYTES", parse_int_between(1, 64 * 1024 * 1024), 1024 * 1024, "Signing",
        "Largest payload /v1/sign accepts, in bytes.",
    )  # fmt: skip
    sign_batch_max_bytes: int = setting(
        "SIDECAR_SIGN_BATCH_MAX_BYTES", parse_int_between(1, 256 * 1024 * 1024), 16 * 1024 * 1024,
        "Signing", "Largest /v1/sign/batch request body (JSON with base64 bodies), in bytes.",
    )  # fmt: skip
    sign_access_log: str = setting(
        "SIDECAR_SIGN_ACCESS_LOG", parse_choice(SIGN_ACCESS_LOGS), "errors", "Signing",
        "Which sign requests get a log line: \"errors\" (status 400 and up) or \"all\".\n"
        "A line per signature costs more CPU than the signature itself; metrics count\n"
        "every request either way.",
    )  # fmt: skip
    sign_token: Secret | None = setting(
        "SIDECAR_SIGN_TOKEN", parse_secret_text, None, "Signing",
        "When set, the sign listener also requires \"Authorization: Bearer <it>\";\n"
        "at least 16 characters.",
        example='"..."',
    )  # fmt: skip
    # --- Local state and logs
    data_dir: Path = setting(
        "SIDECAR_DATA_DIR", parse_path, Path(".data"), "Local state and logs",
        "Development files (embedded Valkey data, dev KEK and API key).",
    )  # fmt: skip
    dev_did: str = setting(
        "SIDECAR_DEV_DID", parse_did, "did:web:localhost", "Local state and logs",
        "The DID the development API key acts as.",
    )  # fmt: skip
    log_level: str = setting(
        "SIDECAR_LOG_LEVEL", parse_choice(LOG_LEVELS), "info", "Local state and logs",
        "debug, info, warning or error.",
    )  # fmt: skip
    log_format: str = setting(
        "SIDECAR_LOG_FORMAT", parse_choice(LOG_FORMATS), "auto", "Local state and logs",
        "auto (console on a TTY, JSON otherwise), json or console.",
    )  # fmt: skip
    log_sampled_per_s: int = setting(
        "SIDECAR_LOG_SAMPLED_PER_S", parse_int_between(1, 1_000_000), 100, "Local state and logs",
        "Lines a second of each kind any client can cause (refused or anonymous requests,\n"
        "closed connections); the rest are dropped and counted. 1..1000000.")  # fmt: skip
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
        return _parse(merged_sources(environ, SPECS, VARIABLES, NOT_SETTINGS))


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
    check_together(settings)
    return settings
