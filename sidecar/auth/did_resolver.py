"""DID resolution for service auth: a DID in, its ``#atproto`` signing key out.

``did:plc`` documents come from the configured PLC directory
(``GET <plc_url>/<did>``), ``did:web`` documents from
``https://<host>/.well-known/did.json``. Every fetch is bounded (2 s, 64 KiB,
no redirects), so a slow or hostile host costs one request at most that much
and never blocks the event loop. Keys are cached for a TTL; concurrent
lookups of one DID share one fetch. Any failure is ``DidResolutionError``,
whose ``reason`` the auth-failure metric counts.

What a stream of hostile JWTs can make this do is bounded too:
- a ``did:web`` host that is, or resolves to, a non-public address is refused
  (``sidecar.auth.public_addresses``; reason ``did_non_public_address``);
- a failed resolution is remembered for ``failure_ttl_s``, and the DID is
  refused meanwhile without a fetch (``did_failed_recently``);
- a DID is fetched again to catch a key rotation at most once per
  ``refetch_min_s`` (``did_refetch_limited``);
- at most ``max_in_flight`` fetches run at once; past that a new one is
  refused at once with ``ResolutionsBusy`` (503), never queued.

Plain http is used only for loopback ``did:web`` hosts, and only when
``allow_http_loopback`` is set (tests and development). Without it, loopback
hosts are refused outright: no real issuer lives on the sidecar's own host,
and the pod-local sign listener is there.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote, urlsplit

import aiohttp
import structlog

from sidecar import __version__
from sidecar.auth.did_keys import atproto_signing_key
from sidecar.auth.public_addresses import (
    NonPublicAddress,
    PublicOnlyResolver,
    did_session,
    is_public,
)
from sidecar.errors import DidResolutionError, ResolutionsBusy
from sidecar.names import is_loopback_host
from sidecar.wire import read_limited

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from aiohttp.abc import AbstractResolver

    from sidecar.auth.did_keys import PublicKey
    from sidecar.settings import Settings

log = structlog.get_logger("sidecar.did")

TIMEOUT_S: Final = 2.0
MAX_DOCUMENT_BYTES: Final = 64 * 1024
# Bounds memory when many issuers call; the oldest entry makes room. The same
# bound holds the failures remembered.
MAX_CACHE_ENTRIES: Final = 10_000
REFETCH_MIN_S: Final = 30.0
FAILURE_TTL_S: Final = 30.0
MAX_IN_FLIGHT: Final = 32

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


@dataclass(slots=True)
class _Entry:
    key: PublicKey
    expires: float
    # When the document was last asked for: the refetch bound counts from it.
    fetched: float


def _remember(cache: dict[str, Any], did: str, value: Any, max_entries: int) -> None:
    cache.pop(did, None)
    while len(cache) >= max_entries:
        del cache[next(iter(cache))]
    cache[did] = value


def _refuse_non_public_literal(host: str, *, loopback_allowed: bool) -> None:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return  # a name: the connector's resolver checks what it resolves to
    if not is_public(address) and not (loopback_allowed and address.is_loopback):
        raise DidResolutionError(
            "did:web names a non-public address", reason="did_non_public_address"
        )


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
        refetch_min_s: float = REFETCH_MIN_S,
        failure_ttl_s: float = FAILURE_TTL_S,
        max_in_flight: int = MAX_IN_FLIGHT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._session = session
        self._plc_url = plc_url.rstrip("/")
        self._ttl_s = cache_ttl_s
        self._allow_http_loopback = allow_http_loopback
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_bytes = max_bytes
        self._max_entries = max_entries
        self._refetch_min_s = refetch_min_s
        self._failure_ttl_s = failure_ttl_s
        self._max_in_flight = max_in_flight
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        # DID -> until when its last failure stands.
        self._failures: dict[str, float] = {}
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
            _refuse_non_public_literal(host, loopback_allowed=self._allow_http_loopback)
            if is_loopback_host(host):
                if not self._allow_http_loopback:
                    raise DidResolutionError(
                        "loopback did:web hosts are for development only",
                        reason="did_non_public_address",
                    )
                scheme = "http"
            authority = host if port is None else f"{host}:{port}"
            return f"{scheme}://{authority}/.well-known/did.json"
        raise DidResolutionError("unsupported DID method: only did:plc and did:web")

    async def signing_key(self, did: str, *, fresh: bool = False) -> ResolvedKey:
        """``did``'s ``#atproto`` key: from the cache unless ``fresh``, else fetched.

        ``fresh`` (after a signature failed with the cached key) fetches again
        only if the last fetch of ``did`` is ``refetch_min_s`` old.
        """
        now = self._clock()
        entry = self._cache.get(did)
        if entry is not None and not fresh and entry.expires > now:
            return ResolvedKey(entry.key, cached=True)
        if fresh and entry is not None:
            if now - entry.fetched < self._refetch_min_s:
                raise DidResolutionError(
                    "the DID document was fetched moments ago", reason="did_refetch_limited"
                )
            entry.fetched = now
        task = self._inflight.get(did)
        if task is None:
            if self._failures.get(did, now) > now:
                raise DidResolutionError(
                    "the DID failed to resolve moments ago", reason="did_failed_recently"
                )
            if len(self._inflight) >= self._max_in_flight:
                raise ResolutionsBusy("too many DID resolutions in flight")
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
            log.info("did_resolution_failed", did=did, error=str(exc), reason=exc.reason)
            until = self._clock() + self._failure_ttl_s
            _remember(self._failures, did, until, self._max_entries)
            raise
        self._failures.pop(did, None)
        now = self._clock()
        _remember(self._cache, did, _Entry(key, now + self._ttl_s, now), self._max_entries)
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
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, NonPublicAddress):
                raise DidResolutionError(
                    "the did:web host resolves to a non-public address",
                    reason="did_non_public_address",
                ) from None
            raise DidResolutionError(
                f"the DID document request failed: {type(exc).__name__}"
            ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise DidResolutionError(
                f"the DID document request failed: {type(exc).__name__}"
            ) from None
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            raise DidResolutionError("the DID document is not JSON") from None


@contextlib.asynccontextmanager
async def open_did_resolver(
    settings: Settings, dns: AbstractResolver | None = None
) -> AsyncIterator[DidResolver]:
    """A resolver as ``settings`` configure it, fetching through public addresses only.

    ``dns`` looks the hosts up (the system's resolver when None); its answers
    pass ``PublicOnlyResolver`` on every connection.
    """
    public_only = PublicOnlyResolver(
        dns,
        # The operator's own directory may be an internal mirror.
        trusted_hosts=frozenset({urlsplit(settings.plc_url).hostname or ""}),
        allow_loopback=settings.did_web_allow_http_loopback,
    )
    try:
        async with did_session(public_only) as session:
            yield DidResolver(
                session,
                plc_url=settings.plc_url,
                cache_ttl_s=settings.did_cache_ttl_s,
                allow_http_loopback=settings.did_web_allow_http_loopback,
                refetch_min_s=settings.did_refetch_min_s,
                failure_ttl_s=settings.did_failure_cache_s,
                max_in_flight=settings.did_max_in_flight,
            )
    finally:
        await public_only.close()
