"""The recorded history of a scenario: every operation and every fault, with times.

Times are ``time.monotonic()`` seconds. Tokens are kept in memory only, to
recognise which token made a signature; nothing here prints them.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Final, Literal

# Every signature of a scenario is over this body, so a signature identifies
# its token with one lookup instead of one HMAC per known token.
SIGNED_BODY: Final = b'{"event":"chaos","pad":"' + b"x" * 200 + b'"}'

Kind = Literal["create", "rotate", "sign"]
# The answer of a request that got none: a timeout or a refused connection.
NO_ANSWER: Final = 0


def signature_of(token: str) -> str:
    """The ``wisp`` scheme's header value for ``SIGNED_BODY`` under ``token``."""
    digest = hmac.new(token.encode("utf-8"), SIGNED_BODY, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


@dataclass(frozen=True, slots=True)
class Op:
    """One request and its answer."""

    kind: Kind
    start: float
    end: float
    status: int
    # create/rotate answered 200: the token it returned.
    token: str | None = None
    # sign answered 200: the signature header and the version that signed.
    signature: str | None = None
    version: int | None = None
    # A rotate made while the topology cannot make it durable: with durability
    # asked for, it must be refused.
    must_refuse: bool = False
    # A sign made after a fault's recovery, to check which token survived.
    probe: bool = False

    @property
    def latency(self) -> float:
        return self.end - self.start


@dataclass(slots=True)
class Fault:
    """One injected fault: when it began, and when the servers reported recovery."""

    kind: str
    start: float
    recovered: float | None = None


@dataclass
class History:
    """Everything one scenario did to one secret, in the order it was recorded."""

    ops: list[Op] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)

    def record(self, op: Op) -> None:
        self.ops.append(op)

    def fault(self, kind: str, start: float) -> Fault:
        fault = Fault(kind, start)
        self.faults.append(fault)
        return fault
