"""The sidecar under test: a real ``python -m sidecar serve`` child process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Self

from sidecar.auth.api_keys import generate_api_key, keys_file_line
from sidecar.crypto import encode_kek, generate_kek
from sidecar.storage.embedded import free_port

if TYPE_CHECKING:
    from pathlib import Path

OWNER: Final = "did:plc:chaos0000000000000000000"
# The slack a refusal may take above its two deadlines, for a loaded 2-core machine.
REFUSAL_MARGIN_S: Final = 0.3


@dataclass(frozen=True)
class Durability:
    """The durability the sidecar is asked for, and its deadlines."""

    replicas: int = 1
    # SIDECAR_DURABLE_FSYNC: auto, on or off.
    fsync: str = "off"
    timeout_ms: int = 500
    redis_timeout_ms: int = 500
    # False: no SIDECAR_DURABLE_* nor SIDECAR_REDIS_TIMEOUT_MS is set, and the
    # sidecar runs on its defaults (which the fields above must then equal).
    explicit: bool = True

    @classmethod
    def defaults(cls) -> Durability:
        """The sidecar's own defaults, given by setting nothing."""
        return cls(replicas=0, fsync="auto", explicit=False)

    @property
    def refusal_bound_s(self) -> float:
        """How long a refused change may take: the wait, then one Redis deadline."""
        return (self.timeout_ms + self.redis_timeout_ms) / 1000


class SidecarProcess:
    """One sidecar on free loopback ports, with its own KEK and one owner's API key.

    Its environment holds only what is set here (and PATH), so no ``SIDECAR_*``
    variable of the caller's shell can change what is measured.
    """

    def __init__(
        self, work_dir: Path, redis_url: str, durability: Durability, *, cluster: bool = False
    ) -> None:
        self.work_dir = work_dir
        self.durability = durability
        self.api_key = generate_api_key()
        self.xrpc_port, self.sign_port, self.ops_port = free_port(), free_port(), free_port()
        keys = work_dir / "api-keys"
        work_dir.mkdir(parents=True, exist_ok=True)
        keys.write_text(keys_file_line(OWNER, self.api_key, "chaos") + "\n")
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "REDIS_URL": redis_url,
            "SIDECAR_REDIS_CLUSTER": "1" if cluster else "0",
            "SIDECAR_KEK": encode_kek(generate_kek()),
            "SIDECAR_API_KEYS_FILE": str(keys),
            "SIDECAR_DATA_DIR": str(work_dir / "data"),
            "SIDECAR_XRPC_HOST": "127.0.0.1",
            "SIDECAR_XRPC_PORT": str(self.xrpc_port),
            "SIDECAR_SIGN_HOST": "127.0.0.1",
            "SIDECAR_SIGN_PORT": str(self.sign_port),
            "SIDECAR_OPS_HOST": "127.0.0.1",
            "SIDECAR_OPS_PORT": str(self.ops_port),
            "SIDECAR_LOG_FORMAT": "json",
            "SIDECAR_LOG_LEVEL": "warning",
            # Load is stopped before the sidecar is, so nothing needs the default 20 s.
            "SIDECAR_SHUTDOWN_GRACE_S": "2",
            # Rotations come far faster than an owner's default limit allows;
            # what is checked here is durability, not the limit.
            "SIDECAR_RATE_LIMIT_CHANGES_PER_MINUTE": "1000000",
        }
        if durability.explicit:
            self.env |= {
                "SIDECAR_REDIS_TIMEOUT_MS": str(durability.redis_timeout_ms),
                "SIDECAR_DURABLE_REPLICAS": str(durability.replicas),
                "SIDECAR_DURABLE_FSYNC": durability.fsync,
                "SIDECAR_DURABLE_TIMEOUT_MS": str(durability.timeout_ms),
            }
        self.log_path = work_dir / "sidecar.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def xrpc_url(self) -> str:
        return f"http://127.0.0.1:{self.xrpc_port}/xrpc"

    @property
    def sign_url(self) -> str:
        return f"http://127.0.0.1:{self.sign_port}/v1/sign"

    def start(self, timeout: float = 30.0) -> None:
        """Start, and return once ``/readyz`` answers 200."""
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "sidecar", "serve"],
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        try:
            self._wait_ready(self._process, timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready():
            if process.poll() is not None:
                raise RuntimeError(
                    f"the sidecar exited with {process.returncode}: {self.log_tail(1)}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(f"the sidecar was not ready within {timeout}s")
            time.sleep(0.05)

    def _ready(self) -> bool:
        url = f"http://127.0.0.1:{self.ops_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def log_tail(self, lines: int = 20) -> str:
        """The end of the sidecar's own log (it never holds a token or a key)."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
