"""The XRPC share of the loop, in a process that runs XRPC and sign together.

The real listeners run on real sockets, the XRPC one with the connections
``serve`` gives it. A hold is brought about either by real XRPC work or by
charging the share with loop time, as a slow XRPC request would; the tests
then assert on order and outcome: what is answered while XRPC is held, and
what only after it is released.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from prometheus_client import CollectorRegistry
from support import ALICE, CREATE, LIST

from sidecar.app import Sidecar, create_sign_app, create_xrpc_app
from sidecar.listeners import ConnectionLimits, ListenerRunner
from sidecar.loop_share import LoopShare, shared_loop_connections, xrpc_loop_share
from sidecar.metrics import Metrics
from sidecar.settings import Settings
from sidecar.storage.embedded import free_port

# Against hangs only: a held request the test expects answered gets this long.
ANSWER_BOUND_S = 60


@dataclass
class Listeners:
    """Where the XRPC and sign listeners of one process answer."""

    xrpc: str
    sign: str


@asynccontextmanager
async def listening(sidecar: Sidecar, share: LoopShare) -> AsyncIterator[Listeners]:
    """The XRPC listener (its loop time charged to ``share``) and the sign listener."""
    limits = ConnectionLimits(read_timeout_s=30, idle_timeout_s=30)
    runners = []
    urls = []
    try:
        for app, connection in (
            (create_xrpc_app(sidecar), shared_loop_connections(share)),
            (create_sign_app(sidecar), None),
        ):
            runner = ListenerRunner(
                app,
                listener="xrpc" if connection else "sign",
                limits=limits,
                on_closed=sidecar.metrics.connection_closed,
                connection=connection,
            )
            await runner.setup()
            runners.append(runner)
            port = free_port()
            await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
            urls.append(f"http://127.0.0.1:{port}")
        yield Listeners(*urls)
    finally:
        share.close()
        for runner in runners:
            await runner.cleanup()


async def create(session: aiohttp.ClientSession, xrpc: str, key: str, name: str) -> None:
    """Create secret ``name`` for the owner of ``key``."""
    async with session.post(
        f"{xrpc}/xrpc/{CREATE}", json={"name": name}, headers={"Authorization": f"Bearer {key}"}
    ) as response:
        assert response.status == 200


async def signed(session: aiohttp.ClientSession, sign: str, name: str) -> int:
    """Sign a small body with Alice's secret ``name``; the status."""
    async with session.post(
        f"{sign}/v1/sign", params={"did": ALICE, "name": name}, data=b'{"event":"push"}'
    ) as response:
        await response.read()
        return response.status


async def test_signing_is_served_while_xrpc_is_held(sidecar: Sidecar, keys: object) -> None:
    """While XRPC has used up its share, an XRPC request is not answered, and sign requests
    arriving after it are all answered 200 meanwhile."""
    share = LoopShare(share=0.01, burst_s=0.001)
    async with listening(sidecar, share) as at, aiohttp.ClientSession() as session:
        await create(session, at.xrpc, keys.alice, "orders")  # type: ignore[attr-defined]
        # A debt the 1% share pays back in about 1000 s: held for the whole test.
        share.charge(10.0)
        assert share.held
        waiting = asyncio.create_task(session.get(f"{at.xrpc}/xrpc/_health"))
        statuses = [await signed(session, at.sign, "orders") for _ in range(30)]
        assert statuses == [200] * 30
        assert not waiting.done()
        assert share.held
        waiting.cancel()


async def test_a_held_xrpc_request_is_answered_once_the_share_has_paid(
    sidecar: Sidecar, keys: object
) -> None:
    """An XRPC request sent while XRPC is held waits, rather than being refused, and is answered
    200 only after the hold is released."""
    # A burst far above the cost of one _health, so its own answer cannot start a new hold.
    share = LoopShare(share=0.5, burst_s=1.0)
    async with listening(sidecar, share) as at, aiohttp.ClientSession() as session:
        share.charge(1.2)
        assert share.held
        async with session.get(
            f"{at.xrpc}/xrpc/_health", timeout=aiohttp.ClientTimeout(total=ANSWER_BOUND_S)
        ) as response:
            held_when_answered = share.held
            assert response.status == 200
            assert "version" in await response.json()
        assert not held_when_answered


async def test_real_xrpc_work_is_measured_and_holds_xrpc(sidecar: Sidecar, keys: object) -> None:
    """A stream of anonymous XRPC calls (each a JSON 401) uses up a small share by itself:
    the hold is counted, the XRPC answers keep their shape, and signing answers 200."""
    registry = CollectorRegistry()
    metrics = Metrics(registry, default_collectors=False)
    share = LoopShare(
        share=0.01,
        burst_s=0.001,
        on_hold=metrics.xrpc_loop_holds.inc,
        on_work=metrics.xrpc_loop_seconds.inc,
    )
    async with listening(sidecar, share) as at, aiohttp.ClientSession() as session:
        await create(session, at.xrpc, keys.alice, "orders")  # type: ignore[attr-defined]
        holds_before = registry.get_sample_value("wisp_sidecar_xrpc_loop_holds_total") or 0
        answers = []
        # Bounded against a hang; a millisecond of loop time is a handful of requests.
        for _ in range(500):
            async with session.get(
                f"{at.xrpc}/xrpc/{LIST}", timeout=aiohttp.ClientTimeout(total=ANSWER_BOUND_S)
            ) as response:
                answers.append((response.status, set(await response.json())))
            if registry.get_sample_value("wisp_sidecar_xrpc_loop_holds_total") != holds_before:
                break
        # One request can start more than one hold (its parse, then its handler), so the
        # count is only known to have grown.
        assert (registry.get_sample_value("wisp_sidecar_xrpc_loop_holds_total") or 0) > holds_before
        assert (registry.get_sample_value("wisp_sidecar_xrpc_loop_seconds_total") or 0) > 0.001
        assert set(map(str, answers)) == {str((401, {"error", "message"}))}
        assert await signed(session, at.sign, "orders") == 200


def test_the_share_is_made_beside_sign_and_in_an_xrpc_process_only_when_asked() -> None:
    """serve bounds XRPC's share by default where XRPC and sign share a loop; in an XRPC
    process of its own only with SIDECAR_XRPC_CPU_SHARE; never without XRPC or at 100%."""
    metrics = Metrics(CollectorRegistry(), default_collectors=False)

    def made(**environ: str) -> float | None:
        share = xrpc_loop_share(Settings.from_env(environ), metrics)
        return None if share is None else share.share

    assert made() == 0.25
    assert made(SIDECAR_XRPC_CPU_SHARE="50") == 0.25
    assert made(SIDECAR_LISTENERS="xrpc,ops") is None
    assert made(SIDECAR_LISTENERS="xrpc,ops", SIDECAR_XRPC_CPU_SHARE="50") == 0.5
    assert made(SIDECAR_LISTENERS="xrpc,ops", SIDECAR_XRPC_LOOP_SHARE="50") is None
    assert made(SIDECAR_LISTENERS="sign,ops", SIDECAR_XRPC_CPU_SHARE="50") is None
    assert made(SIDECAR_XRPC_LOOP_SHARE="100") is None
