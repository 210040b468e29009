"""A raw-socket HTTP client that sends exactly the bytes it is given, and the real
``python -m sidecar serve`` (production mode) the hostile-client and fuzz tests aim it at.

The client parses answers itself, so nothing in between tidies up what the
server sent; the process is the harness's, which keeps every line it wrote.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from support import ALICE, database_of_its_own

from harness import LISTENERS, ServeProcess, configured_env

if TYPE_CHECKING:
    from pathlib import Path

SIGN_TOKEN = "sign-token-" + "q" * 24


@dataclass
class Answer:
    """One HTTP answer as it came off the wire."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        """The body decoded as JSON."""
        return json.loads(self.body)


def _read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    chunks: list[bytes] = []
    while True:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def parse_answers(raw: bytes) -> list[Answer]:
    """Every response in ``raw`` (a 100 Continue, then the final one), in order."""
    answers: list[Answer] = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        assert sep, f"an unterminated response head: {raw[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get("content-length", "0"))
        answers.append(Answer(status, headers, rest[:length]))
        raw = rest[length:]
    return answers


def exchange(port: int, request: bytes, *, timeout: float = 20.0) -> Answer | None:
    """Send ``request`` on a new connection and return the final answer (None when the
    server closed without answering). The request should say ``Connection: close``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # A server that refuses early may close before all of it is sent.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(request)
        raw = _read_until_closed(sock, time.monotonic() + timeout)
    answers = [answer for answer in parse_answers(raw) if answer.status >= 200]
    return answers[-1] if answers else None


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """Whether the server closes ``sock`` within ``timeout`` (reading what it sends)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
    return False


@dataclass
class Target:
    """A production-mode sidecar process for raw-socket tests, its API key, and every
    credential sent to it so far (which nothing it writes may contain)."""

    process: ServeProcess
    api_key: str
    sent_credentials: set[str] = field(default_factory=set)

    @property
    def redis_url(self) -> str:
        """The URL of the process's Redis database (one of its own, see ``serve``)."""
        return self.process.env["REDIS_URL"]

    @property
    def ports(self) -> dict[str, int]:
        """Listener name -> its port."""
        return {name: self.process.port(name) for name in LISTENERS}

    def output_lines(self) -> list[str]:
        """Every line the process has written to stdout and stderr so far."""
        return self.process.lines()

    def events(self) -> list[dict[str, Any]]:
        """The log lines written so far, decoded."""
        return self.process.events()

    def stop(self) -> None:
        """SIGTERM, and wait for the exit."""
        self.process.stop()


def serve(
    directory: Path, redis_url: str, *, file_limit: int | None = None, **settings: str
) -> Target:
    """Start ``python -m sidecar serve`` on free loopback ports, on a database of its own
    on the server at ``redis_url``; wait until it listens."""
    env, api_key = configured_env(
        directory,
        database_of_its_own(redis_url),
        owner=ALICE,
        SIDECAR_SIGN_TOKEN=SIGN_TOKEN,
        **settings,
    )
    process = ServeProcess(env, file_limit=file_limit).start()
    try:
        process.wait_until_listening()
    except BaseException:
        process.kill()
        raise
    return Target(process, api_key, {api_key, SIGN_TOKEN})
