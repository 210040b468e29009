"""Reading an owner's audit stream (``wsc:{<did>}:log``): what ``wisp-sidecar audit`` prints.

Entries hold the operation, the name, the version, the server time and the
actor; never a token (docs/architecture.md §5), and only those fields are read
out, whatever else a stream entry might hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from sidecar.names import validate_did
from sidecar.storage.layout import log_key

if TYPE_CHECKING:
    from sidecar.storage.calls import RedisCalls

# Entries fetched per round trip while filtering by name.
PAGE: Final = 500


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One change to one of an owner's secrets."""

    op: str
    name: str
    version: int
    at_ms: int
    actor: str


def _entry(fields: dict[bytes, bytes]) -> AuditEntry:
    def text(key: str) -> str:
        return fields.get(key.encode(), b"").decode("utf-8", "replace")

    return AuditEntry(
        op=text("op"),
        name=text("name"),
        version=int(text("ver") or 0),
        at_ms=int(text("at") or 0),
        actor=text("actor"),
    )


async def read_audit(
    calls: RedisCalls,
    did: str,
    *,
    name: str | None = None,
    since_ms: int | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """Up to ``limit`` entries of ``did``'s log, oldest first, for ``name`` when given.

    With ``since_ms``, the first ``limit`` entries from then on; without it,
    the last ``limit`` entries.
    """
    validate_did(did)
    key = log_key(did)
    client: Any = calls.client
    found: list[AuditEntry] = []
    forward = since_ms is not None
    # Stream ids start with the entry's time in ms, so a time is a range bound.
    bound = f"{since_ms}-0" if forward else "+"
    while len(found) < limit:
        start = bound

        async def page(start: str = start) -> list[tuple[bytes, dict[bytes, bytes]]]:
            if forward:
                rows: Any = await client.xrange(key, min=start, max="+", count=PAGE)
            else:
                rows = await client.xrevrange(key, max=start, min="-", count=PAGE)
            return list(rows)

        rows = await calls.read("audit", page)
        for _, fields in rows:
            entry = _entry(fields)
            if name is None or entry.name == name:
                found.append(entry)
                if len(found) == limit:
                    break
        if len(rows) < PAGE:
            break
        # "(" makes the bound exclusive: the next page starts after the last id.
        bound = "(" + rows[-1][0].decode()
    return found if forward else found[::-1]
