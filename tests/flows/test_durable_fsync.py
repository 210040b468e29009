"""SIDECAR_DURABLE_FSYNC: ``auto`` (the default) waits for the primary's AOF fsync wherever
the server can give one and says so where it cannot; ``on`` refuses to start without it;
``off`` waits for none; the embedded server is durable by default.

"The fsync was waited for" is observed on the server: the WAITAOF calls it counts
(INFO commandstats), and a server told to stop fsyncing (``appendfsync no``), whose
WAITAOF then never confirms, so the change must answer 503.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
import redis
from support import (
    CREATE,
    ROTATE,
    SERVER_BINARY,
    bearer,
    call,
    durability_failures,
    parsed,
    serve_until_listening_or_exit,
)
from topologies import wait_for

from harness import ServeProcess, run_command, sidecar_env, start_serve
from sidecar.app import create_xrpc_app
from sidecar.storage.embedded import ADDRESS_FILE, EmbeddedValkey, free_port

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

    from support import AiohttpClient, Keys, SidecarFactory

    from sidecar.app import Sidecar

# Short, so that a change whose fsync never comes is refused quickly.
DURABLE_TIMEOUT_MS = "200"


def waitaof_calls(client: redis.Redis) -> int:
    """How many WAITAOF commands the server has run."""
    stats: dict[str, Any] = client.info("commandstats")
    return int(stats.get("cmdstat_waitaof", {}).get("calls", 0))


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[EmbeddedValkey]:
    """A server of this test's own with the append-only file on (appendfsync everysec)."""
    with EmbeddedValkey(tmp_path / "aof", binary=SERVER_BINARY, persist=True) as server:
        yield server


async def test_auto_waits_for_the_fsync_and_refuses_a_change_the_server_does_not_fsync(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    keys: Keys,
    aof_server: EmbeddedValkey,
) -> None:
    """By default every change on an AOF server sends its WAITAOF, and one the server never
    fsyncs (appendfsync no) answers 503, while with off the same change is answered 200."""
    sidecar: Sidecar = await make_sidecar(
        REDIS_URL=aof_server.url, SIDECAR_DURABLE_TIMEOUT_MS=DURABLE_TIMEOUT_MS
    )
    assert sidecar.settings.durable_fsync == "auto"
    xrpc = await aiohttp_client(create_xrpc_app(sidecar))
    with redis.Redis(port=aof_server.port) as raw:
        before = waitaof_calls(raw)
        for nsid in (CREATE, ROTATE, ROTATE):
            status, body = await call(xrpc, nsid, keys.alice, {"name": "orders"})
            assert status == 200, body
        assert waitaof_calls(raw) == before + 3

        raw.config_set("appendfsync", "no")
        status, body = await call(xrpc, ROTATE, keys.alice, {"name": "orders"})
        assert (status, body["error"]) == (503, "StorageUnavailable"), body
        assert durability_failures(sidecar, "rotate") == 1

        unwaited: Sidecar = await make_sidecar(
            REDIS_URL=aof_server.url, SIDECAR_DURABLE_FSYNC="off"
        )
        assert unwaited.store.calls.durability.waits is False
        plain = await aiohttp_client(create_xrpc_app(unwaited))
        before = waitaof_calls(raw)
        status, body = await call(plain, ROTATE, keys.alice, {"name": "orders"})
        assert status == 200, body
        assert waitaof_calls(raw) == before


async def test_auto_follows_a_primary_that_loses_and_regains_its_aof_change_by_change(
    aiohttp_client: AiohttpClient,
    make_sidecar: SidecarFactory,
    keys: Keys,
    aof_server: EmbeddedValkey,
    log_lines: list[str],
) -> None:
    """A primary that turns its AOF off (as after a failover onto a server without one)
    gets its changes acknowledged without fsync and one warning line; once it has an AOF
    again the changes wait for the fsync again."""
    sidecar: Sidecar = await make_sidecar(
        REDIS_URL=aof_server.url, SIDECAR_DURABLE_TIMEOUT_MS=DURABLE_TIMEOUT_MS
    )
    xrpc = await aiohttp_client(create_xrpc_app(sidecar))

    def events(name: str) -> list[dict[str, Any]]:
        return [line for line in parsed(log_lines) if line["event"] == name]

    with redis.Redis(port=aof_server.port) as raw:
        assert (await call(xrpc, CREATE, keys.alice, {"name": "orders"}))[0] == 200
        raw.config_set("appendonly", "no")
        for _ in range(3):
            status, body = await call(xrpc, ROTATE, keys.alice, {"name": "orders"})
            assert status == 200, body
        [warning] = events("durability_without_fsync")
        assert warning["level"] == "warning"
        assert "appendonly no" in warning["reason"]

        raw.config_set("appendonly", "yes")
        wait_for(
            "the AOF to be written again",
            lambda: (
                raw.info("persistence")["aof_rewrite_in_progress"] == 0
                and raw.info("persistence")["aof_rewrite_scheduled"] == 0
            ),
        )
        status, body = await call(xrpc, ROTATE, keys.alice, {"name": "orders"})
        assert status == 200, body
        assert len(events("durability_fsync_restored")) == 1
        # Waiting again: a change the server does not fsync is refused.
        raw.config_set("appendfsync", "no")
        status, body = await call(xrpc, ROTATE, keys.alice, {"name": "orders"})
        assert status == 503, body
    assert len(events("durability_without_fsync")) == 1


@pytest.mark.parametrize(
    ("server_args", "reason"),
    [
        (("--appendonly", "no"), "appendonly no"),
        (("--appendonly", "yes", "--rename-command", "WAITAOF", ""), "has no WAITAOF"),
        (("--appendonly", "yes", "--appendfsync", "no"), "appendfsync no"),
    ],
)
async def test_auto_on_a_server_that_cannot_fsync_starts_says_so_once_and_doctor_warns(
    env: dict[str, str],
    tmp_path: Path,
    server_args: tuple[str, ...],
    reason: str,
) -> None:
    """With the default durability, a server without AOF, without WAITAOF or that never
    fsyncs still serves, start-up logs one warning line saying why, and doctor warns."""
    with EmbeddedValkey(
        tmp_path / "server", binary=SERVER_BINARY, persist=False, extra_args=server_args
    ) as server:
        code, lines = await serve_until_listening_or_exit(
            {**env, "REDIS_URL": server.url}, tmp_path
        )
        # No sidecar listens by now, so doctor fails its listener checks.
        doctor_env = sidecar_env(tmp_path) | env | {"REDIS_URL": server.url}
        status, out, _ = await run_command("doctor", env=doctor_env)
    assert status == 1
    assert code is None, lines
    warnings = [json.loads(line) for line in lines if "durability_without_fsync" in line]
    assert len(warnings) == 1, lines
    assert warnings[0]["level"] == "warning"
    assert reason in warnings[0]["reason"]
    assert "SIDECAR_DURABLE_FSYNC=off" in warnings[0]["hint"]
    durability = next(line for line in out.splitlines() if " durability: " in line)
    assert durability.startswith("warn durability: SIDECAR_DURABLE_FSYNC=auto: ")
    assert reason in durability


@pytest.mark.parametrize("value", ["off", "0", "false"])
async def test_off_is_explicit_and_says_nothing_at_start(
    env: dict[str, str], aof_server: EmbeddedValkey, tmp_path: Path, value: str
) -> None:
    """SIDECAR_DURABLE_FSYNC=off (or its old spellings) starts without asking the server about
    fsync, and logs no durability line at all."""
    code, lines = await serve_until_listening_or_exit(
        {**env, "REDIS_URL": aof_server.url, "SIDECAR_DURABLE_FSYNC": value}, tmp_path
    )
    assert code is None, lines
    assert not [line for line in lines if "durability" in line]


async def test_auto_on_an_aof_server_starts_quietly_and_doctor_is_content(
    env: dict[str, str], aof_server: EmbeddedValkey, tmp_path: Path
) -> None:
    """On a server whose AOF fsyncs, the default durability starts with an info line naming
    the AOF and no warning, and doctor's durability check is ok."""
    code, lines = await serve_until_listening_or_exit(
        {**env, "REDIS_URL": aof_server.url}, tmp_path
    )
    assert code is None, lines
    assert not [line for line in lines if "durability_without_fsync" in line]
    [info] = [json.loads(line) for line in lines if json.loads(line)["event"] == "durability"]
    assert "the primary's AOF" in info["required"]
    doctor_env = sidecar_env(tmp_path) | env | {"REDIS_URL": aof_server.url}
    _, out, _ = await run_command("doctor", env=doctor_env)
    assert "ok   durability: requires 0 replicas and the primary's AOF" in out


async def test_the_embedded_server_is_durable_by_default(tmp_path: Path) -> None:
    """make run's embedded Valkey runs appendfsync everysec, and every change the development
    sidecar acknowledges went through a WAITAOF that confirmed its fsync."""
    served = await start_serve(sidecar_env(tmp_path), banner=True)
    try:
        key = next(line.strip() for line in served.stderr.splitlines() if "wsa_" in line)
        url = (tmp_path / "valkey" / ADDRESS_FILE).read_text().strip()
        with redis.Redis.from_url(url, decode_responses=True) as raw:
            config = raw.config_get("append*")
            assert (config["appendonly"], config["appendfsync"]) == ("yes", "everysec")
            before = waitaof_calls(raw)
            async with aiohttp.ClientSession(headers=bearer(key)) as session:
                for nsid in (CREATE, ROTATE):
                    async with session.post(
                        f"{served.xrpc}/xrpc/{nsid}", json={"name": "kept"}
                    ) as response:
                        assert response.status == 200, await response.text()
            stats = raw.info("commandstats")["cmdstat_waitaof"]
            assert waitaof_calls(raw) == before + 2
            assert stats["failed_calls"] == stats["rejected_calls"] == 0
    finally:
        assert await served.terminate() == 0


async def test_started_without_redis_auto_says_so_once_redis_answers(
    env: dict[str, str], tmp_path: Path
) -> None:
    """With SIDECAR_START_WITHOUT_REDIS and no server at start, the fsync check runs once Redis
    first answers: a server without AOF then gets its one warning line."""
    port = free_port()
    env = sidecar_env(tmp_path / "data") | {
        **env,
        "REDIS_URL": f"redis://127.0.0.1:{port}/0",
        "SIDECAR_START_WITHOUT_REDIS": "1",
    }
    async with ServeProcess(env) as process:
        await process.event("redis_unavailable")
        with EmbeddedValkey(tmp_path / "late", binary=SERVER_BINARY, port=port, persist=False):
            warning = await process.event("durability_without_fsync")
        assert await process.terminate() == 0
    names = [event["event"] for event in process.events()]
    assert "appendonly no" in warning["reason"]
    assert names.index("redis_available") < names.index("durability_without_fsync")
