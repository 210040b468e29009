"""The lifecycle of a real ``python -m sidecar serve``: startup with and without Redis, and
a graceful SIGTERM while requests are in flight.

Requests are held in flight honestly: the test Redis is told ``CLIENT PAUSE
WRITE``, so each create waits inside the sidecar for its script to run, and
Redis itself reports how many clients it holds (``blocked_clients``). The
sidecar reports its own progress as log lines, which the tests wait for.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
import redis
from support import ALICE, CREATE, SERVER_BINARY, bearer

from harness import ServeProcess, sidecar_env
from sidecar.storage.embedded import EmbeddedValkey, free_port
from sidecar.storage.layout import index_key

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from support import Keys

# Long enough that nothing in these tests times out by accident; the tests
# that need a deadline say so.
EVENT_TIMEOUT_S = 30


async def status_of(url: str) -> int:
    """The HTTP status a GET of ``url`` answers."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status


def wait_for(what: str, check: Callable[[], bool]) -> None:
    """Poll ``check`` until it holds; fail the test if that takes longer than the event timeout."""
    deadline = time.monotonic() + EVENT_TIMEOUT_S
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


@pytest.fixture
def valkey(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    """A server of this test's own, because pausing it must not stall any other test."""
    with EmbeddedValkey(tmp_path / "valkey", binary=SERVER_BINARY, persist=False) as server:
        yield server


@pytest.fixture
def serve_env(keys: Keys, kek_text: str, tmp_path: Path) -> dict[str, str]:
    """The environment of a served sidecar, but for REDIS_URL, which each test sets."""
    return sidecar_env(
        tmp_path / "data", SIDECAR_KEK=kek_text, SIDECAR_API_KEYS_FILE=str(keys.path)
    )


async def test_sigterm_drains_in_flight_requests_and_exits_0(
    valkey: EmbeddedValkey, serve_env: dict[str, str], keys: Keys
) -> None:
    """On SIGTERM /readyz says 503, XRPC and sign refuse connections, in-flight requests finish."""
    in_flight = 5
    env = {**serve_env, "REDIS_URL": valkey.url, "SIDECAR_REDIS_TIMEOUT_MS": "30000"}
    async with (
        ServeProcess(env) as served,
        aiohttp.ClientSession(headers=bearer(keys.alice)) as http,
    ):
        await served.until_listening()
        assert await status_of(f"{served.ops}/readyz") == 200
        with redis.Redis.from_url(valkey.url) as admin:
            admin.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
            try:

                async def create(name: str) -> tuple[int, Any]:
                    url = f"{served.xrpc}/xrpc/{CREATE}"
                    async with http.post(url, json={"name": name}) as response:
                        return response.status, await response.json()

                requests = [asyncio.create_task(create(f"hook-{i}")) for i in range(in_flight)]
                # Each create is now inside the sidecar, waiting for Redis.
                await asyncio.to_thread(
                    wait_for,
                    "the creates to reach Redis",
                    lambda: admin.info("clients")["blocked_clients"] == in_flight,
                )
                served.send_signal(signal.SIGTERM)
                await served.event("shutting_down")

                assert await status_of(f"{served.ops}/readyz") == 503
                for refused in (f"{served.xrpc}/xrpc/_health", f"{served.sign}/v1/sign"):
                    with pytest.raises(aiohttp.ClientConnectionError):
                        await status_of(refused)
                assert not any(task.done() for task in requests)
            finally:
                admin.execute_command("CLIENT", "UNPAUSE")
            results = await asyncio.gather(*requests)
            assert [status for status, _ in results] == [200] * in_flight, results
            assert all(body["token"].startswith("wsk_") for _, body in results)
            code = await served.finish()
            assert code == 0
            assert {"event": "stopped"}.items() <= served.events()[-1].items()
            assert admin.zcard(index_key(ALICE)) == in_flight


async def test_requests_past_the_grace_are_cut_off_and_the_exit_is_still_0(
    valkey: EmbeddedValkey, serve_env: dict[str, str], keys: Keys
) -> None:
    """A request still stuck when SIDECAR_SHUTDOWN_GRACE_S runs out is dropped; exit is 0."""
    env = {
        **serve_env,
        "REDIS_URL": valkey.url,
        # Longer than the harness waits for an exit: only the grace can end the request.
        "SIDECAR_REDIS_TIMEOUT_MS": "60000",
        "SIDECAR_SHUTDOWN_GRACE_S": "1",
    }
    async with (
        ServeProcess(env) as served,
        aiohttp.ClientSession(headers=bearer(keys.alice)) as http,
    ):
        await served.until_listening()
        with redis.Redis.from_url(valkey.url) as admin:
            admin.execute_command("CLIENT", "PAUSE", 60_000, "WRITE")
            try:
                request = asyncio.create_task(
                    http.post(f"{served.xrpc}/xrpc/{CREATE}", json={"name": "stuck"})
                )
                await asyncio.to_thread(
                    wait_for,
                    "the create to reach Redis",
                    lambda: admin.info("clients")["blocked_clients"] == 1,
                )
                # Redis holds the create for a minute; aiohttp cancels it after the grace.
                assert await served.terminate() == 0
                with pytest.raises(aiohttp.ServerDisconnectedError):
                    await request
            finally:
                admin.execute_command("CLIENT", "UNPAUSE")


async def test_startup_fails_fast_when_redis_does_not_answer(
    serve_env: dict[str, str],
) -> None:
    """With REDIS_URL unreachable, serve exits 2 after the connect timeout with one clear line."""
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    env = {**serve_env, "REDIS_URL": url, "SIDECAR_REDIS_CONNECT_TIMEOUT_S": "1"}
    async with ServeProcess(env) as served:
        code = await served.finish()
    err, events = served.stderr, served.events()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("wisp-sidecar: cannot start: REDIS_URL: ")
    assert "did not answer within 1s" in lines[0]
    assert "Connection refused" in lines[0]
    assert "hunter2" not in err + json.dumps(events)
    assert not any(event.get("event") == "listening" for event in events)


async def test_sigterm_while_waiting_for_redis_exits_0_at_once(
    serve_env: dict[str, str],
) -> None:
    """SIGTERM during the startup wait for Redis ends the process with 0, not after the wait."""
    env = {
        **serve_env,
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
        "SIDECAR_REDIS_CONNECT_TIMEOUT_S": "600",
    }
    async with ServeProcess(env) as served:
        await served.event("redis_unavailable")
        served.send_signal(signal.SIGTERM)
        code = await served.finish()
    assert code == 0
    assert not any(event.get("event") == "listening" for event in served.events())


async def test_start_without_redis_is_unready_until_redis_appears(
    serve_env: dict[str, str], keys: Keys, tmp_path: Path
) -> None:
    """With SIDECAR_START_WITHOUT_REDIS=1 serve starts unready, then is ready once Redis is up."""
    port = free_port()
    env = {
        **serve_env,
        "REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "SIDECAR_START_WITHOUT_REDIS": "1",
        "SIDECAR_REDIS_CONNECT_TIMEOUT_S": "1",
    }
    async with (
        ServeProcess(env) as served,
        aiohttp.ClientSession(headers=bearer(keys.alice)) as http,
    ):
        await served.until_listening()
        assert await status_of(f"{served.ops}/healthz") == 200
        assert await status_of(f"{served.ops}/readyz") == 503
        async with http.post(f"{served.xrpc}/xrpc/{CREATE}", json={"name": "early"}) as response:
            assert response.status == 503
            assert (await response.json())["error"] == "StorageUnavailable"

        with EmbeddedValkey(tmp_path / "late", binary=SERVER_BINARY, port=port, persist=False):
            await served.event("redis_available")
            assert await status_of(f"{served.ops}/readyz") == 200
            async with http.post(f"{served.xrpc}/xrpc/{CREATE}", json={"name": "late"}) as response:
                assert response.status == 200
            assert await served.terminate() == 0
