"""The ``Signer``: signatures and verifications with each secret's current token.

It knows nothing of HTTP: ``sidecar.signing.api`` parses requests into
``SignTarget``s and turns the answers and exceptions into responses.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sidecar.errors import SecretNotFound
from sidecar.signing.schemes import TABLE

if TYPE_CHECKING:
    from sidecar.signing.reader import CoalescingReader
    from sidecar.signing.tokens import OpenedTokenCache
    from sidecar.storage.store import StoredEnvelope


@dataclass(frozen=True, slots=True)
class SignTarget:
    """The checked parameters of one signature: whose secret, which scheme, and
    the message id and timestamp when the caller fixed them."""

    did: str
    name: str
    scheme: str
    msg_id: str | None
    timestamp: int | None


# A batch item: what to sign with, and the body to sign.
SignItem = tuple[SignTarget, bytes]


class Signer:
    """Signs and verifies with each secret's current token; knows nothing of HTTP.

    The single-request path is one await (the coalesced read) and plain calls:
    every extra coroutine layer is a measurable cost per signature.
    """

    def __init__(self, reader: CoalescingReader, tokens: OpenedTokenCache) -> None:
        self._reader = reader
        self._tokens = tokens
        self.read = reader.get

    def _token(self, did: str, name: str, stored: StoredEnvelope | None) -> str:
        if stored is None:
            raise SecretNotFound(f"no secret named {name!r} for {did}")
        return self._tokens.open(stored.envelope, did=did, name=name)

    async def current(self, did: str, name: str) -> tuple[str, int]:
        """``(token, version)`` as stored now; raises if absent, unopenable or unreachable."""
        stored = await self._reader.get(did, name)
        token = self._token(did, name, stored)
        assert stored is not None  # _token raised otherwise
        return token, stored.version

    def sign(
        self, target: SignTarget, body: bytes, stored: StoredEnvelope | None
    ) -> dict[str, Any]:
        """The answer to one sign request: headers to send, name and version.

        ``target`` is checked (the API built it), so the scheme signs at once.
        """
        key = self._token(target.did, target.name, stored).encode()
        assert stored is not None  # _token raised otherwise
        headers = TABLE[target.scheme].sign(key, body, target.msg_id, target.timestamp, time.time)
        return {"headers": headers, "name": target.name, "version": stored.version}

    async def sign_many(self, items: list[SignItem]) -> list[dict[str, Any] | Exception]:
        """Sign each item; a per-item failure is returned in its place, not raised.

        All items are read in one coalesced read, joined as one waiter. Storage
        failures are raised: every item would fail the same way.
        """
        stored = await self._reader.get_many([(t.did, t.name) for t, _ in items])
        # Key bytes by stored envelope object: get_many answers one object per
        # (did, name), so each secret of the batch is opened and encoded once,
        # still checked against its own owner and name.
        keys: dict[int, bytes] = {}
        now = time.time
        results: list[dict[str, Any] | Exception] = []
        for (target, body), envelope in zip(items, stored, strict=True):
            try:
                key = keys.get(id(envelope))
                if key is None:
                    key = self._token(target.did, target.name, envelope).encode()
                    keys[id(envelope)] = key
                assert envelope is not None  # _token raised otherwise
                headers = TABLE[target.scheme].sign(key, body, target.msg_id, target.timestamp, now)
                results.append(
                    {"headers": headers, "name": target.name, "version": envelope.version}
                )
            except Exception as exc:
                results.append(exc)
        return results
