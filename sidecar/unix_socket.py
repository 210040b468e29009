"""A listener on a Unix socket: bound safely, refused when taken, removed when done.

The sign API may listen on a socket file (``SIDECAR_SIGN_SOCKET``) so that only
processes its permissions allow can reach it. aiohttp's own ``UnixSite`` is not
used: the event loop's ``create_unix_server`` silently deletes any socket
already at the path, a live one included, and binds under the process umask.
Here instead:

- a file at the path that is not a socket is refused, and so is a socket
  another process still accepts connections on; a socket nobody listens on
  (left by a killed process) is replaced;
- the socket is bound under a temporary name beside the path, given its mode
  and group, made to listen, and only then renamed into place, so nobody can
  connect before the permissions hold;
- on shutdown the file is removed, unless it is no longer the one bound here.

Each refusal is a ``StartupFailed`` naming the setting, so the process exits 2.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from typing import TYPE_CHECKING, Final

import structlog
from aiohttp import web

from sidecar.errors import StartupFailed

if TYPE_CHECKING:
    from pathlib import Path

    from sidecar.settings import Settings

log = structlog.get_logger("sidecar.http")

# How long the start-up probe of an existing socket waits for it to accept.
PROBE_TIMEOUT_S: Final = 1.0
BACKLOG: Final = 128


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def _clear(path: Path, setting: str) -> None:
    """Make room at ``path``: nothing there, or a stale socket, which is removed."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(found.st_mode):
        raise StartupFailed(
            setting, f"{path} exists and is not a socket; remove it or choose another path"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT_S)
    try:
        probe.connect(str(path))
    except ConnectionRefusedError:
        # Nobody listens: the socket of a process that did not shut down cleanly.
        path.unlink(missing_ok=True)
        log.warning("stale_socket_replaced", setting=setting, path=str(path))
        return
    except OSError as exc:
        raise StartupFailed(
            setting,
            f"{path} is a socket that cannot be checked ({exc.strerror or type(exc).__name__}); "
            "remove it or choose another path",
        ) from None
    finally:
        probe.close()
    raise StartupFailed(
        setting, f"another process is listening on {path}; stop it or choose another path"
    )


def bind_unix_socket(
    path: Path, *, mode: int, group: int | None, setting: str, group_setting: str
) -> socket.socket:
    """A listening socket at ``path`` with ``mode`` and ``group``, set before it is reachable."""
    _clear(path, setting)
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    # Same process id, so a leftover of an earlier process that had it (a container's pid 1).
    temporary.unlink(missing_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        try:
            sock.bind(str(temporary))
        except OSError as exc:
            message = f"cannot create a socket beside {path}: {exc.strerror}"
            raise StartupFailed(setting, message) from None
        try:
            os.chmod(temporary, mode)
            if group is not None:
                try:
                    os.chown(temporary, -1, group)
                except PermissionError:
                    raise StartupFailed(
                        group_setting,
                        f"cannot give {path} to group {group}: the sidecar is not a member "
                        "of it (in Kubernetes, add it to the pod's supplementalGroups)",
                    ) from None
            sock.listen(BACKLOG)
            os.rename(temporary, path)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


class UnixSocketSite(web.SockSite):
    """A site on a socket from ``bind_unix_socket``; stopping it removes the socket file,
    unless another process has put its own there since."""

    def __init__(self, runner: web.BaseRunner, sock: socket.socket, path: Path) -> None:
        super().__init__(runner, sock)
        self._path = path
        self._bound = _identity(path)

    async def stop(self) -> None:
        await super().stop()
        if self._bound is not None and _identity(self._path) == self._bound:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()
        self._bound = None


async def start_sign_socket(runner: web.BaseRunner, settings: Settings) -> web.BaseSite:
    """The sign listener's second site, on ``SIDECAR_SIGN_SOCKET``: the same app and
    runner as its TCP port, so the same API, errors, metrics and logs."""
    path = settings.sign_socket
    assert path is not None
    sock = bind_unix_socket(
        path,
        mode=int(settings.sign_socket_mode, 8),
        group=settings.sign_socket_group,
        setting="SIDECAR_SIGN_SOCKET",
        group_setting="SIDECAR_SIGN_SOCKET_GROUP",
    )
    site = UnixSocketSite(runner, sock, path)
    await site.start()
    log.info("listening", listener="sign", socket=str(path), mode=settings.sign_socket_mode)
    return site
