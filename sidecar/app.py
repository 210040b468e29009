"""The one place that wires everything: resources, the three listeners, and serving.

``open_sidecar(settings)`` opens the shared resources (Redis, keyring, auth,
metrics) once; ``create_*_app(sidecar)`` builds each listener's aiohttp app on
them. Tests build several sidecars on one Redis to act as replicas.

``serve`` owns the process lifecycle: wait for Redis at start (or start unready
with ``SIDECAR_START_WITHOUT_REDIS``), then on SIGTERM turn unready at once and
drain the traffic listeners within ``SIDECAR_SHUTDOWN_GRACE_S``.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from sidecar import __version__
from sidecar.auth.api_keys import ApiKeyEntry, ApiKeys, load_api_keys
from sidecar.auth.authenticator import Authenticator, BearerVerifier
from sidecar.auth.did_resolver import open_did_resolver
from sidecar.auth.service_jwt import ServiceAuthVerifier
from sidecar.crypto import Keyring
from sidecar.errors import ConfigError, StartupFailed, StorageError, StorageUnavailable
from sidecar.listeners import ConnectionLimits, ListenerRunner, connection_cap
from sidecar.loop_share import shared_loop_connections, xrpc_loop_share
from sidecar.metrics import KnownLabels, Metrics
from sidecar.redis_url import scrub
from sidecar.signing.reader import CoalescingReader
from sidecar.signing.schemes import SCHEMES
from sidecar.storage.calls import OPERATIONS as REDIS_OPERATIONS
from sidecar.storage.calls import ErrorHook, RedisCalls
from sidecar.storage.connection import connect
from sidecar.storage.durability import Durability, ReplicaCheck
from sidecar.storage.rate_limits import AddressLimits, ChangeLimit
from sidecar.storage.replay import ReplayRecords
from sidecar.storage.store import SecretStore
from sidecar.unix_socket import start_sign_socket
from sidecar.wire import http_middleware
from sidecar.xrpc.client_address import ClientAddresses
from sidecar.xrpc.did_document import add_did_document_route, did_document
from sidecar.xrpc.lexicon import LexiconRegistry, default_lexicon_dir
from sidecar.xrpc.methods import OUTCOMES as XRPC_OUTCOMES
from sidecar.xrpc.methods import SecretMethods, metrics_observer
from sidecar.xrpc.server import XrpcServer

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiohttp.abc import AbstractResolver

    from sidecar.settings import Settings
from sidecar.signing.api import OUTCOMES as SIGN_OUTCOMES
from sidecar.signing.api import VERIFY_REASONS, SignApi
from sidecar.signing.signer import Signer
from sidecar.signing.tokens import OpenedTokenCache

log = structlog.get_logger("sidecar.app")

# What a process without the XRPC listener holds instead of the lexicons.
NO_LEXICONS: Final = LexiconRegistry.from_documents(())


@dataclass
class Sidecar:
    """The resources one sidecar process shares between its listeners."""

    settings: Settings
    store: SecretStore
    replay: ReplayRecords
    keyring: Keyring
    authenticator: Authenticator
    metrics: Metrics
    lexicons: LexiconRegistry
    signer: Signer
    # Set when shutdown starts, so /readyz turns 503 before listeners close.
    draining: asyncio.Event = field(default_factory=asyncio.Event)

    async def redis_ok(self) -> bool:
        try:
            await self.store.calls.ping()
        except StorageUnavailable:
            return False
        return True

    async def replica_check(self) -> ReplicaCheck | None:
        """The replicas the durability setting needs against those connected, if it needs any."""
        durability = self.store.calls.durability
        if durability.replicas == 0:
            return None
        return ReplicaCheck(durability, tuple(await self.store.calls.replicas_per_primary()))


def durability_of(settings: Settings) -> Durability:
    return Durability(
        replicas=settings.durable_replicas,
        fsync=settings.durable_fsync,
        timeout_ms=settings.durable_timeout_ms,
    )


def store_for(
    settings: Settings,
    *,
    on_error: ErrorHook | None = None,
    on_not_durable: ErrorHook | None = None,
) -> SecretStore:
    """The store on the Redis that ``settings`` name; it connects on first use."""
    if settings.redis_url is None:
        raise ConfigError("REDIS_URL", "is not set")
    connection = connect(
        settings.redis_url.reveal(),
        timeout_s=settings.redis_timeout_s,
        cluster=settings.redis_cluster,
        ca_file=settings.redis_ca_file,
        sentinel_password=(
            settings.redis_sentinel_password.reveal()
            if settings.redis_sentinel_password is not None
            else None
        ),
    )
    calls = RedisCalls(
        connection,
        timeout_s=settings.redis_timeout_s,
        durability=durability_of(settings),
        on_error=on_error,
        on_not_durable=on_not_durable,
    )
    return SecretStore(
        calls,
        audit_max_len=settings.audit_log_max_len,
        max_secrets_per_did=settings.max_secrets_per_did,
    )


@contextlib.asynccontextmanager
async def open_sidecar(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    lexicons: LexiconRegistry | None = None,
    dns: AbstractResolver | None = None,
) -> AsyncIterator[Sidecar]:
    """Open the shared resources; close them on exit.

    ``dns`` looks up the hosts DID documents are fetched from (the system's
    resolver when None); whatever it answers passes the public-address check.
    """
    if settings.redis_url is None:
        raise ConfigError("REDIS_URL", "is not set")
    metrics = Metrics(
        registry if registry is not None else CollectorRegistry(),
        known=KnownLabels(
            sign_schemes=SCHEMES,
            sign_outcomes=SIGN_OUTCOMES,
            verify_reasons=VERIFY_REASONS,
            xrpc_outcomes=XRPC_OUTCOMES,
            redis_operations=REDIS_OPERATIONS,
        ),
    )
    keyring = Keyring(settings.kek, settings.kek_previous)
    # Key ids are public (every envelope names one); a pod missing the one that
    # sealed some secrets is then visible before its signatures fail.
    log.info(
        "keys",
        active_kid=keyring.active_kid,
        previous_kids=[kid for kid in keyring.kids if kid != keyring.active_kid],
    )
    # A process without the XRPC listener does none of its work: no API keys
    # read, no DID resolver or HTTP session, no lexicons loaded.
    xrpc = "xrpc" in settings.listeners
    entries = load_api_keys(settings.api_keys_file) if xrpc and settings.api_keys_file else []
    if xrpc:
        _warn_about_credentials(settings, entries)
    async with contextlib.AsyncExitStack() as resources:
        store = store_for(
            settings, on_error=metrics.redis_error, on_not_durable=metrics.not_durable
        )
        resources.push_async_callback(store.close)
        store.calls.watch_primary()
        replay = ReplayRecords(store.calls)
        verifiers: list[BearerVerifier] = []
        if xrpc and settings.service_did is not None:
            resolver = await resources.enter_async_context(open_did_resolver(settings, dns))
            verifiers.append(
                ServiceAuthVerifier(
                    settings.service_did, resolver, replay, service_id=settings.service_id
                )
            )
        yield Sidecar(
            settings=settings,
            store=store,
            replay=replay,
            keyring=keyring,
            authenticator=Authenticator(
                ApiKeys(entries), verifiers, allowed_dids=settings.allowed_dids
            ),
            metrics=metrics,
            lexicons=lexicons
            or (LexiconRegistry.load(default_lexicon_dir()) if xrpc else NO_LEXICONS),
            signer=Signer(
                CoalescingReader(store, on_batch=metrics.read_batch_size.observe),
                OpenedTokenCache(keyring),
            ),
        )


def _warn_about_credentials(settings: Settings, entries: list[ApiKeyEntry]) -> None:
    if not entries and settings.service_did is None:
        log.warning(
            "no_credentials",
            hint="set SIDECAR_API_KEYS_FILE or SIDECAR_SERVICE_DID; every XRPC call will be 401",
        )
    if settings.allowed_dids is not None:
        # The allow-list binds API keys too; a key it shuts out is likely a mistake.
        refused = sorted(entry.label for entry in entries if entry.did not in settings.allowed_dids)
        if refused:
            log.warning("api_keys_not_allowed", labels=refused, hint="see SIDECAR_ALLOWED_DIDS")


def create_xrpc_app(sidecar: Sidecar) -> web.Application:
    """The XRPC listener: secret management for clients and operators."""
    app = web.Application(
        middlewares=[http_middleware("xrpc")],
        # read_body() enforces the XRPC limit with a JSON 413; this only stops
        # aiohttp from refusing first with its own plain-text answer.
        client_max_size=sidecar.settings.xrpc_max_bytes + 1,
    )
    settings = sidecar.settings
    methods = SecretMethods(
        sidecar.store,
        sidecar.keyring,
        change_limit=ChangeLimit(settings.rate_limit_changes_per_minute),
    )
    server = XrpcServer(
        sidecar.lexicons,
        methods.handlers(),
        sidecar.authenticator,
        max_body_bytes=sidecar.settings.xrpc_max_bytes,
        read_timeout_s=sidecar.settings.http_read_timeout_s,
        version=__version__,
        health=sidecar.redis_ok,
        observers=(metrics_observer(sidecar.metrics),),
        input_rules=SecretMethods.INPUT_RULES,
        failure_limit=AddressLimits(
            sidecar.store.calls, limit=settings.rate_limit_auth_failures_per_minute
        ),
        client_addresses=ClientAddresses(settings.trusted_proxies),
    )
    server.add_routes(app)
    # Without an endpoint the did:web's document is served elsewhere, or not at all
    # (direct service-JWT callers need none).
    if (
        settings.service_did is not None
        and settings.service_did.startswith("did:web:")
        and settings.service_endpoint is not None
    ):
        add_did_document_route(
            app,
            did_document(
                settings.service_did,
                service_id=settings.service_id,
                service_type=settings.service_type,
                endpoint=settings.service_endpoint,
            ),
        )
    return app


def create_sign_app(sidecar: Sidecar) -> web.Application:
    """The sign listener: the dispatcher's pod-local signing oracle."""
    settings = sidecar.settings
    app = web.Application(
        client_max_size=max(settings.sign_max_bytes, settings.sign_batch_max_bytes) + 1,
    )
    SignApi(
        sidecar.signer,
        sidecar.metrics,
        max_body_bytes=settings.sign_max_bytes,
        max_batch_bytes=settings.sign_batch_max_bytes,
        sign_token=settings.sign_token,
        read_timeout_s=settings.http_read_timeout_s,
        log_successes=settings.sign_access_log == "all",
    ).add_routes(app)
    return app


def create_ops_app(sidecar: Sidecar) -> web.Application:
    """The ops listener: metrics, liveness and readiness."""
    app = web.Application(middlewares=[http_middleware("ops")])

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        if sidecar.draining.is_set():
            return web.json_response({"status": "unready", "reason": "shutting down"}, status=503)
        if not sidecar.keyring.kids:
            return web.json_response(
                {"status": "unready", "reason": "no key-encryption key is configured"},
                status=503,
            )
        if not await sidecar.redis_ok():
            return web.json_response(
                {"status": "unready", "reason": "redis did not answer"}, status=503
            )
        # The role, so a probe or an operator sees which listeners this process runs.
        body: dict[str, Any] = {"status": "ready", "listeners": list(sidecar.settings.listeners)}
        # Too few replicas leave the pod ready: signing works, and only
        # changes answer 503, which the detail explains.
        with contextlib.suppress(StorageUnavailable):
            check = await sidecar.replica_check()
            if check is not None:
                body["durability"] = check.detail()
        return web.json_response(body)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", make_aiohttp_handler(sidecar.metrics.registry))
    return app


# Pauses between Redis probes while waiting for it: quick at first, then gentle.
_PROBE_DELAYS_S: Final = (0.05, 0.1, 0.2, 0.5, 1.0)


async def _probe_redis(
    sidecar: Sidecar, deadline: float | None, *, url: str
) -> StorageUnavailable | None:
    """Ping until Redis answers (None) or ``deadline`` passes (the last failure).

    The first failure is logged once, so an operator sees what is awaited.
    """
    loop = asyncio.get_running_loop()
    attempt = 0
    while True:
        try:
            await sidecar.store.calls.ping()
        except StorageUnavailable as exc:
            failure = exc
        else:
            return None
        if attempt == 0:
            log.warning("redis_unavailable", reason=_reason(failure, url))
        delay = _PROBE_DELAYS_S[min(attempt, len(_PROBE_DELAYS_S) - 1)]
        attempt += 1
        if deadline is not None:
            if loop.time() >= deadline:
                return failure
            delay = min(delay, deadline - loop.time())
        # Redis offers nothing to wait on while it is away, so probing is the event.
        await asyncio.sleep(delay)


def _reason(failure: StorageUnavailable, url: str) -> str:
    """One line about why Redis did not answer, without the URL or its password."""
    cause = failure.__cause__
    text = (str(cause) or type(cause).__name__) if cause is not None else str(failure)
    return " ".join(scrub(text, url).split())


async def _until_redis_answers(sidecar: Sidecar, url: str) -> None:
    await _probe_redis(sidecar, deadline=None, url=url)
    log.info("redis_available")
    try:
        await _check_durability(sidecar)
    except StartupFailed as exc:
        # Too late to refuse the start: every change answers 503 instead.
        log.error("durability_unsupported", reason=str(exc))


async def _check_durability(sidecar: Sidecar) -> None:
    """Refuse an fsync setting the server cannot honour; say whether the replicas suffice.

    With fsync ``auto`` a server that cannot fsync is no reason to refuse:
    one warning line says so, and changes are acknowledged without it (each
    change finds out again, see ``sidecar.storage.durability``). Too few
    replicas do not stop the start either: signing works without them, and
    changes answer 503 until they are back.
    """
    calls = sidecar.store.calls
    durability = calls.durability
    if not durability.waits:
        return
    try:
        refusal = await calls.fsync_refusal() if durability.fsync != "off" else None
        check = await sidecar.replica_check()
    except StorageUnavailable as exc:
        log.warning("durability_unchecked", reason=str(exc))
        return
    except StorageError as exc:
        if durability.required_fsync:
            raise
        # An answer no setting explains: each change finds out for itself
        # (and is refused while WAITAOF fails so).
        log.warning("durability_unchecked", reason=str(exc))
        return
    if refusal is not None:
        if durability.required_fsync:
            raise StartupFailed("SIDECAR_DURABLE_FSYNC", refusal)
        calls.without_fsync(refusal)
    elif durability.fsync == "auto":
        calls.with_fsync()
    if check is None:
        if refusal is None:
            log.info("durability", required=durability.describe())
    elif check.met:
        log.info("durability", **check.detail())
    else:
        log.warning(
            "durability_unmet",
            **check.detail(),
            hint="changes answer 503 until enough replicas are connected; "
            "see SIDECAR_DURABLE_REPLICAS",
        )


async def serve(settings: Settings, *, registry: CollectorRegistry | None = None) -> None:
    """Run the listeners until SIGTERM or SIGINT, then drain and close.

    At start, Redis must answer within ``SIDECAR_REDIS_CONNECT_TIMEOUT_S``, or
    ``StartupFailed`` is raised; with ``SIDECAR_START_WITHOUT_REDIS`` the
    listeners start at once and ``/readyz`` says 503 until Redis answers.

    On the signal, ``/readyz`` answers 503 at once. The XRPC and sign listeners
    stop accepting connections and let in-flight requests finish for up to
    ``SIDECAR_SHUTDOWN_GRACE_S`` (aiohttp cancels what is left after that).
    The ops listener stays open meanwhile, so probes see the 503 and metrics
    stay scrapable; then it closes, Redis closes, and this returns.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with open_sidecar(settings, registry=registry) as sidecar:
        url = settings.redis_url.reveal() if settings.redis_url else ""
        watcher: asyncio.Task[None] | None = None
        if settings.start_without_redis:
            watcher = asyncio.create_task(_until_redis_answers(sidecar, url))
        else:
            deadline = loop.time() + settings.redis_connect_timeout_s
            probe = asyncio.create_task(_probe_redis(sidecar, deadline, url=url))
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait({probe, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if not probe.done():
                # Asked to stop while still waiting for Redis: nothing to drain.
                probe.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probe
                return
            failure = probe.result()
            if failure is not None:
                raise StartupFailed(
                    "REDIS_URL",
                    f"Redis did not answer within {settings.redis_connect_timeout_s}s "
                    f"({_reason(failure, url)})",
                )
            await _check_durability(sidecar)
        # Traffic listeners first and ops last, so nothing reports ready before
        # the XRPC and sign ports accept connections. Only this process's role.
        listeners = [
            (name, make(sidecar), host, port)
            for name, make, host, port in (
                ("xrpc", create_xrpc_app, settings.xrpc_host, settings.xrpc_port),
                ("sign", create_sign_app, settings.sign_host, settings.sign_port),
                ("ops", create_ops_app, settings.ops_host, settings.ops_port),
            )
            if name in settings.listeners
        ]
        # XRPC beside sign in one process: a bounded share of the loop.
        share = xrpc_loop_share(settings, sidecar.metrics)
        runners: dict[str, web.AppRunner] = {}
        sites: dict[str, web.BaseSite] = {}
        try:
            xrpc_cap = connection_cap(settings.xrpc_max_connections)
            for name, app, host, port in listeners:
                runner = ListenerRunner(
                    app,
                    listener=name,
                    limits=ConnectionLimits(
                        read_timeout_s=settings.http_read_timeout_s,
                        idle_timeout_s=settings.http_idle_timeout_s,
                        # The public port is capped; the pod-local ones serve their own pod.
                        max_connections=xrpc_cap if name == "xrpc" else None,
                        write_timeout_s=settings.http_write_timeout_s,
                        max_pipelined=settings.http_max_pipelined,
                        max_queued_bytes=settings.http_max_queued_bytes,
                    ),
                    on_closed=sidecar.metrics.connection_closed,
                    connection=shared_loop_connections(share) if share and name == "xrpc" else None,
                    access_log=None,
                    shutdown_timeout=settings.shutdown_grace_s,
                )
                await runner.setup()
                runners[name] = runner
                if name == "sign" and settings.sign_socket is not None:
                    sites["sign_socket"] = await start_sign_socket(runner, settings)
                if port == 0:
                    continue  # SIDECAR_SIGN_PORT=0: the sign API on its socket alone
                sites[name] = web.TCPSite(runner, host, port)
                await sites[name].start()
                log.info("listening", listener=name, host=host, port=port)
            await stop.wait()
            sidecar.draining.set()
            # New connections are refused from here on; requests already in
            # flight carry on while the runners drain below.
            for name, site in sites.items():
                if name != "ops":
                    await site.stop()
            log.info("shutting_down", grace_s=settings.shutdown_grace_s)
        finally:
            if share is not None:
                share.close()
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            ops = runners.pop("ops", None)
            # Together, so that the grace is shared rather than summed.
            results = await asyncio.gather(
                *(runner.cleanup() for runner in runners.values()), return_exceptions=True
            )
            for name, result in zip(runners, results, strict=True):
                if isinstance(result, BaseException):
                    log.error("listener_close_failed", listener=name, error=repr(result))
            if ops is not None:
                await ops.cleanup()
    log.info("stopped")
