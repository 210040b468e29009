"""``/xrpc/<nsid>``: routing from lexicons and one fixed request pipeline.

A method exists only if a lexicon declares it, and its HTTP verb comes from
that declaration. Every request runs: lookup (501) → verb (405) → auth (401,
then 403 off the allow-list) → params and body (400/413) → handler → output
check. The handler sees only validated input and an authenticated caller; it
knows nothing of HTTP.

Refused credentials are counted per client address (``FailureLimit``): an
address that used up its allowance gets 429 before any credential work. An
authenticated caller is never counted by address; its changes are limited per
owner, in the store.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Protocol

import structlog
from aiohttp import web

from sidecar.errors import (
    AuthenticationFailed,
    InvalidInput,
    RateLimited,
    ResolutionsBusy,
    StorageUnavailable,
    WireError,
)
from sidecar.wire import INTERNAL, bearer_credential, error_response, read_body, to_wire

if TYPE_CHECKING:
    from sidecar.auth.authenticator import Authenticator
    from sidecar.auth.caller import Caller
    from sidecar.xrpc.client_address import ClientAddresses
    from sidecar.xrpc.lexicon import LexiconRegistry
    from sidecar.xrpc.schemas import MethodDef

from sidecar.xrpc.formats import is_valid_nsid

log = structlog.get_logger("sidecar.xrpc")

HEALTH_PATH: Final = "/xrpc/_health"


@dataclass(frozen=True, slots=True)
class XrpcCall:
    """One authenticated, validated call, as a handler receives it."""

    nsid: str
    caller: Caller
    params: Mapping[str, Any]
    input: Mapping[str, Any] | None


@dataclass(frozen=True, slots=True)
class Outcome:
    """How a call ended, for metrics: ``error`` is the wire error name, or None."""

    nsid: str
    status: int
    error: str | None
    duration_s: float
    auth_failure: str | None = None
    # The kind of limit that refused the call (limit_hits_total), or None.
    limit: str | None = None


Handler = Callable[[XrpcCall], Awaitable[Mapping[str, Any]]]
Observer = Callable[[Outcome], None]
HealthCheck = Callable[[], Awaitable[bool]]
# A check of one input property, stricter than its lexicon's format, given the
# value and its path; it raises InvalidInput stating the rule that applies.
InputRule = Callable[[str, str], object]


class FailureLimit(Protocol):
    """Refused credentials per client address (``sidecar.storage.rate_limits.AddressLimits``)."""

    async def check(self, address: str) -> None: ...

    async def failed(self, address: str) -> None: ...


class XrpcServer:
    """Serves the lexicon-declared methods that have a handler."""

    def __init__(
        self,
        lexicons: LexiconRegistry,
        handlers: Mapping[str, Handler],
        authenticator: Authenticator,
        *,
        max_body_bytes: int,
        read_timeout_s: float,
        version: str,
        health: HealthCheck,
        observers: tuple[Observer, ...] = (),
        input_rules: Mapping[str, InputRule] | None = None,
        failure_limit: FailureLimit | None = None,
        client_addresses: ClientAddresses | None = None,
    ) -> None:
        undeclared = sorted(set(handlers) - set(lexicons.methods))
        if undeclared:
            # A handler without a lexicon would be an undocumented method.
            raise ValueError(f"handlers without a lexicon: {', '.join(undeclared)}")
        self._lexicons = lexicons
        self._handlers = dict(handlers)
        self._auth = authenticator
        self._max_body = max_body_bytes
        self._read_timeout_s = read_timeout_s
        self._version = version
        self._health = health
        self._observers = observers
        self._input_rules = dict(input_rules or {})
        self._failure_limit = failure_limit
        self._addresses = client_addresses

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(HEALTH_PATH, self.health, allow_head=False)
        app.router.add_route("*", "/xrpc/{nsid}", self.dispatch)

    async def health(self, request: web.Request) -> web.Response:
        if await self._health():
            return web.json_response({"version": self._version})
        return web.json_response(
            {"version": self._version, "error": "Service Unavailable"}, status=503
        )

    async def dispatch(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        nsid = request.match_info["nsid"]
        method = self._lexicons.get(nsid)
        known = method is not None and nsid in self._handlers
        auth_failure: str | None = None
        limit: str | None = None
        try:
            body = await self._call(request, nsid, method)
            response = web.json_response(body)
            error_name = None
        except AuthenticationFailed as exc:
            auth_failure = exc.reason
            log.info("auth_failed", nsid=nsid, reason=exc.reason)
            wire = to_wire(exc)
            assert wire is not None
            response, error_name = error_response(wire), wire.name
        except Exception as exc:
            if isinstance(exc, RateLimited):
                limit = exc.kind
            elif isinstance(exc, ResolutionsBusy):
                limit = "did_resolutions_in_flight"
            wire = to_wire(exc)
            if wire is None:
                log.exception("xrpc_handler_failed", nsid=nsid)
                wire = INTERNAL
            response, error_name = error_response(wire), wire.name
        outcome = Outcome(
            nsid=nsid if known else "unknown",
            status=response.status,
            error=error_name,
            duration_s=time.perf_counter() - started,
            auth_failure=auth_failure,
            limit=limit,
        )
        for observe in self._observers:
            observe(outcome)
        return response

    async def _call(
        self, request: web.Request, nsid: str, method: MethodDef | None
    ) -> Mapping[str, Any]:
        handler = self._handlers.get(nsid)
        if method is None or handler is None:
            # Echo the NSID only when it is one: the path is the caller's text.
            named = f": {nsid}" if is_valid_nsid(nsid) else ""
            implemented = ", ".join(sorted(self._handlers))
            raise WireError(
                501,
                "MethodNotImplemented",
                f"Method not implemented{named}. This server implements: {implemented}",
            )
        if request.method != method.http_method:
            raise WireError(
                405,
                "InvalidRequest",
                f"{nsid} is a {method.kind}: use {method.http_method}",
                {"Allow": method.http_method},
            )
        caller = await self._authenticate(request, nsid)
        structlog.contextvars.bind_contextvars(did=caller.did, nsid=nsid)
        params = method.validate_params(request.query)
        payload = await self._input(request, method)
        output = await handler(XrpcCall(nsid=nsid, caller=caller, params=params, input=payload))
        # An output that breaks its lexicon is our bug: it becomes a 500.
        method.validate_output(output)
        return output

    async def _authenticate(self, request: web.Request, nsid: str) -> Caller:
        failures = self._failure_limit
        if failures is None:
            credential = bearer_credential(request.headers.get("Authorization"))
            return await self._auth.authenticate(credential, nsid=nsid)
        addresses = self._addresses
        address = (
            addresses.client(request.remote, request.headers.getall("X-Forwarded-For", ()))
            if addresses is not None
            else str(request.remote)
        )
        # Logged (the request line, auth_failed) so an operator can see who is limited.
        structlog.contextvars.bind_contextvars(client=address)
        # Before any credential work: a JWT may cost a DID resolution.
        await failures.check(address)
        try:
            # Read inside: a missing or malformed credential is a refused one too, and
            # an address over its limit is refused (429) before even that.
            credential = bearer_credential(request.headers.get("Authorization"))
            return await self._auth.authenticate(credential, nsid=nsid)
        except AuthenticationFailed:
            # The refusal stands whether or not Redis could count it; a count
            # lost to an outage is seen in redis_errors_total.
            with contextlib.suppress(StorageUnavailable):
                await failures.failed(address)
            raise

    async def _input(self, request: web.Request, method: MethodDef) -> Mapping[str, Any] | None:
        raw = await read_body(request, self._max_body, self._read_timeout_s)
        if method.input_schema is None and method.input_encoding is None:
            if raw:
                raise InvalidInput(f"{method.nsid} takes no request body")
            return None
        if request.content_type != method.input_encoding:
            raise InvalidInput(f"Content-Type must be {method.input_encoding}")
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):
            # ValueError covers bad UTF-8, bad JSON, and an integer of more
            # digits than Python converts (4300).
            raise InvalidInput("Request body is not valid JSON") from None
        if not isinstance(value, dict):
            raise InvalidInput("Request body must be a JSON object")
        declared = (method.input_schema or {}).get("properties", {})
        for field, rule in self._input_rules.items():
            given = value.get(field)
            # Before the lexicon's own check, so a caller hears one rule, not a
            # looser format first and this one after it.
            if field in declared and isinstance(given, str):
                rule(given, f"Input/{field}")
        method.validate_input(value)
        return value
