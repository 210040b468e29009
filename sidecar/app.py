"""The one place that wires everything: the shared resources and the three listeners' apps.

``open_sidecar(settings)`` opens the shared resources (Redis, keyring, auth,
metrics) once; ``create_*_app(sidecar)`` builds each listener's aiohttp app on
them. Tests build several sidecars on one Redis to act as replicas. Running
them as a process is ``sidecar.lifecycle``'s; the start-up checks of Redis are
``sidecar.startup``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
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
from sidecar.errors import ConfigError, StorageUnavailable
from sidecar.metrics import KnownLabels, Metrics
from sidecar.signing.reader import CoalescingReader
from sidecar.signing.schemes import SCHEMES
from sidecar.storage.calls import OPERATIONS as REDIS_OPERATIONS
from sidecar.storage.calls import ErrorHook, RedisCalls
from sidecar.storage.connection import connect
from sidecar.storage.durability import Durability, ReplicaCheck
from sidecar.storage.rate_limits import AddressLimits, ChangeLimit
from sidecar.storage.replay import ReplayRecords
from sidecar.storage.store import SecretStore
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
