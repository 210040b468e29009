"""How durable a change must be before the sidecar acknowledges it.

Redis replicates asynchronously: a primary answers a write as soon as it alone
has it, so a failover inside the replication window can bring an old token
back to life, and a crash of the server before it fsynced its append-only file
can too. A change is therefore answered 200 only once it meets the configured
durability (docs/architecture.md §6):

- ``replicas``: that many replicas acknowledged it (``WAIT``);
- ``fsync`` ``on``: it is also fsynced to the primary's append-only file, and
  to the AOF of that many replicas (``WAITAOF 1 <replicas>``); the start is
  refused when the server cannot do that;
- ``fsync`` ``auto`` (the default): it is fsynced to the primary's AOF
  (``WAITAOF 1 0``, then ``WAIT <replicas>`` when replicas are required,
  since replicas without an AOF never count for ``WAITAOF``), wherever the
  primary can. Which primary can is decided per change, from the answer of
  the ``WAITAOF`` sent with it: a primary without AOF, or without ``WAITAOF``
  at all, answers with an error, and the change is then acknowledged as it
  would be without fsync. So a failover or a restart onto a server without
  AOF changes the answer at once, and back again, with no state to go stale.
  A ``WAITAOF`` that times out is a 503, as with ``on``;
- ``fsync`` ``off``: no fsync is waited for.

The waits are sent right after the change on the same connection: they wait
for the replication offset of the connection's own last write, so on any
other connection they would prove nothing. This module only says what to send
and how to read the answers; ``sidecar.storage.calls`` sends them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

# SIDECAR_DURABLE_FSYNC's values.
FSYNC_MODES: Final = ("auto", "on", "off")


def no_fsync_reason(reply: Any) -> str | None:
    """Why a ``WAITAOF`` error reply says the server cannot fsync for us; None for any other reply.

    These are the errors a server gives for as long as it is configured so,
    not a passing failure: no AOF, no ``WAITAOF`` (older than Redis 7.2 or
    Valkey 8, or the command renamed away), or an ACL that denies it.
    """
    if not isinstance(reply, Exception):
        return None
    text = str(reply).lower()
    if "unknown command" in text:
        return "the Redis server has no WAITAOF (it needs Redis 7.2+ or Valkey 8+)"
    if "appendonly" in text:
        return "the Redis primary runs with appendonly no"
    if text.startswith("noperm") or "no permissions" in text:
        return "the Redis user may not run WAITAOF"
    return None


@dataclass(frozen=True, slots=True)
class Durability:
    """What an acknowledged change must have reached, and how long to wait for it."""

    replicas: int = 0
    # One of FSYNC_MODES.
    fsync: str = "off"
    timeout_ms: int = 500

    @property
    def waits(self) -> bool:
        """Whether changes wait at all (for fsync ``auto``: whether they ask to)."""
        return self.replicas > 0 or self.fsync != "off"

    @property
    def required_fsync(self) -> bool:
        """Whether a server that cannot fsync is refused (``on``), not tolerated (``auto``)."""
        return self.fsync == "on"

    @property
    def timeout_s(self) -> float:
        """The longest the server may take to answer the wait commands, all of them."""
        return self.timeout_ms * len(self.wait_commands()) / 1000

    def wait_commands(self) -> list[tuple[str | int, ...]]:
        """The commands that block until the change is durable or their timeout passes."""
        if self.fsync == "on":
            return [("WAITAOF", 1, self.replicas, self.timeout_ms)]
        waits: list[tuple[str | int, ...]] = []
        if self.fsync == "auto":
            waits.append(("WAITAOF", 1, 0, self.timeout_ms))
        if self.replicas > 0:
            waits.append(("WAIT", self.replicas, self.timeout_ms))
        return waits

    def judge(self, replies: list[Any]) -> tuple[bool, str | None]:
        """Whether the wait commands' ``replies`` show the durability was reached, and,
        for fsync ``auto``, why the primary could not fsync (None when it did)."""
        reached = True
        no_fsync = None
        for command, reply in zip(self.wait_commands(), replies, strict=True):
            if command[0] == "WAITAOF":
                if self.fsync == "auto":
                    no_fsync = no_fsync_reason(reply)
                    if no_fsync is not None:
                        # Acknowledged as it would be without fsync.
                        continue
                if isinstance(reply, Exception):
                    reached = False
                    continue
                local, replicas = reply
                reached = reached and int(local) >= 1
                if self.fsync == "on":
                    reached = reached and int(replicas) >= self.replicas
            else:
                reached = (
                    reached and not isinstance(reply, Exception) and int(reply) >= self.replicas
                )
        return reached, no_fsync

    def describe(self) -> str:
        """The requirement in words, for logs and readiness detail."""
        replicas = f"{self.replicas} replica{'' if self.replicas == 1 else 's'}"
        if self.fsync == "on":
            return f"{replicas} and the primary's AOF"
        if self.fsync == "auto":
            return f"{replicas} and the primary's AOF where it has one"
        return replicas


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
