"""Rate limits every replica shares, counted in Redis in fixed windows.

Changes are counted per owner inside the change's own script
(``scripts.COUNT_CHANGE``), so that limit costs no round trip; ``ChangeLimit``
is only its policy. Refused credentials are counted per client address here,
under the address's own hash tag: ``AddressLimits.check`` before any
credential work, ``AddressLimits.failed`` after a refusal.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from sidecar.errors import RateLimited
from sidecar.storage import scripts
from sidecar.storage.layout import address_counter_key

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sidecar.storage.calls import RedisCalls

WINDOW_MS: Final = 60_000
CHANGES_PER_MINUTE: Final = "changes_per_minute"
AUTH_FAILURES_PER_MINUTE: Final = "auth_failures_per_minute"


@dataclass(frozen=True, slots=True)
class ChangeLimit:
    """How many changes one owner may make per window, on every replica together."""

    limit: int
    window_ms: int = WINDOW_MS

    def args(self) -> tuple[int, int]:
        """``COUNT_CHANGE``'s two trailing arguments."""
        return self.limit, self.window_ms

    def exceeded(self, reply: list[Any]) -> RateLimited:
        """The error for a change script's ``{'rate_limited', count, ms left, now}``."""
        return _exceeded(CHANGES_PER_MINUTE, self.limit, self.window_ms, reply[2], reply[3])


# A change made by an operator tool, which no rate limit applies to.
NO_CHANGE_LIMIT: Final = ChangeLimit(limit=0)


def _exceeded(kind: str, limit: int, window_ms: int, left_ms: Any, now_ms: Any) -> RateLimited:
    left = max(0, int(left_ms))
    return RateLimited(
        kind,
        limit=limit,
        window_s=window_ms // 1000,
        reset_after_ms=left,
        reset_at_ms=int(now_ms) + left,
    )


class AddressLimits:
    """Refused credentials per client address, shared through Redis."""

    def __init__(self, calls: RedisCalls, *, limit: int, window_ms: int = WINDOW_MS) -> None:
        self._calls = calls
        self._limit = limit
        self._window_ms = window_ms
        client = calls.client
        self._left = client.register_script(scripts.WINDOW_LEFT)
        self._failed = client.register_script(scripts.ADDRESS_FAILED)

    @property
    def limit(self) -> int:
        return self._limit

    async def check(self, address: str) -> None:
        """``RateLimited`` if ``address`` has used up its refused credentials.

        A plain GET, the cheapest read there is, since every XRPC call makes
        it; only an address over its limit costs a second one, for the window's
        end. A stale count from a just-demoted primary would only shift a limit.
        """
        key = address_counter_key(address)
        client = self._calls.client
        count: Any = await self._calls.read("rate_limit", lambda: client.get(key))
        if count is None or int(count) < self._limit:
            return
        reply = await self._calls.read("rate_limit", self._window_left(key))
        raise _exceeded(AUTH_FAILURES_PER_MINUTE, self._limit, self._window_ms, *reply)

    def _window_left(self, key: str) -> Callable[[], Awaitable[list[Any]]]:
        async def read() -> list[Any]:
            return list(await self._left(keys=[key]))

        return read

    async def failed(self, address: str) -> None:
        """Count one refused credential from ``address``."""
        keys = [address_counter_key(address)]

        async def count() -> Any:
            return await self._failed(keys=keys, args=[self._window_ms])

        # Not retried: a count sent twice would count twice.
        await self._calls.run("rate_limit", count)
