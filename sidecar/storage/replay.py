"""The record of service JWT ids already used, kept in Redis (docs/architecture.md §9).

A ``jti`` is refused on reuse until its token expires, on every replica, so
the record is shared; it is the replay guard ``sidecar.auth.service_jwt`` asks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sidecar.names import validate_did
from sidecar.storage import scripts
from sidecar.storage.layout import jti_key

if TYPE_CHECKING:
    from sidecar.storage.calls import RedisCalls


class ReplayRecords:
    """Service JWT ids seen, by issuer, each until its token expires."""

    def __init__(self, calls: RedisCalls) -> None:
        self._calls = calls

    async def claim_jti(self, iss: str, jti: str, until_s: int) -> bool:
        """Record that ``iss`` used ``jti``: True the first time, False on every reuse.

        The record expires at the Unix time ``until_s``, once the token could no
        longer pass its expiry check anyway. One ``SET NX`` on the shared Redis
        (in a script that refuses to run on a replica) makes the first use win on
        every replica. Not retried: a lost reply
        would make the retry look like a replay. A first use is durable as
        configured, or ``ChangeNotDurable``: a record a failover can lose would
        let the token be replayed.
        """
        validate_did(iss)
        key = jti_key(iss, jti)
        reply, waited = await self._calls.change(
            "claim_jti", key, ("EVAL", scripts.CLAIM_JTI, 1, key, until_s)
        )
        if reply is None:
            return False
        self._calls.require_durable("claim_jti", waited)
        return True
