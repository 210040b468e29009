"""The sign API on a Unix socket (``SIDECAR_SIGN_SOCKET``), through real
``python -m sidecar serve`` processes: its permissions, the stale, foreign and
live files found at start, signing across a rotation, and removal at shutdown.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import pytest
from support import CREATE, ROTATE, bearer

from harness import ServeProcess, run_command, sidecar_env, start_serve
from sidecar.errors import ConfigError
from sidecar.settings import Settings
from sidecar.signing.schemes import verify

if TYPE_CHECKING:
    from collections.abc import Iterator

    from support import Keys

BODY = b'{"event":"push"}'


@pytest.fixture
def sock_path() -> Iterator[Path]:
    """A socket path in a directory of its own, short enough for a Unix socket."""
    with tempfile.TemporaryDirectory(prefix="ws") as directory:
        yield Path(directory) / "sign.sock"


def is_there(path: Path) -> bool:
    """Whether anything, even a dangling link, is at ``path``."""
    return os.path.lexists(path)


def socket_env(env: dict[str, str], tmp_path: Path, path: Path, **extra: str) -> dict[str, str]:
    """A configured sidecar's environment on free ports, signing on ``path``."""
    return sidecar_env(tmp_path / "data") | env | {"SIDECAR_SIGN_SOCKET": str(path), **extra}


async def sign_over(path: Path, *, name: str = "orders") -> tuple[int, dict[str, Any]]:
    """POST /v1/sign over the socket at ``path``: the status and the JSON answer."""
    connector = aiohttp.UnixConnector(path=str(path))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(
            f"http://sidecar/v1/sign?did=did:plc:alice000000000000000000&name={name}", data=BODY
        ) as response,
    ):
        answer: dict[str, Any] = await response.json()
        return response.status, answer


async def xrpc(served: ServeProcess, method: str, key: str, name: str) -> str:
    """Call create or rotate of ``name`` on the served XRPC port; the token it answers."""
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"{served.xrpc}/xrpc/{method}", json={"name": name}, headers=bearer(key)
        ) as response,
    ):
        assert response.status == 200, await response.text()
        token: str = (await response.json())["token"]
        return token


async def test_signs_over_the_socket_alone_with_a_rotation_taking_effect_at_once(
    env: dict[str, str], keys: Keys, tmp_path: Path, sock_path: Path
) -> None:
    """With SIDECAR_SIGN_PORT=0 the sign API listens only on its socket, mode 0660; a
    signature after a rotation verifies with the new token only; shutdown removes it."""
    served = await start_serve(socket_env(env, tmp_path, sock_path, SIDECAR_SIGN_PORT="0"))
    try:
        assert served.listening()["sign"] == {
            **served.listening()["sign"],
            "socket": str(sock_path),
        }
        assert "port" not in served.listening()["sign"]
        found = os.lstat(sock_path)
        assert stat.S_ISSOCK(found.st_mode)
        assert stat.S_IMODE(found.st_mode) == 0o660
        assert found.st_gid == os.getgid()

        first = await xrpc(served, CREATE, keys.alice, "orders")
        status, answer = await sign_over(sock_path)
        assert status == 200
        assert verify("wisp", first, BODY, answer["headers"])

        second = await xrpc(served, ROTATE, keys.alice, "orders")
        status, answer = await sign_over(sock_path)
        assert status == 200
        assert verify("wisp", second, BODY, answer["headers"])
        assert not verify("wisp", first, BODY, answer["headers"])

        status, answer = await sign_over(sock_path, name="absent")
        assert (status, answer["error"]) == (404, "NotFound")
    finally:
        assert await served.terminate() == 0
    assert not is_there(sock_path)


async def test_the_socket_takes_the_configured_mode_and_group(
    env: dict[str, str], tmp_path: Path, sock_path: Path
) -> None:
    """SIDECAR_SIGN_SOCKET_MODE and SIDECAR_SIGN_SOCKET_GROUP are on the socket once it
    is reachable, beside a TCP sign port that still answers."""
    groups = [gid for gid in os.getgroups() if gid != os.getgid()]
    if os.geteuid() == 0:
        groups.append(65534)  # root may give a file to any group
    if not groups:
        pytest.skip("this user is in no group but its own, so no other group can be given")
    group = groups[0]
    served = await start_serve(
        socket_env(
            env,
            tmp_path,
            sock_path,
            SIDECAR_SIGN_SOCKET_MODE="0620",
            SIDECAR_SIGN_SOCKET_GROUP=str(group),
        )
    )
    try:
        found = os.lstat(sock_path)
        assert (stat.S_IMODE(found.st_mode), found.st_gid) == (0o620, group)
        status, _ = await sign_over(sock_path, name="absent")
        assert status == 404
        async with aiohttp.ClientSession() as session, session.post(f"{served.sign}/v1/sign") as r:
            assert r.status == 400
    finally:
        assert await served.terminate() == 0


async def test_a_killed_sidecars_socket_is_replaced_and_a_live_one_refused(
    env: dict[str, str], tmp_path: Path, sock_path: Path
) -> None:
    """A second sidecar on a socket a live one listens on exits 2 naming the setting and
    leaves it serving; after a SIGKILL leaves the file behind, a new sidecar replaces it."""
    first = await start_serve(socket_env(env, tmp_path, sock_path))
    try:
        code, _, err = await run_command("serve", env=socket_env(env, tmp_path, sock_path))
        assert code == 2
        assert "SIDECAR_SIGN_SOCKET" in err
        assert "another process is listening" in err
        assert (await sign_over(sock_path, name="absent"))[0] == 404
    finally:
        await first.terminate(signal.SIGKILL)
    assert stat.S_ISSOCK(os.lstat(sock_path).st_mode)  # left behind

    second = await start_serve(socket_env(env, tmp_path, sock_path))
    try:
        assert (await sign_over(sock_path, name="absent"))[0] == 404
    finally:
        assert await second.terminate() == 0
    assert not is_there(sock_path)


async def test_a_file_that_is_not_a_socket_is_refused_and_left_alone(
    env: dict[str, str], tmp_path: Path, sock_path: Path
) -> None:
    """A regular file at SIDECAR_SIGN_SOCKET stops the start with exit 2 naming the
    setting, and the file keeps its contents."""
    fd = os.open(sock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.write(fd, b"not a socket\n")
    os.close(fd)
    code, _, err = await run_command("serve", env=socket_env(env, tmp_path, sock_path))
    assert code == 2
    assert "SIDECAR_SIGN_SOCKET" in err
    assert "is not a socket" in err
    assert stat.S_ISREG(os.lstat(sock_path).st_mode)
    assert os.lstat(sock_path).st_size == len("not a socket\n")


async def test_a_socket_nobody_listens_on_is_replaced(
    env: dict[str, str], tmp_path: Path, sock_path: Path
) -> None:
    """A bound socket nobody listens on (a stale file) is replaced by a listening one."""
    leftover = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    leftover.bind(str(sock_path))
    leftover.close()
    served = await start_serve(socket_env(env, tmp_path, sock_path))
    try:
        assert (await sign_over(sock_path, name="absent"))[0] == 404
    finally:
        assert await served.terminate() == 0


async def test_doctor_checks_the_socket(
    env: dict[str, str], tmp_path: Path, sock_path: Path
) -> None:
    """doctor reports the socket as answering with its mode, and FAIL once it is gone."""
    configured = socket_env(env, tmp_path, sock_path, SIDECAR_SIGN_PORT="0")
    served = await start_serve(configured)
    try:
        _, out, _ = await run_command("doctor", env=configured)
        assert f"ok   listener sign socket: {sock_path}: answers, mode 0660" in out
        assert "skip listener sign: SIDECAR_SIGN_PORT=0" in out
    finally:
        assert await served.terminate() == 0
    code, out, _ = await run_command("doctor", env=configured)
    assert code == 1
    assert "FAIL listener sign socket" in out


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"SIDECAR_SIGN_PORT": "0"}, "SIDECAR_SIGN_PORT"),
        ({"SIDECAR_XRPC_PORT": "0"}, "SIDECAR_XRPC_PORT"),
        ({"SIDECAR_SIGN_SOCKET": "/s", "SIDECAR_SIGN_SOCKET_MODE": "0666"}, "_MODE"),
        ({"SIDECAR_SIGN_SOCKET": "/s", "SIDECAR_SIGN_SOCKET_MODE": "rw"}, "_MODE"),
        ({"SIDECAR_SIGN_SOCKET": "/s", "SIDECAR_SIGN_SOCKET_MODE": "432"}, "_MODE"),
        ({"SIDECAR_SIGN_SOCKET": "/" + "s" * 100}, "SIDECAR_SIGN_SOCKET"),
        ({"SIDECAR_SIGN_SOCKET_GROUP": "no-such-group-here"}, "SIDECAR_SIGN_SOCKET_GROUP"),
    ],
)
def test_socket_settings_refuse_what_cannot_work(overrides: dict[str, str], named: str) -> None:
    """Port 0 anywhere but sign (and there only with a socket), a mode others may connect
    by, a path too long for a socket and an unknown group are refused by name."""
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(overrides)


def test_socket_settings_parse() -> None:
    """A socket path, an octal mode and a numeric group are read as given."""
    settings = Settings.from_env(
        {
            "SIDECAR_SIGN_PORT": "0",
            "SIDECAR_SIGN_SOCKET": "/run/w/sign.sock",
            "SIDECAR_SIGN_SOCKET_MODE": "0640",
            "SIDECAR_SIGN_SOCKET_GROUP": "10002",
        }
    )
    assert (settings.sign_port, str(settings.sign_socket)) == (0, "/run/w/sign.sock")
    assert (settings.sign_socket_mode, settings.sign_socket_group) == ("0640", 10002)
