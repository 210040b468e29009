"""What the sidecar checks of Redis before it serves: that it answers, and that it can
be as durable as configured."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Final

import structlog

from sidecar.errors import StartupFailed, StorageError, StorageUnavailable
from sidecar.redis_url import scrub

if TYPE_CHECKING:
    from sidecar.app import Sidecar

log = structlog.get_logger("sidecar.startup")

# Pauses between Redis probes while waiting for it: quick at first, then gentle.
_PROBE_DELAYS_S: Final = (0.05, 0.1, 0.2, 0.5, 1.0)


async def probe_redis(
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
            log.warning("redis_unavailable", reason=failure_reason(failure, url))
        delay = _PROBE_DELAYS_S[min(attempt, len(_PROBE_DELAYS_S) - 1)]
        attempt += 1
        if deadline is not None:
            if loop.time() >= deadline:
                return failure
            delay = min(delay, deadline - loop.time())
        # Redis offers nothing to wait on while it is away, so probing is the event.
        await asyncio.sleep(delay)


def failure_reason(failure: StorageUnavailable, url: str) -> str:
    """One line about why Redis did not answer, without the URL or its password."""
    cause = failure.__cause__
    text = (str(cause) or type(cause).__name__) if cause is not None else str(failure)
    return " ".join(scrub(text, url).split())


async def until_redis_answers(sidecar: Sidecar, url: str) -> None:
    await probe_redis(sidecar, deadline=None, url=url)
    log.info("redis_available")
    try:
        await check_durability(sidecar)
    except StartupFailed as exc:
        # Too late to refuse the start: every change answers 503 instead.
        log.error("durability_unsupported", reason=str(exc))


async def check_durability(sidecar: Sidecar) -> None:
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
