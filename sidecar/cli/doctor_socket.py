"""``doctor``'s check of the sign socket (``SIDECAR_SIGN_SOCKET``): there, a socket,
with the configured mode and group, and the sign API answering on it."""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, Any

import aiohttp

if TYPE_CHECKING:
    from sidecar.settings import Settings


def is_sign_answer(status: int, body: Any) -> bool:
    """Whether an answer to a POST /v1/sign without parameters is the sign API's: its
    JSON error (400, or 401 with a sign token)."""
    return status in (400, 401) and isinstance(body, dict) and set(body) == {"error", "message"}


async def sign_socket(settings: Settings, timeout_s: float) -> tuple[str, str]:
    """Status and detail of one line: FAIL when the socket is missing, not a socket or
    not answering as the sign API; warn when its mode or group is not what the
    settings ask."""
    path = settings.sign_socket
    assert path is not None
    try:
        found = os.lstat(path)
    except OSError as exc:
        return "FAIL", f"{path}: {exc.strerror} (is the sidecar running?)"
    if not stat.S_ISSOCK(found.st_mode):
        return "FAIL", f"{path} is not a socket"
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    connector = aiohttp.UnixConnector(path=str(path))
    try:
        async with (
            aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
            session.post("http://sidecar/v1/sign") as response,
        ):
            status = response.status
            body: Any = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
        return "FAIL", f"no sidecar answer on {path}: {type(exc).__name__}"
    if not is_sign_answer(status, body):
        return "FAIL", f"{path}: answered {status}, not as the sign API does"
    mode = stat.S_IMODE(found.st_mode)
    shown = f"{path}: answers, mode {mode:04o}, group {found.st_gid}"
    if mode != int(settings.sign_socket_mode, 8):
        return "warn", f"{shown}, not SIDECAR_SIGN_SOCKET_MODE={settings.sign_socket_mode}"
    group = settings.sign_socket_group
    if group is not None and found.st_gid != group:
        return "warn", f"{shown}, not SIDECAR_SIGN_SOCKET_GROUP={group}"
    return "ok", shown
