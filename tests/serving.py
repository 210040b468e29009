"""A real ``python -m sidecar serve`` in development mode, as the tests start it."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from sidecar.storage.embedded import free_port


class Served:
    """A running ``python -m sidecar serve``, what it printed, and where it listens."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        banner: str,
        env: dict[str, str],
        listening: dict[str, dict[str, Any]],
    ) -> None:
        self.process = process
        self.banner = banner
        self.env = env
        # Listener name -> its "listening" log line.
        self.listening = listening
        self.base = f"http://127.0.0.1:{env['SIDECAR_XRPC_PORT']}"
        self.ops = f"http://127.0.0.1:{env['SIDECAR_OPS_PORT']}"
        self.sign = f"http://127.0.0.1:{env['SIDECAR_SIGN_PORT']}"

    @property
    def valkey_pid(self) -> int:
        """The embedded Valkey's process id, as serve printed it."""
        found = re.search(r"embedded Valkey \(pid (\d+)\)", self.banner)
        assert found is not None, self.banner
        return int(found.group(1))


def dev_env(data_dir: Path, *, hosts: bool = True, **extra: str) -> dict[str, str]:
    """An unconfigured sidecar's environment on free ports (loopback hosts unless told not)."""
    env = {
        "PATH": os.environ["PATH"],
        "SIDECAR_DATA_DIR": str(data_dir),
        "SIDECAR_XRPC_PORT": str(free_port()),
        "SIDECAR_OPS_PORT": str(free_port()),
        # Not the default 8081: two test runs on one host must not collide.
        "SIDECAR_SIGN_PORT": str(free_port()),
        "SIDECAR_LOG_FORMAT": "json",
        **extra,
    }
    if hosts:
        env |= {"SIDECAR_XRPC_HOST": "127.0.0.1", "SIDECAR_OPS_HOST": "127.0.0.1"}
    return env


async def start_serve(
    data_dir: Path, env: dict[str, str] | None = None, *, embedded: bool = True
) -> Served:
    """Start ``python -m sidecar serve`` (unconfigured unless ``env`` says); return once
    every listener listens (and, with ``embedded``, the embedded Valkey's line is read)."""
    env = env if env is not None else dev_env(data_dir)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        "serve",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    listening: dict[str, dict[str, Any]] = {}
    # The listeners of the process's role (SIDECAR_LISTENERS), all three by default.
    expected = len(env.get("SIDECAR_LISTENERS", "xrpc,sign,ops").split(","))

    async def until_listening() -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            event = json.loads(line)
            if event.get("event") == "listening":
                listening[event["listener"]] = event
                if len(listening) == expected:
                    return
        raise AssertionError("serve exited before listening")

    await asyncio.wait_for(until_listening(), timeout=30)
    # The banner is printed before the listeners start, so it is all there now.
    banner = b""
    while embedded and (not banner.endswith(b"\n") or b"embedded Valkey (pid" not in banner):
        banner += await asyncio.wait_for(process.stderr.readline(), timeout=5)
    return Served(process, banner.decode(), env, listening)


async def spawn_serve(env: dict[str, str]) -> asyncio.subprocess.Process:
    """``python -m sidecar serve`` configured by ``env``, on free ports, logging JSON lines
    to a pipe (stdout and stderr)."""
    ports = {f"SIDECAR_{name}_PORT": str(free_port()) for name in ("XRPC", "SIGN", "OPS")}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        "serve",
        env={"PATH": os.environ["PATH"], "SIDECAR_LOG_FORMAT": "json", **ports, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def stop_serve(served: Served) -> int:
    """Send the served process SIGTERM and return its exit code."""
    served.process.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(served.process.wait(), timeout=30)


async def run_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """Run ``python -m sidecar <args>`` to its end: (exit status, stdout, stderr)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sidecar",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def doctor_beside_serve(
    data_dir: Path, env: dict[str, str], *, embedded: bool = True
) -> tuple[int, str, str]:
    """Run ``doctor`` with ``env`` beside a ``serve`` started with it, which then stops
    cleanly: doctor's (exit status, stdout, stderr)."""
    served = await start_serve(data_dir, env, embedded=embedded)
    try:
        return await run_cli("doctor", env=env)
    finally:
        assert await stop_serve(served) == 0


async def until_exited(pid: int) -> None:
    """Return once process ``pid`` (not necessarily our child) has exited, as its pidfd reports."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, lambda: exited.done() or exited.set_result(None))
    try:
        await asyncio.wait_for(exited, timeout=30)
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
