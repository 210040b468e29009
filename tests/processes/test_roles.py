"""Process roles: ``SIDECAR_LISTENERS`` picks the listeners a ``serve`` process runs.

The split deployment runs real processes on one Redis: a sign process and an
XRPC process, each with its own ops listener, as the two containers of the
Kubernetes Component do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest
from support import ALICE, CREATE, doctor_beside_serve, report

from harness import run_command, sidecar_env, start_serve
from sidecar.errors import ConfigError
from sidecar.settings import Settings

MALFORMED_KEYS = "this line is no API key\n"


def role_env(
    tmp_path: Path, redis_url: str, kek_text: str, keys_file: Path, role: str
) -> dict[str, str]:
    """A production-like environment on free ports for one role."""
    return sidecar_env(
        tmp_path / role.replace(",", "-"),
        REDIS_URL=redis_url,
        SIDECAR_KEK=kek_text,
        SIDECAR_API_KEYS_FILE=str(keys_file),
        SIDECAR_LISTENERS=role,
    )


async def refused(port: int) -> bool:
    """Whether nothing listens on loopback ``port``."""
    try:
        async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/"):
            return False
    except aiohttp.ClientConnectorError:
        return True


async def get_json(session: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    """GET ``url``: (status, decoded JSON)."""
    async with session.get(url) as response:
        return response.status, await response.json()


async def test_split_roles_sign_what_the_xrpc_process_created(
    tmp_path: Path, redis_url: str, kek_text: str, keys: Any
) -> None:
    """An xrpc process and a sign process on one Redis: a secret created through the first
    is signed by the second, each runs only its own listeners, and each /readyz names its role."""
    xrpc_env = role_env(tmp_path, redis_url, kek_text, keys.path, "xrpc,ops")
    sign_env = role_env(tmp_path, redis_url, kek_text, keys.path, "sign,ops")
    xrpc_process = await start_serve(xrpc_env)
    try:
        sign_process = await start_serve(sign_env)
        try:
            assert set(xrpc_process.listening()) == {"xrpc", "ops"}
            assert set(sign_process.listening()) == {"sign", "ops"}
            assert await refused(int(xrpc_env["SIDECAR_SIGN_PORT"]))
            assert await refused(int(sign_env["SIDECAR_XRPC_PORT"]))
            async with aiohttp.ClientSession() as session:
                async with session.post(
                    f"{xrpc_process.xrpc}/xrpc/{CREATE}",
                    json={"name": "orders"},
                    headers={"Authorization": f"Bearer {keys.alice}"},
                ) as response:
                    assert response.status == 200
                async with session.post(
                    f"{sign_process.sign}/v1/sign",
                    params={"did": ALICE, "name": "orders"},
                    data=b"{}",
                ) as response:
                    assert response.status == 200
                    assert (await response.json())["version"] == 1
                assert await get_json(session, f"{xrpc_process.ops}/readyz") == (
                    200,
                    {"status": "ready", "listeners": ["xrpc", "ops"]},
                )
                assert await get_json(session, f"{sign_process.ops}/readyz") == (
                    200,
                    {"status": "ready", "listeners": ["sign", "ops"]},
                )
        finally:
            assert await sign_process.terminate() == 0
    finally:
        assert await xrpc_process.terminate() == 0


async def test_a_sign_process_reads_no_xrpc_credential(
    tmp_path: Path, redis_url: str, kek_text: str
) -> None:
    """A sign-only process starts although its API keys file is malformed, because it reads
    none; the same file stops an xrpc process, so the sign process truly skipped it."""
    malformed = tmp_path / "api-keys"
    malformed.write_text(MALFORMED_KEYS)
    env = role_env(tmp_path, redis_url, kek_text, malformed, "sign,ops")
    env["SIDECAR_SERVICE_DID"] = "did:plc:sidecar00000000000000000"
    served = await start_serve(env)
    try:
        assert set(served.listening()) == {"sign", "ops"}
    finally:
        assert await served.terminate() == 0
    xrpc_env = role_env(tmp_path, redis_url, kek_text, malformed, "xrpc,ops")
    status, _, err = await run_command("serve", env=xrpc_env)
    assert status == 2
    assert "SIDECAR_API_KEYS_FILE" in err


@pytest.mark.parametrize(
    ("role", "checked", "skipped"),
    [
        ("sign,ops", {"listener sign", "listener ops"}, {"listener xrpc", "api keys"}),
        ("xrpc,ops", {"listener xrpc", "listener ops", "api keys"}, {"listener sign"}),
    ],
)
async def test_doctor_checks_the_listeners_of_its_role(
    tmp_path: Path,
    redis_url: str,
    kek_text: str,
    keys: Any,
    role: str,
    checked: set[str],
    skipped: set[str],
) -> None:
    """doctor, run with a role's settings beside that role's process, checks that role's
    listeners (ok), skips the others and says why, and passes."""
    env = role_env(tmp_path, redis_url, kek_text, keys.path, role)
    status, out, err = await doctor_beside_serve(env)
    checks = report(out)
    assert status == 0, out + err
    assert {name for name in checks if checks[name][0] == "skip"} == skipped
    assert all(checks[name][0] == "ok" for name in checked), out
    assert checks["listener ops"][1].endswith(f"ready ({role.replace(',', ', ')})")
    assert all("SIDECAR_LISTENERS" in checks[name][1] for name in skipped)


async def test_doctor_fails_a_listener_of_its_role_that_is_not_there(
    tmp_path: Path, redis_url: str, kek_text: str, keys: Any
) -> None:
    """With the sign role's settings and no process running, doctor fails the sign and ops
    listeners and never probes the XRPC port."""
    env = role_env(tmp_path, redis_url, kek_text, keys.path, "sign,ops")
    status, out, _ = await run_command("doctor", env=env)
    checks = report(out)
    assert status == 1
    assert (checks["listener sign"][0], checks["listener ops"][0]) == ("FAIL", "FAIL")
    assert checks["listener xrpc"][0] == "skip"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("xrpc,sign", "must include ops"),
        ("ops", "must include xrpc, sign or both"),
        ("sign,ops,admin", "'admin' is no listener"),
    ],
)
def test_a_role_without_ops_or_traffic_or_with_an_unknown_listener_is_refused(
    value: str, message: str
) -> None:
    """SIDECAR_LISTENERS is refused, naming itself, without ops, with ops alone, or with a
    name that is no listener."""
    with pytest.raises(ConfigError) as refused_with:
        Settings.from_env({"SIDECAR_LISTENERS": value})
    assert refused_with.value.setting == "SIDECAR_LISTENERS"
    assert message in str(refused_with.value)


def test_a_role_is_read_in_start_order_whatever_order_it_is_written_in() -> None:
    """The listeners named start in one fixed order (traffic first, ops last), and the
    default runs all three."""
    assert Settings.from_env({"SIDECAR_LISTENERS": "ops, SIGN"}).listeners == ("sign", "ops")
    assert Settings.from_env({}).listeners == ("xrpc", "sign", "ops")


async def metric_value(session: aiohttp.ClientSession, ops: str, name: str) -> float:
    """One unlabelled series of a process's /metrics (0 when absent)."""
    async with session.get(f"{ops}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


async def test_an_xrpc_process_with_a_cpu_share_holds_a_flood_and_answers_it_unchanged(
    tmp_path: Path, redis_url: str, kek_text: str, keys: Any
) -> None:
    """An XRPC-only process with SIDECAR_XRPC_CPU_SHARE holds its XRPC connections once a
    stream of anonymous calls has used the share up, still answers every one with the
    JSON 401, and keeps its ops listener answering."""
    env = role_env(tmp_path, redis_url, kek_text, keys.path, "xrpc,ops")
    env |= {"SIDECAR_XRPC_CPU_SHARE": "1", "SIDECAR_XRPC_LOOP_BURST_MS": "1"}
    served = await start_serve(env)
    holds = "wisp_sidecar_xrpc_loop_holds_total"
    try:
        async with aiohttp.ClientSession() as session:
            assert await metric_value(session, served.ops, holds) == 0
            statuses = set()
            # Bounded against a hang: a millisecond of loop time is a handful of calls.
            for _ in range(500):
                status, body = await get_json(
                    session, f"{served.xrpc}/xrpc/place.wisp.v2.secret.list"
                )
                statuses.add((status, body["error"]))
                if await metric_value(session, served.ops, holds) > 0:
                    break
            assert await metric_value(session, served.ops, holds) > 0
            assert statuses == {(401, "AuthenticationRequired")}
            assert await get_json(session, f"{served.ops}/readyz") == (
                200,
                {"status": "ready", "listeners": ["xrpc", "ops"]},
            )
    finally:
        assert await served.terminate() == 0
