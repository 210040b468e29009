"""What every listener shares on the wire: JSON errors, bounded bodies, request logs.

Domain errors become ``{"error": name, "message": text}`` here, found by
walking the exception's MRO, so a subclass inherits its parent's mapping.
Anything unexpected is a 500 whose message never carries details.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import orjson
import structlog
from aiohttp import StreamReader, web

from sidecar.errors import (
    AuthenticationFailed,
    BodyTimedOut,
    ChangeNotDurable,
    EncryptionUnavailable,
    EnvelopeError,
    Forbidden,
    InvalidInput,
    PayloadTooLarge,
    RateLimited,
    ResolutionsBusy,
    SecretExists,
    SecretNotFound,
    SecretQuotaExceeded,
    StorageUnavailable,
    WireError,
)
from sidecar.log import sampled

log = structlog.get_logger("sidecar.http")

RETRY_AFTER_S: Final = "1"

# aiohttp's own refusals, and the listeners', by status; any other 4xx is InvalidRequest.
HTTP_ERROR_NAMES: Final = {404: "NotFound", 413: "PayloadTooLarge", 415: "UnsupportedMediaType"}

ERRORS_BY_TYPE: Final[dict[type[Exception], tuple[int, str, dict[str, str]]]] = {
    PayloadTooLarge: (413, "PayloadTooLarge", {}),
    # The rest of the body may still be on its way: the connection is closed.
    BodyTimedOut: (408, "InvalidRequest", {"Connection": "close"}),
    InvalidInput: (400, "InvalidRequest", {}),
    AuthenticationFailed: (401, "AuthenticationRequired", {"WWW-Authenticate": "Bearer"}),
    Forbidden: (403, "Forbidden", {}),
    SecretNotFound: (404, "NotFound", {}),
    SecretExists: (409, "AlreadyExists", {}),
    # A lexicon-declared error, sent as @atproto/xrpc-server sends those: 400.
    # Retrying does not help; deleting a secret does (the message says so).
    SecretQuotaExceeded: (400, "SecretQuotaExceeded", {}),
    EncryptionUnavailable: (503, "WebhookSecretEncryptionUnavailable", {}),
    # An envelope the keyring cannot open: the KEK it was sealed under is
    # missing from this replica's ring. No signature without the real token.
    EnvelopeError: (503, "WebhookSecretEncryptionUnavailable", {}),
    StorageUnavailable: (503, "StorageUnavailable", {"Retry-After": RETRY_AFTER_S}),
    # Refused at once rather than queued: the caller retries (docs/authentication.md).
    ResolutionsBusy: (503, "NotEnoughResources", {"Retry-After": RETRY_AFTER_S}),
    # Headers per refusal: see rate_limit_headers.
    RateLimited: (429, "RateLimitExceeded", {}),
}

_MESSAGES: Final[dict[type[Exception], str]] = {
    Forbidden: "This DID is not allowed to use this service",
    EncryptionUnavailable: "No active key-encryption key is configured; cannot seal new tokens",
    EnvelopeError: "The secret cannot be opened with the configured key-encryption keys",
    StorageUnavailable: "Storage did not answer in time; retry shortly",
    ResolutionsBusy: "Too many DID resolutions are in flight; retry shortly",
    ChangeNotDurable: (
        "Storage could not confirm the change as durable in time; it may or may not "
        "have been applied. Retry the request"
    ),
}

INTERNAL: Final = WireError(500, "InternalServerError", "Internal Server Error")


def rate_limit_headers(exc: RateLimited) -> dict[str, str]:
    """The headers @atproto/xrpc-server sends with a 429, and Retry-After.

    ``RateLimit-Reset`` is the end of the window in Unix seconds, as there;
    the clock is the Redis server's, which every replica shares.
    """
    return {
        "RateLimit-Limit": str(exc.limit),
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": str(exc.reset_at_ms // 1000),
        "RateLimit-Policy": f"{exc.limit};w={exc.window_s}",
        "Retry-After": str(max(1, -(-exc.reset_after_ms // 1000))),
    }


def to_wire(exc: BaseException) -> WireError | None:
    """The wire error for a known exception, or None for an unexpected one."""
    if isinstance(exc, WireError):
        return exc
    if isinstance(exc, RateLimited):
        return WireError(429, "RateLimitExceeded", str(exc), rate_limit_headers(exc))
    message: str | None = None
    for cls in type(exc).__mro__:
        # A subclass may keep its parent's status but say more (ChangeNotDurable).
        message = message or _MESSAGES.get(cls)
        mapped = ERRORS_BY_TYPE.get(cls)
        if mapped is not None:
            status, name, headers = mapped
            return WireError(status, name, message or str(exc) or name, headers)
    return None


def json_answer(
    value: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON response, encoded by orjson: a third of ``web.json_response``'s cost,
    which is a visible share of a signature (bench/RESULTS.md)."""
    return web.Response(
        body=orjson.dumps(value),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )


def error_response(error: WireError) -> web.Response:
    response = json_answer(
        {"error": error.name, "message": error.message}, error.status, error.headers
    )
    if error.headers.get("Connection") == "close":
        response.force_close()
    return response


def encoded_body(request: web.BaseRequest) -> bool:
    """Whether a request says its body has a ``Content-Encoding`` other than ``identity``.

    Such a request is refused (415) before its body is read: a body is signed
    exactly as sent, and decompressing one would let a small request become a
    large one in memory (docs/api.md#request-bodies).
    """
    headers = request.headers
    if "Content-Encoding" not in headers:
        return False
    return any(
        coding.strip().lower() not in ("", "identity")
        for value in headers.getall("Content-Encoding")
        for coding in value.split(",")
    )


def arrived_body(request: web.Request, limit: int) -> bytes | None:
    """The whole body if it has all arrived already, else None (then use ``read_body``).

    A small body comes in the same packets as its headers, so by the time the
    handler runs it is usually buffered whole: taking it as it is skips the
    read loop and two copies. ``PayloadTooLarge`` as for ``read_body``.
    """
    declared = request.content_length
    if declared is not None and declared > limit:
        raise _too_large(limit)
    content = request.content
    if not content.is_eof():
        return None
    body = content.read_nowait()
    if len(body) > limit:
        raise _too_large(limit)
    return body


async def read_body(request: web.Request, limit: int, timeout_s: float) -> bytes:
    """The whole request body, or ``PayloadTooLarge`` once it passes ``limit`` bytes,
    or ``BodyTimedOut`` when it has not all arrived within ``timeout_s``.

    A declared Content-Length is refused before reading; a chunked body is
    read only up to one byte past the limit. (A body that came with its head
    is taken by ``arrived_body`` without waiting at all.)
    """
    declared = request.content_length
    try:
        async with asyncio.timeout(timeout_s):
            if declared is not None and declared <= limit:
                # The common case, and the cheapest read: the length is known and fits.
                return await request.read()
            return await read_limited(request.content, declared, limit, _too_large(limit))
    except TimeoutError:
        raise BodyTimedOut(f"The request body did not arrive within {timeout_s:g} s") from None
    except web.RequestPayloadError:
        # A chunked framing error, or a body cut short: the client's fault, not a 500.
        raise InvalidInput("The request body is malformed or incomplete") from None


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body is larger than {limit} bytes")


async def read_limited(
    content: StreamReader, declared: int | None, limit: int, too_large: Exception
) -> bytes:
    """A whole HTTP body (a request's or a response's), or ``too_large`` once past ``limit``."""
    if declared is not None and declared > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


_REQUEST_ID_RE: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Generated ids are a per-process random prefix and a counter: unique across
# replicas without a random-number syscall on every request.
_ID_PREFIX: Final = secrets.token_hex(4)
_ID_COUNTER: Final = itertools.count(1)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_id(request: web.Request) -> str:
    """The caller's ``X-Request-Id`` when it is sane, else a new one."""
    offered = request.headers.get("X-Request-Id")
    if offered and _REQUEST_ID_RE.fullmatch(offered):
        return offered
    return f"{_ID_PREFIX}-{next(_ID_COUNTER):x}"


def log_request(
    listener: str,
    request: web.Request,
    status: int,
    started: float,
    *,
    anonymous: bool = False,
    **fields: Any,
) -> None:
    """The canonical line of one request; of a refused or anonymous one only within
    the log budget (``sidecar.log.sampled``)."""
    line = {
        "listener": listener,
        "method": request.method,
        "path": request.path,
        "status": status,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        **fields,
    }
    if status >= 400:
        sampled(log, "request_refused", "request", **line)
    elif anonymous:
        sampled(log, "request_anonymous", "request", **line)
    else:
        log.info("request", **line)


def http_middleware(listener: str) -> Any:
    """The one middleware of the XRPC and ops listeners: request id, canonical
    log line, JSON errors. One rather than two, because each costs a coroutine
    per request. (The sign listener does the same in its handlers, with no
    middleware at all: see ``SignApi``.)
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        rid = request_id(request)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=rid)
        started = time.perf_counter()
        try:
            response = await handler(request)
        except Exception as exc:
            response = _error_response(exc, request)
        response.headers["X-Request-Id"] = rid
        # The XRPC server binds the caller's DID once its credential is accepted.
        anonymous = "did" not in structlog.contextvars.get_contextvars()
        log_request(listener, request, response.status, started, anonymous=anonymous)
        return response

    return middleware


def _error_response(exc: Exception, request: web.Request) -> web.StreamResponse:
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        return _http_error(exc)
    wire = to_wire(exc)
    if wire is None:
        log.exception("unhandled_error", path=request.path)
        wire = INTERNAL
    return error_response(wire)


def _http_error(exc: web.HTTPException) -> web.Response:
    """aiohttp's own HTTP errors (unknown path, wrong verb, ...) as JSON errors."""
    if exc.status == 405:
        allow = exc.headers.get("Allow", "")
        return error_response(
            WireError(405, "InvalidRequest", "Method not allowed", {"Allow": allow})
        )
    if exc.status >= 500:
        return error_response(INTERNAL)
    return error_response(
        WireError(exc.status, HTTP_ERROR_NAMES.get(exc.status, "InvalidRequest"), exc.reason)
    )


def bearer_credential(authorization: str | None) -> str:
    """The credential of a ``Bearer`` header, or ``AuthenticationFailed``."""
    if authorization is None or not authorization.strip():
        raise AuthenticationFailed("missing")
    scheme, _, credential = authorization.strip().partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential or " " in credential:
        raise AuthenticationFailed("malformed")
    # aiohttp hands undecodable header bytes over as lone surrogates; no key
    # or JWT is anything but printable ASCII.
    if not (credential.isascii() and credential.isprintable()):
        raise AuthenticationFailed("malformed")
    return credential
