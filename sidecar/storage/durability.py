"""How durable a change must be before the sidecar acknowledges it.

Redis replicates asynchronously: a primary answers a write as soon as it alone
has it, so a failover inside the replication window can bring an old token
back to life. A change is therefore answered 200 only once it meets the
configured durability (docs/architecture.md §5):

- ``replicas``: that many replicas acknowledged it (``WAIT``);
- ``fsync``: it is also fsynced to the primary's append-only file, and to the
  AOF of that many replicas (``WAITAOF 1 <replicas>``).

The wait is sent right after the change on the same connection: both commands
wait for the replication offset of the connection's own last write, so on any
other connection they would prove nothing. This module only says what to send
and how to read the answer; ``sidecar.storage.store`` sends it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Durability:
    """What an acknowledged change must have reached, and how long to wait for it."""

    replicas: int = 0
    fsync: bool = False
    timeout_ms: int = 500

    @property
    def waits(self) -> bool:
        """Whether changes wait at all; with the defaults they do not."""
        return self.replicas > 0 or self.fsync

    @property
    def timeout_s(self) -> float:
        return self.timeout_ms / 1000

    def wait_command(self) -> tuple[str | int, ...]:
        """The command that blocks until the change is durable or the timeout passes."""
        if self.fsync:
            return ("WAITAOF", 1, self.replicas, self.timeout_ms)
        return ("WAIT", self.replicas, self.timeout_ms)

    def reached(self, reply: Any) -> bool:
        """Whether the wait command's ``reply`` shows the durability was reached."""
        if self.fsync:
            local, replicas = reply
            return int(local) >= 1 and int(replicas) >= self.replicas
        return int(reply) >= self.replicas

    def describe(self) -> str:
        """The requirement in words, for logs and readiness detail."""
        replicas = f"{self.replicas} replica{'' if self.replicas == 1 else 's'}"
        return f"{replicas} and the primary's AOF" if self.fsync else replicas


@dataclass(frozen=True, slots=True)
class ReplicaCheck:
    """The configured replica count against what the primaries have connected now."""

    durability: Durability
    # Connected replicas of each primary (one entry per primary of a cluster).
    connected: tuple[int, ...]

    @property
    def met(self) -> bool:
        return all(count >= self.durability.replicas for count in self.connected)

    def detail(self) -> dict[str, Any]:
        """What ``/readyz`` shows, and the start-up log line says."""
        return {
            "required": self.durability.describe(),
            "replicas_required": self.durability.replicas,
            "replicas_connected": min(self.connected, default=0),
            "met": self.met,
        }
