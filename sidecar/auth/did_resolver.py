"""DID resolution for service auth: a DID in, its ``#atproto`` signing key out.

``did:plc`` documents come from the configured PLC directory
(``GET <plc_url>/<did>``), ``did:web`` documents from
``https://<host>/.well-known/did.json``. Every fetch is bounded (2 s, 64 KiB,
no redirects), so a slow or hostile host costs one request at most that much
and never blocks the event loop. Keys are cached for a TTL; concurrent
lookups of one DID share one fetch. Any failure is ``DidResolutionError``.

Plain http is used only for loopback ``did:web`` hosts, and only when
``allow_http_loopback`` is set (tests and development). Without it, loopback
hosts are refused outright: no real issuer lives on the sidecar's own host,
and the pod-local sign listener is there.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote

import aiohttp
import structlog

from sidecar import __version__
from sidecar.auth.did_keys import atproto_signing_key
from sidecar.errors import DidResolutionError
from sidecar.names import is_loopback_host
from sidecar.wire import read_limited

if TYPE_CHECKING:
    from collections.abc import Callable

    from sidecar.auth.did_keys import PublicKey

log = structlog.get_logger("sidecar.did")

TIMEOUT_S: Final = 2.0
MAX_DOCUMENT_BYTES: Final = 64 * 1024
# Bounds memory when many issuers call; the oldest entry makes room.
MAX_CACHE_ENTRIES: Final = 10_000

# did:plc identifiers are 24 characters of lower-case base32. Checking that
# exactly also keeps anything path-like out of the directory URL.
_PLC_RE: Final = re.compile(r"did:plc:[a-z2-7]{24}")
_HOST_LABEL_RE: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_HEADERS: Final = {
    "Accept": "application/did+ld+json, application/json",
    "User-Agent": f"wisp-sidecar/{__version__}",
}


@dataclass(frozen=True, slots=True)
class ResolvedKey:
    """A DID's signing key, and whether it came from the cache (and so may be stale)."""

    key: PublicKey
    cached: bool


@dataclass(frozen=True, slots=True)
class _Entry:
    key: PublicKey
    expires: float


def _web_host(did: str) -> tuple[str, int | None]:
    """The host and port a ``did:web`` names; path-based did:web is not atproto's."""
    encoded = did.removeprefix("did:web:")
    if ":" in encoded:
        raise DidResolutionError("did:web with a path is not supported")
    host, _, port_text = unquote(encoded).partition(":")
    labels = host.split(".")
    if len(host) > 253 or not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        raise DidResolutionError("did:web does not name a valid host")
    if not port_text:
        return host, None
    if not (port_text.isascii() and port_text.isdigit() and 0 < int(port_text) < 65536):
        raise DidResolutionError("did:web names an invalid port")
    return host, int(port_text)


class DidResolver:
    """Resolves ``did:plc`` and ``did:web`` DIDs to their ``#atproto`` key, with a TTL cache."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        plc_url: str,
        cache_ttl_s: float,
        allow_http_loopback: bool = False,
        timeout_s: float = TIMEOUT_S,
        max_bytes: int = MAX_DOCUMENT_BYTES,
        max_entries: int = MAX_CACHE_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._plc_url = plc_url.rstrip("/")
        self._ttl_s = cache_ttl_s
        self._allow_http_loopback = allow_http_loopback
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        self._inflight: dict[str, asyncio.Task[PublicKey]] = {}

    def document_url(self, did: str) -> str:
        """Where ``did``'s document is fetched from; ``DidResolutionError`` if nowhere."""
        if did.startswith("did:plc:"):
            if not _PLC_RE.fullmatch(did):
                raise DidResolutionError("not a valid did:plc identifier")
            return f"{self._plc_url}/{did}"
        if did.startswith("did:web:"):
            host, port = _web_host(did)
            scheme = "https"
            if is_loopback_host(host):
                if not self._allow_http_loopback:
                    raise DidResolutionError("loopback did:web hosts are for development only")
                scheme = "http"
            authority = host if port is None else f"{host}:{port}"
            return f"{scheme}://{authority}/.well-known/did.json"
        raise DidResolutionError("unsupported DID method: only did:plc and did:web")

    async def signing_key(self, did: str, *, fresh: bool = False) -> ResolvedKey:
        """``did``'s ``#atproto`` key: from the cache unless ``fresh``, else fetched."""
        if not fresh:
            entry = self._cache.get(did)
            if entry is not None and entry.expires > self._clock():
                return ResolvedKey(entry.key, cached=True)
        task = self._inflight.get(did)
        if task is None:
            task = asyncio.create_task(self._resolve(did))
            self._inflight[did] = task
            task.add_done_callback(lambda done: self._settle(did, done))
        # shield: one caller giving up must not cancel the fetch others await.
        return ResolvedKey(await asyncio.shield(task), cached=False)

    def _settle(self, did: str, task: asyncio.Task[PublicKey]) -> None:
        if self._inflight.get(did) is task:
            del self._inflight[did]
        if not task.cancelled():
            # Marks a failure as seen even when every waiter has gone.
            task.exception()

    async def _resolve(self, did: str) -> PublicKey:
        try:
            key = atproto_signing_key(did, await self._fetch(self.document_url(did)))
        except DidResolutionError as exc:
            log.info("did_resolution_failed", did=did, error=str(exc))
            raise
        self._cache.pop(did, None)
        while len(self._cache) >= self._max_entries:
            del self._cache[next(iter(self._cache))]
        self._cache[did] = _Entry(key=key, expires=self._clock() + self._ttl_s)
        return key

    async def _fetch(self, url: str) -> Any:
        try:
            async with self._session.get(
                url, timeout=self._timeout, allow_redirects=False, headers=_HEADERS
            ) as response:
                if response.status != 200:
                    raise DidResolutionError(f"the DID document request answered {response.status}")
                too_large = DidResolutionError(f"the DID document is over {self._max_bytes} bytes")
                body = await read_limited(
                    response.content, response.content_length, self._max_bytes, too_large
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DidResolutionError(
                f"the DID document request failed: {type(exc).__name__}"
            ) from None
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise DidResolutionError("the DID document is not JSON") from None
