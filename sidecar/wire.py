"""What every listener shares on the wire: JSON errors, bounded bodies, request logs.

Domain errors become ``{"error": name, "message": text}`` here, found by
walking the exception's MRO, so a subclass inherits its parent's mapping.
Anything unexpected is a 500 whose message never carries details.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, Final

import structlog
from aiohttp import StreamReader, web

from sidecar.errors import (
    AuthenticationFailed,
    EncryptionUnavailable,
    Forbidden,
    InvalidInput,
    PayloadTooLarge,
    SecretExists,
    SecretNotFound,
    StorageUnavailable,
    XrpcError,
)

log = structlog.get_logger("sidecar.http")

RETRY_AFTER_S: Final = "1"

_WIRE: Final[dict[type[Exception], tuple[int, str, dict[str, str]]]] = {
    PayloadTooLarge: (413, "PayloadTooLarge", {}),
    InvalidInput: (400, "InvalidRequest", {}),
    AuthenticationFailed: (401, "AuthenticationRequired", {"WWW-Authenticate": "Bearer"}),
    Forbidden: (403, "Forbidden", {}),
    SecretNotFound: (404, "NotFound", {}),
    SecretExists: (409, "AlreadyExists", {}),
    EncryptionUnavailable: (503, "WebhookSecretEncryptionUnavailable", {}),
    StorageUnavailable: (503, "StorageUnavailable", {"Retry-After": RETRY_AFTER_S}),
}

_MESSAGES: Final[dict[type[Exception], str]] = {
    AuthenticationFailed: "Authentication required: send 'Authorization: Bearer <key>'",
    Forbidden: "This DID is not allowed to use this service",
    EncryptionUnavailable: "No active key-encryption key is configured; cannot seal new tokens",
    StorageUnavailable: "Storage did not answer in time; retry shortly",
}

INTERNAL: Final = XrpcError(500, "InternalServerError", "Internal Server Error")


def to_wire(exc: BaseException) -> XrpcError | None:
    """The wire error for a known exception, or None for an unexpected one."""
    if isinstance(exc, XrpcError):
        return exc
    for cls in type(exc).__mro__:
        mapped = _WIRE.get(cls)
        if mapped is not None:
            status, name, headers = mapped
            message = _MESSAGES.get(cls) or str(exc) or name
            return XrpcError(status, name, message, headers)
    return None


def error_response(error: XrpcError) -> web.Response:
    return web.json_response(
        {"error": error.name, "message": error.message},
        status=error.status,
        headers=error.headers,
    )


async def read_body(request: web.Request, limit: int) -> bytes:
    """The whole request body, or ``PayloadTooLarge`` once it passes ``limit`` bytes.

    A declared Content-Length is refused before reading; a chunked body is
    read only up to one byte past the limit.
    """
    too_large = PayloadTooLarge(f"Request body is larger than {limit} bytes")
    return await read_limited(request.content, request.content_length, limit, too_large)


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

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def request_log_middleware(listener: str) -> Any:
    """One canonical log line per request, with a request id echoed back."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        offered = request.headers.get("X-Request-Id", "")
        request_id = offered if _REQUEST_ID_RE.fullmatch(offered) else secrets.token_hex(8)
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
        except web.HTTPException as exc:
            status = exc.status
            exc.headers["X-Request-Id"] = request_id
            raise
        else:
            response.headers["X-Request-Id"] = request_id
            return response
        finally:
            log.info(
                "request",
                listener=listener,
                method=request.method,
                path=request.path,
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )

    return middleware


def json_errors_middleware() -> Any:
    """Render aiohttp's own HTTP errors (unknown path, ...) and crashes as JSON errors."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            name = "NotFound" if exc.status == 404 else "InvalidRequest"
            if exc.status == 405:
                allow = exc.headers.get("Allow", "")
                return error_response(
                    XrpcError(405, "InvalidRequest", "Method not allowed", {"Allow": allow})
                )
            if exc.status == 413:
                name = "PayloadTooLarge"
            if exc.status >= 500:
                return error_response(INTERNAL)
            return error_response(XrpcError(exc.status, name, exc.reason))
        except Exception as exc:
            wire = to_wire(exc)
            if wire is not None:
                return error_response(wire)
            log.exception("unhandled_error", path=request.path)
            return error_response(INTERNAL)

    return middleware
