"""Drive the sidecar over HTTP and record every request in a ``History``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any, Final, Self

import aiohttp

from bench.chaos.history import NO_ANSWER, SIGNED_BODY, History, Kind, Op
from bench.chaos.service import OWNER
from bench.chaos.topology import log

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from bench.chaos.service import SidecarProcess

CREATE: Final = "place.wisp.v2.secret.create"
ROTATE: Final = "place.wisp.v2.secret.rotate"
# Far above any deadline the sidecar should keep: a request this slow is a hang,
# and is recorded as no answer.
REQUEST_TIMEOUT_S: Final = 5.0
# How long the sidecar may take to sign or acknowledge again after a fault.
RECOVERY_TIMEOUT_S: Final = 30.0
# Between two signs of one load worker: enough traffic to see an outage within
# a few milliseconds, without taking the CPU the servers need to fail over.
LOAD_PAUSE_S: Final = 0.005
# Between two rotates of the background rotator: many changes in flight during
# a failover, each on its own round trip.
ROTATE_PAUSE_S: Final = 0.02


class Driver:
    """Calls one sidecar as the chaos owner, on one secret, and records the answers."""

    def __init__(self, service: SidecarProcess, history: History, name: str) -> None:
        self.service = service
        self.history = history
        self.name = name
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "use Driver as an async context manager"
        return self._session

    async def _xrpc(self, nsid: str, kind: Kind, *, must_refuse: bool = False) -> Op:
        url = f"{self.service.xrpc_url}/{nsid}"
        headers = {"Authorization": f"Bearer {self.service.api_key}"}
        start = time.monotonic()
        status, body = await self._post(url, headers=headers, json={"name": self.name})
        token = body.get("token") if status == 200 and isinstance(body, dict) else None
        op = Op(kind, start, time.monotonic(), status, token=token, must_refuse=must_refuse)
        log.info("%s %s: %d in %.0f ms", kind, self.name, status, op.latency * 1000)
        self.history.record(op)
        return op

    async def _post(self, url: str, **kwargs: Any) -> tuple[int, Any]:
        try:
            async with self.session.post(url, **kwargs) as response:
                body = await response.json(content_type=None)
                return response.status, body
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return NO_ANSWER, None

    async def create(self) -> Op:
        return await self._xrpc(CREATE, "create")

    async def rotate(self, *, must_refuse: bool = False) -> Op:
        return await self._xrpc(ROTATE, "rotate", must_refuse=must_refuse)

    async def sign(self, *, probe: bool = False) -> Op:
        url = f"{self.service.sign_url}?did={OWNER}&name={self.name}&scheme=wisp"
        start = time.monotonic()
        status, body = await self._post(
            url, data=SIGNED_BODY, headers={"Content-Type": "application/octet-stream"}
        )
        signature = version = None
        if status == 200 and isinstance(body, dict):
            # A 200 without these is recorded without a signature, which the checker flags.
            signature = (body.get("headers") or {}).get("X-Webhook-Signature")
            version = body.get("version")
        op = Op("sign", start, time.monotonic(), status, None, signature, version, probe=probe)
        self.history.record(op)
        return op

    async def rotate_until_acked(self, *, attempts: int = 20) -> Op:
        """Rotate until one answers 200, as a caller retrying a 503 does; bounded both ways."""
        async with asyncio.timeout(RECOVERY_TIMEOUT_S):
            for _ in range(attempts):
                op = await self.rotate()
                if op.status == 200:
                    return op
                # Retry-After asks for 1 s; a tenth keeps the rounds short, and
                # the number of attempts stays bounded.
                await asyncio.sleep(0.1)
        raise RuntimeError(f"no rotate was acknowledged in {attempts} attempts")

    async def probe(self) -> Op:
        """Sign until the sidecar answers 200 or 404: which token signs after a fault."""
        async with asyncio.timeout(RECOVERY_TIMEOUT_S):
            while True:
                op = await self.sign(probe=True)
                if op.status in (200, 404):
                    return op
                await asyncio.sleep(LOAD_PAUSE_S)

    @contextlib.asynccontextmanager
    async def sign_load(self, workers: int = 2) -> AsyncIterator[None]:
        """Sign continuously in the background for the duration of the block."""

        async def sign() -> None:
            await self.sign()

        async with _repeating(sign, workers, LOAD_PAUSE_S):
            yield

    @contextlib.asynccontextmanager
    async def rotate_load(self, pause: float = ROTATE_PAUSE_S) -> AsyncIterator[None]:
        """Rotate one after another in the background for the duration of the block.

        One rotator, so that at most one rotation is in flight and the order of
        the answers is the order in which they were applied (see ``check``).
        """

        async def rotate() -> None:
            await self.rotate()

        async with _repeating(rotate, 1, pause):
            yield


@contextlib.asynccontextmanager
async def _repeating(
    call: Callable[[], Awaitable[None]], workers: int, pause: float
) -> AsyncIterator[None]:
    """Run ``call`` over and over in ``workers`` tasks until the block ends.

    The tasks are told to stop and let their request in flight finish, so
    every request they sent is recorded with its answer.
    """
    stopping = asyncio.Event()

    async def worker() -> None:
        while not stopping.is_set():
            await call()
            await asyncio.sleep(pause)

    tasks = [asyncio.create_task(worker()) for _ in range(workers)]
    try:
        yield
    finally:
        stopping.set()
        await asyncio.gather(*tasks)
