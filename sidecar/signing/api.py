"""The dispatcher's pod-local API: ``/v1/sign``, ``/v1/sign/batch`` and ``/v1/verify``.

This listener is a signing oracle, so it binds loopback by default and can
require a bearer token (``SIDECAR_SIGN_TOKEN``). Every request reads the
secret's current envelope from Redis after it arrived (coalesced per loop
turn), and fails closed: no answer from Redis, no signature.
"""

from __future__ import annotations

import functools
import hmac
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Final, get_args

import structlog
from yarl import URL

from sidecar.errors import (
    AuthenticationFailed,
    EnvelopeError,
    InvalidInput,
    SecretNotFound,
    WireError,
)
from sidecar.names import is_valid_did, is_valid_name
from sidecar.signing import schemes
from sidecar.signing.items import BatchItems, batch_items, sign_target
from sidecar.wire import (
    INTERNAL,
    arrived_body,
    bearer_credential,
    error_response,
    json_answer,
    log_request,
    read_body,
    request_id,
    to_wire,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from aiohttp import web

    from sidecar.metrics import Metrics
    from sidecar.settings import Secret
    from sidecar.signing.signer import Signer, SignTarget

log = structlog.get_logger("sidecar.sign")

_SIGN_PARAMS: Final = frozenset({"did", "name", "scheme", "id", "timestamp"})
_VERIFY_PARAMS: Final = frozenset({"did", "name", "scheme"})

# Wire error name -> signatures_total outcome label.
_OUTCOMES: Final = {
    "InvalidRequest": "invalid",
    "PayloadTooLarge": "invalid",
    "NotFound": "not_found",
    "AuthenticationRequired": "unauthenticated",
    "StorageUnavailable": "storage_unavailable",
    "WebhookSecretEncryptionUnavailable": "undecryptable",
}


# Every outcome label of a signature, and every reason of a verification,
# for the metrics to show at 0 from start.
OUTCOMES: Final = (*dict.fromkeys(_OUTCOMES.values()), "error")
VERIFY_REASONS: Final = (*get_args(schemes.Reason), "unknown_secret")


def _check_params(query: Any, allowed: frozenset[str]) -> None:
    seen: set[str] = set()
    # items(), not keys(): multidict 7 lists a repeated key only once in keys().
    for key, _ in query.items():
        if key not in allowed:
            # Not echoed: a caller's stray value may be a credential.
            raise InvalidInput(f"unknown parameter; expected only {', '.join(sorted(allowed))}")
        if key in seen:
            raise InvalidInput(f"parameter {key!r} is given more than once")
        seen.add(key)


@functools.lru_cache(maxsize=4096)
def _query_target(raw_query: str, allowed: frozenset[str]) -> SignTarget:
    """The target a raw query string names, checked against ``allowed`` parameters.

    Cached by the raw string: a dispatcher asks with the same few query strings
    again and again, and parsing and checking one is a visible share of a
    signature. Failures raise and so are never cached; a query that is never
    repeated (a ``standard`` id) only takes a slot the LRU hands back.
    """
    query = URL.build(query_string=raw_query, encoded=True).query
    _check_params(query, allowed)
    return sign_target(query)


def _asked_ref(fields: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The DID and name a failed request asked for, for its log lines: each only when
    well-formed, since anything else is the caller's arbitrary text."""
    did, name = fields.get("did"), fields.get("name")
    return (
        did if isinstance(did, str) and is_valid_did(did) else None,
        name if isinstance(name, str) and is_valid_name(name) else None,
    )


def _scheme_label(value: object) -> str:
    return value if isinstance(value, str) and value in schemes.SCHEMES else "unknown"


class SignApi:
    """HTTP handlers of the sign listener."""

    def __init__(
        self,
        signer: Signer,
        metrics: Metrics,
        *,
        max_body_bytes: int,
        max_batch_bytes: int,
        sign_token: Secret | None,
        read_timeout_s: float,
        log_successes: bool = False,
    ) -> None:
        self._signer = signer
        self._metrics = metrics
        self._max_body = max_body_bytes
        self._max_batch = max_batch_bytes
        self._items = BatchItems(max_body_bytes)
        self._read_timeout_s = read_timeout_s
        self._sign_token = sign_token.reveal().encode() if sign_token is not None else None
        self._signatures = metrics.signatures
        self._sign_duration = metrics.sign_duration
        self._log_successes = log_successes

    def add_routes(self, app: web.Application) -> None:
        """The three endpoints, plus JSON answers for wrong verbs and unknown paths.

        This listener has no middleware: on the hot path each one costs a
        coroutine per request, so each handler does its own error answers and
        request line (``_finish``) instead.
        """
        for path, handler in (
            ("/v1/sign", self.sign),
            ("/v1/sign/batch", self.sign_batch),
            ("/v1/verify", self.verify),
        ):
            app.router.add_post(path, handler)
            app.router.add_route("*", path, self._wrong_method)
        app.router.add_route("*", "/{tail:.*}", self._not_found)

    def _finish(
        self,
        request: web.Request,
        response: web.Response,
        started: float,
        rid: str | None = None,
        **fields: Any,
    ) -> web.Response:
        """Echo or make the request id, and log the request line when it is due.

        ``fields`` (the DID, name and error code of a failure) go on that line.
        """
        status = response.status
        if status >= 400 or self._log_successes:
            rid = rid or request_id(request)
            response.headers["X-Request-Id"] = rid
            log_request("sign", request, status, started, request_id=rid, **fields)
        elif rid is not None or "X-Request-Id" in request.headers:
            # A batch with failed items logged them under this id.
            response.headers["X-Request-Id"] = rid or request_id(request)
        return response

    def _failed(
        self,
        request: web.Request,
        exc: Exception,
        started: float,
        did: str | None,
        name: str | None,
    ) -> tuple[web.Response, WireError]:
        """The answer to a request that failed, with its request line."""
        rid = request_id(request)
        error = self._failure(exc, rid=rid, did=did, name=name)
        response = error_response(error)
        fields = {"did": did, "name": name, "error": error.name}
        known = {key: value for key, value in fields.items() if value is not None}
        return self._finish(request, response, started, rid, **known), error

    async def _wrong_method(self, request: web.Request) -> web.Response:
        error = WireError(405, "InvalidRequest", "Use POST", {"Allow": "POST"})
        return self._finish(request, error_response(error), time.perf_counter())

    async def _not_found(self, request: web.Request) -> web.Response:
        error = WireError(404, "NotFound", "Not Found")
        return self._finish(request, error_response(error), time.perf_counter())

    def _authenticate(self, request: web.Request) -> None:
        if self._sign_token is None:
            return
        try:
            credential = bearer_credential(request.headers.get("Authorization"))
            if not hmac.compare_digest(credential.encode(), self._sign_token):
                raise AuthenticationFailed("unknown_key")
        except AuthenticationFailed as exc:
            self._metrics.auth_failures.labels(reason=exc.reason).inc()
            log.info("auth_failed", reason=exc.reason)
            raise

    def _failure(
        self,
        exc: Exception,
        *,
        rid: str | None = None,
        did: str | None = None,
        name: str | None = None,
    ) -> WireError:
        wire = to_wire(exc)
        if wire is None:
            log.exception("sign_failed", request_id=rid)
            return INTERNAL
        if isinstance(exc, EnvelopeError):
            # An envelope the ring cannot open means a missing previous KEK:
            # an operator must act, so say it loudly (without the envelope).
            self._metrics.envelopes_unopenable.labels(reason=exc.reason).inc()
            log.error(
                "envelope_unopenable",
                did=did,
                name=name,
                kid=exc.kid,
                reason=exc.reason,
                error=str(exc),
                request_id=rid,
            )
        return wire

    def _count(self, scheme: str, error: WireError | None) -> None:
        outcome = "ok" if error is None else _OUTCOMES.get(error.name, "error")
        self._signatures.inc(scheme, outcome)

    async def sign(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            if self._sign_token is not None:
                self._authenticate(request)
            target = _query_target(request.rel_url.raw_query_string, _SIGN_PARAMS)
            body = arrived_body(request, self._max_body)
            if body is None:
                body = await read_body(request, self._max_body, self._read_timeout_s)
            stored = await self._signer.read(target.did, target.name)
            answer = self._signer.sign(target, body, stored)
        except Exception as exc:
            did, name = _asked_ref(request.query)
            response, error = self._failed(request, exc, started, did, name)
            scheme = request.query.get("scheme") or schemes.DEFAULT_SCHEME
            self._count(_scheme_label(scheme), error)
            return response
        finally:
            self._sign_duration.observe(time.perf_counter() - started)
        self._signatures.inc(target.scheme, "ok")
        return self._finish(request, json_answer(answer), started)

    async def sign_batch(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        try:
            if self._sign_token is not None:
                self._authenticate(request)
            if request.rel_url.raw_query_string:
                _check_params(request.query, frozenset())
            raw = arrived_body(request, self._max_batch)
            if raw is None:
                raw = await read_body(request, self._max_batch, self._read_timeout_s)
            items = batch_items(raw)
            targets, bodies, refused = self._items.all(items)
            signed, all_signed = await self._signer.sign_many(targets, bodies)
        except Exception as exc:
            return self._failed(request, exc, started, None, None)[0]
        finally:
            self._sign_duration.observe(time.perf_counter() - started)
        rid: str | None = None
        if all_signed and not refused:
            # Every item signed: the common case, counted per scheme in one go.
            results: list[Any] = signed
            per_scheme: Counter[str] = Counter()
            for target, count in Counter(targets).items():
                per_scheme[target.scheme] += count
            for scheme, count in per_scheme.items():
                self._signatures.inc(scheme, "ok", amount=count)
        else:
            results, rid = self._batch_results(request, items, refused, signed)
        return self._finish(request, json_answer({"results": results}), started, rid)

    def _batch_results(
        self,
        request: web.Request,
        items: list[Any],
        refused: dict[int, Exception],
        signed: list[dict[str, Any] | Exception],
    ) -> tuple[list[dict[str, Any]], str]:
        """The answers of a batch with failed items, each counted and each failure logged
        under one request id."""
        rid = request_id(request)
        outcomes = iter(signed)
        results: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            outcome = refused[index] if index in refused else next(outcomes)
            asked = item.get("scheme") if isinstance(item, dict) else None
            scheme = _scheme_label(asked or schemes.DEFAULT_SCHEME)
            if isinstance(outcome, Exception):
                did, name = _asked_ref(item) if isinstance(item, dict) else (None, None)
                error = self._failure(outcome, rid=rid, did=did, name=name)
                self._count(scheme, error)
                results.append({"error": error.name, "message": error.message})
            else:
                self._count(scheme, None)
                results.append(outcome)
        return results, rid

    async def verify(self, request: web.Request) -> web.Response:
        started = time.perf_counter()
        scheme = _scheme_label(request.query.get("scheme") or schemes.DEFAULT_SCHEME)
        try:
            self._authenticate(request)
            target = _query_target(request.rel_url.raw_query_string, _VERIFY_PARAMS)
            body = await read_body(request, self._max_body, self._read_timeout_s)
            try:
                token, _ = await self._signer.current(target.did, target.name)
            except SecretNotFound:
                verdict: dict[str, Any] = {"valid": False, "reason": "unknown_secret"}
            else:
                result = schemes.verify(target.scheme, token, body, request.headers)
                verdict = {"valid": result.valid, "reason": result.reason}
        except Exception as exc:
            did, name = _asked_ref(request.query)
            return self._failed(request, exc, started, did, name)[0]
        self._metrics.verifications.labels(scheme=scheme, reason=verdict["reason"]).inc()
        return self._finish(request, json_answer(verdict), started)
