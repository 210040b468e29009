"""The sidecar under test: a real ``python -m sidecar serve`` child process, started by
the harness the tests use (``harness/``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Self

from harness import ServeProcess, configured_env

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
        self.env, self.api_key = configured_env(
            work_dir,
            redis_url,
            owner=OWNER,
            SIDECAR_REDIS_CLUSTER="1" if cluster else "0",
            SIDECAR_LOG_LEVEL="warning",
            # Load is stopped before the sidecar is, so nothing needs the default 20 s.
            SIDECAR_SHUTDOWN_GRACE_S="2",
            # Rotations come far faster than an owner's default limit allows;
            # what is checked here is durability, not the limit.
            SIDECAR_RATE_LIMIT_CHANGES_PER_MINUTE="1000000",
            **(
                {
                    "SIDECAR_REDIS_TIMEOUT_MS": str(durability.redis_timeout_ms),
                    "SIDECAR_DURABLE_REPLICAS": str(durability.replicas),
                    "SIDECAR_DURABLE_FSYNC": durability.fsync,
                    "SIDECAR_DURABLE_TIMEOUT_MS": str(durability.timeout_ms),
                }
                if durability.explicit
                else {}
            ),
        )
        self._process: ServeProcess | None = None

    @property
    def xrpc_url(self) -> str:
        return f"http://127.0.0.1:{self.env['SIDECAR_XRPC_PORT']}/xrpc"

    @property
    def sign_url(self) -> str:
        return f"http://127.0.0.1:{self.env['SIDECAR_SIGN_PORT']}/v1/sign"

    def start(self) -> None:
        """Start, and return once ``/readyz`` answers 200 (its log level hides "listening")."""
        self._process = ServeProcess(self.env).start()
        try:
            self._process.wait_until_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            try:
                process.stop()
            finally:
                process.kill()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
