"""A real ``python -m sidecar serve`` process for the hostile-client tests, and a
raw-socket HTTP client that sends exactly the bytes it is given.

The process writes its stdout and stderr to files, so a test can read every
line it wrote; the client parses answers itself, so nothing in between tidies
up what the server sent.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from support import ALICE, SERVER_BINARY

from sidecar.auth.api_keys import generate_api_key, keys_file_line
from sidecar.crypto import encode_kek, generate_kek
from sidecar.storage.embedded import free_port

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
class Served:
    """A running sidecar process and where to reach it."""

    process: subprocess.Popen[bytes]
    ports: dict[str, int]
    api_key: str
    out_path: Path
    err_path: Path
    sent_credentials: set[str] = field(default_factory=set)

    def output_lines(self) -> list[str]:
        """Every line the process has written to stdout and stderr so far."""
        text = self.out_path.read_bytes() + self.err_path.read_bytes()
        return text.decode("utf-8", "replace").splitlines()

    def events(self) -> list[dict[str, Any]]:
        """The log lines written so far that are JSON objects, decoded."""
        events = []
        for line in self.output_lines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    def url(self, listener: str) -> str:
        """The base URL of one listener."""
        return f"http://127.0.0.1:{self.ports[listener]}"

    def stop(self) -> None:
        """SIGTERM, and wait for the exit."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def serve(
    directory: Path, redis_url: str, *, file_limit: int | None = None, **settings: str
) -> Served:
    """Start ``python -m sidecar serve`` on free loopback ports; wait until it listens."""
    directory.mkdir(parents=True, exist_ok=True)
    api_key = generate_api_key()
    keys = directory / "api-keys"
    keys.write_text(keys_file_line(ALICE, api_key, "fuzz") + "\n")
    ports = {name: free_port() for name in ("xrpc", "sign", "ops")}
    env = {
        "PATH": os.environ["PATH"],
        "REDIS_URL": redis_url,
        "SIDECAR_KEK": encode_kek(generate_kek()),
        "SIDECAR_API_KEYS_FILE": str(keys),
        "SIDECAR_SIGN_TOKEN": SIGN_TOKEN,
        "SIDECAR_LOG_FORMAT": "json",
        "SIDECAR_DATA_DIR": str(directory / "data"),
        **{f"SIDECAR_{name.upper()}_HOST": "127.0.0.1" for name in ports},
        **{f"SIDECAR_{name.upper()}_PORT": str(port) for name, port in ports.items()},
        **settings,
    }
    if os.environ.get("SIDECAR_TEST_REDIS_SERVER"):
        env["SIDECAR_TEST_REDIS_SERVER"] = str(SERVER_BINARY)

    def limit_files() -> None:
        if file_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (file_limit, file_limit))

    out_path, err_path = directory / "stdout", directory / "stderr"
    with out_path.open("wb") as out, err_path.open("wb") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "sidecar", "serve"],
            env=env,
            stdout=out,
            stderr=err,
            preexec_fn=limit_files,
        )
    served = Served(process, ports, api_key, out_path, err_path, {api_key, SIGN_TOKEN})
    deadline = time.monotonic() + 30
    while not any(
        event.get("event") == "listening" and event.get("listener") == "ops"
        for event in served.events()
    ):
        if process.poll() is not None or time.monotonic() > deadline:
            served.stop()
            raise AssertionError("serve did not start:\n" + "\n".join(served.output_lines()))
        # The process reports by writing its log; a file offers nothing to wait on.
        time.sleep(0.05)
    return served
