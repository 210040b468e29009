"""``wisp-sidecar doctor``: the smoke test after a deploy, one line per check.

Run it where the sidecar runs (``kubectl exec``), with the same settings: it
asks Redis what it is and whether the durability setting can be met, opens
every stored envelope with the configured keys, loads the API keys, prints the
limits in force, and calls the three listeners. It prints ``ok``, ``warn``,
``skip`` or ``FAIL`` for each and exits 1 on any ``FAIL``. It never prints a
key, a token or a URL's password.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit

import aiohttp

from sidecar.cli.common import EXIT_FAILED, EXIT_OK, counted, run
from sidecar.cli.devmode import dev_tool_settings
from sidecar.cli.doctor_socket import is_sign_answer, sign_socket
from sidecar.cli.kek_status import role_of
from sidecar.errors import ConfigError, StorageError, StorageUnavailable
from sidecar.redis_url import SentinelTarget, scrub
from sidecar.setting_values import redis_target

if TYPE_CHECKING:
    from sidecar.settings import Settings
    from sidecar.storage.store import SecretStore

# How long each listener gets to answer.
LISTENER_TIMEOUT_S: Final = 3.0
# A wildcard bind is reached on loopback from inside the pod.
_LOOPBACK: Final = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


@dataclass(frozen=True)
class Check:
    """One line of the report."""

    status: str  # ok, warn, skip or FAIL
    name: str
    detail: str

    def line(self) -> str:
        return f"{self.status:<4} {self.name}: {self.detail}"


def doctor(settings: Settings) -> int:
    """Print one line per check; exit 1 when any check failed, 0 otherwise."""
    with dev_tool_settings(settings) as settings:
        if settings.redis_url is None:
            raise ConfigError("REDIS_URL", "is not set: doctor checks the Redis the sidecar uses")
        url = settings.redis_url.reveal()
        failed = False
        for check in run(_checks(settings)):
            # Scrubbed again: a Redis error's wording is not ours to trust.
            print(scrub(check.line(), url), flush=True)
            failed = failed or check.status == "FAIL"
    return EXIT_FAILED if failed else EXIT_OK


async def _checks(settings: Settings) -> list[Check]:
    from sidecar.app import store_for

    checks: list[Check] = []
    store = store_for(settings)
    try:
        redis = await _redis(settings, store)
        answered = redis.status != "FAIL"
        unchecked = "not checked: Redis did not answer"
        checks.append(redis)
        checks.append(
            await _durability(store) if answered else Check("skip", "durability", unchecked)
        )
        checks.append(_kek(settings))
        checks.append(
            await _envelopes(settings, store) if answered else Check("skip", "envelopes", unchecked)
        )
    finally:
        await store.close()
    if "xrpc" in settings.listeners:
        checks.append(_api_keys(settings))
        if settings.service_did is not None:
            checks.append(_proxying(settings))
        checks.append(_limits(settings))
    else:
        checks.append(Check("skip", "api keys", f"not used: {_role(settings)}"))
    checks += await _listeners(settings)
    return checks


def _role(settings: Settings) -> str:
    return f"this process runs {', '.join(settings.listeners)} (SIDECAR_LISTENERS)"


def _where(settings: Settings) -> str:
    target = redis_target(settings.redis_url, cluster=settings.redis_cluster)
    if isinstance(target, SentinelTarget):
        return (
            f"Sentinel primary {target.service_name!r} "
            f"({len(target.sentinels)} sentinels, database {target.db})"
        )
    assert target is not None
    parts = urlsplit(target.url)
    if parts.scheme == "unix":
        return f"one server on {parts.path}"
    kind = "cluster, seed node" if target.cluster else "one server"
    tls = " over TLS" if target.tls else ""
    return f"{kind} {parts.hostname}:{parts.port or 6379}{tls}"


def _limits(settings: Settings) -> Check:
    """The bounds in force on the XRPC port, so an operator sees what a caller meets."""
    proxies = ", ".join(map(str, settings.trusted_proxies)) or "none"
    parts = [
        f"at most {settings.max_secrets_per_did} secrets per owner DID",
        f"{settings.rate_limit_changes_per_minute} changes/min per owner DID",
        f"{settings.rate_limit_auth_failures_per_minute} refused credentials/min per client "
        f"address (trusted proxies: {proxies})",
    ]
    if settings.service_did is not None:
        parts.append(
            f"DID documents: refetched at most every {settings.did_refetch_min_s} s, "
            f"failures remembered {settings.did_failure_cache_s} s, "
            f"{settings.did_max_in_flight} fetches in flight"
        )
    return Check("ok", "limits", "; ".join(parts))


async def _redis(settings: Settings, store: SecretStore) -> Check:
    where = _where(settings)
    started = time.perf_counter()
    try:
        await store.calls.ping()
        version = await store.calls.server_version()
    except (StorageUnavailable, StorageError) as exc:
        cause = exc.__cause__ or exc
        reason = " ".join((str(cause) or type(cause).__name__).split())
        return Check(
            "FAIL",
            "redis",
            f"{where}: no answer within {settings.redis_timeout_ms} ms "
            f"(SIDECAR_REDIS_TIMEOUT_MS): {reason}",
        )
    elapsed_ms = (time.perf_counter() - started) * 1000
    return Check("ok", "redis", f"{where}, {version}, answered in {elapsed_ms:.1f} ms")


async def _durability(store: SecretStore) -> Check:
    from sidecar.storage.durability import ReplicaCheck

    durability = store.calls.durability
    try:
        refusal = await store.calls.fsync_refusal() if durability.fsync != "off" else None
        connected = tuple(await store.calls.replicas_per_primary())
    except (StorageUnavailable, StorageError) as exc:
        return Check("FAIL", "durability", f"cannot ask the primaries: {exc}")
    if refusal is not None and durability.required_fsync:
        return Check("FAIL", "durability", f"SIDECAR_DURABLE_FSYNC=on: {refusal}")
    warnings = []
    if refusal is not None:
        warnings.append(
            f"SIDECAR_DURABLE_FSYNC=auto: {refusal}, so changes are answered before they are "
            "fsynced and a crash of the server can undo one (turn on appendonly, or set "
            "SIDECAR_DURABLE_FSYNC=off to say this is meant)"
        )
    elif durability.fsync == "off":
        warnings.append(
            "SIDECAR_DURABLE_FSYNC=off: changes are answered before the primary's AOF is "
            "fsynced, so a crash of the server can undo one"
        )
    if durability.replicas == 0 and warnings:
        warnings.append(
            "SIDECAR_DURABLE_REPLICAS=0: changes are answered before any replica has them, "
            "so a failover can undo one (production: 1 or more)"
        )
        return Check("warn", "durability", "; ".join(warnings))
    check = ReplicaCheck(durability, connected)
    detail = "; ".join(
        [
            f"requires {durability.describe()}; replicas connected per primary: "
            f"{', '.join(map(str, connected))}",
            *warnings,
        ]
    )
    if not check.met:
        return Check(
            "FAIL", "durability", f"{detail}: changes will answer 503 until enough connect"
        )
    return Check("warn" if warnings else "ok", "durability", detail)


def _kek(settings: Settings) -> Check:
    from sidecar.crypto import Keyring

    keyring = Keyring(settings.kek, settings.kek_previous)
    previous = [kid for kid in keyring.kids if kid != keyring.active_kid]
    shown = f"previous: {', '.join(previous) if previous else 'none'}"
    if not keyring.kids:
        return Check("FAIL", "kek", "no key-encryption key: set SIDECAR_KEK_FILE")
    if keyring.active_kid is None:
        return Check("warn", "kek", f"no active key, so creates and rotations answer 503; {shown}")
    return Check("ok", "kek", f"active kid {keyring.active_kid}; {shown}")


async def _envelopes(settings: Settings, store: SecretStore) -> Check:
    from sidecar.crypto import Keyring
    from sidecar.storage.inventory import take_inventory

    keyring = Keyring(settings.kek, settings.kek_previous)
    try:
        inventory = await take_inventory(store, keyring)
    except (StorageUnavailable, StorageError) as exc:
        return Check("FAIL", "envelopes", f"cannot read them: {exc}")
    by_kid = ", ".join(
        f"{kid or 'malformed'} ({role_of(kid, keyring)}): {count.secrets}"
        for kid, count in sorted(inventory.by_kid.items(), key=lambda item: item[0] or "")
    )
    summary = f"{inventory.secrets} stored" + (f"; by key id: {by_kid}" if by_kid else "")
    if inventory.unopened:
        return Check(
            "FAIL",
            "envelopes",
            f"{inventory.unopened} do not open with these keys (signing them answers 503); "
            f"{summary}. See `wisp-sidecar keys status`",
        )
    return Check("ok", "envelopes", f"all open; {summary}")


def _api_keys(settings: Settings) -> Check:
    from sidecar.auth.api_keys import load_api_keys

    notes = []
    entries = []
    if settings.api_keys_file is not None:
        try:
            entries = load_api_keys(settings.api_keys_file)
        except ConfigError as exc:
            return Check("FAIL", "api keys", str(exc))
        owners = len({entry.did for entry in entries})
        notes.append(
            f"{counted(len(entries), 'key')} for {counted(owners, 'DID')} "
            f"in {settings.api_keys_file}"
        )
    if settings.service_did is not None:
        notes.append(f"service auth on as {settings.service_did}")
    if not notes or (not entries and settings.service_did is None):
        return Check(
            "FAIL",
            "api keys",
            "no API key and no service auth: every XRPC call will be 401 "
            "(set SIDECAR_API_KEYS_FILE or SIDECAR_SERVICE_DID)",
        )
    if settings.allowed_dids is not None:
        refused = sorted({e.label or e.did for e in entries if e.did not in settings.allowed_dids})
        if refused:
            return Check(
                "warn",
                "api keys",
                f"{'; '.join(notes)}; SIDECAR_ALLOWED_DIDS refuses keys: {', '.join(refused)}",
            )
    return Check("ok", "api keys", "; ".join(notes))


def _proxying(settings: Settings) -> Check:
    """Where a PDS that proxies calls (``atproto-proxy``) finds this sidecar's service entry."""
    did, endpoint = settings.service_did, settings.service_endpoint
    assert did is not None
    entry = f"#{settings.service_id}"
    if not did.startswith("did:web:"):
        where = f"naming {endpoint}" if endpoint is not None else "naming this sidecar's https URL"
        return Check(
            "ok", "proxying", f"publish the {entry} entry in the document of {did}, {where}"
        )
    host = did.removeprefix("did:web:").replace("%3A", ":")
    if endpoint is not None:
        return Check(
            "ok", "proxying", f"this sidecar serves /.well-known/did.json: {entry} at {endpoint}"
        )
    return Check(
        "warn",
        "proxying",
        "direct service-JWT calls only: this sidecar serves no DID document. Calls proxied "
        f"through a PDS need https://{host}/.well-known/did.json served somewhere, with a "
        f"{entry} entry; set SIDECAR_SERVICE_ENDPOINT to have the sidecar serve it",
    )


async def _listeners(settings: Settings) -> list[Check]:
    """The listeners of this process's role; the others are not its to run."""
    timeout = aiohttp.ClientTimeout(total=LISTENER_TIMEOUT_S)
    probes = {
        "xrpc": ("GET", settings.xrpc_host, settings.xrpc_port, "/xrpc/_health"),
        "sign": ("POST", settings.sign_host, settings.sign_port, "/v1/sign"),
        "ops": ("GET", settings.ops_host, settings.ops_port, "/readyz"),
    }
    async with aiohttp.ClientSession(timeout=timeout) as session:
        checks = list(
            await asyncio.gather(
                *(_listener(session, name, *probes[name]) for name in settings.listeners)
            )
        )
    if "sign" in settings.listeners:
        if settings.sign_port == 0:
            at = [check.name for check in checks].index("listener sign")
            checks[at] = Check("skip", "listener sign", "SIDECAR_SIGN_PORT=0: no TCP sign listener")
        if settings.sign_socket is not None:
            status, detail = await sign_socket(settings, LISTENER_TIMEOUT_S)
            checks.append(Check(status, "listener sign socket", detail))
    skipped = [name for name in probes if name not in settings.listeners]
    return [*checks, *(Check("skip", f"listener {name}", _role(settings)) for name in skipped)]


async def _listener(
    session: aiohttp.ClientSession, name: str, method: str, host: str, port: int, path: str
) -> Check:
    address = _LOOPBACK.get(host, host)
    shown = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    check = f"listener {name}"
    try:
        async with session.request(method, f"http://{shown}{path}") as response:
            status = response.status
            body: Any = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        return Check("FAIL", check, f"no sidecar answer on {shown}: {type(exc).__name__}")
    if name == "ops":
        if status == 200:
            role = body.get("listeners") if isinstance(body, dict) else None
            served = f" ({', '.join(role)})" if isinstance(role, list) else ""
            return Check("ok", check, f"{shown}: ready{served}")
        reason = body.get("reason") if isinstance(body, dict) else None
        return Check("FAIL", check, f"{shown}: not ready ({reason or status})")
    if name == "xrpc":
        if status == 200 and isinstance(body, dict) and "version" in body:
            return Check("ok", check, f"{shown}: version {body['version']}")
        return Check("FAIL", check, f"{shown}: health answered {status}")
    if is_sign_answer(status, body):
        return Check("ok", check, f"{shown}: answers")
    return Check("FAIL", check, f"{shown}: answered {status}, not as the sign API does")
