"""The one way to run the sidecar as a process: its environment, the start, a wait for
a log event, the lines it wrote, the stop and the exit code; and one runner for a
command that runs to its end.

A started process has its stdout and stderr read by two threads into memory, so a
caller waits on an event the process reports (a log line, its exit), never on a
fixed time, whether the caller is synchronous (the chaos suite, raw-socket tests)
or a coroutine (``await process.event(...)`` waits in a worker thread).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, NamedTuple, Self

from sidecar.auth.api_keys import generate_api_key, keys_file_line
from sidecar.crypto import encode_kek, generate_kek
from sidecar.storage.embedded import free_port

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from types import TracebackType

# Long enough that nothing times out by accident on a loaded machine: a bound against
# hangs, never a measurement.
TIMEOUT_S: Final = 30.0
LISTENERS: Final = ("xrpc", "sign", "ops")
# `python -m sidecar`: the command line of every process the harness starts.
SIDECAR: Final = (sys.executable, "-m", "sidecar")


def sidecar_env(data_dir: Path, *, loopback: bool = True, **settings: str) -> dict[str, str]:
    """A sidecar's whole environment: PATH, JSON logs, ``data_dir``, each listener on a
    free port (bound to loopback unless told not), then ``settings`` over that.

    Nothing else of the caller's environment is passed on, so no ``SIDECAR_*``
    variable of the shell running the suite can change what a test sees.
    """
    env = {
        "PATH": os.environ["PATH"],
        "SIDECAR_DATA_DIR": str(data_dir),
        "SIDECAR_LOG_FORMAT": "json",
        # Not the defaults: two runs on one host must not collide.
        **{f"SIDECAR_{name.upper()}_PORT": str(free_port()) for name in LISTENERS},
    }
    if loopback:
        env |= {f"SIDECAR_{name.upper()}_HOST": "127.0.0.1" for name in LISTENERS}
    return env | settings


def configured_env(
    directory: Path, redis_url: str, *, owner: str, **settings: str
) -> tuple[dict[str, str], str]:
    """A production-mode sidecar's environment on Redis at ``redis_url``: a fresh KEK,
    and one fresh API key of ``owner`` in a keys file under ``directory``; (env, that key)."""
    directory.mkdir(parents=True, exist_ok=True)
    api_key = generate_api_key()
    keys = directory / "api-keys"
    keys.write_text(keys_file_line(owner, api_key, "harness") + "\n")
    env = sidecar_env(directory / "data") | {
        "REDIS_URL": redis_url,
        "SIDECAR_KEK": encode_kek(generate_kek()),
        "SIDECAR_API_KEYS_FILE": str(keys),
        **settings,
    }
    return env, api_key


class ServeProcess:
    """A sidecar child process (``python -m sidecar serve`` unless told otherwise), what
    it wrote, and where it listens.

    Use it as a context manager (sync or async): leaving kills it if it still runs.
    """

    def __init__(
        self,
        env: dict[str, str],
        *,
        argv: Sequence[str] = (*SIDECAR, "serve"),
        cwd: Path | None = None,
        file_limit: int | None = None,
        keep_output: bool = True,
    ) -> None:
        self.env = env
        self.argv = list(argv)
        self.cwd = cwd
        self.file_limit = file_limit
        # False for a benchmark: what it writes goes nowhere, and no thread reads it,
        # so the measuring process does nothing but wait (``wait_until_ready``).
        self.keep_output = keep_output
        self.stdout_lines: list[str] = []
        self.stderr_lines: list[str] = []
        self._changed = threading.Condition()
        self._readers: list[threading.Thread] = []
        self._process: subprocess.Popen[bytes] | None = None

    # -- where it listens --------------------------------------------------------

    def port(self, listener: str) -> int:
        """The port ``listener`` (xrpc, sign or ops) is configured to bind."""
        return int(self.env[f"SIDECAR_{listener.upper()}_PORT"])

    def url(self, listener: str) -> str:
        """The base URL of ``listener`` on loopback."""
        return f"http://127.0.0.1:{self.port(listener)}"

    @property
    def xrpc(self) -> str:
        """The XRPC listener's base URL."""
        return self.url("xrpc")

    @property
    def sign(self) -> str:
        """The sign listener's base URL."""
        return self.url("sign")

    @property
    def ops(self) -> str:
        """The ops listener's base URL."""
        return self.url("ops")

    # -- start and stop ------------------------------------------------------------

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The child process; started."""
        assert self._process is not None, "not started"
        return self._process

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        """The exit code, or None while the process runs."""
        return self.process.poll()

    def start(self) -> Self:
        """Start the process and the threads that read its output; return at once."""
        limit = self.file_limit

        def limit_files() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))

        output = subprocess.PIPE if self.keep_output else subprocess.DEVNULL
        self._process = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            preexec_fn=limit_files if limit is not None else None,
        )
        if not self.keep_output:
            return self
        assert self._process.stdout is not None
        assert self._process.stderr is not None
        for stream, lines in (
            (self._process.stdout, self.stdout_lines),
            (self._process.stderr, self.stderr_lines),
        ):
            reader = threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            reader.start()
            self._readers.append(reader)
        return self

    def _read(self, stream: IO[bytes], lines: list[str]) -> None:
        for raw in stream:
            with self._changed:
                lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        stream.close()
        with self._changed:
            self._changed.notify_all()

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the process."""
        self.process.send_signal(sig)

    def wait(self, timeout: float = TIMEOUT_S) -> int:
        """Wait for the exit and for every line written before it; the exit code."""
        code = self.process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        return code

    def stop(self, sig: int = signal.SIGTERM, timeout: float = TIMEOUT_S) -> int:
        """Send ``sig`` (SIGTERM) if it still runs, and wait for the exit; the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.wait(timeout)

    def kill(self) -> None:
        """SIGKILL it if it still runs, and reap it."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        if self._process is not None:
            self.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.kill()

    async def __aenter__(self) -> Self:
        return self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await asyncio.to_thread(self.kill)

    async def terminate(self, sig: int = signal.SIGTERM) -> int:
        """``stop`` from a coroutine: SIGTERM and the exit code."""
        return await asyncio.to_thread(self.stop, sig)

    async def finish(self) -> int:
        """``wait`` from a coroutine: the exit code once the process has ended by itself."""
        return await asyncio.to_thread(self.wait)

    # -- what it wrote ---------------------------------------------------------------

    def lines(self) -> list[str]:
        """Every line written so far: stdout's, then stderr's."""
        with self._changed:
            return [*self.stdout_lines, *self.stderr_lines]

    def events(self) -> list[dict[str, Any]]:
        """The lines on stdout that are JSON objects (the structured log), decoded."""
        with self._changed:
            lines = list(self.stdout_lines)
        events = []
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict):
                events.append(event)
        return events

    @property
    def stderr(self) -> str:
        """What the process wrote on stderr so far (the banner, a refusal)."""
        with self._changed:
            return "\n".join(self.stderr_lines)

    def wait_until(self, what: str, check: Callable[[], bool], timeout: float = TIMEOUT_S) -> None:
        """Return once ``check()`` holds, re-checked on each line written; fail if the
        process ends first, or after ``timeout`` (a bound against hangs)."""

        def settled() -> bool:
            ended = self.process.poll() is not None and not any(
                reader.is_alive() for reader in self._readers
            )
            return check() or ended

        with self._changed:
            # Condition.wait_for re-checks on every notify, and once at the timeout.
            self._changed.wait_for(settled, timeout)
        if not check():
            state = "exited" if self.process.poll() is not None else "still runs"
            raise AssertionError(
                f"waiting for {what}: the process {state}; it wrote:\n" + "\n".join(self.lines())
            )

    def wait_for_event(
        self, name: str, timeout: float = TIMEOUT_S, **fields: Any
    ) -> dict[str, Any]:
        """The first log event ``name`` carrying ``fields``, waiting until it is written."""

        def found() -> dict[str, Any] | None:
            for event in self.events():
                if event.get("event") == name and fields.items() <= event.items():
                    return event
            return None

        self.wait_until(f"the log event {name} {fields}", lambda: found() is not None, timeout)
        event = found()
        assert event is not None
        return event

    async def event(self, name: str, **fields: Any) -> dict[str, Any]:
        """``wait_for_event`` from a coroutine."""
        return await asyncio.to_thread(self.wait_for_event, name, **fields)

    @property
    def listeners(self) -> tuple[str, ...]:
        """The listeners this process runs: its role's (``SIDECAR_LISTENERS``), else all."""
        role = self.env.get("SIDECAR_LISTENERS")
        if role is None:
            return LISTENERS
        return tuple(name.strip().lower() for name in role.split(",") if name.strip())

    def _listening_fields(self, listener: str) -> dict[str, Any]:
        """What ``listener``'s "listening" line carries once it accepts connections.

        The sign listener logs its socket (``SIDECAR_SIGN_SOCKET``) before its TCP port,
        so the TCP line is the one to wait for; with ``SIDECAR_SIGN_PORT=0`` there is no
        TCP port, and the socket's line is the only one.
        """
        socket_path = self.env.get("SIDECAR_SIGN_SOCKET")
        if listener != "sign" or not socket_path:
            return {}
        port = self.env.get("SIDECAR_SIGN_PORT")
        if port == "0":
            return {"socket": socket_path}
        return {"port": int(port)} if port else {}

    def wait_until_listening(self, listeners: Sequence[str] | None = None) -> None:
        """Return once each of ``listeners`` (this process's, unless given) listens, as its
        "listening" log line says."""
        for listener in self.listeners if listeners is None else listeners:
            self.wait_for_event("listening", listener=listener, **self._listening_fields(listener))

    async def until_listening(self, listeners: Sequence[str] | None = None) -> None:
        """``wait_until_listening`` from a coroutine."""
        await asyncio.to_thread(self.wait_until_listening, listeners)

    def wait_until_ready(self) -> None:
        """Return once ``/readyz`` answers 200: for a sidecar whose log level hides its
        "listening" lines. The ops listener is the only report there is to poll."""
        url = f"{self.ops}/readyz"
        deadline = time.monotonic() + TIMEOUT_S
        while not _answers_200(url):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{url} never answered 200:\n" + "\n".join(self.lines()))
            time.sleep(0.05)

    def listening(self) -> dict[str, dict[str, Any]]:
        """Listener name -> its "listening" log event, for those that listen."""
        return {
            event["listener"]: event for event in self.events() if event.get("event") == "listening"
        }

    # -- development mode -------------------------------------------------------------

    def wait_for_banner(self) -> str:
        """The development-mode banner on stderr, once its embedded Valkey line is out."""
        self.wait_until(
            "the embedded Valkey's line", lambda: _VALKEY_PID.search(self.stderr) is not None
        )
        return self.stderr

    @property
    def valkey_pid(self) -> int:
        """The embedded Valkey's process id, as the banner printed it."""
        found = _VALKEY_PID.search(self.stderr)
        assert found is not None, self.stderr
        return int(found.group(1))


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 (a loopback URL)
            return bool(response.status == 200)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


_VALKEY_PID: Final = re.compile(r"embedded Valkey \(pid (\d+)\)")


async def start_serve(env: dict[str, str], *, banner: bool = False) -> ServeProcess:
    """Start ``python -m sidecar serve`` with ``env``; return once every listener
    listens (and, with ``banner``, once the development banner is out)."""
    served = ServeProcess(env).start()
    try:
        await served.until_listening()
        if banner:
            await asyncio.to_thread(served.wait_for_banner)
    except BaseException:
        await asyncio.to_thread(served.kill)
        raise
    return served


class CommandResult(NamedTuple):
    """How a command ended: its exit code and what it wrote."""

    code: int
    out: str
    err: str


async def run_command(
    *args: str,
    env: dict[str, str],
    stdin: bytes = b"",
    argv: Sequence[str] = SIDECAR,
) -> CommandResult:
    """Run ``python -m sidecar <args>`` (or ``argv`` + ``args``) to its end, with ``stdin``."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        *args,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), 4 * TIMEOUT_S)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return CommandResult(process.returncode, out.decode(), err.decode())


async def until_exited(pid: int) -> None:
    """Return once process ``pid`` (not necessarily our child) has exited, as its pidfd reports."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, readable)
    try:
        await asyncio.wait_for(exited, TIMEOUT_S)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def is_gone(pid: int) -> bool:
    """Whether process ``pid`` has ended: absent, or a zombie awaiting its reaper."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    # The state follows the command name, which is in parentheses.
    return stat.rpartition(")")[2].split()[0] in {"Z", "X"}
