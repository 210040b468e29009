"""Starting safely: no embedded Redis by accident, loopback in development mode, one
server per data directory that dies with its sidecar, and no misspelt setting ignored."""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING

import aiohttp
import pytest
from support import CREATE, LIST, bearer

from harness import is_gone, run_command, sidecar_env, start_serve, until_exited
from sidecar.errors import ConfigError
from sidecar.settings import Settings

if TYPE_CHECKING:
    from pathlib import Path

    from support import Keys


def only_line(err: str) -> str:
    """The one line a refused start printed on stderr."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("configured", ["SIDECAR_KEK", "SIDECAR_KEK_PREVIOUS", "keys file"])
async def test_a_production_configuration_without_redis_url_exits_2(
    configured: str, kek_text: str, keys: Keys, tmp_path: Path
) -> None:
    """With a KEK or an API keys file but no REDIS_URL, serve exits 2 with one line naming
    REDIS_URL and SIDECAR_EMBEDDED_REDIS, and starts no embedded server."""
    data_dir = tmp_path / "data"
    setting = {
        "SIDECAR_KEK": {"SIDECAR_KEK": kek_text},
        "SIDECAR_KEK_PREVIOUS": {"SIDECAR_KEK_PREVIOUS": kek_text},
        "keys file": {"SIDECAR_API_KEYS_FILE": str(keys.path)},
    }[configured]
    status, _out, err = await run_command("serve", env=sidecar_env(data_dir) | setting)
    assert status == 2
    line = only_line(err)
    assert line.startswith("wisp-sidecar: configuration error: REDIS_URL: is not set")
    assert "SIDECAR_EMBEDDED_REDIS=1" in line
    assert kek_text not in line
    assert not data_dir.exists()


async def test_embedded_redis_on_request_serves_the_configured_keys(
    kek_text: str, keys: Keys, tmp_path: Path
) -> None:
    """SIDECAR_EMBEDDED_REDIS=1 with a KEK and keys file starts the embedded Valkey and
    serves with those keys, making no development key and printing no banner; the
    operator tools find that Valkey too."""
    data_dir = tmp_path / "data"
    env = sidecar_env(
        data_dir,
        SIDECAR_EMBEDDED_REDIS="1",
        SIDECAR_KEK=kek_text,
        SIDECAR_API_KEYS_FILE=str(keys.path),
    )
    served = await start_serve(env, banner=True)
    try:
        assert "DEVELOPMENT MODE" not in served.stderr
        async with (
            aiohttp.ClientSession(headers=bearer(keys.alice)) as session,
            session.post(f"{served.xrpc}/xrpc/{CREATE}", json={"name": "orders"}) as response,
        ):
            assert response.status == 200
        # The operator tools find the same embedded server from the same settings.
        status, out, err = await run_command("keys", "status", env=env)
        assert (status, out.splitlines()[-1]) == (0, "keys: 1 stored, 0 do not open"), err
    finally:
        assert await served.terminate() == 0
    assert not (data_dir / "dev-kek").exists()
    assert not (data_dir / "dev-api-keys").exists()
    assert (data_dir / "valkey" / "appendonlydir").is_dir()


async def test_embedded_redis_and_redis_url_together_exit_2(tmp_path: Path) -> None:
    """SIDECAR_EMBEDDED_REDIS=1 beside a REDIS_URL is refused: exit 2, one line naming it."""
    env = sidecar_env(tmp_path, SIDECAR_EMBEDDED_REDIS="1", REDIS_URL="redis://127.0.0.1:6379/0")
    status, _out, err = await run_command("serve", env=env)
    assert status == 2
    assert "SIDECAR_EMBEDDED_REDIS: is set, and so is REDIS_URL" in only_line(err)


async def test_development_mode_listens_on_loopback_unless_a_host_is_given(
    tmp_path: Path,
) -> None:
    """In development mode every listener binds 127.0.0.1 by default, the banner says so,
    and a host given explicitly is still honoured."""
    env = sidecar_env(tmp_path, loopback=False, SIDECAR_OPS_HOST="0.0.0.0")
    served = await start_serve(env, banner=True)
    try:
        hosts = {name: line["host"] for name, line in served.listening().items()}
        assert hosts == {"xrpc": "127.0.0.1", "sign": "127.0.0.1", "ops": "0.0.0.0"}
        assert "loopback only in development mode" in served.stderr
        assert f"XRPC 127.0.0.1:{env['SIDECAR_XRPC_PORT']}" in served.stderr
    finally:
        assert await served.terminate() == 0


async def test_a_killed_sidecar_takes_its_valkey_along_and_the_next_start_reopens_the_data(
    tmp_path: Path,
) -> None:
    """After SIGKILL of serve its embedded Valkey exits too, and a new serve on the same data
    directory starts and finds what the first one stored."""
    first = await start_serve(sidecar_env(tmp_path), banner=True)
    key = next(line.strip() for line in first.stderr.splitlines() if "wsa_" in line)
    async with (
        aiohttp.ClientSession(headers=bearer(key)) as session,
        session.post(f"{first.xrpc}/xrpc/{CREATE}", json={"name": "kept"}) as response,
    ):
        assert response.status == 200
    valkey_pid = first.valkey_pid
    first.send_signal(signal.SIGKILL)
    assert await first.finish() == -signal.SIGKILL

    # No "still alive" check first: the kernel may deliver the server's
    # SIGTERM before this line runs, which is what is being tested.
    await until_exited(valkey_pid)
    assert is_gone(valkey_pid)

    second = await start_serve(sidecar_env(tmp_path), banner=True)
    try:
        assert second.valkey_pid != valkey_pid
        async with (
            aiohttp.ClientSession(headers=bearer(key)) as session,
            session.get(f"{second.xrpc}/xrpc/{LIST}") as response,
        ):
            assert response.status == 200
            assert [item["name"] for item in (await response.json())["secrets"]] == ["kept"]
    finally:
        assert await second.terminate() == 0


async def test_a_second_sidecar_on_a_data_directory_in_use_exits_2(tmp_path: Path) -> None:
    """While one serve holds a data directory, a second exits 2 with one line naming
    SIDECAR_DATA_DIR, shows no key, and the first goes on serving."""
    first = await start_serve(sidecar_env(tmp_path), banner=True)
    try:
        status, out, err = await run_command("serve", env=sidecar_env(tmp_path))
        assert status == 2
        line = only_line(err)
        assert line.startswith("wisp-sidecar: configuration error: SIDECAR_DATA_DIR: ")
        assert "is in use by another embedded Valkey" in line
        assert "wsa_" not in out + err
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{first.ops}/healthz") as response,
        ):
            assert response.status == 200
        assert first.returncode is None
    finally:
        assert await first.terminate() == 0
    await until_exited(first.valkey_pid)


@pytest.mark.parametrize(
    ("variable", "suggestion"),
    [
        ("SIDECAR_LOG_LEVLE", "; did you mean SIDECAR_LOG_LEVEL?"),
        ("SIDECAR_REDIS_TIMEOUT", "; did you mean SIDECAR_REDIS_TIMEOUT_MS?"),
        ("SIDECAR_FROBNICATE", ""),
    ],
)
async def test_an_unknown_sidecar_variable_stops_serve_with_a_suggestion(
    variable: str, suggestion: str, tmp_path: Path
) -> None:
    """serve with a SIDECAR_* variable that names no setting exits 2 with one line naming
    it and, when one is close, the setting it may have meant."""
    status, _out, err = await run_command("serve", env=sidecar_env(tmp_path) | {variable: "debug"})
    assert status == 2
    assert only_line(err) == (
        f"wisp-sidecar: configuration error: {variable}: unknown setting{suggestion}"
    )
    assert not (tmp_path / "valkey").exists()


def test_the_config_file_variable_and_the_suites_own_are_not_unknown() -> None:
    """SIDECAR_CONFIG (when empty) and the test suite's SIDECAR_TEST_* variables are accepted."""
    settings = Settings.from_env(
        {
            "SIDECAR_CONFIG": "",
            "SIDECAR_TEST_REDIS_URL": "redis://127.0.0.1:1/0",
            "SIDECAR_TEST_REDIS_SERVER": "/usr/bin/redis-server",
        }
    )
    assert settings.redis_url is None


def test_an_unknown_toml_key_gets_a_suggestion(tmp_path: Path) -> None:
    """A misspelt key in the SIDECAR_CONFIG file is refused with the key it may have meant."""
    path = tmp_path / "sidecar.toml"
    path.write_text('log_levle = "debug"\n')
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"SIDECAR_CONFIG": str(path)})
    assert str(info.value).endswith("unknown setting 'log_levle'; did you mean log_level?")


async def test_rewrap_in_development_mode_finds_the_kek_and_the_running_valkey(
    tmp_path: Path,
) -> None:
    """Beside a running development sidecar, rewrap with no settings finds its KEK and
    Valkey by itself and reports the secret it stored as current."""
    served = await start_serve(sidecar_env(tmp_path), banner=True)
    try:
        key = next(line.strip() for line in served.stderr.splitlines() if "wsa_" in line)
        async with (
            aiohttp.ClientSession(headers=bearer(key)) as session,
            session.post(f"{served.xrpc}/xrpc/{CREATE}", json={"name": "orders"}) as response,
        ):
            assert response.status == 200
        env = {"PATH": os.environ["PATH"], "SIDECAR_DATA_DIR": str(tmp_path)}
        status, out, err = await run_command("rewrap", env=env)
        assert (status, err) == (0, "")
        assert out == (
            "rewrap: scanned=1 rewrapped=0 already_current=1 skipped_changed=0 failed_to_open=0\n"
        )
    finally:
        assert await served.terminate() == 0


async def test_rewrap_in_development_mode_starts_the_valkey_when_no_sidecar_runs(
    tmp_path: Path,
) -> None:
    """With the development sidecar stopped, rewrap opens its data directory itself, and a
    sidecar started afterwards can take it again."""
    served = await start_serve(sidecar_env(tmp_path), banner=True)
    assert await served.terminate() == 0
    env = {"PATH": os.environ["PATH"], "SIDECAR_DATA_DIR": str(tmp_path)}
    status, out, _err = await run_command("rewrap", env=env)
    assert status == 0
    assert out.startswith("rewrap: scanned=0 ")
    again = await start_serve(sidecar_env(tmp_path), banner=True)
    assert await again.terminate() == 0


async def test_rewrap_without_development_data_or_redis_url_exits_2(tmp_path: Path) -> None:
    """rewrap with nothing configured and no development data exits 2 naming REDIS_URL."""
    env = {"PATH": os.environ["PATH"], "SIDECAR_DATA_DIR": str(tmp_path)}
    status, _out, err = await run_command("rewrap", env=env)
    assert status == 2
    assert "REDIS_URL: is not set, and" in only_line(err)
    assert not (tmp_path / "dev-kek").exists()
