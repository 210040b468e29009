"""The dispatcher's pod-local API: ``/v1/sign``, ``/v1/sign/batch`` and ``/v1/verify``.

This listener is a signing oracle, so it binds loopback by default and can
require a bearer token (``SIDECAR_SIGN_TOKEN``). Every request reads the
secret's current envelope from Redis after it arrived (coalesced per loop
turn), and fails closed: no answer from Redis, no signature.
"""

from __future__ import annotations

import binascii
import functools
import hmac
import time
from collections import Counter
from typing import TYPE_CHECKING, Any, Final, get_args

import orjson
import structlog
from yarl import URL

from sidecar.errors import (
    AuthenticationFailed,
    EnvelopeError,
    InvalidInput,
    SecretNotFound,
    WireError,
)
from sidecar.names import is_valid_did, is_valid_name, validate_did, validate_name
from sidecar.signing import schemes
from sidecar.signing.signer import SignItem, SignTarget
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
    from sidecar.signing.signer import Signer

log = structlog.get_logger("sidecar.sign")

MAX_BATCH_ITEMS: Final = 1000
_SIGN_PARAMS: Final = frozenset({"did", "name", "scheme", "id", "timestamp"})
_VERIFY_PARAMS: Final = frozenset({"did", "name", "scheme"})
_ITEM_FIELDS: Final = frozenset({"did", "name", "scheme", "id", "timestamp", "body_b64"})

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


_OPTIONAL_TEXT: Final = (str, type(None))


@functools.lru_cache(maxsize=65536)
def _checked_ref(did: str, name: str) -> tuple[str, str]:
    """``(did, name)`` once both are checked; a dispatcher asks for the same few again
    and again, and two regex matches per request are a visible share of it.
    Failures raise and so are never cached."""
    return validate_did(did), validate_name(name)


def _sign_target(fields: Mapping[str, Any]) -> SignTarget:
    """Validate the fields of one sign request (query or batch item)."""
    did = fields.get("did")
    name = fields.get("name")
    scheme = fields.get("scheme")
    msg_id = fields.get("id")
    timestamp = fields.get("timestamp")
    if did is None:
        raise InvalidInput("did is required")
    if name is None:
        raise InvalidInput("name is required")
    for key, value in (("did", did), ("name", name), ("scheme", scheme), ("id", msg_id)):
        if not isinstance(value, _OPTIONAL_TEXT):
            raise InvalidInput(f"{key} must be a string")
    if timestamp is not None and (
        isinstance(timestamp, bool) or not isinstance(timestamp, str | int)
    ):
        raise InvalidInput("timestamp must be unix seconds")
    did, name = _checked_ref(did, name)
    return SignTarget(
        did=did,
        name=name,
        scheme=schemes.parse_scheme(scheme),
        msg_id=None if msg_id is None else schemes.check_msg_id(msg_id),
        timestamp=None if timestamp is None else schemes.parse_timestamp(timestamp),
    )


# typed: 1 and True (or 1.0) are equal keys, and only 1 is a timestamp.
@functools.lru_cache(maxsize=4096, typed=True)
def _item_target(
    did: object, name: object, scheme: object, msg_id: object, timestamp: object
) -> SignTarget:
    """The target of a batch item's fields, cached by their values: a batch names the
    same few secrets again and again, and checking each item anew cost more than
    its HMAC. Failures raise and so are never cached."""
    fields = {"did": did, "name": name, "scheme": scheme, "id": msg_id, "timestamp": timestamp}
    return _sign_target(fields)


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
    return _sign_target(query)


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
        # The longest base64 text a body within the limit can take.
        self._max_body_b64 = (max_body_bytes + 2) // 3 * 4
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
            items = _batch_items(await read_body(request, self._max_batch, self._read_timeout_s))
            parsed: list[SignItem | Exception] = []
            for item in items:
                try:
                    parsed.append(self._batch_item(item))
                except Exception as exc:
                    parsed.append(exc)
            valid = [p for p in parsed if not isinstance(p, Exception)]
            signed = await self._signer.sign_many(valid)
        except Exception as exc:
            return self._failed(request, exc, started, None, None)[0]
        finally:
            self._sign_duration.observe(time.perf_counter() - started)
        rid: str | None = None
        if len(valid) == len(items) and not any(isinstance(s, Exception) for s in signed):
            # Every item signed: the common case, counted per scheme in one go.
            results: list[Any] = signed
            for scheme, count in Counter(target.scheme for target, _ in valid).items():
                self._signatures.inc(scheme, "ok", amount=count)
        else:
            results, rid = self._batch_results(request, items, parsed, signed)
        return self._finish(request, json_answer({"results": results}), started, rid)

    def _batch_results(
        self,
        request: web.Request,
        items: list[Any],
        parsed: list[SignItem | Exception],
        signed: list[dict[str, Any] | Exception],
    ) -> tuple[list[dict[str, Any]], str]:
        """The answers of a batch with failed items, each counted and each failure logged
        under one request id."""
        rid = request_id(request)
        outcomes = iter(signed)
        results: list[dict[str, Any]] = []
        for item, entry in zip(items, parsed, strict=True):
            outcome = entry if isinstance(entry, Exception) else next(outcomes)
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

    def _batch_item(self, item: Any) -> SignItem:
        if not isinstance(item, dict):
            raise InvalidInput("each item must be an object")
        if not item.keys() <= _ITEM_FIELDS:
            raise InvalidInput(f"unknown field; expected only {', '.join(sorted(_ITEM_FIELDS))}")
        encoded = item.get("body_b64")
        if not isinstance(encoded, str):
            raise InvalidInput("body_b64 is required and must be a base64 string")
        if len(encoded) > self._max_body_b64:
            raise InvalidInput(f"body is larger than {self._max_body} bytes")
        try:
            # strict_mode: what b64decode(validate=True) refuses, without its
            # regex pass over the text (half the cost of decoding a 1 KiB body).
            body = binascii.a2b_base64(encoded, strict_mode=True)
        except (binascii.Error, ValueError):
            raise InvalidInput("body_b64 is not valid base64") from None
        try:
            target = _item_target(
                item.get("did"),
                item.get("name"),
                item.get("scheme"),
                item.get("id"),
                item.get("timestamp"),
            )
        except TypeError:
            # A field that is a list or an object cannot be a cache key; the
            # uncached check refuses it with its own message.
            target = _sign_target(item)
        return target, body

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


def _batch_items(raw: bytes) -> list[Any]:
    try:
        # orjson: a batch is up to 1000 base64 bodies, and it parses them
        # several times faster; it refuses invalid UTF-8, NaN and deep nesting
        # as malformed JSON too.
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidInput("request body is not valid JSON") from None
    if not isinstance(document, dict) or not isinstance(document.get("items"), list):
        raise InvalidInput('request body must be {"items": [...]}')
    items: list[Any] = document["items"]
    if len(items) > MAX_BATCH_ITEMS:
        raise InvalidInput(f"at most {MAX_BATCH_ITEMS} items per batch")
    return items
