"""``wisp-sidecar audit``: an owner's audit log as JSON lines; never a token."""

from __future__ import annotations

import json
import re
import sys
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

from sidecar.cli.common import EXIT_FAILED, EXIT_OK, run
from sidecar.cli.devmode import dev_tool_settings
from sidecar.errors import ConfigError, StorageUnavailable
from sidecar.names import NAME_RULE, is_valid_did, is_valid_name
from sidecar.xrpc.methods import format_datetime

if TYPE_CHECKING:
    from sidecar.settings import Settings
    from sidecar.storage.audit import AuditEntry

MAX_LIMIT: Final = 100_000
_AGO_RE: Final = re.compile(r"(\d+)([smhd])")
_UNITS: Final = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
SINCE_HELP: Final = (
    "an RFC 3339 time (2026-01-15T10:30:00Z), a date (2026-01-15, UTC), "
    "or a span ago (30m, 12h, 7d)"
)


def parse_since(text: str, now: datetime | None = None) -> int:
    """``--since`` as unix milliseconds; ``ConfigError`` naming the option if it is none of
    the forms ``SINCE_HELP`` lists."""
    ago = _AGO_RE.fullmatch(text)
    if ago is not None:
        span = timedelta(**{_UNITS[ago.group(2)]: int(ago.group(1))})
        return int(((now or datetime.now(UTC)) - span).timestamp() * 1000)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError("--since", f"must be {SINCE_HELP}") from None
    if moment.tzinfo is None:
        if "T" in text or " " in text:
            raise ConfigError("--since", "a time needs its offset, such as Z or +02:00")
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def check_limit(text: str) -> int:
    """``--limit`` as a number from 1 to ``MAX_LIMIT``, or ``ConfigError``."""
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= MAX_LIMIT:
        raise ConfigError("--limit", f"must be a number from 1 to {MAX_LIMIT}")
    return int(text)


def entry_line(entry: AuditEntry) -> str:
    """One JSON line: the fields of an entry, and nothing else."""
    return json.dumps(
        {
            "time": format_datetime(entry.at_ms),
            "op": entry.op,
            "name": entry.name,
            "version": entry.version,
            "actor": entry.actor,
        }
    )


def audit(settings: Settings, *, did: str, name: str | None, since: str | None, limit: str) -> int:
    """Print the entries; exit 0, or 1 when Redis did not answer."""
    if not is_valid_did(did):
        raise ConfigError("--did", "must be a DID, such as did:plc:abc123")
    if name is not None and not is_valid_name(name):
        raise ConfigError("--name", f"must be {NAME_RULE}")
    since_ms = parse_since(since) if since is not None else None
    count = check_limit(limit)
    with dev_tool_settings(settings) as settings:
        return _audit(settings, did=did, name=name, since_ms=since_ms, limit=count)


def _audit(
    settings: Settings, *, did: str, name: str | None, since_ms: int | None, limit: int
) -> int:
    from sidecar.app import store_for
    from sidecar.storage.audit import read_audit

    if settings.redis_url is None:
        raise ConfigError("REDIS_URL", "is not set: audit reads the Redis your sidecars use")

    async def work() -> list[AuditEntry]:
        store = store_for(settings)
        try:
            return await read_audit(store.calls, did, name=name, since_ms=since_ms, limit=limit)
        finally:
            await store.close()

    try:
        entries = run(work())
    except StorageUnavailable:
        print("audit: Redis did not answer in time; run it again", file=sys.stderr)
        return EXIT_FAILED
    for entry in entries:
        print(entry_line(entry))
    return EXIT_OK
