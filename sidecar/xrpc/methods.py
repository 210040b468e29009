"""The four ``place.wisp.v2.secret.*`` handlers: validate, seal, store, answer.

Handlers receive an ``XrpcCall`` (authenticated caller, validated input) and
return the output object; they know nothing of HTTP. Each secret change is
logged once, with the owner, name, version and actor, and never the token.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import structlog

from sidecar.crypto import Keyring, generate_token
from sidecar.names import validate_name, validate_token
from sidecar.storage.rate_limits import NO_CHANGE_LIMIT, ChangeLimit
from sidecar.xrpc.cursor import decode_cursor, encode_cursor

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sidecar.metrics import Metrics
    from sidecar.storage.store import SecretStore
    from sidecar.xrpc.server import Handler, Outcome, XrpcCall

log = structlog.get_logger("sidecar.secrets")

NSID_PREFIX: Final = "place.wisp.v2.secret."
CREATE: Final = NSID_PREFIX + "create"
LIST: Final = NSID_PREFIX + "list"
ROTATE: Final = NSID_PREFIX + "rotate"
DELETE: Final = NSID_PREFIX + "delete"


def format_datetime(ms: int) -> str:
    """RFC 3339 UTC with milliseconds and ``Z``: ``2026-01-15T10:30:00.000Z``."""
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _name(call: XrpcCall) -> str:
    assert call.input is not None  # the lexicon declares an input for every caller of this
    return validate_name(call.input.get("name"))


class SecretMethods:
    """Handlers for create, list, rotate and delete."""

    # The lexicons call a name a record-key, which allows more (':', '~', 512
    # characters) than a secret name does; the server checks this rule first.
    INPUT_RULES: Final = {"name": validate_name, "token": validate_token}

    def __init__(
        self, store: SecretStore, keyring: Keyring, *, change_limit: ChangeLimit = NO_CHANGE_LIMIT
    ) -> None:
        self._store = store
        self._keyring = keyring
        # Every change an owner makes here counts against it (create, rotate, delete).
        self._limit = change_limit

    def handlers(self) -> dict[str, Handler]:
        return {
            CREATE: self.create,
            LIST: self.list,
            ROTATE: self.rotate,
            DELETE: self.delete,
        }

    async def create(self, call: XrpcCall) -> Mapping[str, Any]:
        name = _name(call)
        did = call.caller.did
        assert call.input is not None  # create declares an input
        brought = call.input.get("token")
        # A caller-supplied token keeps the secret receivers already hold; it
        # was checked (INPUT_RULES, then the lexicon) before this runs.
        token = generate_token() if brought is None else validate_token(brought, "Input/token")
        envelope = self._keyring.seal(token, did=did, name=name)
        imported = brought is not None
        change = await self._store.create(
            did, name, envelope, actor=call.caller.actor, imported=imported, limit=self._limit
        )
        log.info(
            "secret.imported" if imported else "secret.created",
            did=did,
            name=name,
            version=change.version,
            actor=call.caller.actor,
        )
        # The lexicon's output shape either way: the token goes back only to its sender.
        return {"name": name, "token": token, "createdAt": format_datetime(change.at_ms)}

    async def list(self, call: XrpcCall) -> Mapping[str, Any]:
        # The lexicon bounds limit (1-1000) and gives its default.
        limit: int = call.params["limit"]
        cursor = call.params.get("cursor")
        after = decode_cursor(cursor) if cursor is not None else None
        # The owner comes from the credential, never from the cursor.
        page = await self._store.list_secrets(call.caller.did, limit=limit, after=after)
        secrets: list[dict[str, str]] = []
        for meta in page.secrets:
            item = {"name": meta.name, "createdAt": format_datetime(meta.created_ms)}
            if meta.rotated_ms is not None:
                item["lastRotatedAt"] = format_datetime(meta.rotated_ms)
            secrets.append(item)
        output: dict[str, Any] = {"secrets": secrets}
        if page.after is not None:
            output["cursor"] = encode_cursor(*page.after)
        return output

    async def rotate(self, call: XrpcCall) -> Mapping[str, Any]:
        name = _name(call)
        did = call.caller.did
        token = generate_token()
        envelope = self._keyring.seal(token, did=did, name=name)
        change = await self._store.rotate(
            did, name, envelope, actor=call.caller.actor, limit=self._limit
        )
        log.info(
            "secret.rotated", did=did, name=name, version=change.version, actor=call.caller.actor
        )
        return {"name": name, "token": token, "rotatedAt": format_datetime(change.at_ms)}

    async def delete(self, call: XrpcCall) -> Mapping[str, Any]:
        name = _name(call)
        did = call.caller.did
        change = await self._store.delete(did, name, actor=call.caller.actor, limit=self._limit)
        log.info(
            "secret.deleted", did=did, name=name, version=change.version, actor=call.caller.actor
        )
        return {}


# Wire error name -> metric outcome (issue #4's fixed label set).
_OUTCOMES: Final = {
    None: "ok",
    "NotFound": "not_found",
    "InvalidRequest": "invalid",
    "PayloadTooLarge": "invalid",
    "AlreadyExists": "already_exists",
    "SecretQuotaExceeded": "quota_exceeded",
    "AuthenticationRequired": "unauthenticated",
    "Forbidden": "forbidden",
    "WebhookSecretEncryptionUnavailable": "encryption_unavailable",
    "StorageUnavailable": "storage_unavailable",
    "RateLimitExceeded": "rate_limited",
    "NotEnoughResources": "busy",
}
_OPERATIONS: Final = {CREATE: "create", LIST: "list", DELETE: "delete"}
# Every outcome label a call can get, for the metrics to show at 0 from start.
OUTCOMES: Final = (*dict.fromkeys(_OUTCOMES.values()), "error")


def metrics_observer(metrics: Metrics) -> Any:
    """An XRPC observer that counts every call once, by method and outcome."""

    def observe(outcome: Outcome) -> None:
        metrics.xrpc_requests.labels(method=outcome.nsid, status=str(outcome.status)).inc()
        if outcome.auth_failure is not None:
            metrics.auth_failures.labels(reason=outcome.auth_failure).inc()
            if outcome.auth_failure == "did_refetch_limited":
                metrics.limit_hit("did_refetch")
        if outcome.error == "SecretQuotaExceeded":
            metrics.limit_hit("secrets_per_did")
        if outcome.limit is not None:
            metrics.limit_hit(outcome.limit)
        label = _OUTCOMES.get(outcome.error, "error")
        if outcome.nsid == ROTATE:
            metrics.rotations.labels(outcome=label).inc()
            metrics.rotation_duration.observe(outcome.duration_s)
            if outcome.error is None:
                metrics.last_rotation.set(time.time())
        elif outcome.nsid in _OPERATIONS:
            metrics.secret_operations.labels(
                operation=_OPERATIONS[outcome.nsid], outcome=label
            ).inc()

    return observe
